"""The server's network front: it accepts every client connection itself and relays its bytes to the server's
ZeroMQ ROUTER over a private link that the ROUTER *connects to*, under a routing id the server chose.

Why not let the ROUTER accept connections, as ZeroMQ servers usually do? Because libzmq 4.3.5 (the version pyzmq
bundles) aborts the whole process on two states a peer can bring about, and no socket option prevents either:

* **A pre-claimed routing id.** A ROUTER takes the routing id a peer announces in its handshake, and invents
  ``00`` + a 32-bit counter for peers that announce none. The counter starts at an unseeded ``rand()`` (the
  same value, ``006b8b4567``, in every process) and is never checked against the ids peers claimed: a peer that
  claims the next generated id makes the ROUTER abort (``Assertion failed: ok (src/socket_base.cpp:2113)``,
  ``routing_socket_base_t::add_out_pipe``) as soon as any peer without an id connects.
  Here the ROUTER binds nothing: for each accepted connection it connects to a one-off link with
  ``ZMQ_CONNECT_ROUTING_ID`` set, and a locally initiated pipe takes that id and ignores what the peer claims.
  The server's ids are a counter that never repeats, so no id can be claimed twice.
* **A reset connection with unread input.** When a connection's queue to the ROUTER is full (``RCVHWM``),
  libzmq stops reading it; an error event on it then (the peer reset it) marks the engine ``_io_error``, and its
  next write (a ZMTP heartbeat or pong) aborts (``Assertion failed: !_io_error
  (src/stream_engine_base.cpp:310)``). Here the ROUTER's receive queues are unbounded (``RCVHWM`` 0), so libzmq
  never stops reading a link, and the server sends no ZMTP heartbeats; what bounds the queues instead is this
  front, which reads each client only as fast as its budget allows.

The front also owns everything that is about connections rather than sessions (realtime/limits.py):

* **Who gets in.** A connection must start its ZMTP 3 greeting within ``greeting_timeout_s`` and hold a session
  within ``handshake_timeout_s``. At ``max_connections`` (or ``max_connections_per_address`` for one address) a
  newcomer closes the oldest connection that holds no session — one that never sent a byte first — instead of
  being refused, so idle or half-open connections cannot lock anyone out. Idle connections cost one file
  descriptor each: the link to the ROUTER is made only once a connection has sent a valid ZMTP signature.
* **Budgets, by reading slower.** ZMTP frames (:class:`ZmtpMeter` counts them without buffering) and bytes, per
  connection (``rate_hz``/``rate_burst``, ``bytes_per_s``/``bytes_burst``). Before it holds a session a
  connection may send only ``sessionless_frames`` frames and ``sessionless_bytes`` bytes in all, no frame larger
  than ``sessionless_max_message_bytes``, and all session-less connections together share
  ``sessionless_rate_hz`` frames per second (when short, those that sent least go first). A connection over a
  budget is not read: its excess waits in its own socket buffers, and the server never sees a flood.
* **Replies** wait in a per-connection buffer (``out_buffer_bytes``) for a slow reader; beyond it the link is not
  read, the server's reply queue fills (``send_hwm``) and the server stops rendering for that client.

One thread, one ``selectors`` loop. The server thread talks to it through two queues with a doorbell each: the
front announces new links and closed connections (:meth:`events`), the server reports which connections hold a
session and asks for closes (:meth:`session`, :meth:`close_connection`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import heapq
import ipaddress
import logging
import os
import re
import secrets
import selectors
import socket
import struct
import sys
import tempfile
import threading
import time

from realtime.limits import Limits, TokenBucket

ZMTP_GREETING_BYTES = 64
ZMTP_SIGNATURE_BYTES = 10
READ_CHUNK = 64 * 1024
LOOP_TICK_S = 0.02          # the loop wakes at least this often (budget refills, deadlines)
ACCEPTS_PER_WAKE = 256      # connections accepted per readiness of the listening socket
LISTEN_BACKLOG = 4096       # the kernel caps it at net.core.somaxconn
DEFER_ACCEPT_S = 1          # TCP_DEFER_ACCEPT (Linux): silent connections reach accept() only after this
MIN_PAUSE_S = 0.001         # the shortest pause of a connection over its budget
ACCEPT_PAUSE_S = 0.05       # out of file descriptors: accept() is tried again after this


class ZmtpError(ValueError):
    """A byte stream that is not ZMTP 3 (the connection is closed)."""


class ZmtpMeter:
    """Walks a connection's ZMTP 3 byte stream (RFC 23/37: a 64-byte greeting, then frames of flags + 1- or 8-byte
    size + body) without buffering it, and tells how many bytes may go on when at most ``max_frames`` new frames
    and ``max_data`` new message frames may start.

    Every frame counts against ``max_frames`` (commands too: the handshake's, heartbeats). *Message* frames — what
    reaches the server as (a part of) a message: a data frame, or a CURVE ``MESSAGE`` command (or ``SUBSCRIBE`` /
    ``CANCEL``, which libzmq passes on too) — also count against ``max_data``, the connection's window of messages
    the server has not read yet. A command is charged as a message when it starts and refunded once its name
    shows it is not one, so the window is never overrun waiting for a name."""

    _MESSAGE_COMMANDS = (b"\x07MESSAGE", b"\x09SUBSCRIBE", b"\x06CANCEL")
    _NAME_BYTES = max(map(len, _MESSAGE_COMMANDS))

    def __init__(self):
        self.greeting = bytearray()     # the greeting bytes seen so far (up to 64)
        self.header = bytearray()       # a frame header split across reads
        self.body_left = 0              # bytes of the current frame's body still to come
        self.command = False            # the current frame is a command (its name decides whether it is a message)
        self.name = bytearray()         # the start of the current command's body, while its name is being read
        self.naming = False
        self.frames = 0                 # frames started
        self.largest = 0                # the largest frame size announced so far

    @property
    def in_greeting(self) -> bool:
        return len(self.greeting) < ZMTP_GREETING_BYTES

    def check_signature(self) -> None:
        """Raises :class:`ZmtpError` when the bytes seen so far cannot start a ZMTP 3 greeting."""
        g = self.greeting
        if g and g[0] != 0xFF:
            raise ZmtpError("not a ZeroMQ (ZMTP 3) connection")
        if len(g) >= ZMTP_SIGNATURE_BYTES and not g[9] & 0x01:
            raise ZmtpError("not a ZeroMQ (ZMTP 3) connection")
        if len(g) > ZMTP_SIGNATURE_BYTES and g[10] < 3:
            raise ZmtpError(f"ZMTP version {g[10]}: this server speaks ZMTP 3 (libzmq 4 or newer)")

    def _named(self) -> int:
        """The current command's name is complete (or its body ended): -1 to refund its charge if it is not a
        message, else 0."""
        self.naming = False
        name = bytes(self.name)
        return 0 if any(name.startswith(m) for m in self._MESSAGE_COMMANDS) else -1

    def scan(self, data, max_frames: int, max_data: int) -> tuple[int, int, int, str | None]:
        """(bytes of ``data`` that may go on, frames started, net message frames charged, why it stopped early:
        None, "frames" or "data"). Stops just before the flags byte of the first frame over an allowance."""
        n, pos, started, charged, stop = len(data), 0, 0, 0, None
        if self.in_greeting:
            take = min(n, ZMTP_GREETING_BYTES - len(self.greeting))
            self.greeting += bytes(data[:take])
            self.check_signature()
            pos = take
        while pos < n:
            if self.body_left:
                step = min(self.body_left, n - pos)
                if self.naming:
                    take = min(step, self._NAME_BYTES - len(self.name))
                    self.name += bytes(data[pos:pos + take])
                    if len(self.name) == self._NAME_BYTES or take == self.body_left:
                        charged += self._named()
                self.body_left -= step
                pos += step
                continue
            if not self.header:
                if started >= max_frames:
                    stop = "frames"
                    break
                if charged >= max_data:
                    stop = "data"
                    break
                started += 1
                charged += 1
                self.frames += 1
                self.command = bool(data[pos] & 0x04)
            self.header.append(data[pos])
            pos += 1
            need = 9 if self.header[0] & 0x02 else 2
            if len(self.header) == need:
                size = int.from_bytes(self.header[1:], "big")
                self.largest = max(self.largest, size)
                self.body_left = size
                self.header.clear()
                if self.command:
                    self.name.clear()
                    self.naming = True
                    if size == 0:
                        charged += self._named()
        return pos, started, charged, stop


NEW, LINKING, OPEN = "new", "linking", "open"
FOREVER = float("inf")


@dataclasses.dataclass(eq=False)
class _Conn:
    id: int
    rid: bytes                      # the server's routing id of this connection (never on the wire)
    sock: socket.socket
    addr: str                       # source address (the per-address limit's key); "local" for unix sockets
    opened: float                   # monotonic
    frames: TokenBucket
    bytes: TokenBucket
    state: str = NEW
    meter: ZmtpMeter = dataclasses.field(default_factory=ZmtpMeter)
    pending: bytearray = dataclasses.field(default_factory=bytearray)   # read, not yet cleared by the budgets
    cleared: bytearray = dataclasses.field(default_factory=bytearray)   # cleared, not yet written to the link
    out: bytearray = dataclasses.field(default_factory=bytearray)       # from the link, not yet written to the client
    link: socket.socket | None = None
    link_listener: socket.socket | None = None
    link_endpoint: str | None = None
    link_path: str | None = None    # a filesystem link socket to remove (platforms without abstract sockets)
    linking_since: float = 0.0
    has_session: bool = False
    sessionless_since: float = 0.0
    allowance_frames: int = 0       # frames / bytes it may still send without a session
    allowance_bytes: int = 0
    sent_frames: int = 0            # frames relayed so far (session-less fairness: who sent least goes first)
    inflight: int = 0               # message frames relayed that the server has not read yet (its window)
    resume_at: float | None = None  # not read until then (a budget refills); FOREVER: until it holds a session
    starved: bool = False           # waiting for the session-less pool
    awaiting_reads: bool = False    # its window is full: waiting for the server to read
    masks: tuple[int, int] = (0, 0)  # what the selector watches on (client, link)


@dataclasses.dataclass(frozen=True)
class NewLink:
    """Front -> server: connect the ROUTER to ``endpoint`` with routing id ``rid`` (connection ``conn``)."""
    conn: int
    rid: bytes
    endpoint: str


@dataclasses.dataclass(frozen=True)
class Closed:
    """Front -> server: connection ``conn`` (routing id ``rid``) is gone; free its session, drop the link."""
    conn: int
    rid: bytes
    endpoint: str | None
    why: str


def parse_bind(endpoint: str) -> tuple[int, object]:
    """(address family, socket address) of a ``tcp://HOST:PORT`` or ``ipc://PATH`` bind address.

    HOST: an IPv4 address, ``[IPv6]``, ``*`` (every IPv4 interface) or a host name; PORT: a number, ``0`` or
    ``*`` (a free port). ``ipc://@NAME`` is a Linux abstract socket."""
    if endpoint.startswith("ipc://"):
        if not hasattr(socket, "AF_UNIX"):
            raise ValueError(f"{endpoint}: ipc:// needs Unix domain sockets, which this platform lacks")
        path = endpoint[len("ipc://"):]
        if not path:
            raise ValueError(f"{endpoint}: ipc:// needs a path")
        return socket.AF_UNIX, ("\0" + path[1:] if path.startswith("@") else path)
    m = re.fullmatch(r"tcp://(.+):(\d+|\*)", endpoint)
    if not m:
        raise ValueError(f"cannot serve on {endpoint!r}: use tcp://HOST:PORT or ipc://PATH")
    host, port = m.group(1), 0 if m.group(2) == "*" else int(m.group(2))
    if not 0 <= port <= 65535:
        raise ValueError(f"{endpoint}: port {port} out of range")
    if host == "*":
        return socket.AF_INET, ("0.0.0.0", port)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), (str(ip), port)
    for family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            info = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
            if info:
                return family, info[0][4][:2]
    raise ValueError(f"cannot serve on {endpoint!r}: {host!r} is not an address of this machine")


