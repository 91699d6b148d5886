"""The server's counters, typed: what ``Server.stats()`` reports (with the front's, realtime/front.py), and the
figures of the current stats interval (the periodic log line)."""

from __future__ import annotations

import dataclasses

MAX_SAMPLES = 100_000      # per stats interval: a long interval never grows without bound


@dataclasses.dataclass
class ServerCounters:
    """Cumulative, since the server started (the session loop's own; the front adds its connection counters)."""
    messages: int = 0          # messages read off the ROUTER
    frames: int = 0            # frames sent
    dropped: int = 0           # landmarks that got no frame (superseded, reset away, reply queue full)
    errors: int = 0            # error replies (bad input of any kind, internal errors)
    send_failures: int = 0     # replies whose routing frame found the peer's queue full (or the peer gone)
    internal_errors: int = 0   # exceptions on one client's message or frame (logged with the traceback)
    connects: int = 0          # sessions opened
    disconnects: int = 0       # sessions freed (bye, connection closed, expired, taken over)
    expired: int = 0           # ... of which for silence
    not_rendered: int = 0      # landmarks dropped unrendered because the client's reply queue was full
    undeliverable: int = 0     # frames rendered whose reply then found the queue full
    takeovers: int = 0         # sessions taken over by a newer connection with the same key
    auth_failures: int = 0     # CURVE handshakes refused (ZAP)
    orphans: int = 0           # messages of a connection already closed
    rounds: int = 0            # engine rounds

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Interval:
    """The current stats interval: reset after each stats line."""
    frames: int = 0
    dropped: int = 0
    engine_ms: list = dataclasses.field(default_factory=list)   # per-frame engine time of each round
    lead_ms: list = dataclasses.field(default_factory=list)     # leads of the forecast frames sent (protocol 4)

    def engine(self, ms: float) -> None:
        if len(self.engine_ms) < MAX_SAMPLES:
            self.engine_ms.append(ms)

    def lead(self, ms: float) -> None:
        if len(self.lead_ms) < MAX_SAMPLES:
            self.lead_ms.append(ms)
