"""The live server: many clients stream landmarks in over ZeroMQ, each gets generated JPEG frames back.

One ROUTER socket, one worker thread (the engine is not shared between threads), one ``Session`` per client keyed
by its ZeroMQ routing id. Each loop iteration

1. drains every pending message without blocking: control messages (hello, reset, bye, ping) are handled at once
   and in order; of a client's landmarks only the newest is kept, older ones are dropped and counted
   (**latest wins**: when the engine is slower than the camera, frames are skipped instead of queued, so latency
   never piles up);
2. generates one frame per client with pending landmarks, round-robin (the first client of the round rotates),
   JPEG-encodes it and replies ``Frame`` (``seq`` and ``capture_ts`` echoed, per-stage timings, the client's
   cumulative drop count);
3. frees sessions idle for longer than ``idle_timeout_s`` and logs a stats line every ``stats_interval_s``.

Bad input of any kind is answered with an ``Error`` (code + reason, + seq when known) and never touches another
client's session; an unexpected exception on one client's message is answered ``internal`` and logged with its
traceback, and the server goes on. See docs/protocol.md for the wire protocol.

    with Server(open_engine(model, "torch"), "tcp://127.0.0.1:5555") as server:
        server.serve_forever()          # until server.stop() from another thread or a signal handler
"""

from __future__ import annotations

import dataclasses
import contextlib
import logging
import signal
import threading
import time

import cv2
import numpy as np
import zmq

from realtime import protocol as P
from realtime.protocol import ErrorCode, ProtocolError
from realtime.session import Session, layout_of

LOGGER_NAME = "posecast.server"
DEFAULT_BIND = "tcp://127.0.0.1:5555"


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000.0


def _client_label(name: str, rid: bytes) -> str:
    shown = "".join(ch if ch.isprintable() else "?" for ch in name[:64])
    return f"{shown!r}[{rid.hex()[:16]}]" if shown else f"[{rid.hex()[:16]}]"


@dataclasses.dataclass
class _Pending:
    seq: int
    capture_ts: float
    landmarks: np.ndarray
    decode_ms: float
    t_recv: float          # perf_counter when the message came off the socket


@dataclasses.dataclass
class _Client:
    rid: bytes
    name: str
    session: Session
    last_seen: float       # monotonic time of the client's last message
    pending: _Pending | None = None
    dropped: int = 0       # landmark messages that got no frame (superseded, reset away, reply undeliverable)
    frames: int = 0        # frames sent

    @property
    def label(self) -> str:
        return _client_label(self.name, self.rid)