def _endpoint_of(sock: socket.socket) -> str:
    """The ZeroMQ-style address a listening socket really has (the port filled in)."""
    if sock.family == getattr(socket, "AF_UNIX", None):
        name = sock.getsockname()
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        return "ipc://@" + name[1:] if name.startswith("\0") else f"ipc://{name}"
    host, port = sock.getsockname()[:2]
    return f"tcp://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"tcp://{host}:{port}"


def _fd_room(reserve: int = 128, per_connection: int = 3) -> int:
    """Connections the open-files limit leaves room for: each holds its client socket and both ends of its link
    (the ROUTER's end is in this process too)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 1 << 30
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (1 << 30) if soft == resource.RLIM_INFINITY else max(16, (soft - reserve) // per_connection)


def _peer_pid(sock: socket.socket) -> int | None:
    """The pid at the other end of a Unix socket (Linux SO_PEERCRED), or None where it cannot be read."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    with contextlib.suppress(OSError):
        pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i")))
        return pid
    return None


@dataclasses.dataclass
class FrontCounters:
    """The front's cumulative counters (``Server.stats()`` reports them beside the session loop's)."""
    connections: int = 0            # accepted
    connections_closed: int = 0
    connections_refused: int = 0    # closed at once: no room under the connection limits
    evicted: int = 0                # session-less connections closed for a newcomer
    greeting_timeouts: int = 0      # no ZMTP greeting within greeting_timeout_s
    handshake_timeouts: int = 0     # no session within handshake_timeout_s
    not_zmtp: int = 0               # bytes that are not a ZMTP greeting / frame
    oversized_sessionless: int = 0  # a frame over sessionless_max_message_bytes before hello
    link_timeouts: int = 0          # the server did not take a link over in time
    links: int = 0                  # links opened to the server
    paused: int = 0                 # times a connection was read slower (rate, budget, window, shared pool)


