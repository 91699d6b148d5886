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

    with Server(open_engine(model, "torch"), "tcp://127.0.0.1:5555") as server:
        server.serve_forever()          # until server.stop() from another thread or a signal handler
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import signal
import threading
import time

import cv2
import numpy as np
import zmq
from zmq.utils.monitor import parse_monitor_message

from models.landmarks import layout_of
from realtime import protocol as P
from realtime.front import Closed, Front, NewLink
from realtime.limits import Limits
from realtime.protocol import ErrorCode, ProtocolError
from realtime.security import CurveConfig, CurveServer, check_bind
from realtime.session import Session, open_session, step_sessions

__all__ = ["DEFAULT_BIND", "LOGGER_NAME", "Limits", "Server", "raise_fd_limit", "serve", "short_id"]

LOGGER_NAME = "posecast.server"
DEFAULT_BIND = "tcp://127.0.0.1:5555"


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000.0


def short_id(rid: bytes) -> str:
    """What the log shows of a routing id: 8 hex digits of its hash, never the id itself."""
    return hashlib.blake2s(rid, digest_size=4).hexdigest()


@dataclasses.dataclass
class _Pending:
    seq: int
    capture_ts: float
    landmarks: np.ndarray
    decode_ms: float
    t_recv: float          # perf_counter when the message came off the socket
    lead_ms: float = 0.0   # how far ahead the client forecast these landmarks (protocol 4; echoed)


@dataclasses.dataclass
class _Link:
    """One client connection, as the session loop sees it: the front's connection id and the link endpoint."""
    conn: int
    endpoint: str


@dataclasses.dataclass
class _Client:
    rid: bytes             # the routing id of its connection's link (chosen by the server, one per connection)
    key: str               # authenticated CURVE key (z85), "" without CURVE
    key_name: str          # the allow-list file name of the key, "" without CURVE
    name: str
    session: Session
    last_seen: float       # monotonic time of the client's last message
    created: float
    version: int           # the protocol version of the session
    pending: _Pending | None = None
    blocked: bool = False  # the last reply found the client's queue full: offer before rendering
    dropped: int = 0       # landmark messages that got no frame (superseded, reset away, reply queue full)
    frames: int = 0        # frames sent

    @property
    def label(self) -> str:
        shown = "".join(ch if ch.isprintable() else "?" for ch in self.name[:64])
        who = f"{shown!r}" if shown else ""
        if self.key_name:
            who += f" key {self.key_name}"
        return f"{who}[{short_id(self.rid)}]".strip()


