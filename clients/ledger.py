"""The stream ledger of ``posecast capture``: which frames are outstanding, what became of each, and the
latencies measured on the way.

Pure bookkeeping: no sockets and no clock of its own (every time is passed in, ``*_s`` on a monotonic clock,
``*_wall_s`` / ``capture_ts`` on the wall clock), so every rule below is tested without a server
(tests/test_ledger.py).

A frame is *outstanding* from :meth:`StreamLedger.record_send` until

- a reply (frame or error) with a sequence number >= its own arrives: the server answers in order and keeps
  only the newest landmarks of a client (latest-wins), so every older outstanding frame was answered or
  dropped; or
- the server's ``dropped`` count accounts for it: of the frames sent in this session, those neither answered
  nor counted as dropped are the only ones that can still be outstanding; or
- the session ends (:meth:`StreamLedger.end_session`: the server went away, or the stream is over): what is
  still outstanding is *lost*; or
- the server answers ``no_session`` (it restarted, or expired the session: :meth:`StreamLedger.session_lost`):
  the frames sent before that one went to a session that no longer exists and are *lost*; the ones after it are
  still answered, one by one (more ``no_session`` errors, until the client's new hello is read).

Counts, summed over sessions: ``sent = received + dropped + errors + lost`` for a well-behaved server (one
reply or one drop per frame). Replies the server never sends break it, on purpose visibly: a duplicate reply
or a frame reply whose JPEG cannot be decoded is counted twice (received, and received + error).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

STATS_WINDOW_S = 1.0        # the overlay's fps is measured over this window


@dataclasses.dataclass
class Outstanding:
    """A frame on the wire, waiting for its reply."""
    capture_ts: float               # capture time (wall clock, s)
    capture_to_send_ms: float
    panel: object = None            # what the view shows beside the reply (opaque here)
    landmarks: np.ndarray | None = None   # what the frame is rendered from (raw: before normalisation)


@dataclasses.dataclass
class FrameReply:
    """What :meth:`StreamLedger.record_frame` made of a frame reply."""
    frame: Outstanding | None       # the frame's own entry; None when it was not outstanding (unknown seq,
    #                                 a duplicate, a late frame of an ended session)
    glass_to_glass_ms: float        # reply received - capture time
    timings: dict                   # the server's per-stage timings (ms); {} when the reply had none


def _median(xs) -> float | None:
    return float(np.median(xs)) if len(xs) else None


class StreamLedger:
    """Outstanding frames, counts and latency samples of one capture run (all sessions of it).

    ``window_s``: the span over which :meth:`recent_fps` counts replies.
    """

    def __init__(self, window_s: float = STATS_WINDOW_S):
        self.window_s = float(window_s)
        self.pending: collections.OrderedDict[int, Outstanding] = collections.OrderedDict()  # by seq, oldest first
        self.sent = self.received = self.errors = self.lost = 0      # over the whole run
        self.error_reasons: dict[str, int] = {}                      # "code: reason" -> count
        self._dropped_before = 0                                     # server drops of the ended sessions
        self.sess_sent = self.sess_answered = self.sess_dropped = 0  # this session (the server counts per session)
        self.last_progress_s: float | None = None   # last reply, or first send while nothing was outstanding
        self.first_send_s: float | None = None
        self.last_recv_s: float | None = None
        self.glass_to_glass_ms: list[float] = []
        self.stages: dict[str, list[float]] = collections.defaultdict(list)  # stage -> samples, ms
        self._recv_times: collections.deque[float] = collections.deque()    # replies within window_s

    # -- counts -------------------------------------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        return len(self.pending)

    @property
    def dropped(self) -> int:
        """Server-reported drops, the current session's included."""
        return self._dropped_before + self.sess_dropped

    def stalled(self, now_s: float, timeout_s: float) -> bool:
        """Frames are outstanding and nothing came back for more than ``timeout_s``."""
        return bool(self.pending) and now_s - self.last_progress_s > timeout_s

    def sample(self, stage: str, ms: float) -> None:
        """A latency sample of a client-side stage (normalize, extract, decode, ...)."""
        self.stages[stage].append(ms)

    # -- sending ------------------------------------------------------------------------------------------
    def record_send(self, seq: int, capture_ts: float, capture_to_send_ms: float, now_s: float,
                    panel: object = None, landmarks: np.ndarray | None = None) -> None:
        """Frame ``seq`` went on the wire; ``panel`` and ``landmarks`` come back with its reply."""
        self.sample("capture_to_send", capture_to_send_ms)
        if not self.pending:
            self.last_progress_s = now_s
        self.pending[seq] = Outstanding(capture_ts, capture_to_send_ms, panel, landmarks)
        self.sess_sent += 1
        self.sent += 1
        if self.first_send_s is None:
            self.first_send_s = now_s

    # -- replies ------------------------------------------------------------------------------------------
    def record_frame(self, seq: int, capture_ts: float, server_dropped: int, timings, recv_wall_s: float,
                     now_s: float) -> FrameReply:
        """A frame reply: ``capture_ts`` as echoed by the server, ``server_dropped`` its drop count for this
        session, ``timings`` its stage timings (ms; anything but a dict counts as none)."""
        self.last_progress_s = now_s
        self.sess_answered += 1
        self.sess_dropped = max(self.sess_dropped, int(server_dropped))
        own = self._resolve(seq)
        self._account_drops()
        self.received += 1
        g2g = (recv_wall_s - capture_ts) * 1e3
        self.glass_to_glass_ms.append(g2g)
        self._note_receive(now_s)
        timings = timings if isinstance(timings, dict) else {}
        self._server_samples(g2g, own, timings)
        return FrameReply(own, g2g, timings)

    def record_error_reply(self, seq: int | None, reason: str, now_s: float) -> int:
        """An error reply (about frame ``seq``, or about none); returns :meth:`count_error`'s count."""
        self.last_progress_s = now_s
        if seq is not None:
            self.sess_answered += 1
            self._resolve(seq)
            self._account_drops()
        return self.count_error(reason)

    def count_error(self, reason: str) -> int:
        """One more error (a reply, or a reply the client could not use); returns how many with this reason
        came before it."""
        self.errors += 1
        n = self.error_reasons.get(reason, 0)
        self.error_reasons[reason] = n + 1
        return n

    def session_lost(self, seq: int | None) -> None:
        """The server answered frame ``seq`` with ``no_session``: older outstanding frames belonged to the session
        that is gone (lost); ``seq`` and newer ones will each get a reply of their own (call
        :meth:`record_error_reply` for ``seq`` next). The old session's drop count is banked."""
        if seq is not None:
            while self.pending and next(iter(self.pending)) < seq:
                self.pending.popitem(last=False)
                self.lost += 1
        self._dropped_before += self.sess_dropped
        self.sess_sent, self.sess_answered, self.sess_dropped = len(self.pending), 0, 0

    def end_session(self) -> None:
        """The session is over (server lost, reconnecting, or the end of the run): outstanding frames are
        lost and the server's drop count is banked."""
        self.lost += len(self.pending)
        self.pending.clear()
        self._dropped_before += self.sess_dropped
        self.sess_sent = self.sess_answered = self.sess_dropped = 0

    def _resolve(self, seq: int) -> Outstanding | None:
        """Everything up to ``seq`` is answered or dropped; returns ``seq``'s own entry."""
        own = None
        while self.pending:
            s = next(iter(self.pending))
            if s > seq:
                break
            p = self.pending.pop(s)
            if s == seq:
                own = p
        return own

    def _account_drops(self) -> None:
        """Frames the server's dropped count accounts for are no longer outstanding (the oldest go first)."""
        unexplained = self.sess_sent - self.sess_answered - self.sess_dropped
        while len(self.pending) > max(unexplained, 0):
            self.pending.popitem(last=False)

    def _note_receive(self, now_s: float) -> None:
        self.last_recv_s = now_s
        self._recv_times.append(now_s)
        while self._recv_times and self._recv_times[0] < now_s - self.window_s:
            self._recv_times.popleft()

    def _server_samples(self, g2g: float, own: Outstanding | None, timings: dict) -> None:
        """The server's stage timings, and ``wire``: glass-to-glass - capture->send - the server's total."""
        for k, v in timings.items():
            if isinstance(v, (int, float)):
                self.sample(f"server_{k}", float(v))
        total = timings.get("total")
        if own is not None and isinstance(total, (int, float)):
            self.sample("wire", g2g - own.capture_to_send_ms - float(total))
        self.sample("glass_to_glass", g2g)

    # -- summaries ----------------------------------------------------------------------------------------
    def recent_fps(self) -> float:
        """Replies per second over the last ``window_s`` (0 with fewer than two)."""
        t = self._recv_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    def totals(self) -> dict:
        """The run's figures, named as :class:`clients.capture.CaptureStats` fields."""
        out = {"frames_sent": self.sent, "frames_received": self.received, "dropped": self.dropped,
               "errors": self.errors, "lost": self.lost, "error_reasons": dict(self.error_reasons),
               "fps": 0.0, "latency_p50_ms": None, "latency_p99_ms": None,
               "stages": {k: _median(v) for k, v in self.stages.items() if len(v)}}
        if self.received and self.first_send_s is not None and self.last_recv_s is not None:
            span = self.last_recv_s - self.first_send_s
            out["fps"] = (self.received / span) if span > 0 else 0.0
        if self.glass_to_glass_ms:
            out["latency_p50_ms"] = float(np.percentile(self.glass_to_glass_ms, 50))
            out["latency_p99_ms"] = float(np.percentile(self.glass_to_glass_ms, 99))
        return out


class Lead:
    """How far ahead of its capture time a frame's landmarks are forecast: ``fixed_ms``, or (None) the median
    glass-to-glass latency of the last ``window`` replies (what the frame will be late by when it is shown; 0
    before the first reply), at most ``MAX_AUTO_MS`` (further ahead a forecast is worse than none)."""

    MAX_AUTO_MS = 300.0

    def __init__(self, fixed_ms: float | None = None, window: int = 30):
        self.fixed_ms, self.window = fixed_ms, int(window)

    def ms(self, ledger: StreamLedger) -> float:
        if self.fixed_ms is not None:
            return float(self.fixed_ms)
        recent = ledger.glass_to_glass_ms[-self.window:]
        return min(max(float(np.median(recent)), 0.0), self.MAX_AUTO_MS) if recent else 0.0