class Server:
    """A posecast ZeroMQ server over one ``Engine``; see the module docstring.

    ``max_clients`` live sessions at most (more get ``server_busy``); sessions silent for ``idle_timeout_s`` are
    freed; ``jpeg_quality`` 1-100; a stats line every ``stats_interval_s`` (0: never) on ``log`` (default: the
    ``posecast.server`` logger); ``poll_interval_s`` bounds how long ``stop()`` takes; ``max_drain`` caps the
    messages read per loop iteration; ``send_hwm`` is the per-client reply queue (ZMQ_SNDHWM).

    ``bind`` may use port 0 (or ``*``) for a free port; the actual address is ``server.endpoint``. The socket is
    bound in the constructor (so a bad address fails early) and closed when ``serve_forever`` returns or on
    ``close()``: a server serves once. ``stop()`` may be called from any thread or a signal handler.
    """

    def __init__(self, engine, bind: str = DEFAULT_BIND, *, max_clients: int = 16, idle_timeout_s: float = 10.0,
                 jpeg_quality: int = 90, stats_interval_s: float = 10.0, log: logging.Logger | None = None,
                 poll_interval_s: float = 0.05, max_drain: int = 1000, send_hwm: int = 100):
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {max_clients}")
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
        if idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")
        self.engine = engine
        self.cfg = cfg = engine.cfg
        self.log = log or logging.getLogger(LOGGER_NAME)
        self.max_clients = int(max_clients)
        self.idle_timeout_s = float(idle_timeout_s)
        self.jpeg_quality = int(jpeg_quality)
        self.stats_interval_s = float(stats_interval_s)
        self.poll_ms = max(1, int(round(poll_interval_s * 1000)))
        self.max_drain = max(1, int(max_drain))

        meta = getattr(engine, "meta", None) or {}
        layout, num_landmarks, _ = layout_of(cfg.kind)
        fps = meta.get("dataset_fps")
        self.welcome = P.Welcome(
            version=P.PROTOCOL_VERSION, kind=cfg.kind, size=cfg.size, history_frames=cfg.history_frames,
            num_landmarks=num_landmarks, layout=layout, model=cfg.name, backend=str(getattr(engine, "backend", "")),
            subject_stats=meta.get("subject_stats") if isinstance(meta.get("subject_stats"), dict) else None,
            fps=float(fps) if isinstance(fps, (int, float)) and fps > 0 else 30.0)
        self._welcome_bytes = P.encode(self.welcome)
        self._jpeg_params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]
        self._bgr = np.empty((cfg.size, cfg.size, 3), np.uint8)

        self._clients: dict[bytes, _Client] = {}
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._running = False
        self._closed = False
        self._thread: threading.Thread | None = None           # started by start()
        self._serving_thread: threading.Thread | None = None   # the thread inside serve_forever
        self._rr = 0
        # Counters (cumulative) and the current stats interval.
        self.counters = {"messages": 0, "frames": 0, "dropped": 0, "errors": 0, "send_failures": 0,
                         "internal_errors": 0, "connects": 0, "disconnects": 0, "expired": 0}
        self._interval_frames = 0
        self._interval_dropped = 0
        self._interval_engine_ms: list[float] = []

        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)   # unroutable replies raise EHOSTUNREACH instead of vanishing
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)    # a reconnecting client with a fixed routing id takes over
            sock.setsockopt(zmq.MAXMSGSIZE, P.MAX_MESSAGE_BYTES)
            sock.setsockopt(zmq.SNDHWM, max(1, int(send_hwm)))
            sock.bind(bind)
        except zmq.ZMQError as e:
            sock.close(0)
            self._ctx.term()
            raise OSError(f"cannot bind the posecast server to {bind!r}: {e}") from None
        self._sock = sock
        self.endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)

    # -- public API ----------------------------------------------------------------------------------------
    @property
    def session_count(self) -> int:
        """Number of live client sessions (thread-safe read)."""
        return len(self._clients)

    @property
    def running(self) -> bool:
        return self._running

    def stats(self) -> dict:
        """A snapshot of the cumulative counters plus the current session count."""
        d = dict(self.counters)
        d["clients"] = len(self._clients)
        return d

    def stop(self) -> None:
        """Ask ``serve_forever`` to return (within about one poll interval). Thread- and signal-safe."""
        self._stop.set()

    def start(self) -> threading.Thread:
        """Run ``serve_forever`` on a daemon thread; ``close()`` (or leaving the ``with`` block) stops and joins it."""
        t = threading.Thread(target=self.serve_forever, name="posecast-server", daemon=True)
        self._thread = t
        t.start()
        return t

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving, wait for ``serve_forever`` to return (unless called from inside it) and close the socket."""
        self.stop()
        me = threading.current_thread()
        if self._thread is not None and self._thread is not me:
            self._thread.join(timeout)
        if self._running and self._serving_thread is not me:
            self._done.wait(timeout)
        if not self._running:
            self._close_socket()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def serve_forever(self) -> None:
        """Serve until ``stop()``; closes the socket on return."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this server is closed (a Server serves once)")
            if self._running:
                raise RuntimeError("serve_forever is already running")
            self._running = True
        self._serving_thread = threading.current_thread()
        log = self.log
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        log.info("serving %s on %s (max %d clients, idle timeout %.1fs)", self._describe_engine(), self.endpoint,
                 self.max_clients, self.idle_timeout_s)
        now = time.monotonic()
        next_sweep = now + min(0.1, self.idle_timeout_s / 4)
        next_stats = now + self.stats_interval_s
        last_stats = now
        try:
            while not self._stop.is_set():
                if poller.poll(self.poll_ms):
                    self._drain()
                self._generate()
                now = time.monotonic()
                if now >= next_sweep:
                    self._expire(now)
                    next_sweep = now + min(0.1, self.idle_timeout_s / 4)
                if self.stats_interval_s > 0 and now >= next_stats:
                    self._log_stats(now - last_stats)
                    last_stats, next_stats = now, now + self.stats_interval_s
        finally:
            c = self.counters
            log.info("server stopped: %d frames, %d dropped, %d errors, %d undeliverable replies, %d client(s) left",
                     c["frames"], c["dropped"], c["errors"], c["send_failures"], len(self._clients))
            self._clients.clear()
            self._close_socket()
            self._running = False
            self._done.set()

    # -- internals ------------------------------------------------------------------------------------------
    def _describe_engine(self) -> str:
        try:
            return self.engine.describe()
        except Exception:  # noqa: BLE001 - a description is never worth failing over
            return type(self.engine).__name__

    def _close_socket(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._sock.close(0)
        self._ctx.term()

    def _send(self, rid: bytes, payload: bytes) -> bool:
        """Send without ever blocking; a reply that cannot go out now (HWM reached, peer gone) is dropped."""
        try:
            self._sock.send_multipart((rid, payload), zmq.NOBLOCK)
            return True
        except zmq.Again:
            pass
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
        self.counters["send_failures"] += 1
        return False

    def _error(self, rid: bytes, code: str, reason: str, seq: int | None = None) -> None:
        self.counters["errors"] += 1
        self.log.debug("error to %s: %s: %s (seq %s)", rid.hex()[:16], code, reason, seq)
        self._send(rid, P.encode(P.Error(code=code, reason=reason, seq=seq)))

    def _drain(self) -> None:
        sock = self._sock
        for _ in range(self.max_drain):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            t_recv = time.perf_counter()
            self.counters["messages"] += 1
            rid = parts[0]
            try:
                self._handle(rid, parts[1:], t_recv)
            except ProtocolError as e:
                self._error(rid, e.code, e.reason, e.seq)
            except Exception as e:  # noqa: BLE001 - one client's failure must not take the server down
                self.counters["internal_errors"] += 1
                self.log.exception("internal error on a message from %s", rid.hex()[:16])
                self._error(rid, ErrorCode.INTERNAL, f"server error: {type(e).__name__}")

    def _handle(self, rid: bytes, parts: list[bytes], t_recv: float) -> None:
        client = self._clients.get(rid)
        if client is not None:
            client.last_seen = time.monotonic()
        if len(parts) != 1:
            raise ProtocolError(ErrorCode.BAD_MESSAGE,
                                f"expected a single-frame message, got {len(parts)} frames")
        msg = P.decode(parts[0])

        if isinstance(msg, P.Landmarks):
            if client is None:
                raise ProtocolError(ErrorCode.NO_SESSION, "no session: send hello first (or again, if it expired)",
                                    msg.seq)
            arr = client.session.check(msg.array(), msg.seq)
            decode_ms = _ms(t_recv, time.perf_counter())
            if client.pending is not None:       # latest wins: the older landmarks will never be rendered
                self._drop(client)
            client.pending = _Pending(msg.seq, float(msg.capture_ts), arr, decode_ms, t_recv)
        elif isinstance(msg, P.Hello):
            self._hello(rid, client, msg)
        elif isinstance(msg, P.Ping):
            self._send(rid, P.encode(P.Pong(ts=msg.ts)))
        elif isinstance(msg, P.Reset):
            if client is None:
                raise ProtocolError(ErrorCode.NO_SESSION, "no session to reset: send hello first")
            if client.pending is not None:       # landmarks sent before the reset belong to the old history
                self._drop(client)
                client.pending = None
            client.session.reset()
        elif isinstance(msg, P.Bye):
            if client is not None:
                del self._clients[rid]
                self.counters["disconnects"] += 1
                self.log.info("client %s said bye after %d frames (%d dropped); %d client(s)", client.label,
                              client.frames, client.dropped, len(self._clients))
        else:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{msg.TYPE!r} is a server-to-client message")

    def _drop(self, client: _Client) -> None:
        client.dropped += 1
        self.counters["dropped"] += 1
        self._interval_dropped += 1

    def _hello(self, rid: bytes, client: _Client | None, msg: P.Hello) -> None:
        if msg.version != P.PROTOCOL_VERSION:
            raise ProtocolError(ErrorCode.BAD_VERSION,
                                f"this server speaks protocol version {P.PROTOCOL_VERSION}, the client {msg.version}")
        name = msg.client[:256]
        if client is None:
            if len(self._clients) >= self.max_clients:
                raise ProtocolError(ErrorCode.SERVER_BUSY,
                                    f"server busy: {len(self._clients)} of {self.max_clients} clients connected")
            client = _Client(rid=rid, name=name, session=Session(self.engine, name), last_seen=time.monotonic())
            self._clients[rid] = client
            self.counters["connects"] += 1
            self.log.info("client %s connected; %d client(s)", client.label, len(self._clients))
        else:  # hello again: start over with a fresh history and counters
            client.name = client.session.name = name
            client.pending = None
            client.dropped = client.frames = 0
            client.session.reset()
            self.log.info("client %s said hello again: session restarted", client.label)
        self._send(rid, self._welcome_bytes)

    def _generate(self) -> None:
        ready = [c for c in self._clients.values() if c.pending is not None]
        if not ready:
            return
        k = self._rr % len(ready)
        self._rr += 1
        for client in ready[k:] + ready[:k]:
            p, client.pending = client.pending, None
            try:
                reply = self._frame(client, p)
            except ProtocolError as e:
                self._error(client.rid, e.code, e.reason, e.seq)
                continue
            except Exception as e:  # noqa: BLE001
                self.counters["internal_errors"] += 1
                self.log.exception("internal error generating frame %d for %s", p.seq, client.label)
                self._error(client.rid, ErrorCode.INTERNAL, f"server error generating the frame: {type(e).__name__}",
                            p.seq)
                continue
            if self._send(client.rid, reply):
                client.frames += 1
                self.counters["frames"] += 1
                self._interval_frames += 1
            else:                                 # nobody will see this frame: account for it as a drop
                self._drop(client)

    def _frame(self, client: _Client, p: _Pending) -> bytes:
        rgb, t = client.session.step(p.landmarks, p.seq)
        t0 = time.perf_counter()
        cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR, dst=self._bgr)
        ok, jpeg = cv2.imencode(".jpg", self._bgr, self._jpeg_params)
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        t1 = time.perf_counter()
        timings = {"decode": p.decode_ms, "render": t["render"], "engine": t["engine"],
                   "encode": t["post"] + _ms(t0, t1), "total": _ms(p.t_recv, t1)}
        if len(self._interval_engine_ms) < 100_000:
            self._interval_engine_ms.append(t["engine"])
        return P.encode(P.Frame(seq=p.seq, capture_ts=p.capture_ts, jpeg=jpeg.tobytes(), timings=timings,
                                dropped=client.dropped))

    def _expire(self, now: float) -> None:
        for rid, client in list(self._clients.items()):
            idle = now - client.last_seen
            if idle > self.idle_timeout_s:
                del self._clients[rid]
                self.counters["expired"] += 1
                self.counters["disconnects"] += 1
                self.log.info("client %s expired after %.1fs without a message (%d frames, %d dropped); "
                              "%d client(s)", client.label, idle, client.frames, client.dropped, len(self._clients))

    def _log_stats(self, elapsed: float) -> None:
        frames, dropped, eng = self._interval_frames, self._interval_dropped, self._interval_engine_ms
        if frames or dropped or self._clients:
            p50 = float(np.median(eng)) if eng else float("nan")
            self.log.info("stats: %d client(s), %.1f frames/s, %d dropped, p50 engine %.1f ms, %d errors total",
                          len(self._clients), frames / max(elapsed, 1e-9), dropped, p50, self.counters["errors"])
        self._interval_frames = self._interval_dropped = 0
        self._interval_engine_ms = []


