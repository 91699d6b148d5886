"""The session loop's connection table: which link (routing id) is which front connection, who it is (the CURVE
key ZAP authenticated), and replies to it that never block.

The front (realtime/front.py) accepts connections and applies their limits; for each it opens a private link
that the server's ROUTER connects to under a routing id the server chose. This table takes the front's news
(a new link is connected, a closed connection's link is dropped and its session freed), reads identity off each
message (``User-Id``, never anything a peer says), tells the front what was read (its windows open again) and
which connections hold a session, and counts failed CURVE handshakes off the ROUTER's monitor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from realtime.counters import ServerCounters
from realtime.front import Closed, Front, NewLink


@dataclasses.dataclass
class Link:
    """One client connection, as the session loop sees it: the front's connection id and the link endpoint."""
    conn: int
    endpoint: str


class ConnectionTable:
    """Links of ``sock`` (the ROUTER) to ``front``'s connections; see the module docstring. ``secure``: keys come
    from CURVE (``User-Id``), else every client's key is ``""``."""

    def __init__(self, sock: zmq.Socket, front: Front, mon: zmq.Socket, counters: ServerCounters, *,
                 secure: bool, log: logging.Logger):
        self.sock, self.front, self.mon, self.counters = sock, front, mon, counters
        self.secure, self.log = secure, log
        self.links: dict[bytes, Link] = {}

    # -- the front's news --------------------------------------------------------------------------------
    def front_news(self, on_closed: Callable[[bytes, str], None]) -> None:
        """Connect new links; for a closed connection, ``on_closed(rid, why)`` (its session goes) and drop the
        link."""
        for ev in self.front.events():
            if isinstance(ev, NewLink):
                self.sock.setsockopt(zmq.CONNECT_ROUTING_ID, ev.rid)
                try:
                    self.sock.connect(ev.endpoint)
                except zmq.ZMQError as e:   # cannot happen for an endpoint the front just made; refuse it cleanly
                    self.log.error("cannot take connection %d over (%s): %s", ev.conn, ev.endpoint, e)
                    self.front.close_connection(ev.conn, "the server could not take it over")
                    continue
                self.links[ev.rid] = Link(ev.conn, ev.endpoint)
            elif isinstance(ev, Closed):
                on_closed(ev.rid, "its connection closed")
                link = self.links.pop(ev.rid, None)
                if link is not None:
                    with contextlib.suppress(zmq.ZMQError):   # already gone when libzmq saw the link close first
                        self.sock.disconnect(link.endpoint)

    def monitor(self) -> None:
        """Count the CURVE handshakes that failed authentication since the last call."""
        while True:
            try:
                ev = parse_monitor_message(self.mon.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.counters.auth_failures += 1

    # -- reading -----------------------------------------------------------------------------------------
    def identify(self, parts: list, reads: dict[int, int]) -> str | None:
        """The authenticated key of a message just read (``parts``: routing frame first), its frames counted in
        ``reads`` (by connection); None for a message to ignore (its connection already closed)."""
        link = self.links.get(parts[0].bytes)
        if link is None:
            self.counters.orphans += 1      # from a connection already closed
            return None
        reads[link.conn] = reads.get(link.conn, 0) + len(parts) - 1
        if not self.secure:
            return ""
        try:
            return parts[-1].get("User-Id")
        except zmq.ZMQError:  # cannot happen on a CURVE socket; refuse rather than guess
            return None

    def consumed(self, reads: dict[int, int]) -> None:
        self.front.consumed(reads)

    def session(self, rid: bytes, held: bool) -> None:
        """The connection of ``rid`` holds a session now (True) or no longer (False): the front's limits differ."""
        link = self.links.get(rid)
        if link is not None:
            self.front.session(link.conn, held)

    # -- replying ----------------------------------------------------------------------------------------
    def offer(self, rid: bytes) -> bool:
        """Start a reply to ``rid``: the routing-id frame (SNDMORE) is accepted only when that peer's queue has
        room. After True exactly one message part must follow (:meth:`finish`) before anything else is sent.

        ``EHOSTUNREACH`` is not proof that the peer is gone: libzmq also reports it for a live peer whose pipe
        is between its high- and low-water marks. Both it and ``EAGAIN`` mean "not now" (False, counted in
        ``send_failures``); a peer that is really gone is reported by the front.
        """
        try:
            self.sock.send(rid, zmq.SNDMORE | zmq.NOBLOCK)
            return True
        except zmq.Again:
            pass
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
        self.counters.send_failures += 1
        return False

    def finish(self, payload: bytes) -> None:
        """The message part after an accepted :meth:`offer` (the pipe took the routing frame: it cannot fail)."""
        self.sock.send(payload, zmq.NOBLOCK)

    def send(self, rid: bytes, payload: bytes) -> bool:
        """Send without ever blocking; a reply that cannot go out now (queue full, peer gone) is dropped."""
        if not self.offer(rid):
            return False
        self.finish(payload)
        return True
