"""Every limit of a posecast server in one place: the network front (realtime/front.py) and the session loop
(realtime/server.py) read their own fields of the same ``Limits``; the ones clients need are announced in the
``Welcome`` (docs/protocol.md).

Units are in the names (``_s`` seconds, ``_hz`` per second, ``_bytes``). Frame and byte budgets are enforced by
*reading slower*: a connection over its budget is simply not read until the budget refills, so TCP flow control
holds its excess in its own socket buffers — it costs the server no memory and no CPU, and nothing it sent is
dropped.
"""

from __future__ import annotations

import dataclasses

KIB = 1 << 10
MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Limits:
    # -- sessions (realtime/server.py) -------------------------------------------------------------------
    max_clients: int = 16                  # live sessions, all clients together (more get server_busy)
    sessions_per_key: int = 4              # live sessions per client key (CURVE); a new one takes over the oldest
    heartbeat_s: float = 1.0               # clients send something (a ping when idle) at least this often
    idle_timeout_s: float = 2.0            # a session silent for this long is freed (heartbeat + 1 s)
    send_hwm: int | None = None            # reply queue per connection, messages (ZMQ_SNDHWM); > rate_burst, so
    #                                        a burst within the rate always has room for its replies (None: 2x it)
    max_drain: int = 64                    # messages read per loop iteration before the engine round
    max_batch: int = 16                    # sessions per engine call (1: one call per session)
    # -- connections (realtime/front.py) -----------------------------------------------------------------
    max_connections: int = 1024            # open connections; a newcomer beyond it closes the oldest session-less one
    max_connections_per_address: int = 128  # ... the same rule within one source address (at most max_connections)
    greeting_timeout_s: float = 2.0        # a connection must start its ZMTP greeting within this (else closed)
    handshake_timeout_s: float = 5.0       # ... and hold a session within this of opening (or of losing one)
    rate_hz: float = 120.0                 # ZMTP frames per second per connection (token bucket) ...
    rate_burst: int = 32                   # ... of this depth; a connection over it is read slower, nothing dropped
    bytes_per_s: float = 1.0 * MIB         # bytes per second per connection (token bucket) ...
    bytes_burst: int = 256 * KIB           # ... of this depth (>= 4 messages of the largest size)
    recv_window: int = 64                  # messages of a connection on their way to the session loop, unread;
    #                                        beyond it the connection is not read (what RCVHWM did, minus the abort)
    sessionless_window: int = 8            # ... of a connection without a session
    sessionless_frames: int = 64           # frames a connection may send before it holds a session (hello, and a
    #                                        client's backlog after a server restart); refilled when it loses one
    sessionless_bytes: int = 512 * KIB     # ... bytes likewise
    sessionless_max_message_bytes: int = 8 * KIB  # a larger frame before hello closes the connection (a 478-point
    #                                               face is 5.8 KiB)
    sessionless_rate_hz: float = 1000.0    # frames per second of all session-less connections together; when short,
    #                                        the connections that sent least go first
    out_buffer_bytes: int = 256 * KIB      # replies held for a slow reader; beyond it the server's queue fills
    link_timeout_s: float = 5.0            # the server's socket must take a new connection over within this
    sndbuf_bytes: int = 0                  # kernel send buffer per client connection (SO_SNDBUF; 0: the OS default)

    def __post_init__(self):
        for name in ("max_clients", "sessions_per_key", "max_connections", "max_connections_per_address",
                     "rate_burst", "reply_queue", "recv_window", "sessionless_window", "max_drain", "max_batch", "bytes_burst", "sessionless_frames",
                     "sessionless_bytes", "sessionless_max_message_bytes", "out_buffer_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("rate_hz", "bytes_per_s", "sessionless_rate_hz", "heartbeat_s", "idle_timeout_s",
                     "greeting_timeout_s", "handshake_timeout_s", "link_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if int(self.sndbuf_bytes) < 0:
            raise ValueError(f"sndbuf_bytes must be >= 0, got {self.sndbuf_bytes}")
        if self.idle_timeout_s <= self.heartbeat_s:
            raise ValueError(f"idle_timeout_s ({self.idle_timeout_s}) must exceed heartbeat_s ({self.heartbeat_s}): "
                             f"a client that pings on time must never expire")
        if self.reply_queue <= self.rate_burst:
            raise ValueError(f"send_hwm ({self.reply_queue}) must exceed rate_burst ({self.rate_burst}): a burst "
                             f"within the rate must always have room for its replies")

    @property
    def reply_queue(self) -> int:
        """The reply queue per connection: ``send_hwm``, or twice ``rate_burst`` when that is None."""
        return int(self.send_hwm) if self.send_hwm is not None else 2 * int(self.rate_burst)


class TokenBucket:
    """A token bucket (``rate`` per second, ``depth`` deep), full at start; times are monotonic seconds. The front
    reads connections slower with it (realtime/front.py); the web bridge drops a page's excess (clients/web)."""
    __slots__ = ("rate", "depth", "tokens", "t")

    def __init__(self, rate: float, depth: float, now: float):
        self.rate, self.depth, self.tokens, self.t = float(rate), float(depth), float(depth), now

    def refill(self, now: float) -> float:
        self.tokens = min(self.depth, self.tokens + (now - self.t) * self.rate)
        self.t = now
        return self.tokens

    def wait_s(self, need: float) -> float:
        """Seconds until ``need`` tokens are there (after a refill)."""
        return max(0.0, (need - self.tokens) / self.rate)

    def take(self, now: float) -> bool:
        """Spend one token if there is one (after a refill)."""
        if self.refill(now) >= 1.0:
            self.tokens -= 1.0
            return True
        return False
