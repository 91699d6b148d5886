"""The live server: many clients stream landmarks in over ZeroMQ, each gets generated JPEG frames back.

Two threads and one ROUTER socket. The **front** (realtime/front.py) owns the network: it accepts every
connection, applies the connection limits and budgets, and relays each connection's bytes to the ROUTER over a
private link that the ROUTER connects to under a routing id the server chose — so a peer can neither choose a
routing id nor reach the libzmq states that abort a process (the front's docstring says which and why). The
**session loop** (this module; the engine is not shared between threads) keeps one ``Session`` per client. A
session belongs to one connection and, on a CURVE server, to one client key: identity comes from the key that
ZeroMQ's ZAP handler authenticated (the ``User-Id`` of every message) and from the connection, never from
anything a peer says. Each loop iteration

1. takes the front's news: a new connection's link is connected (``ZMQ_CONNECT_ROUTING_ID``), a closed
   connection's session is freed at once and its link dropped;
2. drains at most ``max_drain`` messages without blocking. Control messages (hello, reset, bye, ping) are handled
   at once and in order; of a client's landmarks only the newest is kept, older ones are dropped and counted
   (**latest wins**: when the engine is slower than the camera, frames are skipped instead of queued, so latency
   never piles up). A connection that sends faster than ``rate_hz`` is read slower by the front; nothing it sent
   within its budget is ever dropped unread;
3. frees sessions that sent nothing for ``idle_timeout_s`` (clients ping every ``heartbeat_s`` when idle);
4. generates one frame per client with pending landmarks in one batched engine call (``max_batch`` sessions per
   call; ``Session.prepare`` / ``step_sessions`` / ``Session.finish``), replies round-robin (the first client
   of the round rotates), and never renders for a client whose reply queue is full: ``ROUTER_MANDATORY`` tells
   when a reply's routing-id frame cannot go out (``EAGAIN``); such a client is marked blocked, and from then on
   its routing frame is offered *before* its frame is rendered (alone), so its landmarks are dropped unrendered
   while the queue stays full. The reply is ``Frame`` (``seq`` and ``capture_ts`` echoed, per-stage timings, the
   client's cumulative drop count).

Every reply is delivered or counted: the reply queue (``send_hwm``) is deeper than the burst a connection may
send at once (``rate_burst``), so a client that reads never loses one; a reply to landmarks that finds the queue
full (a client that stopped reading) is counted in that client's ``dropped``. Bad input of any kind is answered
with an ``Error`` (code + reason, + seq when known) and never touches another client's session; an unexpected
exception on one client's message is answered ``internal`` and logged with its traceback, and the server goes on.
See docs/protocol.md for the wire protocol.

The pieces, one job each: :class:`Server` (this module) runs the loop and dispatches messages;
realtime/connections.py ``ConnectionTable`` (links, identity, replies that never block),
realtime/registry.py ``SessionRegistry`` (sessions: hello, latest wins, free, expire), realtime/rounds.py
``EngineRound`` (batching, frames, delivery), realtime/codec.py (JPEG), realtime/counters.py (typed counters).

    with Server(open_engine(model, "torch"), "tcp://127.0.0.1:5555") as server:
        server.serve_forever()          # until server.stop() from another thread or a signal handler
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time

import numpy as np
import zmq

from models.landmarks import layout_of
from realtime import protocol as P
from realtime.codec import JpegEncoder
from realtime.connections import ConnectionTable
from realtime.counters import Interval, ServerCounters
from realtime.front import Front
from realtime.limits import Limits
from realtime.protocol import ErrorCode, ProtocolError
from realtime.registry import Client, Pending, SessionRegistry, short_id
from realtime.rounds import EngineRound
from realtime.security import CurveConfig, CurveServer, check_bind
from realtime.session import open_session

__all__ = ["DEFAULT_BIND", "LOGGER_NAME", "Limits", "Server", "raise_fd_limit", "serve", "short_id"]

LOGGER_NAME = "posecast.server"
DEFAULT_BIND = "tcp://127.0.0.1:5555"


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000.0


class Server:
    """A posecast ZeroMQ server over one ``Engine``; see the module docstring.

    ``limits`` (a :class:`~realtime.limits.Limits`; keyword overrides such as ``max_clients=2`` or
    ``idle_timeout_s=0.5`` are applied on top). ``curve``: a :class:`~realtime.security.CurveConfig` (the server
    key pair and the folder of allowed client keys) to require CURVE encryption and an allowed key of every
    client; without it the server only binds loopback addresses unless ``insecure``. ``jpeg_quality`` 1-100; a
    stats line every ``stats_interval_s`` (0: never) on ``log`` (default: the ``posecast.server`` logger);
    ``poll_interval_s`` bounds how long ``stop()`` takes. ``history``: where each session keeps its history
    ("auto": on the engine's device when that is a CUDA GPU, else host memory; "host"; "device";
    realtime/session.py ``open_session``).

    ``bind`` (``tcp://HOST:PORT`` or ``ipc://PATH``) may use port 0 (or ``*``) for a free port; the actual
    address is ``server.endpoint``. The address is bound in the constructor (so a bad one fails early) and closed
    when ``serve_forever`` returns or on ``close()``: a server serves once. ``stop()`` may be called from any
    thread or a signal handler.
    """

    def __init__(self, engine, bind: str = DEFAULT_BIND, *, limits: Limits | None = None,
                 curve: CurveConfig | None = None, insecure: bool = False, jpeg_quality: int = 90,
                 stats_interval_s: float = 10.0, log: logging.Logger | None = None, poll_interval_s: float = 0.05,
                 history: str = "auto", **limit_overrides):
        self.limits = lim = dataclasses.replace(limits or Limits(), **limit_overrides)
        encoder = JpegEncoder(jpeg_quality, engine.cfg.size)       # checks the quality
        check_bind(bind, curve, insecure)
        self.engine = engine
        self.cfg = cfg = engine.cfg
        open_session(engine, history=history)  # checks ``history`` (and that such a session can be made) up front
        self.log = log or logging.getLogger(LOGGER_NAME)
        self.stats_interval_s = float(stats_interval_s)
        self.poll_ms = max(1, int(round(poll_interval_s * 1000)))

        meta = getattr(engine, "meta", None) or {}
        layout = layout_of(cfg.kind)
        fps = meta.get("dataset_fps")
        self.welcome = P.Welcome(
            version=P.PROTOCOL_VERSION, kind=cfg.kind, size=cfg.size, history_frames=cfg.history_frames,
            num_landmarks=layout.num_landmarks, layout=layout.name, model=cfg.name,
            backend=str(getattr(engine, "backend", "")),
            subject_stats=meta.get("subject_stats") if isinstance(meta.get("subject_stats"), dict) else None,
            fps=float(fps) if type(fps) in (int, float) and np.isfinite(fps) and fps > 0 else 30.0,
            heartbeat_s=lim.heartbeat_s, idle_timeout_s=lim.idle_timeout_s, max_message_bytes=P.MAX_MESSAGE_BYTES,
            rate_hz=lim.rate_hz, rate_burst=lim.rate_burst, reply_queue=lim.reply_queue, max_clients=lim.max_clients,
            sessions_per_key=lim.sessions_per_key, max_connections=lim.max_connections,
            max_connections_per_address=lim.max_connections_per_address)
        self._welcome_bytes = {v: P.encode(dataclasses.replace(self.welcome, version=v), v)
                               for v in P.SUPPORTED_VERSIONS}

        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._running = False
        self._closed = False
        self._thread: threading.Thread | None = None           # started by start()
        self._serving_thread: threading.Thread | None = None   # the thread inside serve_forever
        self.counters = ServerCounters()       # cumulative; stats() adds the front's connection counters
        self.interval = Interval()             # the current stats interval

        self._ctx = zmq.Context()
        self._curve: CurveServer | None = None
        self._mon: zmq.Socket | None = None
        self._front: Front | None = None
        sock = self._ctx.socket(zmq.ROUTER)
        try:
            if curve is not None:
                self._curve = CurveServer(self._ctx, curve)
                self._curve.apply(sock)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)   # a full or vanished peer: EAGAIN / EHOSTUNREACH, never a block
            # The announced limit holds under CURVE too: the ZMTP frame carries CURVE's own bytes besides.
            sock.setsockopt(zmq.MAXMSGSIZE, P.MAX_MESSAGE_BYTES + (P.CURVE_OVERHEAD_BYTES if curve else 0))
            sock.setsockopt(zmq.SNDHWM, lim.reply_queue)
            sock.setsockopt(zmq.RCVHWM, 0)             # never stop reading a link (see realtime/front.py)
            if lim.sndbuf_bytes > 0:                   # the link's kernel buffer too (the front sizes the client's)
                sock.setsockopt(zmq.SNDBUF, lim.sndbuf_bytes)
            sock.setsockopt(zmq.RECONNECT_IVL, -1)     # a link that closed is gone for good
            sock.setsockopt(zmq.HANDSHAKE_IVL, int(lim.handshake_timeout_s * 1000))
            self._mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
            self._front = Front(bind, lim, log=self.log)
        except (zmq.ZMQError, ValueError, OSError) as e:
            self._teardown(sock)
            if isinstance(e, zmq.ZMQError):
                raise OSError(f"cannot start the posecast server on {bind!r}: {e}") from None
            raise
        self._sock = sock
        self.endpoint: str = self._front.endpoint
        self.conns = ConnectionTable(sock, self._front, self._mon, self.counters, secure=curve is not None,
                                     log=self.log)
        self.registry = SessionRegistry(engine, history, lim, self.conns, self.counters, self.interval,
                                        dict(self._curve.names) if self._curve else {}, self.log)
        self.round = EngineRound(engine, self.registry, self.conns, max_batch=lim.max_batch, encoder=encoder,
                                 counters=self.counters, interval=self.interval, log=self.log)

    def _teardown(self, sock: zmq.Socket) -> None:
        if self._front is not None:
            self._front.close()
        if self._mon is not None:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            self._mon.close(0)
            self._mon = None
        sock.close(0)
        if self._curve is not None:
            self._curve.close()
            self._curve = None
        self._ctx.term()

    # -- public API ----------------------------------------------------------------------------------------
    @property
    def session_count(self) -> int:
        """Number of live client sessions (thread-safe read)."""
        return len(self.registry)

    @property
    def _clients(self) -> dict[bytes, Client]:
        """The live sessions by routing id (for tests and debugging; the registry owns them)."""
        return self.registry.clients

    @property
    def running(self) -> bool:
        return self._running

    @property
    def secure(self) -> bool:
        """Whether clients must authenticate with an allowed CURVE key."""
        return self._curve is not None

    def stats(self) -> dict:
        """A snapshot of the cumulative counters (the front's connection counters included) plus the current
        session and connection counts."""
        d = self.counters.as_dict()
        if self._front is not None:
            d.update(self._front.stats())
        d["clients"] = len(self.registry)
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
        front = self._front
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._mon, zmq.POLLIN)
        poller.register(front.doorbell, zmq.POLLIN)
        lim = self.limits
        log.info("serving %s on %s (%s; max %d clients, %d per key, %d connections, %g msg/s per connection, "
                 "idle timeout %.1fs)", self._describe_engine(), self.endpoint,
                 f"CURVE, {len(self._curve.names)} allowed key(s)" if self._curve else "no authentication",
                 lim.max_clients, lim.sessions_per_key, lim.max_connections, lim.rate_hz, lim.idle_timeout_s)
        front.start()
        now = time.monotonic()
        sweep_s = min(0.1, lim.idle_timeout_s / 4)
        next_sweep = now + sweep_s
        next_stats = now + self.stats_interval_s
        last_stats = now
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(0 if self.registry.has_pending() else self.poll_ms))
                if front.doorbell in events or front.doorbell.fileno() in events:
                    self.conns.front_news(self.registry.free)
                if self._mon in events:
                    self.conns.monitor()
                if self._sock in events:
                    self._drain()
                now = time.monotonic()
                if now >= next_sweep:                 # after the drain: a long engine round never expires anyone
                    self.registry.expire(now)
                    next_sweep = now + sweep_s
                self.round.run()
                if self.stats_interval_s > 0 and now >= next_stats:
                    self._log_stats(now - last_stats)
                    last_stats, next_stats = now, now + self.stats_interval_s
        finally:
            c = self.counters
            log.info("server stopped: %d frames, %d dropped, %d errors, %d undeliverable replies, %d client(s) left",
                     c.frames, c.dropped, c.errors, c.send_failures, len(self.registry))
            self.registry.clear()
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
        self._teardown(self._sock)

    # messages ---------------------------------------------------------------------------------------------
    def _error(self, rid: bytes, code: str, reason: str, seq: int | None = None, versions=None) -> None:
        self.counters.errors += 1
        self.log.debug("error to [%s]: %s: %s (seq %s)", short_id(rid), code, reason, seq)
        if not self.conns.send(rid, P.encode(P.Error(code=code, reason=reason, seq=seq, versions=versions))):
            client = self.registry.get(rid)
            if client is not None and seq is not None:   # its landmarks got neither frame nor error: count them
                self.registry.drop(client)

    def _drain(self) -> None:
        """Read and handle up to ``max_drain`` messages; tell the front how many of each connection were read
        (its window of unread messages opens again)."""
        reads: dict[int, int] = {}
        try:
            for _ in range(self.limits.max_drain):
                if not self._drain_one(reads):
                    return
        finally:
            self.conns.consumed(reads)

    def _drain_one(self, reads: dict[int, int]) -> bool:
        try:
            parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        t_recv = time.perf_counter()
        now = time.monotonic()
        self.counters.messages += 1
        key = self.conns.identify(parts, reads)
        if key is None:
            return True
        rid = parts[0].bytes
        try:
            self._handle(rid, self.registry.get(rid), key, [p.bytes for p in parts[1:]], t_recv, now)
        except ProtocolError as e:
            self._error(rid, e.code, e.reason, e.seq, e.versions)
        except Exception as e:  # noqa: BLE001 - one client's failure must not take the server down
            self.counters.internal_errors += 1
            self.log.exception("internal error on a message from [%s]", short_id(rid))
            self._error(rid, ErrorCode.INTERNAL, f"server error: {type(e).__name__}")
        return True

    def _handle(self, rid: bytes, client: Client | None, key: str, parts: list[bytes], t_recv: float,
                now: float) -> None:
        if client is not None:
            client.last_seen = now
        if len(parts) != 1:
            raise ProtocolError(ErrorCode.BAD_MESSAGE,
                                f"expected a single-frame message, got {len(parts)} frames")
        msg = P.decode(parts[0], client.version if client is not None else None)

        if isinstance(msg, P.Landmarks):
            if client is None:
                raise ProtocolError(ErrorCode.NO_SESSION, "no session: send hello first (or again, if it expired)",
                                    msg.seq)
            arr = client.session.check(msg.array(), msg.seq)
            self.registry.landmarks(client, Pending(msg.seq, float(msg.capture_ts), arr,
                                                    _ms(t_recv, time.perf_counter()), t_recv, float(msg.lead_ms)))
        elif isinstance(msg, P.Hello):
            version = self.registry.hello(rid, client, key, msg, now)
            self.conns.send(rid, self._welcome_bytes[version])
        elif isinstance(msg, P.Ping):
            self.conns.send(rid, P.encode(P.Pong(ts=msg.ts)))
        elif isinstance(msg, P.Reset):
            if client is None:
                raise ProtocolError(ErrorCode.NO_SESSION, "no session to reset: send hello first")
            self.registry.reset(client)
        elif isinstance(msg, P.Bye):
            if client is not None:
                self.registry.free(rid, "said bye")
        else:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{msg.TYPE!r} is a server-to-client message")

    def _log_stats(self, elapsed: float) -> None:
        iv = self.interval
        if iv.frames or iv.dropped or len(self.registry):
            p50 = float(np.median(iv.engine_ms)) if iv.engine_ms else float("nan")
            c = self.stats()
            lead = iv.lead_ms
            self.log.info("stats: %d client(s), %d connection(s), %.1f frames/s, %d dropped, p50 engine %.1f ms, "
                          "%d errors, %d connections paused for their rate, %d auth failures total%s",
                          len(self.registry), c["open_connections"], iv.frames / max(elapsed, 1e-9), iv.dropped, p50,
                          c["errors"], c["paused"], c["auth_failures"],
                          f"; {len(lead)} frames forecast, p50 {float(np.median(lead)):.0f} ms ahead" if lead else "")
        iv.frames = iv.dropped = 0
        iv.engine_ms.clear()
        iv.lead_ms.clear()


def raise_fd_limit(want: int = 1 << 16) -> int:
    """Raise the soft open-files limit towards the hard one (connections are fds); returns the new soft limit."""
    try:
        import resource
    except ImportError:  # not POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def serve(model, bind: str = DEFAULT_BIND, backend: str | None = None, *, engine_kwargs: dict | None = None,
          warmup: bool = True, configure_logging: bool = True, recalibrate: bool = False, **server_kwargs) -> dict:
    """``posecast serve MODEL --bind ADDR``: load ``model`` on ``backend`` and serve until SIGINT/SIGTERM.

    ``backend`` defaults to onnxruntime when that backend is available, else torch. ``server_kwargs`` go to
    ``Server`` (curve, insecure, limits, max_clients, idle_timeout_s, jpeg_quality, stats_interval_s, ...).
    The bind address is checked (loopback, or CURVE keys, or ``insecure``) before the model is loaded.
    ``max_batch=0`` uses the best batch size on this machine (``engine.calibrate_batch``, measured once per model,
    engine and machine and kept in ``engine.calibration_cache_path()``; ``recalibrate`` measures again). Installs
    SIGINT/SIGTERM handlers (when called on the main thread) that stop the server cleanly, and restores the
    previous ones on return. Returns the server's final counters.
    """
    from realtime.engine import cached_calibration, list_backends, open_engine

    log = server_kwargs.get("log") or logging.getLogger(LOGGER_NAME)
    if configure_logging and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_bind(bind, server_kwargs.get("curve"), server_kwargs.get("insecure", False))
    if server_kwargs.get("insecure") and server_kwargs.get("curve") is None:
        log.warning("--insecure: serving %s without authentication or encryption", bind)
    raise_fd_limit()
    if backend is None:
        backend = "onnxruntime" if "onnxruntime" in list_backends() else "torch"
    engine = open_engine(model, backend, **(engine_kwargs or {}))
    if warmup:  # the first run of an engine is slow (allocation, autotuning): pay it before the first client
        t0 = time.perf_counter()
        engine.step(engine.zero_inputs())
        log.info("engine warm-up: %.0f ms", _ms(t0, time.perf_counter()))
    if server_kwargs.get("max_batch") == 0:  # auto: the batch size that makes the most frames/s on this machine
        limit = min(server_kwargs.get("max_clients", Limits.max_clients), Limits.max_batch)
        server_kwargs["max_batch"], fps, cached = cached_calibration(model, engine, limit, recalibrate=recalibrate,
                                                                     log=log)
        log.info("batch calibration (frames/s per batch size): %s; max batch %d%s", fps, server_kwargs["max_batch"],
                 " (measured before on this machine; --recalibrate measures again)" if cached else "")

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
