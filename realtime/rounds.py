"""The engine round: one frame for every session with pending landmarks and room for the reply, in batched
engine calls, replies round-robin, every reply delivered or counted.

Clients whose last reply went out are rendered together, ``max_batch`` per engine call; the reply is offered
afterwards, and a client whose queue turns out to be full is marked ``blocked`` (that one frame is counted
``undeliverable``). A blocked client — every client when ``max_batch`` is 1 — is offered its reply's routing
frame *first* and rendered only if there is room, alone; otherwise its landmarks are dropped unrendered
(``not_rendered``). When a batched call fails, every item is retried alone, so one bad input fails only its own
client; an unexpected exception is answered ``internal`` and logged.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from realtime import protocol as P
from realtime.codec import JpegEncoder
from realtime.connections import ConnectionTable
from realtime.counters import Interval, ServerCounters
from realtime.protocol import ErrorCode, ProtocolError
from realtime.registry import Client, Pending, SessionRegistry
from realtime.session import step_sessions


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000.0


class EngineRound:
    def __init__(self, engine, registry: SessionRegistry, conns: ConnectionTable, *, max_batch: int,
                 encoder: JpegEncoder, counters: ServerCounters, interval: Interval, log: logging.Logger):
        self.engine, self.registry, self.conns = engine, registry, conns
        self.max_batch, self.encode = int(max_batch), encoder
        self.counters, self.interval, self.log = counters, interval, log
        self._rr = 0

    def run(self) -> None:
        """One round (see the module docstring); nothing to do when no session has pending landmarks."""
        ready = self.registry.ready()
        if not ready:
            return
        self.counters.rounds += 1
        k = self._rr % len(ready)
        self._rr += 1
        batch: list[tuple[Client, Pending]] = []
        strict = self.max_batch == 1
        for client in ready[k:] + ready[:k]:
            p, client.pending = client.pending, None
            if not (client.blocked or strict):
                batch.append((client, p))
                continue
            if not self.conns.offer(client.rid):   # room for the reply? Only then is the frame made.
                self.counters.not_rendered += 1
                self.registry.drop(client)
                continue
            client.blocked = False
            (reply, is_frame), = self._render([(client, p)])
            self.conns.finish(reply)
            self._sent(client, is_frame)
        for i in range(0, len(batch), self.max_batch):
            chunk = batch[i:i + self.max_batch]
            for (client, _), (reply, is_frame) in zip(chunk, self._render(chunk)):
                if self.conns.offer(client.rid):
                    self.conns.finish(reply)
                    self._sent(client, is_frame)
                    continue
                self.counters.undeliverable += 1
                client.blocked = True
                if is_frame:
                    self.registry.drop(client)

    def _sent(self, client: Client, is_frame: bool) -> None:
        if is_frame:
            client.frames += 1
            self.counters.frames += 1
            self.interval.frames += 1

    def _render(self, work: list[tuple[Client, Pending]]) -> list[tuple[bytes, bool]]:
        """The replies to pending landmarks, one batched engine call for all: (payload, is it a frame?)."""
        try:
            results = step_sessions(self.engine, [(c.session, p.landmarks) for c, p in work])
        except Exception:  # noqa: BLE001 - find out whose it was, one by one
            return [self._frame_or_error(c, p) for c, p in work]
        self.interval.engine(results[0][1]["engine"] / len(results))
        out = []
        for (client, p), (rgb, t) in zip(work, results):
            try:
                out.append((self._frame(client, p, rgb, t), True))
            except Exception as e:  # noqa: BLE001
                out.append((self._internal_error(client, p, e), False))
        return out

    def _frame_or_error(self, client: Client, p: Pending) -> tuple[bytes, bool]:
        """The reply to one pending landmarks message, on its own: its frame, or an error (counted, logged)."""
        try:
            rgb, t = client.session.step(p.landmarks, p.seq)
            self.interval.engine(t["engine"])
            return self._frame(client, p, rgb, t), True
        except ProtocolError as e:
            self.counters.errors += 1
            return P.encode(P.Error(code=e.code, reason=e.reason, seq=e.seq)), False
        except Exception as e:  # noqa: BLE001
            return self._internal_error(client, p, e), False

    def _internal_error(self, client: Client, p: Pending, e: Exception) -> bytes:
        self.counters.internal_errors += 1
        self.counters.errors += 1
        self.log.error("internal error generating frame %d for %s", p.seq, client.label, exc_info=e)
        return P.encode(P.Error(code=ErrorCode.INTERNAL, reason=f"server error generating the frame: "
                                                                f"{type(e).__name__}", seq=p.seq))

    def _frame(self, client: Client, p: Pending, rgb: np.ndarray, t: dict) -> bytes:
        t0 = time.perf_counter()
        jpeg = self.encode(rgb)
        t1 = time.perf_counter()
        timings = {"decode": p.decode_ms, "render": t["render"], "engine": t["engine"],
                   "encode": t["post"] + _ms(t0, t1), "total": _ms(p.t_recv, t1)}
        if p.lead_ms > 0:
            self.interval.lead(p.lead_ms)
        return P.encode(P.Frame(seq=p.seq, capture_ts=p.capture_ts, jpeg=jpeg, timings=timings,
                                dropped=client.dropped, lead_ms=p.lead_ms), client.version)