def serve(model, bind: str = DEFAULT_BIND, backend: str | None = None, *, engine_kwargs: dict | None = None,
          warmup: bool = True, configure_logging: bool = True, **server_kwargs) -> dict:
    """``posecast serve MODEL --bind ADDR``: load ``model`` on ``backend`` and serve until SIGINT/SIGTERM.

    ``backend`` defaults to onnxruntime when that backend is available, else torch. ``server_kwargs`` go to
    ``Server`` (max_clients, idle_timeout_s, jpeg_quality, stats_interval_s, ...). Installs SIGINT/SIGTERM handlers
    (when called on the main thread) that stop the server cleanly, and restores the previous ones on return.
    Returns the server's final counters.
    """
    from realtime.engine import list_backends, open_engine

    log = server_kwargs.get("log") or logging.getLogger(LOGGER_NAME)
    if configure_logging and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if backend is None:
        backend = "onnxruntime" if "onnxruntime" in list_backends() else "torch"
    engine = open_engine(model, backend, **(engine_kwargs or {}))
    if warmup:  # the first run of an engine is slow (allocation, autotuning): pay it before the first client
        t0 = time.perf_counter()
        engine.step(engine.zero_inputs())
        log.info("engine warm-up: %.0f ms", _ms(t0, time.perf_counter()))

    server = Server(engine, bind, **server_kwargs)
    installed = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum, _frame):
            if server._stop.is_set():  # a second signal while shutting down: give up waiting
                raise KeyboardInterrupt
            log.info("%s received: shutting down", signal.Signals(signum).name)
            server.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            installed[sig] = signal.signal(sig, on_signal)
    try:
        with server:
            server.serve_forever()
    finally:
        for sig, old in installed.items():
            signal.signal(sig, old)
    return server.stats()


@contextlib.contextmanager
def server_process(model, backend: str = "onnxruntime", *, threads: int | None = None, host: str = "127.0.0.1",
                   extra_args: tuple[str, ...] = ()):
    """Run ``posecast serve MODEL`` in a child process on a free loopback port; yields its address.

    The server gets its own interpreter (no GIL shared with the caller's capture client), as in a real
    deployment. It is stopped with SIGTERM (clean shutdown) when the block ends; if it died early, its stderr is
    raised as a RuntimeError.
    """
    import subprocess
    import sys

    with zmq.Context() as ctx:  # a free port: bind, read it, release it
        probe = ctx.socket(zmq.ROUTER)
        port = probe.bind_to_random_port(f"tcp://{host}")
        probe.close(0)
    address = f"tcp://{host}:{port}"
    cmd = [sys.executable, "-m", "posecast_cli", "serve", str(model), "--bind", address, "--backend", backend,
           "--stats-interval", "3600", *(["--threads", str(threads)] if threads else []), *extra_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield address
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode not in (0, -signal.SIGTERM):
            raise RuntimeError(f"posecast serve exited with {proc.returncode}: {err.strip()[-2000:]}")
