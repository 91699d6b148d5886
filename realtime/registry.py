"""The session registry: one :class:`Client` (its generator :class:`~realtime.session.Session`, its pending
landmarks, its counts) per connection that said hello. It opens sessions (``max_clients``, ``sessions_per_key``:
a key's newest connection takes over its oldest session), restarts one on a second hello, frees them (bye, a
closed connection, silence past ``idle_timeout_s``) and counts what each client lost."""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import numpy as np

from realtime import protocol as P
from realtime.connections import ConnectionTable
from realtime.counters import Interval, ServerCounters
from realtime.limits import Limits
from realtime.protocol import ErrorCode, ProtocolError
from realtime.session import Session, open_session


def short_id(rid: bytes) -> str:
    """What the log shows of a routing id: 8 hex digits of its hash, never the id itself."""
    return hashlib.blake2s(rid, digest_size=4).hexdigest()


@dataclasses.dataclass
class Pending:
    seq: int
    capture_ts: float
    landmarks: np.ndarray
    decode_ms: float
    t_recv: float          # perf_counter when the message came off the socket
    lead_ms: float = 0.0   # how far ahead the client forecast these landmarks (protocol 4; echoed)


@dataclasses.dataclass
class Client:
    rid: bytes             # the routing id of its connection's link (chosen by the server, one per connection)
    key: str               # authenticated CURVE key (z85), "" without CURVE
    key_name: str          # the allow-list file name of the key, "" without CURVE
    name: str
    session: Session
    last_seen: float       # monotonic time of the client's last message
    created: float
    version: int           # the protocol version of the session
    pending: Pending | None = None
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


class SessionRegistry:
    """Every live session, by routing id; see the module docstring. ``key_names``: allow-list file name by CURVE
    key (empty without CURVE)."""

    def __init__(self, engine, history: str, limits: Limits, conns: ConnectionTable, counters: ServerCounters,
                 interval: Interval, key_names: dict[str, str], log: logging.Logger):
        self.engine, self.history, self.limits, self.conns = engine, history, limits, conns
        self.counters, self.interval, self.key_names, self.log = counters, interval, key_names, log
        self.clients: dict[bytes, Client] = {}

    def __len__(self) -> int:
        return len(self.clients)

    def get(self, rid: bytes) -> Client | None:
        return self.clients.get(rid)

    def has_pending(self) -> bool:
        return any(c.pending is not None for c in self.clients.values())

    def ready(self) -> list[Client]:
        return [c for c in self.clients.values() if c.pending is not None]

    def hello(self, rid: bytes, client: Client | None, key: str, msg: P.Hello, now: float) -> int:
        """Open a session for ``rid`` (or restart ``client``'s); returns the negotiated protocol version. Raises
        ``ProtocolError`` (bad_version, server_busy)."""
        version = P.negotiate(msg)
        name = msg.client[:256]
        if client is not None:  # hello again: start over with a fresh history and counters
            client.name = client.session.name = name
            client.version = version
            client.pending = None
            client.dropped = client.frames = 0
            client.session.reset()
            self.log.info("client %s said hello again: session restarted", client.label)
            return version
        if key:  # the same key may reconnect: its oldest session beyond the per-key limit is taken over
            own = sorted((c for c in self.clients.values() if c.key == key), key=lambda c: c.created)
            for old in own[:max(0, len(own) - self.limits.sessions_per_key + 1)]:
                self.counters.takeovers += 1
                self.free(old.rid, "taken over by a new connection with the same key")
        if len(self.clients) >= self.limits.max_clients:
            raise ProtocolError(ErrorCode.SERVER_BUSY,
                                f"server busy: {len(self.clients)} of {self.limits.max_clients} clients connected")
        client = Client(rid=rid, key=key, key_name=self.key_names.get(key, "?") if key else "", name=name,
                        version=version, session=open_session(self.engine, name, self.history), last_seen=now,
                        created=now)
        self.clients[rid] = client
        self.conns.session(rid, True)
        self.counters.connects += 1
        self.log.info("client %s connected; %d client(s)", client.label, len(self.clients))
        return version

    def landmarks(self, client: Client, pending: Pending) -> None:
        """New landmarks for ``client``: latest wins (older pending ones will never be rendered: dropped)."""
        if client.pending is not None:
            self.drop(client)
        client.pending = pending

    def reset(self, client: Client) -> None:
        if client.pending is not None:       # landmarks sent before the reset belong to the old history
            self.drop(client)
            client.pending = None
        client.session.reset()

    def drop(self, client: Client) -> None:
        client.dropped += 1
        self.counters.dropped += 1
        self.interval.dropped += 1

    def free(self, rid: bytes, why: str, *, expired: bool = False) -> None:
        client = self.clients.pop(rid, None)
        if client is None:
            return
        self.counters.disconnects += 1
        if expired:
            self.counters.expired += 1
        self.conns.session(rid, False)
        self.log.info("client %s: session freed (%s) after %d frames (%d dropped); %d client(s)", client.label, why,
                      client.frames, client.dropped, len(self.clients))

    def expire(self, now: float) -> None:
        """Free the sessions silent for more than ``idle_timeout_s``."""
        for rid, client in list(self.clients.items()):
            idle = now - client.last_seen
            if idle > self.limits.idle_timeout_s:
                self.free(rid, f"expired after {idle:.1f}s without a message", expired=True)

    def clear(self) -> None:
        self.clients.clear()