_OK, _FULL = "ok", "full"


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
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
        check_bind(bind, curve, insecure)
        self.engine = engine
        self.cfg = cfg = engine.cfg
        open_session(engine, history=history)  # checks ``history`` (and that such a session can be made) up front
        self.history = history
        self.log = log or logging.getLogger(LOGGER_NAME)
        self.max_clients = lim.max_clients
        self.idle_timeout_s = float(lim.idle_timeout_s)
        self.jpeg_quality = int(jpeg_quality)
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
        self._jpeg_params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]
        self._bgr = np.empty((cfg.size, cfg.size, 3), np.uint8)

        self._clients: dict[bytes, _Client] = {}
        self._links: dict[bytes, _Link] = {}
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._running = False
        self._closed = False
        self._thread: threading.Thread | None = None           # started by start()
        self._serving_thread: threading.Thread | None = None   # the thread inside serve_forever
        self._rr = 0
        # Counters (cumulative) and the current stats interval; the front adds its connection counters.
        self.counters = {"messages": 0, "frames": 0, "dropped": 0, "errors": 0, "send_failures": 0,
                         "internal_errors": 0, "connects": 0, "disconnects": 0, "expired": 0, "not_rendered": 0,
                         "undeliverable": 0, "takeovers": 0, "auth_failures": 0, "orphans": 0, "rounds": 0}
        self._interval_frames = 0
        self._interval_dropped = 0
        self._interval_engine_ms: list[float] = []
        self._interval_lead_ms: list[float] = []      # leads of the forecast frames sent (protocol 4)

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
        return len(self._clients)

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
        d = dict(self.counters)
        if self._front is not None:
            d.update(self._front.stats())
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
        sweep_s = min(0.1, self.idle_timeout_s / 4)
        next_sweep = now + sweep_s
        next_stats = now + self.stats_interval_s
        last_stats = now
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(0 if self._has_pending() else self.poll_ms))
                if front.doorbell in events or front.doorbell.fileno() in events:
                    self._front_news()
                if self._mon in events:
                    self._monitor()
                if self._sock in events:
                    self._drain()
                now = time.monotonic()
                if now >= next_sweep:                 # after the drain: a long engine round never expires anyone
                    self._expire(now)
                    next_sweep = now + sweep_s
                self._generate()
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
        self._teardown(self._sock)

    def _has_pending(self) -> bool:
        return any(c.pending is not None for c in self._clients.values())

    # connections (the front's news) --------------------------------------------------------------------------
    def _front_news(self) -> None:
        for ev in self._front.events():
            if isinstance(ev, NewLink):
                self._sock.setsockopt(zmq.CONNECT_ROUTING_ID, ev.rid)
                try:
                    self._sock.connect(ev.endpoint)
                except zmq.ZMQError as e:   # cannot happen for an endpoint the front just made; refuse it cleanly
                    self.log.error("cannot take connection %d over (%s): %s", ev.conn, ev.endpoint, e)
                    self._front.close_connection(ev.conn, "the server could not take it over")
                    continue
                self._links[ev.rid] = _Link(ev.conn, ev.endpoint)
            elif isinstance(ev, Closed):
                self._free(ev.rid, "its connection closed")
                link = self._links.pop(ev.rid, None)
                if link is not None:
                    with contextlib.suppress(zmq.ZMQError):   # already gone when libzmq saw the link close first
                        self._sock.disconnect(link.endpoint)

    def _monitor(self) -> None:
        while True:
            try:
                ev = parse_monitor_message(self._mon.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.counters["auth_failures"] += 1

    # messages ---------------------------------------------------------------------------------------------
    def _send(self, rid: bytes, payload: bytes) -> bool:
        """Send without ever blocking; a reply that cannot go out now (queue full, peer gone) is dropped."""
        if self._offer(rid) != _OK:
            return False
        self._sock.send(payload, zmq.NOBLOCK)   # the pipe took the routing frame: the message part cannot fail
        return True

    def _offer(self, rid: bytes) -> str:
        """Start a reply to ``rid``: the routing-id frame (SNDMORE) is accepted only when that peer's queue has
        room. After ``_OK`` exactly one message part must follow before anything else is sent.

        ``EHOSTUNREACH`` is not proof that the peer is gone: libzmq also reports it for a live peer whose pipe
        is between its high- and low-water marks. Both it and ``EAGAIN`` mean "not now" (``_FULL``); a peer that
        is really gone is reported by the front.
        """
        try:
            self._sock.send(rid, zmq.SNDMORE | zmq.NOBLOCK)
            return _OK
        except zmq.Again:
            pass
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
        self.counters["send_failures"] += 1
        return _FULL

    def _error(self, rid: bytes, code: str, reason: str, seq: int | None = None, versions=None) -> None:
        self.counters["errors"] += 1
        self.log.debug("error to [%s]: %s: %s (seq %s)", short_id(rid), code, reason, seq)
        if not self._send(rid, P.encode(P.Error(code=code, reason=reason, seq=seq, versions=versions))):
            client = self._clients.get(rid)
            if client is not None and seq is not None:   # its landmarks got neither frame nor error: count them
                self._drop(client)

    def _drain(self) -> None:
        """Read and handle up to ``max_drain`` messages; tell the front how many of each connection were read
        (its window of unread messages opens again)."""
        reads: dict[int, int] = {}
        try:
            for _ in range(self.limits.max_drain):
                if not self._drain_one(reads):
                    return
        finally:
            self._front.consumed(reads)

    def _drain_one(self, reads: dict[int, int]) -> bool:
        sock = self._sock
        try:
            parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        t_recv = time.perf_counter()
        now = time.monotonic()
        self.counters["messages"] += 1
        rid = parts[0].bytes
        link = self._links.get(rid)
        if link is None:
            self.counters["orphans"] += 1      # from a connection already closed
            return True
        reads[link.conn] = reads.get(link.conn, 0) + len(parts) - 1
        key = ""
        if self._curve is not None:
            try:
                key = parts[-1].get("User-Id")
            except zmq.ZMQError:  # cannot happen on a CURVE socket; refuse rather than guess
                return True
        client = self._clients.get(rid)
        try:
            self._handle(rid, client, key, [p.bytes for p in parts[1:]], t_recv, now)
        except ProtocolError as e:
            self._error(rid, e.code, e.reason, e.seq, e.versions)
        except Exception as e:  # noqa: BLE001 - one client's failure must not take the server down
            self.counters["internal_errors"] += 1
            self.log.exception("internal error on a message from [%s]", short_id(rid))
            self._error(rid, ErrorCode.INTERNAL, f"server error: {type(e).__name__}")
        return True

    def _handle(self, rid: bytes, client: _Client | None, key: str, parts: list[bytes], t_recv: float,
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
            decode_ms = _ms(t_recv, time.perf_counter())
            if client.pending is not None:       # latest wins: the older landmarks will never be rendered
                self._drop(client)
            client.pending = _Pending(msg.seq, float(msg.capture_ts), arr, decode_ms, t_recv, float(msg.lead_ms))
        elif isinstance(msg, P.Hello):
            self._hello(rid, client, key, msg, now)
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
                self._free(rid, "said bye")
        else:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{msg.TYPE!r} is a server-to-client message")

    def _drop(self, client: _Client) -> None:
        client.dropped += 1
        self.counters["dropped"] += 1
        self._interval_dropped += 1

    def _free(self, rid: bytes, why: str, *, expired: bool = False) -> None:
        client = self._clients.pop(rid, None)
        if client is None:
            return
        self.counters["disconnects"] += 1
        if expired:
            self.counters["expired"] += 1
        link = self._links.get(rid)
        if link is not None:
            self._front.session(link.conn, False)
        self.log.info("client %s: session freed (%s) after %d frames (%d dropped); %d client(s)", client.label, why,
                      client.frames, client.dropped, len(self._clients))

    def _hello(self, rid: bytes, client: _Client | None, key: str, msg: P.Hello, now: float) -> None:
        version = P.negotiate(msg)
        name = msg.client[:256]
        if client is not None:  # hello again: start over with a fresh history and counters
            client.name = client.session.name = name
            client.version = version
            client.pending = None
            client.dropped = client.frames = 0
            client.session.reset()
            self.log.info("client %s said hello again: session restarted", client.label)
        else:
            if key:  # the same key may reconnect: its oldest session beyond the per-key limit is taken over
                own = sorted((c for c in self._clients.values() if c.key == key), key=lambda c: c.created)
                for old in own[:max(0, len(own) - self.limits.sessions_per_key + 1)]:
                    self.counters["takeovers"] += 1
                    self._free(old.rid, "taken over by a new connection with the same key")
            if len(self._clients) >= self.max_clients:
                raise ProtocolError(ErrorCode.SERVER_BUSY,
                                    f"server busy: {len(self._clients)} of {self.max_clients} clients connected")
            key_name = self._curve.names.get(key, "?") if (key and self._curve) else ""
            client = _Client(rid=rid, key=key, key_name=key_name, name=name, version=version,
                             session=open_session(self.engine, name, self.history), last_seen=now, created=now)
            self._clients[rid] = client
            self._front.session(self._links[rid].conn, True)
            self.counters["connects"] += 1
            self.log.info("client %s connected; %d client(s)", client.label, len(self._clients))
        self._send(rid, self._welcome_bytes[version])

    def _generate(self) -> None:
        """One engine round: a frame for every client with pending landmarks and room for the reply.

        Clients whose last reply went out are rendered together, ``max_batch`` per engine call (one batched call
        for every pending session); the reply is offered afterwards, and a client whose queue turns out to be
        full is marked ``blocked`` (that one frame is counted ``undeliverable``). A blocked client — every client
        when ``max_batch`` is 1 — is offered its reply's routing frame *first* and rendered only if there is
        room, alone; otherwise its landmarks are dropped unrendered (``not_rendered``).
        """
        ready = [c for c in self._clients.values() if c.pending is not None]
        if not ready:
            return
        self.counters["rounds"] += 1
        k = self._rr % len(ready)
        self._rr += 1
        batch: list[tuple[_Client, _Pending]] = []
        strict = self.limits.max_batch == 1
        for client in ready[k:] + ready[:k]:
            p, client.pending = client.pending, None
            if not (client.blocked or strict):
                batch.append((client, p))
                continue
            if self._offer(client.rid) != _OK:   # room for the reply? Only then is the frame made.
                self.counters["not_rendered"] += 1
                self._drop(client)
                continue
            client.blocked = False
            (reply, is_frame), = self._render([(client, p)])
            self._sock.send(reply, zmq.NOBLOCK)   # the routing frame went out above: this part cannot fail
            self._sent(client, is_frame)
        for i in range(0, len(batch), self.limits.max_batch):
            chunk = batch[i:i + self.limits.max_batch]
            for (client, _), (reply, is_frame) in zip(chunk, self._render(chunk)):
                if self._offer(client.rid) == _OK:
                    self._sock.send(reply, zmq.NOBLOCK)
                    self._sent(client, is_frame)
                    continue
                self.counters["undeliverable"] += 1
                client.blocked = True
                if is_frame:
                    self._drop(client)

    def _sent(self, client: _Client, is_frame: bool) -> None:
        if is_frame:
            client.frames += 1
            self.counters["frames"] += 1
            self._interval_frames += 1

    def _render(self, work: list[tuple[_Client, _Pending]]) -> list[tuple[bytes, bool]]:
        """The replies to pending landmarks, one batched engine call for all: (payload, is it a frame?).

        When the batched call fails, every item is retried alone, so one bad input fails only its own client."""
        try:
            results = step_sessions(self.engine, [(c.session, p.landmarks) for c, p in work])
        except Exception:  # noqa: BLE001 - find out whose it was, one by one
            if len(work) == 1:
                return [self._frame_or_error(*work[0])]
            return [self._frame_or_error(c, p) for c, p in work]
        if len(self._interval_engine_ms) < 100_000:
            self._interval_engine_ms.append(results[0][1]["engine"] / len(results))
        out = []
        for (client, p), (rgb, t) in zip(work, results):
            try:
                out.append((self._encode_frame(client, p, rgb, t), True))
            except Exception as e:  # noqa: BLE001
                out.append((self._internal_error(client, p, e), False))
        return out

    def _frame_or_error(self, client: _Client, p: _Pending) -> tuple[bytes, bool]:
        """The reply to one pending landmarks message, on its own: its frame, or an error (counted, logged)."""
        try:
            rgb, t = client.session.step(p.landmarks, p.seq)
            if len(self._interval_engine_ms) < 100_000:
                self._interval_engine_ms.append(t["engine"])
            return self._encode_frame(client, p, rgb, t), True
        except ProtocolError as e:
            self.counters["errors"] += 1
            return P.encode(P.Error(code=e.code, reason=e.reason, seq=e.seq)), False
        except Exception as e:  # noqa: BLE001
            return self._internal_error(client, p, e), False

    def _internal_error(self, client: _Client, p: _Pending, e: Exception) -> bytes:
        self.counters["internal_errors"] += 1
        self.counters["errors"] += 1
        self.log.error("internal error generating frame %d for %s", p.seq, client.label, exc_info=e)
        return P.encode(P.Error(code=ErrorCode.INTERNAL, reason=f"server error generating the frame: "
                                                                f"{type(e).__name__}", seq=p.seq))

    def _encode_frame(self, client: _Client, p: _Pending, rgb: np.ndarray, t: dict) -> bytes:
        t0 = time.perf_counter()
        cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR, dst=self._bgr)
        ok, jpeg = cv2.imencode(".jpg", self._bgr, self._jpeg_params)
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        t1 = time.perf_counter()
        timings = {"decode": p.decode_ms, "render": t["render"], "engine": t["engine"],
                   "encode": t["post"] + _ms(t0, t1), "total": _ms(p.t_recv, t1)}
        if p.lead_ms > 0:
            self._interval_lead_ms.append(p.lead_ms)
        return P.encode(P.Frame(seq=p.seq, capture_ts=p.capture_ts, jpeg=jpeg.tobytes(), timings=timings,
                                dropped=client.dropped, lead_ms=p.lead_ms), client.version)

    def _expire(self, now: float) -> None:
        for rid, client in list(self._clients.items()):
            idle = now - client.last_seen
            if idle > self.idle_timeout_s:
                self._free(rid, f"expired after {idle:.1f}s without a message", expired=True)

    def _log_stats(self, elapsed: float) -> None:
        frames, dropped, eng = self._interval_frames, self._interval_dropped, self._interval_engine_ms
        if frames or dropped or self._clients:
            p50 = float(np.median(eng)) if eng else float("nan")
            c = self.stats()
            lead = self._interval_lead_ms
            self.log.info("stats: %d client(s), %d connection(s), %.1f frames/s, %d dropped, p50 engine %.1f ms, "
                          "%d errors, %d connections paused for their rate, %d auth failures total%s",
                          len(self._clients), c["open_connections"], frames / max(elapsed, 1e-9), dropped, p50,
                          c["errors"], c["paused"], c["auth_failures"],
                          f"; {len(lead)} frames forecast, p50 {float(np.median(lead)):.0f} ms ahead" if lead else "")
        self._interval_frames = self._interval_dropped = 0
        self._interval_engine_ms = []
        self._interval_lead_ms = []


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