class Front:
    """See the module docstring. ``bind``: ``tcp://HOST:PORT`` or ``ipc://PATH`` (bound in the constructor, so a
    bad address fails early; ``endpoint`` is the real address). ``limits``: a :class:`~realtime.limits.Limits`.
    ``start()`` runs the loop on a daemon thread; ``close()`` stops it and closes every socket."""

    def __init__(self, bind: str, limits: Limits, *, log: logging.Logger | None = None):
        self.limits = limits
        self.log = log or logging.getLogger("posecast.server")
        family, addr = parse_bind(bind)
        lsock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_UNIX:
                if isinstance(addr, str) and not addr.startswith("\0") and os.path.exists(addr):
                    import stat
                    if stat.S_ISSOCK(os.stat(addr).st_mode):   # a stale socket of an earlier server, as libzmq does
                        os.unlink(addr)
            else:
                lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # restart at once after a stop
                if hasattr(socket, "TCP_DEFER_ACCEPT"):   # Linux: a connection that has not spoken yet is
                    #                         handed to accept() only after about a second (ZMTP clients speak first)
                    lsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_S)
            lsock.bind(addr)
            lsock.listen(LISTEN_BACKLOG)
            lsock.setblocking(False)
        except OSError as e:
            lsock.close()
            raise OSError(f"cannot bind the posecast server to {bind!r}: {e.strerror or e}") from None
        self._listener = lsock
        self._unix_path = addr if family == socket.AF_UNIX and not addr.startswith("\0") else None
        self.endpoint = _endpoint_of(lsock)
        self._sel = selectors.DefaultSelector()
        self._sel.register(lsock, selectors.EVENT_READ, "listen")
        # doorbells: the server rings the front's, the front rings the server's
        self._front_bell_r, self._front_bell_w = socket.socketpair()
        self._server_bell_r, self._server_bell_w = socket.socketpair()
        for s in (self._front_bell_r, self._front_bell_w, self._server_bell_r, self._server_bell_w):
            s.setblocking(False)
        self._sel.register(self._front_bell_r, selectors.EVENT_READ, "bell")
        self._commands: collections.deque = collections.deque()    # server -> front
        self._events: collections.deque = collections.deque()      # front -> server
        self._conns: dict[int, _Conn] = {}                          # by id, oldest first
        self._by_fd: dict[int, tuple[_Conn, str]] = {}             # fd -> (connection, "client" | "link" | ...)
        self._new: collections.OrderedDict[int, _Conn] = collections.OrderedDict()   # no byte yet, oldest first
        self._per_addr: collections.Counter = collections.Counter()
        self._timers: list = []                                      # heap of (resume_at, id, conn)
        self._starved: list = []                                     # heap of (sent_frames, id, conn)
        now = time.monotonic()
        self._pool = TokenBucket(limits.sessionless_rate_hz, limits.sessionless_rate_hz, now)  # session-less frames
        self._next_id = 1
        self._rid_prefix = b"\x01"      # ids the ROUTER would invent start with 0; ours never collide with them
        self._link_token = secrets.token_hex(6)
        self._link_dir = None if sys.platform.startswith("linux") else tempfile.mkdtemp(prefix="posecast-links-")
        self._accept_paused_until = 0.0
        self.max_connections = min(limits.max_connections, _fd_room())
        if self.max_connections < limits.max_connections:
            self.log.warning("max_connections %d lowered to %d: the open-files limit (ulimit -n) leaves room for "
                             "%d connections of 3 descriptors each", limits.max_connections, self.max_connections,
                             self.max_connections)
        self.max_per_address = min(limits.max_connections_per_address, self.max_connections)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.counters = FrontCounters()

    # -- the server thread's side --------------------------------------------------------------------------
    @property
    def doorbell(self) -> socket.socket:
        """Readable when :meth:`events` has something (read it empty with :meth:`events`)."""
        return self._server_bell_r

    def events(self) -> list:
        """New links and closed connections since the last call (:class:`NewLink`, :class:`Closed`)."""
        with contextlib.suppress(OSError):
            while self._server_bell_r.recv(4096):
                pass
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    def session(self, conn: int, held: bool) -> None:
        """Connection ``conn`` now holds a session (True) or no longer does (False)."""
        self._command(("session", conn, held))

    def close_connection(self, conn: int, why: str) -> None:
        self._command(("close", conn, why))

    def consumed(self, reads: dict[int, int]) -> None:
        """The server read ``reads[conn]`` message frames of each connection (its windows open again)."""
        if reads:
            self._command(("read", None, reads))

    def stats(self) -> dict:
        d = dataclasses.asdict(self.counters)
        d["open_connections"] = len(self._conns)
        return d

    def _command(self, cmd) -> None:
        self._commands.append(cmd)
        with contextlib.suppress(OSError):
            self._front_bell_w.send(b"\0")

    def _tell_server(self, event) -> None:
        self._events.append(event)
        with contextlib.suppress(OSError):
            self._server_bell_w.send(b"\0")

    # -- life ------------------------------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, name="posecast-front", daemon=True)
        self._thread = t
        t.start()
        return t

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._front_bell_w.send(b"\0")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        if self._closed:
            return
        self._closed = True
        for c in list(self._conns.values()):
            self._drop(c, "server stopped", tell=False)
        self._sel.close()
        for s in (self._listener, self._front_bell_r, self._front_bell_w, self._server_bell_r, self._server_bell_w):
            s.close()
        if self._unix_path:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)
        if self._link_dir:
            with contextlib.suppress(OSError):
                os.rmdir(self._link_dir)

    def _run(self) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = LOOP_TICK_S
            soonest = self._next_timer()
            if soonest is not None:
                timeout = min(timeout, max(0.0, soonest - now))
            for key, mask in self._sel.select(timeout):
                try:
                    self._dispatch(key, mask)
                except Exception:  # noqa: BLE001 - one connection's failure must never stop the front
                    self.log.exception("front: internal error on a connection")
                    item = self._by_fd.get(key.fd)
                    if item is not None and key.fileobj in (item[0].sock, item[0].link, item[0].link_listener):
                        self._drop(item[0], "internal error")
            self._take_commands()
            now = time.monotonic()
            self._resume(now)
            if self._accept_paused_until and now >= self._accept_paused_until:
                self._accept_paused_until = 0.0
                self._sel.register(self._listener, selectors.EVENT_READ, "listen")
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + LOOP_TICK_S * 5

    def _dispatch(self, key, mask: int) -> None:
        what = key.data
        if what == "listen":
            self._accept()
            return
        if what == "bell":
            with contextlib.suppress(OSError):
                while self._front_bell_r.recv(4096):
                    pass
            return
        c, role = self._by_fd.get(key.fd, (None, None))
        if c is None or key.fileobj not in (c.sock, c.link, c.link_listener):   # a stale event of a reused fd
            return
        if role == "link-listener":
            self._link_accept(c)
        elif role == "client":
            if mask & selectors.EVENT_WRITE:
                self._flush_out(c)
            if mask & selectors.EVENT_READ and c.id in self._conns:
                self._pump_in(c, time.monotonic())
        elif role == "link":
            if mask & selectors.EVENT_WRITE:
                self._pump_in(c, time.monotonic())
            if mask & selectors.EVENT_READ and c.id in self._conns:
                self._pump_out(c)
        if c.id in self._conns:
            self._sync(c)

    # -- accepting ---------------------------------------------------------------------------------------------
    def _accept(self) -> None:
        now = time.monotonic()
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, peer = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of file descriptors: make room by closing an idle connection, and stop watching the
                    # listener for a moment (it stays readable: watching it would spin)
                    self._evict(None)
                    self._accept_paused_until = now + ACCEPT_PAUSE_S
                    self._sel.unregister(self._listener)
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR):
                    continue
                raise
            self._admit(sock, peer, now)

    def _admit(self, sock: socket.socket, peer, now: float) -> None:
        """A new connection: one that already closed is dropped on the spot (a connect-and-close loop costs one
        read); one that already sent its signature skips the idle state (so a flood of idle connections never
        evicts it); the caps make room by evicting, or refuse."""
        lim = self.limits
        self.counters.connections += 1
        sock.setblocking(False)
        try:
            first = sock.recv(ZMTP_SIGNATURE_BYTES)
        except (BlockingIOError, InterruptedError):
            first = None
        except OSError:
            first = b""
        if first == b"":
            self.counters.connections_closed += 1
            sock.close()
            return
        addr = peer[0] if isinstance(peer, tuple) and peer else "local"
        if self._per_addr[addr] >= self.max_per_address and not self._evict(addr):
            self._refuse(sock)
            return
        if len(self._conns) >= self.max_connections and not self._evict(None):
            self._refuse(sock)
            return
        cid = self._next_id
        self._next_id += 1
        c = _Conn(id=cid, rid=self._rid_prefix + cid.to_bytes(8, "big"), sock=sock, addr=addr, opened=now,
                  frames=TokenBucket(lim.rate_hz, lim.rate_burst, now), bytes=TokenBucket(lim.bytes_per_s, lim.bytes_burst, now),
                  sessionless_since=now, allowance_frames=lim.sessionless_frames,
                  allowance_bytes=lim.sessionless_bytes)
        self._conns[cid] = c
        self._new[cid] = c
        self._per_addr[addr] += 1
        self._by_fd[sock.fileno()] = (c, "client")
        if first:
            c.bytes.tokens -= len(first)
            c.allowance_bytes -= len(first)
            self._greeting(c, first, now)
        if c.id in self._conns:
            self._sync(c)

    def _refuse(self, sock: socket.socket) -> None:
        self.counters.connections_refused += 1
        with contextlib.suppress(OSError):
            sock.close()

    def _evict(self, addr: str | None) -> bool:
        """Close the oldest connection without a session (one that never sent a byte first) of ``addr``
        (None: of any address); False when every one of them holds a session."""
        victim = next((c for c in self._new.values() if addr is None or c.addr == addr), None)
        if victim is None:   # the one without a session for longest (not a client that just lost one)
            victim = min((c for c in self._conns.values() if not c.has_session and (addr is None or c.addr == addr)),
                         key=lambda c: c.sessionless_since, default=None)
        if victim is None:
            return False
        self.counters.evicted += 1
        self._drop(victim, "evicted by a newer connection (connection limit)")
        return True

    # -- links -------------------------------------------------------------------------------------------------
    def _open_link(self, c: _Conn, now: float) -> None:
        """A listening socket only the server's ROUTER will connect to; the server is asked to connect."""
        sock = c.sock
        if sock.family in (socket.AF_INET, socket.AF_INET6):   # (set only now: idle connections cost less)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if self.limits.sndbuf_bytes:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.sndbuf_bytes)
        unix = hasattr(socket, "AF_UNIX")
        ls = socket.socket(socket.AF_UNIX if unix else socket.AF_INET, socket.SOCK_STREAM)
        try:
            if unix and self._link_dir is None:   # Linux: an abstract socket (nothing on disk)
                name = f"posecast-{os.getpid()}-{self._link_token}-{c.id}"
                ls.bind("\0" + name)
                endpoint = f"ipc://@{name}"
            elif unix:
                path = os.path.join(self._link_dir, f"{c.id}")
                ls.bind(path)
                c.link_path, endpoint = path, f"ipc://{path}"
            else:  # no Unix sockets: a loopback port (any local process could race the ROUTER to it)
                ls.bind(("127.0.0.1", 0))
                endpoint = f"tcp://127.0.0.1:{ls.getsockname()[1]}"
            ls.listen(4)
            ls.setblocking(False)
        except OSError as e:
            ls.close()
            self._drop(c, f"cannot open a link: {e}")
            return
        c.link_listener, c.state, c.linking_since = ls, LINKING, now
        self._new.pop(c.id, None)
        self._by_fd[ls.fileno()] = (c, "link-listener")
        self._sel.register(ls, selectors.EVENT_READ, None)
        c.link_endpoint = endpoint
        self.counters.links += 1
        self._tell_server(NewLink(c.id, c.rid, endpoint))

    def _link_accept(self, c: _Conn) -> None:
        while True:
            try:
                link, _ = c.link_listener.accept()
            except BlockingIOError:
                return
            except OSError:
                self._drop(c, "link failed")
                return
            pid = _peer_pid(link) if link.family == getattr(socket, "AF_UNIX", None) else None
            if pid is not None and pid != os.getpid():   # not the server's ROUTER: another local process raced it
                link.close()
                continue
            break
        ls = c.link_listener
        self._by_fd.pop(ls.fileno(), None)
        self._sel.unregister(ls)
        ls.close()
        c.link_listener = None
        if c.link_path:
            with contextlib.suppress(OSError):
                os.unlink(c.link_path)
        link.setblocking(False)
        if self.limits.sndbuf_bytes:
            with contextlib.suppress(OSError):
                link.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.limits.sndbuf_bytes)
        c.link, c.state = link, OPEN
        self._by_fd[link.fileno()] = (c, "link")
        self._sel.register(link, selectors.EVENT_READ, None)
        c.masks = (c.masks[0], selectors.EVENT_READ)
        self._pump_in(c, time.monotonic())

    # -- client -> server ----------------------------------------------------------------------------------------
    def _pump_in(self, c: _Conn, now: float) -> None:
        """Move client bytes towards the link as far as the budgets allow; read more only when all went out."""
        if c.state == NEW:
            self._read_greeting(c, now)
            return
        while c.state == OPEN and c.id in self._conns:
            if c.cleared:
                try:
                    sent = c.link.send(c.cleared)
                except (BlockingIOError, InterruptedError):
                    return                              # the link is full: EVENT_WRITE brings us back
                except OSError:
                    self._drop(c, "the server closed the link")
                    return
                del c.cleared[:sent]
                if c.cleared:
                    return
            if c.pending:
                if not self._clear(c, now):
                    return
                continue
            data = self._read(c, now, READ_CHUNK)
            if not data:
                return
            c.pending += data

    def _read(self, c: _Conn, now: float, most: int) -> bytes:
        """Up to ``most`` bytes from the client within its byte budget; b"" when nothing may or can be read (the
        connection is then paused, waiting for readiness, or closed)."""
        n = int(c.bytes.refill(now))
        if not c.has_session:
            n = min(n, c.allowance_bytes)
        if n < 1:
            self._pause(c, now + c.bytes.wait_s(1) if c.has_session or c.allowance_bytes > 0 else FOREVER)
            return b""
        try:
            data = c.sock.recv(min(n, most))
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            self._drop(c, "connection reset by the client")
            return b""
        if not data:
            self._drop(c, "closed by the client")
            return b""
        c.bytes.tokens -= len(data)
        if not c.has_session:
            c.allowance_bytes -= len(data)
        return data

    def _read_greeting(self, c: _Conn, now: float) -> None:
        data = self._read(c, now, ZMTP_SIGNATURE_BYTES - len(c.pending))
        if data:
            self._greeting(c, data, now)

    def _greeting(self, c: _Conn, data: bytes, now: float) -> None:
        """The first bytes: once they are a valid ZMTP 3 signature, the server is asked to take the connection."""
        c.pending += data
        probe = ZmtpMeter()
        probe.greeting += c.pending
        try:
            probe.check_signature()
        except ZmtpError as e:
            self.counters.not_zmtp += 1
            self._drop(c, str(e))
            return
        if len(c.pending) >= ZMTP_SIGNATURE_BYTES:
            self._open_link(c, now)

    def _window(self, c: _Conn) -> int:
        return self.limits.recv_window if c.has_session else self.limits.sessionless_window

    def _clear(self, c: _Conn, now: float) -> bool:
        """Let pending bytes through the budgets; False when none could go (``c`` is then paused)."""
        allow = int(c.frames.refill(now))
        if not c.has_session:
            allow = min(allow, c.allowance_frames, int(self._pool.refill(now)))
        try:
            n, started, charged, stop = c.meter.scan(memoryview(c.pending), allow, self._window(c) - c.inflight)
        except ZmtpError as e:
            self.counters.not_zmtp += 1
            self._drop(c, str(e))
            return False
        if not c.has_session and c.meter.largest > self.limits.sessionless_max_message_bytes:
            self.counters.oversized_sessionless += 1
            self._drop(c, f"a {c.meter.largest}-byte message before hello (the limit without a session is "
                          f"{self.limits.sessionless_max_message_bytes})")
            return False
        c.inflight += charged
        if started:
            c.frames.tokens -= started
            c.sent_frames += started
            if not c.has_session:
                c.allowance_frames -= started
                self._pool.tokens -= started
        c.cleared += c.pending[:n]
        del c.pending[:n]
        if not c.pending:
            return True
        # stopped: wait for the server to read (window), its rate bucket, a session (allowance spent), or the pool
        if stop == "data":
            c.awaiting_reads = True
            self.counters.paused += 1
        elif c.frames.tokens < 1:
            self._pause(c, now + c.frames.wait_s(1))
        elif not c.has_session and c.allowance_frames < 1:
            self._pause(c, FOREVER)
        else:
            self._starve(c)
        return n > 0

    def _pause(self, c: _Conn, until: float) -> None:
        if c.resume_at is None and not c.starved:
            self.counters.paused += 1
        until = max(until, time.monotonic() + MIN_PAUSE_S)   # a budget a hair short waits a real while
        c.resume_at = until
        if until != FOREVER:
            heapq.heappush(self._timers, (until, c.id, c))

    def _starve(self, c: _Conn) -> None:
        if not c.starved:
            c.starved = True
            self.counters.paused += 1
            heapq.heappush(self._starved, (c.sent_frames, c.id, c))

    def _wake(self, c: _Conn, now: float) -> None:
        c.resume_at, c.starved, c.awaiting_reads = None, False, False
        if c.id in self._conns:
            self._pump_in(c, now)
            if c.id in self._conns:
                self._sync(c)

    def _next_timer(self) -> float | None:
        while self._timers and self._timers[0][2].resume_at != self._timers[0][0]:
            heapq.heappop(self._timers)               # stale: woken some other way, or paused again
        return self._timers[0][0] if self._timers else None

    def _resume(self, now: float) -> None:
        due = []                                      # (those paused again while waking wait for the next pass)
        while (t := self._next_timer()) is not None and t <= now:
            due.append(heapq.heappop(self._timers)[2])
        for c in due:
            if c.resume_at is not None and c.resume_at <= now:
                self._wake(c, now)
        while self._starved and self._pool.refill(now) >= 1:
            _, _, c = heapq.heappop(self._starved)
            if c.starved:
                self._wake(c, now)

    # -- server -> client ----------------------------------------------------------------------------------------
    def _pump_out(self, c: _Conn) -> None:
        room = self.limits.out_buffer_bytes - len(c.out)
        if room <= 0:
            return
        try:
            data = c.link.recv(min(room, READ_CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the server closed the link (refused key, oversized message, disconnect): flush and close
            self._flush_out(c)
            self._drop(c, "closed by the server")
            return
        c.out += data
        self._flush_out(c)

    def _flush_out(self, c: _Conn) -> None:
        if not c.out:
            return
        try:
            sent = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c, "connection reset by the client")
            return
        del c.out[:sent]

    # -- bookkeeping --------------------------------------------------------------------------------------------
    def _sync(self, c: _Conn) -> None:
        """Watch the client for reading when it may be read, for writing while replies wait; the link for
        reading while the reply buffer has room, for writing while client bytes wait for it."""
        if c.id not in self._conns:
            return
        idle = c.resume_at is None and not c.starved and not c.awaiting_reads
        want_read = idle and (c.state == NEW or (c.state == OPEN and not c.pending and not c.cleared))
        client = (selectors.EVENT_READ if want_read else 0) | (selectors.EVENT_WRITE if c.out else 0)
        link = 0
        if c.link is not None:
            link = ((selectors.EVENT_READ if len(c.out) < self.limits.out_buffer_bytes else 0)
                    | (selectors.EVENT_WRITE if c.cleared else 0))
        old_client, old_link = c.masks
        if client != old_client:
            self._watch(c.sock, old_client, client)
        if c.link is not None and link != old_link:
            self._watch(c.link, old_link, link)
        c.masks = (client, link)

    def _watch(self, sock: socket.socket, old: int, new: int) -> None:
        if old and new:
            self._sel.modify(sock, new)
        elif new:
            self._sel.register(sock, new)
        elif old:
            self._sel.unregister(sock)

    def _take_commands(self) -> None:
        now = time.monotonic()
        while self._commands:
            cmd, cid, arg = self._commands.popleft()
            if cmd == "read":
                self._credit(arg, now)
                continue
            c = self._conns.get(cid)
            if c is None:
                continue
            if cmd == "close":
                self._drop(c, arg)
            elif cmd == "session" and arg != c.has_session:
                c.has_session = arg
                if not arg:   # a fresh allowance to say hello again, and the handshake clock restarts
                    lim = self.limits
                    c.sessionless_since = now
                    c.allowance_frames, c.allowance_bytes = lim.sessionless_frames, lim.sessionless_bytes
                    c.meter.largest = 0       # (the size limit without a session counts from now)
                if (c.resume_at == FOREVER or (arg and c.starved)   # it was waiting for a session, or the pool,
                        or (c.awaiting_reads and c.inflight < self._window(c))):   # or a wider window
                    self._wake(c, now)
                self._sync(c)

    def _credit(self, reads: dict, now: float) -> None:
        """The server read these many message frames of these connections: their windows open again."""
        for cid, n in reads.items():
            c = self._conns.get(cid)
            if c is None:
                continue
            c.inflight = max(0, c.inflight - n)
            if c.awaiting_reads and c.inflight < self._window(c):
                self._wake(c, now)

    def _sweep(self, now: float) -> None:
        lim = self.limits
        while self._new:
            c = next(iter(self._new.values()))
            if now - c.opened <= lim.greeting_timeout_s:
                break
            self.counters.greeting_timeouts += 1
            self._drop(c, f"no ZeroMQ greeting within {lim.greeting_timeout_s:g}s")
        for c in list(self._conns.values()):
            if c.state == LINKING and now - c.linking_since > lim.link_timeout_s:
                self.counters.link_timeouts += 1
                self._drop(c, "the server did not take the connection over in time")
            elif not c.has_session and c.state != NEW and now - c.sessionless_since > lim.handshake_timeout_s:
                self.counters.handshake_timeouts += 1
                self._drop(c, f"no session within {lim.handshake_timeout_s:g}s")

    def _drop(self, c: _Conn, why: str, tell: bool = True) -> None:
        """Close a connection and its link; tell the server (which frees its session and its end of the link)."""
        if self._conns.pop(c.id, None) is None:
            return
        self._new.pop(c.id, None)
        c.resume_at, c.starved, c.awaiting_reads = None, False, False
        self._per_addr[c.addr] -= 1
        if self._per_addr[c.addr] <= 0:
            del self._per_addr[c.addr]
        self.counters.connections_closed += 1
        for sock in (c.sock, c.link, c.link_listener):
            if sock is None:
                continue
            self._by_fd.pop(sock.fileno(), None)
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(sock)
            with contextlib.suppress(OSError):
                sock.close()
        if c.link_path:
            with contextlib.suppress(OSError):
                os.unlink(c.link_path)
        self.log.debug("connection %d from %s closed: %s", c.id, c.addr, why)
        if tell and c.link_endpoint is not None:
            self._tell_server(Closed(c.id, c.rid, c.link_endpoint, why))
