"""``posecast capture``: camera / video / recording / synthetic dancer -> landmarks -> server -> live view.

Pipeline (one client, one server session)::

    source thread:  read frame -> MediaPipe (LandmarkExtractor, kind from the server's Welcome) -> queue
    main thread:    normalisation (models.posenorm.live_normalizer: the training crop, then with `retarget` the
                    training subject's body scale / face proportions) -> send Landmarks(seq, capture_ts) without
                    waiting
                    poll replies and the source queue: Frame -> decode JPEG -> compose input | output + status bar
                    -> window (when a display exists and not headless) and/or --record mp4

Sending never waits for replies (the server keeps only the newest landmarks of a client and reports how many
it dropped); ``max_in_flight`` only bounds how far ahead the client may get. A frame is *outstanding* until a reply with a sequence number >= its own arrives or the
server's ``dropped`` count accounts for it. When the server stops answering while frames are outstanding
(``timeout_s``), the client says so, reconnects (a fresh session, Lazy-Pirate style: close and reopen the
socket) and goes on; after ``retries`` failed reconnections it gives up with :class:`ServerLostError`.

Latencies (all in ms, medians in :class:`CaptureStats`): ``extract`` (MediaPipe), ``capture_to_send`` (capture
time -> landmarks on the wire), ``server_<stage>`` (the server's own timings: decode, render, engine, encode,
total), ``wire`` (glass-to-glass minus capture->send minus the server total: network + waiting in the server's
queue), ``decode`` (client JPEG decode) and ``glass_to_glass`` (reply received - capture time).

With ``capture(..., realtime=False)`` files are streamed in lock-step (one frame in flight), so every frame is
rendered; the source thread reads the next frame only when it can be sent at once, so nothing waits in a
client-side queue and glass-to-glass is the pipeline's own latency.

The input panel shows the source frame with the detected skeleton / face mesh drawn on it. ``--record`` writes
paced streams at wall-clock time (the previous view is repeated where replies were dropped, so the mp4 plays at
real speed) and lock-step streams one frame per reply.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import zmq

from clients.sources import Source, SourceError, SourceItem, open_source, save_recording
from realtime import protocol as P

DEFAULT_PORT = 5555
POLL_MS = 10                # the main loop wakes at least this often (replies and new frames wake it at once)
STATS_WINDOW_S = 1.0        # the overlay's fps is measured over this window
MIN_VIEW_HEIGHT = 256       # the composed view is enlarged to at least this height


class ServerLostError(ConnectionError):
    """The server stopped answering mid-stream and could not be reached again; ``stats`` holds the partial run."""

    def __init__(self, message: str, stats: "CaptureStats | None" = None):
        super().__init__(message)
        self.stats = stats


@dataclasses.dataclass
class CaptureStats:
    frames_sent: int = 0
    frames_received: int = 0
    dropped: int = 0                  # server-reported (latest-wins) drops, summed over sessions
    errors: int = 0                   # error replies (and undecodable replies / JPEGs)
    lost: int = 0                     # outstanding frames abandoned (server went away, or no reply at the end)
    record_repeats: int = 0           # --record: views repeated to keep the mp4 at wall-clock time
    reconnects: int = 0
    landmarks_found: int = 0          # frames with a detection (or given landmarks)
    fps: float = 0.0                  # received frames per second
    latency_p50_ms: float | None = None   # glass-to-glass
    latency_p99_ms: float | None = None
    stages: dict = dataclasses.field(default_factory=dict)         # per-stage medians, ms
    error_reasons: dict = dataclasses.field(default_factory=dict)  # "code: reason" -> count
    output: str | None = None         # the --record mp4
    landmarks_path: str | None = None  # the --save-landmarks recording
    duration_s: float = 0.0
    interrupted: bool = False         # stopped by q/Esc/Ctrl-C

    def summary(self) -> str:
        lat = (f"glass-to-glass p50 {self.latency_p50_ms:.1f} ms, p99 {self.latency_p99_ms:.1f} ms"
               if self.latency_p50_ms is not None else "no frames received")
        st = ", ".join(f"{k} {v:.1f}" for k, v in self.stages.items() if k != "glass_to_glass")
        lines = [f"sent {self.frames_sent}, received {self.frames_received}, dropped by server {self.dropped}, "
                 f"errors {self.errors}, lost {self.lost}, reconnects {self.reconnects}; "
                 f"{self.fps:.1f} fps over {self.duration_s:.1f} s",
                 lat]
        if st:
            lines.append(f"stage medians (ms): {st}")
        for reason, n in self.error_reasons.items():
            lines.append(f"  {n} x {reason}")
        if self.output:
            lines.append(f"recorded {self.output}")
        if self.landmarks_path:
            lines.append(f"landmarks saved to {self.landmarks_path}")
        return "\n".join(lines)


def server_address(server: str | int) -> str:
    """``tcp://HOST:PORT`` from ``tcp://HOST:PORT``, ``HOST:PORT``, ``HOST`` (port 5555) or a port number."""
    s = str(server).strip()
    if "://" in s:
        return s
    if s.isdigit():
        return f"tcp://127.0.0.1:{s}"
    if ":" not in s:
        return f"tcp://{s}:{DEFAULT_PORT}"
    return f"tcp://{s}"


def has_display() -> bool:
    """Whether an OpenCV window can be shown (X11/Wayland on Linux; assumed elsewhere)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _stderr_log(msg: str) -> None:
    print(f"[posecast capture] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Work:
    """A source item after landmark extraction (done in the source thread)."""
    item: SourceItem
    landmarks: np.ndarray | None
    extract_ms: float | None
    aspect: float


@dataclasses.dataclass
class _Pending:
    capture_ts: float
    capture_to_send_ms: float
    view: np.ndarray | None           # input panel (RGB) or None
    view_landmarks: np.ndarray | None  # landmarks to render as the input panel when there is no image


_END = object()


class _Reader(threading.Thread):
    """Reads the source and runs MediaPipe on images, feeding a small queue."""

    def __init__(self, source: Source, kind: str, max_frames: int | None, out: queue.Queue, wake: zmq.Socket,
                 extractor=None, demand: threading.Semaphore | None = None):
        super().__init__(name="posecast-capture-source", daemon=True)
        self.source, self.kind, self.max_frames, self.out = source, kind, max_frames, out
        self.wake = wake            # inproc PAIR (used by this thread only): wakes the main loop's poll at once
        self.stop = threading.Event()
        self.extractor = extractor  # built by the main thread (its start-up silences fd 2 for a moment)
        self.demand = demand        # lock-step (--fast): read the next item only when the main loop asks for it

    def _wait_demand(self) -> bool:
        if self.demand is None:
            return True
        while not self.stop.is_set():
            if self.demand.acquire(timeout=0.05):
                return True
        return False

    def _put(self, x) -> bool:
        while not self.stop.is_set():
            try:
                self.out.put(x, timeout=0.05)
            except queue.Full:
                continue
            try:
                self.wake.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            return True
        return False

    def run(self) -> None:
        try:
            n = 0
            items = iter(self.source)
            while not self.stop.is_set() and (self.max_frames is None or n < self.max_frames):
                if not self._wait_demand():
                    break
                item = next(items, None)
                if item is None:
                    break
                lm, ms = item.landmarks, None
                aspect = self.source.aspect or 1.0
                if lm is None and item.rgb is not None:
                    aspect = item.rgb.shape[1] / item.rgb.shape[0]
                    if self.extractor is None:
                        from models.detect import LandmarkExtractor
                        self.extractor = LandmarkExtractor(self.kind)
                    t = time.perf_counter()
                    lm = self.extractor(item.rgb)
                    ms = (time.perf_counter() - t) * 1e3
                if not self._put(_Work(item, lm, ms, aspect)):
                    break
                n += 1
            self._put(_END)
        except BaseException as e:  # handed to the main thread
            self._put(e)
        finally:
            if self.extractor is not None:
                self.extractor.close()
            self.wake.close(linger=0)


class _Display:
    """An OpenCV window; degrades to headless (with one message) when it cannot be opened."""

    def __init__(self, title: str, log: Callable[[str], None]):
        self.title, self.log, self.ok = title, log, True
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as e:
            log(f"cannot open a window ({str(e).strip().splitlines()[-1]}); running headless")
            self.ok = False
        self.shown = False

    def show(self, rgb: np.ndarray) -> None:
        if self.ok:
            cv2.imshow(self.title, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            self.shown = True

    def quit_requested(self) -> bool:
        if not self.ok:
            return False
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), ord("Q"), 27):
            return True
        if self.shown:
            try:
                return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
            except cv2.error:
                return True
        return False

    def close(self) -> None:
        if self.ok:
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass


def _status_bar(width: int, lines: list[str]) -> np.ndarray:
    """A dark strip with text lines (RGB uint8), placed under the panels so it never hides the images."""
    scale = 0.42
    step = 16
    bar = np.full((step * len(lines) + 8, width, 3), 24, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(bar, line, (6, step * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235), 1,
                    cv2.LINE_AA)
    return bar


def _median(xs) -> float | None:
    return float(np.median(xs)) if len(xs) else None


def normalize_mode(mode: bool | str) -> str:
    """A normalisation mode name from ``--normalize MODE`` (True / False: retarget / off, as ``--no-normalize``)."""
    from models.posenorm import NORMALIZE_MODES

    if mode is True:
        return "retarget"
    if mode is False:
        return "off"
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"unknown normalisation mode {mode!r}: expected one of {', '.join(NORMALIZE_MODES)}")
    return mode


_DRAW_POSE = (80, 255, 120)
_DRAW_FACE = (255, 235, 90)


def draw_landmarks(rgb: np.ndarray, landmarks: np.ndarray, kind: str) -> np.ndarray:
    """Draw the detected skeleton (pose: MediaPipe's connections between landmarks at least 0.5 visible) or face
    mesh contours onto ``rgb`` (in place; landmarks normalised to that image) and return it."""
    from models.landmarks import FACE_CONTOURS, POSE_CONNECTIONS

    h, w = rgb.shape[:2]
    lm = np.asarray(landmarks, np.float32)
    with np.errstate(invalid="ignore"):
        pts = np.nan_to_num(lm[:, :2] * (w, h), nan=-1e4).clip(-1e4, 1e4)
    ipts = np.round(pts * 16).astype(np.int32)
    thick = max(1, int(round(min(h, w) / 256)))
    if kind == "dance":
        ok = np.nan_to_num(lm[:, 2], nan=0.0) >= 0.5
        for a, b in sorted(POSE_CONNECTIONS):
            if ok[a] and ok[b]:
                cv2.line(rgb, tuple(ipts[a]), tuple(ipts[b]), _DRAW_POSE, thick, cv2.LINE_AA, 4)
        for i in np.flatnonzero(ok):
            cv2.circle(rgb, tuple(ipts[i]), 2 * 16 * thick, _DRAW_POSE, -1, cv2.LINE_AA, 4)
    else:
        ok = np.isfinite(lm[:, :2]).all(axis=1)
        lines = [ipts[list(line)] for group in FACE_CONTOURS.values() for line in group if ok[list(line)].all()]
        cv2.polylines(rgb, lines, False, _DRAW_FACE, thick, cv2.LINE_AA, 4)
    return rgb


# ------------------------------------------------------------------------------------------------------------
class CaptureClient:
    """A posecast client session over ZeroMQ (DEALER -> the server's ROUTER); see the module docstring.

    ``server``: ``tcp://HOST:PORT`` (or ``HOST:PORT``). ``timeout_s``: how long to wait for the Welcome, and for
    any reply while frames are outstanding. ``retries``: connection attempts (and mid-stream reconnections in a
    row) before giving up. ``normalize``: the normalisation mode (:data:`models.posenorm.NORMALIZE_MODES`:
    ``"retarget"``, ``"same-camera"``, ``"off"``; True / False mean retarget / off). ``max_in_flight``: at most this many frames outstanding (the
    client waits for replies before sending more). ``log``: where progress messages go (default stderr).
    """

    def __init__(self, server: str | int, *, timeout_s: float = 5.0, retries: int = 3,
                 normalize: bool | str = "retarget",
                 client_name: str = "posecast-capture", max_in_flight: int | None = 32, warmup_frames: int = 30,
                 log: Callable[[str], None] | None = None, context: zmq.Context | None = None,
                 server_key: str | os.PathLike | None = None, key: str | os.PathLike | None = None):
        if (server_key is None) != (key is None):
            raise ValueError("CURVE needs both the server's public key (--server-key) and this client's secret key "
                             "(--key)")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if retries < 1:
            raise ValueError(f"retries must be >= 1, got {retries}")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1 or None, got {max_in_flight}")
        self.address = server_address(server)
        self.timeout_s, self.retries = float(timeout_s), int(retries)
        self.normalize = normalize_mode(normalize)
        self.client_name = client_name
        self.max_in_flight = max_in_flight
        self.warmup_frames = int(warmup_frames)
        self.log = log or _stderr_log
        self.server_key, self.key = server_key, key
        if key is not None:  # fail now, in one line, on an unreadable key file
            from realtime.security import load_public, load_secret
            load_secret(key)
            load_public(server_key)
        self._ctx = context or zmq.Context.instance()
        self.last_send = time.monotonic()   # when anything was last sent (heartbeat: ping when idle)
        self._sock: zmq.Socket | None = None
        self.welcome: P.Welcome | None = None
        self._seq = 0
        self._session_frames = 0

    # -- connection -------------------------------------------------------------------------------------
    def _open(self) -> None:
        self._close_socket()
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        if self.key is not None:
            from realtime.security import apply_client_curve
            apply_client_curve(s, self.server_key, self.key)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.setsockopt(zmq.RCVHWM, 1000)
        s.connect(self.address)
        self._sock = s

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _send(self, msg) -> bool:
        try:
            self._sock.send(P.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            return False
        self.last_send = time.monotonic()
        return True

    def connect(self) -> P.Welcome:
        """Say hello and wait for the Welcome: ``retries`` tries of ``timeout_s`` each, reopening the socket
        between tries. Raises ``ConnectionError`` when no server answers (or it refuses us)."""
        busy = None
        for attempt in range(1, self.retries + 1):
            self._open()
            self._send(P.Hello(client=self.client_name, versions=list(P.SUPPORTED_VERSIONS)))
            deadline = time.monotonic() + self.timeout_s
            while (left := deadline - time.monotonic()) > 0:
                if not self._sock.poll(max(1, int(left * 1000))):
                    continue
                try:
                    msg = P.decode(self._sock.recv())
                except P.ProtocolError as e:
                    self.log(f"ignoring a malformed reply from {self.address}: {e}")
                    continue
                if isinstance(msg, P.Welcome):
                    if msg.version not in P.SUPPORTED_VERSIONS:
                        self._close_socket()
                        raise ConnectionError(f"the posecast server at {self.address} speaks protocol version "
                                              f"{msg.version}, this client {list(P.SUPPORTED_VERSIONS)}")
                    self.welcome = msg
                    self._session_frames = 0
                    return msg
                if isinstance(msg, P.Error):
                    if msg.code == P.ErrorCode.SERVER_BUSY:
                        busy = msg.reason
                        self.log(f"server at {self.address} is busy: {msg.reason} (try {attempt}/{self.retries})")
                        time.sleep(max(0.0, deadline - time.monotonic()))
                        break
                    self._close_socket()
                    raise ConnectionError(f"the posecast server at {self.address} refused the connection: "
                                          f"{msg.code}: {msg.reason}")
                # anything else (a late frame of an old session, a pong): ignore
            else:
                if attempt < self.retries:
                    self.log(f"no answer from {self.address} within {self.timeout_s:g} s "
                             f"(try {attempt}/{self.retries}); retrying")
            self._close_socket()
        if busy is not None:
            raise ConnectionError(f"the posecast server at {self.address} stayed busy after {self.retries} tries: "
                                  f"{busy}")
        hint = (" (with CURVE a server stays silent to keys it does not allow: is this client's public key in its "
                "--allow folder, and --server-key the server's?)" if self.key is not None else "")
        raise ConnectionError(f"no posecast server answered at {self.address} after {self.retries} "
                              f"{'try' if self.retries == 1 else 'tries'} ({self.timeout_s:.1f} s each) "
                              f"— is `posecast serve` running?{hint}")

    def close(self) -> None:
        """Say bye (frees the server session at once) and close the socket."""
        if self._sock is not None:
            self._send(P.Bye())
            self._close_socket()

    def __enter__(self) -> "CaptureClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- streaming --------------------------------------------------------------------------------------
    def run(self, source: Source, *, record: str | os.PathLike | None = None, headless: bool = False,
            save_landmarks: str | os.PathLike | None = None, max_frames: int | None = None,
            show: bool | None = None) -> CaptureStats:
        """Stream ``source`` through the server until it ends, ``max_frames`` were sent, or q/Esc/Ctrl-C.

        ``show``: open a window (default: when a display exists and not ``headless``). ``record``: write the
        composed view (input | output + status bar) to this mp4, headless or not. ``save_landmarks``: write the
        raw (un-normalised) landmarks of every frame taken from the source to this ``.npz`` recording (format:
        :mod:`clients.sources`).
        Returns :class:`CaptureStats`; raises :class:`ServerLostError` (with ``.stats``) when the server went
        away and did not come back within ``retries`` reconnections.
        """
        if self.welcome is None or self._sock is None:
            self.connect()
        elif self._session_frames:  # a new stream on a used session: start over (history and drop count)
            self.close()
            self.connect()
        welcome = self.welcome
        kind = welcome.kind
        if source.kind is not None and source.kind != kind:
            raise SourceError(f"{source.describe()} gives {source.kind!r} landmarks but the server's model is "
                              f"{kind!r}")
        if show is None:
            show = not headless and has_display()
        run = _Run(self, source, record=record, show=bool(show), save_landmarks=save_landmarks,
                   max_frames=max_frames)
        return run.go()


class _Run:
    """The state of one :meth:`CaptureClient.run`."""

    def __init__(self, client: CaptureClient, source: Source, *, record, show: bool, save_landmarks,
                 max_frames: int | None):
        self.c, self.source = client, source
        self.log = client.log
        self.record_path = Path(record) if record is not None else None
        self.save_path = Path(save_landmarks) if save_landmarks is not None else None
        self.max_frames = max_frames
        self.stats = CaptureStats()
        self.display = _Display(f"posecast capture - {client.address}", self.log) if show else None
        if self.display is not None and not self.display.ok:
            self.display = None
        self.writer = None
        self.record_size: tuple[int, int] | None = None
        self.record_last: np.ndarray | None = None   # the last view written (repeated to keep wall-clock time)
        self.record_written = 0
        self.record_t0 = 0.0
        self.record_fps = 0.0
        # paced (real-time) stream, or lock-step (--fast on a file/recording: every frame rendered, one at a time)
        self.paced = bool(source.live or source.realtime)
        self.normalizer = None
        # session state
        self.pending: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
        self.sess_sent = self.sess_answered = self.sess_dropped = 0
        self.last_progress = time.monotonic()
        self.reconnects_in_row = 0
        # measurements
        self.g2g: list[float] = []
        self.stage: dict[str, list[float]] = collections.defaultdict(list)
        self.recv_times: collections.deque[float] = collections.deque()
        self.first_send: float | None = None
        self.last_recv: float | None = None
        self.saved_lms: list[np.ndarray | None] = []
        self.saved_ts: list[float] = []
        self.aspect: float | None = None
        self.last_timings: dict = {}
        self.wake_rx: zmq.Socket | None = None
        self.ping_since: float | None = None   # when the oldest unanswered ping went out

    # -- helpers ----------------------------------------------------------------------------------------
    @property
    def want_view(self) -> bool:
        return self.display is not None or self.record_path is not None

    def _make_normalizer(self, aspect: float):
        """The landmark transform of the normalisation mode for this model (see models/posenorm.py)."""
        from models.posenorm import live_normalizer

        w = self.c.welcome
        fn, how = live_normalizer(w.kind, w.subject_stats, self.c.normalize, aspect=aspect,
                                  warmup=self.c.warmup_frames, fps=w.fps)
        self.log(f"normalisation {how}")
        return fn

    def _input_panel(self, p: _Pending, size: int) -> np.ndarray:
        if p.view is not None:
            return p.view
        from clients.sources import preview_image
        return preview_image(self.c.welcome.kind, p.view_landmarks, size)

    # -- sending ----------------------------------------------------------------------------------------
    def _send_work(self, w: _Work) -> None:
        item, raw = w.item, w.landmarks
        if self.aspect is None:
            self.aspect = w.aspect
            self.normalizer = self._make_normalizer(w.aspect)
        if raw is not None:
            self.stats.landmarks_found += 1
        t = time.perf_counter()
        lm = self.normalizer(raw) if self.normalizer is not None else raw
        self.stage["normalize"].append((time.perf_counter() - t) * 1e3)
        if w.extract_ms is not None:
            self.stage["extract"].append(w.extract_ms)
        if self.save_path is not None:
            self.saved_lms.append(None if raw is None else np.asarray(raw, np.float32))
            self.saved_ts.append(item.capture_ts)
        seq = self.c._seq
        num = self.c.welcome.num_landmarks
        if raw is not None and lm.shape[0] != num and not {lm.shape[0], num} <= {468, 478}:
            if self.stats.frames_sent == 0:
                self.log(f"warning: sending {lm.shape[0]} landmarks, the server expects {num}")
        msg = P.Landmarks.from_array(seq, item.capture_ts, lm, num)
        if not self.c._send(msg):  # the socket's queue is full: the server is not reading at all
            self.log(f"send queue full; frame {seq} not sent")
            return
        now = time.time()
        c2s = (now - item.capture_ts) * 1e3
        self.stage["capture_to_send"].append(c2s)
        view = vlm = None
        if self.want_view:
            size = self.c.welcome.size
            if item.rgb is not None:
                h, wd = item.rgb.shape[:2]
                nw = max(2, int(round(wd * size / h / 2)) * 2)
                view = item.rgb if (h, wd) == (size, nw) else cv2.resize(item.rgb, (nw, size),
                                                                         interpolation=cv2.INTER_AREA)
                if raw is not None:  # what MediaPipe found, drawn on the input panel
                    view = draw_landmarks(view.copy(), raw, self.c.welcome.kind)
            else:
                vlm = lm
        if not self.pending:
            self.last_progress = time.monotonic()
        self.pending[seq] = _Pending(item.capture_ts, c2s, view, vlm)
        self.c._seq += 1
        self.c._session_frames += 1
        self.sess_sent += 1
        self.stats.frames_sent += 1
        if self.first_send is None:
            self.first_send = time.monotonic()

    # -- receiving --------------------------------------------------------------------------------------
    def _resolve(self, seq: int) -> _Pending | None:
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
        """Frames the server's dropped count accounts for are no longer outstanding."""
        unexplained = self.sess_sent - self.sess_answered - self.sess_dropped
        while len(self.pending) > max(unexplained, 0):
            self.pending.popitem(last=False)

    def _poll(self, timeout_ms: int) -> None:
        """Handle the replies that are there (waiting up to ``timeout_ms`` for one, or for the source)."""
        sock = self.c._sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        if self.wake_rx is not None:
            poller.register(self.wake_rx, zmq.POLLIN)
        events = dict(poller.poll(timeout_ms))
        if self.wake_rx is not None and self.wake_rx in events:
            while True:
                try:
                    self.wake_rx.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
        if sock not in events:
            return
        while self.c._sock is sock:  # a reconnect (inside _handle) replaces the socket
            try:
                raw = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(raw)

    def _handle(self, raw: bytes) -> None:
        recv_wall = time.time()
        try:
            msg = P.decode(raw)
        except P.ProtocolError as e:
            self._error(f"malformed reply: {e.reason}")
            return
        self.ping_since = None   # the server is alive
        if isinstance(msg, P.Frame):
            self.last_progress = time.monotonic()
            self.reconnects_in_row = 0
            self.sess_answered += 1
            self.sess_dropped = max(self.sess_dropped, int(msg.dropped))
            p = self._resolve(msg.seq)
            self._account_drops()
            self._frame(msg, p, recv_wall)
        elif isinstance(msg, P.Error):
            self.last_progress = time.monotonic()
            if msg.seq is not None:
                self.sess_answered += 1
                self._resolve(msg.seq)
                self._account_drops()
            self._error(f"{msg.code}: {msg.reason}", msg.seq)
            if msg.code == P.ErrorCode.NO_SESSION:
                self.log("the server lost our session; saying hello again")
                self._reconnect(reason=None)
        elif isinstance(msg, P.Welcome):
            pass  # a late answer to a hello
        # pongs and anything else: ignored

    def _error(self, reason: str, seq: int | None = None) -> None:
        self.stats.errors += 1
        n = self.stats.error_reasons.get(reason, 0)
        self.stats.error_reasons[reason] = n + 1
        if n < 3:
            self.log(f"server error{'' if seq is None else f' on frame {seq}'}: {reason}"
                     + (" (further identical errors are counted, not shown)" if n == 2 else ""))

    def _frame(self, msg: P.Frame, p: _Pending | None, recv_wall: float) -> None:
        st = self.stats
        st.frames_received += 1
        g2g = (recv_wall - msg.capture_ts) * 1e3
        self.g2g.append(g2g)
        self.last_recv = time.monotonic()
        self.recv_times.append(self.last_recv)
        while self.recv_times and self.recv_times[0] < self.last_recv - STATS_WINDOW_S:
            self.recv_times.popleft()
        timings = msg.timings if isinstance(msg.timings, dict) else {}
        self.last_timings = timings
        for k, v in timings.items():
            if isinstance(v, (int, float)):
                self.stage[f"server_{k}"].append(float(v))
        c2s = p.capture_to_send_ms if p is not None else None
        total = timings.get("total")
        if c2s is not None and isinstance(total, (int, float)):
            self.stage["wire"].append(g2g - c2s - float(total))
        self.stage["glass_to_glass"].append(g2g)
        t = time.perf_counter()
        bgr = cv2.imdecode(np.frombuffer(msg.jpeg, np.uint8), cv2.IMREAD_COLOR)
        self.stage["decode"].append((time.perf_counter() - t) * 1e3)
        if bgr is None:
            self._error("undecodable JPEG in a frame reply", msg.seq)
            return
        if not self.want_view:
            return
        out = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        size = out.shape[0]
        from models.visualize import side_by_side
        panel = self._input_panel(p, size) if p is not None else np.zeros((size, size, 3), np.uint8)
        view = side_by_side(panel, out)
        if view.shape[0] < MIN_VIEW_HEIGHT:  # small models: enlarge so the view (and its text) stays legible
            k = MIN_VIEW_HEIGHT / view.shape[0]
            view = cv2.resize(view, (round(view.shape[1] * k), MIN_VIEW_HEIGHT), interpolation=cv2.INTER_LINEAR)
        view = np.concatenate([view, _status_bar(view.shape[1], self._overlay_lines(g2g, c2s, timings))])
        if self.display is not None:
            self.display.show(view)
        if self.record_path is not None:
            self._record(view)

    def _overlay_lines(self, g2g: float, c2s: float | None, timings: dict) -> list[str]:
        fps = (len(self.recv_times) - 1) / (self.recv_times[-1] - self.recv_times[0]) \
            if len(self.recv_times) > 1 and self.recv_times[-1] > self.recv_times[0] else 0.0
        ex = self.stage.get("extract")
        lines = [f"{fps:4.1f} fps   glass-to-glass {g2g:6.1f} ms",
                 f"capture->send {c2s:5.1f} ms" if c2s is not None else "capture->send  -"]
        if ex:
            lines[-1] += f" (landmarks {ex[-1]:.1f})"
        srv = " ".join(f"{k} {v:.1f}" for k, v in timings.items() if isinstance(v, (int, float)))
        if srv:
            lines.append(f"server ms: {srv}")
        lines.append(f"sent {self.stats.frames_sent}  dropped {self.sess_dropped + self.stats.dropped}  "
                     f"errors {self.stats.errors}  lost {self.stats.lost}")
        return lines

    def _record(self, view: np.ndarray) -> None:
        """Write the view to the --record mp4. Paced runs are written at wall-clock time: frame k of the video is
        what was on screen ``k / fps`` seconds after the first one, so where replies were dropped or late the
        previous view is repeated and the mp4 plays at real speed. Lock-step runs (``--fast``: every frame
        rendered) write one frame per reply."""
        from models.visualize import VideoWriter

        if self.writer is None:
            h, w = view.shape[:2]
            self.record_size = (w + (w & 1), h + (h & 1))  # even sizes for the codec
            self.record_fps = float(self.source.fps or self.c.welcome.fps)
            self.writer = VideoWriter(self.record_path, fps=self.record_fps)
            self.record_t0 = time.monotonic()
        if (view.shape[1], view.shape[0]) != self.record_size:
            view = cv2.resize(view, self.record_size, interpolation=cv2.INTER_AREA)
        if self.paced and self.record_last is not None:
            due = int((time.monotonic() - self.record_t0) * self.record_fps + 0.5)  # index this view belongs at
            while self.record_written < due:
                self.writer.write(self.record_last)
                self.record_written += 1
                self.stats.record_repeats += 1
        self.writer.write(view)
        self.record_written += 1
        self.record_last = view

    # -- server loss --------------------------------------------------------------------------------------
    def _end_session(self) -> None:
        self.stats.lost += len(self.pending)
        self.pending.clear()
        self.stats.dropped += self.sess_dropped
        self.sess_sent = self.sess_answered = self.sess_dropped = 0

    def _reconnect(self, reason: str | None) -> None:
        self._end_session()
        self.reconnects_in_row += 1
        self.stats.reconnects += 1
        if self.reconnects_in_row > self.c.retries:
            raise ServerLostError(f"the posecast server at {self.c.address} stopped answering; gave up after "
                                  f"{self.c.retries} reconnections")
        if reason:
            self.log(f"{reason}; reconnecting (attempt {self.reconnects_in_row}/{self.c.retries})")
        old = self.c.welcome
        try:
            w = self.c.connect()
        except ConnectionError as e:
            raise ServerLostError(f"lost the posecast server at {self.c.address} and could not reconnect: {e}") \
                from None
        if (w.kind, w.num_landmarks) != (old.kind, old.num_landmarks):
            raise ServerLostError(f"the server at {self.c.address} came back with a different model "
                                  f"({w.kind}, {w.num_landmarks} landmarks; was {old.kind}, {old.num_landmarks})")
        if self.normalizer is not None and w.subject_stats != old.subject_stats:
            self.normalizer = None
            self.normalizer = self._make_normalizer(self.aspect or 1.0)
        self.last_progress = time.monotonic()
        self.log(f"reconnected to {self.c.address}")

    def _check_server(self) -> None:
        """Server loss (no reply to outstanding frames, or to a ping, within ``timeout_s``) and the heartbeat:
        a ping whenever nothing was sent for half the server's ``heartbeat_s``, so the session never expires
        while the source is slow or every frame is still in flight."""
        now = time.monotonic()
        if self.pending and now - self.last_progress > self.c.timeout_s:
            self._reconnect(f"no reply from {self.c.address} for {self.c.timeout_s:g} s with "
                            f"{len(self.pending)} frame(s) outstanding — did the server go away?")
        elif self.ping_since is not None and now - self.ping_since > self.c.timeout_s:
            self.ping_since = None
            self._reconnect(f"no pong from {self.c.address} for {self.c.timeout_s:g} s — did the server go away?")
        elif now - self.c.last_send >= 0.5 * self.c.welcome.heartbeat_s:
            if self.c._send(P.Ping(ts=time.time())) and self.ping_since is None:
                self.ping_since = now

    # -- the loop -----------------------------------------------------------------------------------------
    def go(self) -> CaptureStats:
        t0 = time.monotonic()
        extractor = None
        if self.source.kind is None:  # an image source: MediaPipe is loaded (and started) before the first frame
            from models.detect import LandmarkExtractor
            try:
                extractor = LandmarkExtractor(self.c.welcome.kind)
            except BaseException:
                self.source.close()
                raise
        q: queue.Queue = queue.Queue(maxsize=2)
        addr = f"inproc://posecast-capture-wake-{id(self):x}"
        self.wake_rx = self.c._ctx.socket(zmq.PAIR)
        self.wake_rx.setsockopt(zmq.LINGER, 0)
        self.wake_rx.bind(addr)
        wake_tx = self.c._ctx.socket(zmq.PAIR)
        wake_tx.setsockopt(zmq.LINGER, 0)
        wake_tx.connect(addr)
        # Lock-step (--fast on a file or recording): the reader takes the next item only when it can be sent at
        # once, so no frame ever waits in a client-side queue (glass-to-glass is the pipeline, not a backlog).
        demand = None if self.paced else threading.Semaphore(0)
        asked = False
        self.log(f"streaming {self.source.describe()} to {self.c.address} "
                 f"({self.c.welcome.kind} model {self.c.welcome.model or '?'}, {self.c.welcome.size}px"
                 f"{'' if self.paced else ', lock-step'})")
        reader = _Reader(self.source, self.c.welcome.kind, self.max_frames, q, wake_tx, extractor, demand)
        reader.start()
        lost_error = None
        try:
            work = None
            while True:
                full = self.c.max_in_flight is not None and len(self.pending) >= self.c.max_in_flight
                if demand is not None and work is None and not asked and not full:
                    demand.release()
                    asked = True
                ready = (not full) if work is not None else not q.empty()
                self._poll(0 if ready else POLL_MS)
                self._check_server()
                if self.display is not None and self.display.quit_requested():
                    self.stats.interrupted = True
                    break
                if work is None:
                    try:
                        work = q.get_nowait()
                        asked = False
                    except queue.Empty:
                        continue
                if work is _END:
                    break
                if isinstance(work, BaseException):
                    raise work
                if self.c.max_in_flight is not None and len(self.pending) >= self.c.max_in_flight:
                    continue  # keep polling until replies (or the drop count) make room
                self._send_work(work)
                work = None
            if not self.stats.interrupted:
                self._drain()
        except KeyboardInterrupt:
            self.stats.interrupted = True
            self.log("interrupted")
        except ServerLostError as e:
            lost_error = e
        finally:
            reader.stop.set()
            reader.join(timeout=5.0)
            if self.wake_rx is not None:
                self.wake_rx.close(linger=0)
                self.wake_rx = None
            self.source.close()
            self._end_session()
            self._finish(time.monotonic() - t0)
        if lost_error is not None:
            lost_error.stats = self.stats
            self.log(str(lost_error))
            raise lost_error
        return self.stats

    def _drain(self) -> None:
        """Wait (up to timeout_s without progress) for replies to the outstanding frames."""
        while self.pending:
            if time.monotonic() - self.last_progress > self.c.timeout_s:
                self.log(f"{len(self.pending)} frame(s) got no reply within {self.c.timeout_s:g} s")
                return
            self._poll(20)
            if self.display is not None and self.display.quit_requested():
                self.stats.interrupted = True
                return

    def _finish(self, duration: float) -> None:
        st = self.stats
        st.duration_s = duration
        if self.writer is not None:
            self.writer.close()
            st.output = str(self.record_path)
        elif self.record_path is not None:
            self.log(f"no frames received: {self.record_path} not written")
        if self.display is not None:
            self.display.close()
        if self.save_path is not None:
            self._save()
        if st.frames_received and self.first_send is not None and self.last_recv is not None:
            span = self.last_recv - self.first_send
            st.fps = (st.frames_received / span) if span > 0 else 0.0
        if self.g2g:
            st.latency_p50_ms = float(np.percentile(self.g2g, 50))
            st.latency_p99_ms = float(np.percentile(self.g2g, 99))
        st.stages = {k: _median(v) for k, v in self.stage.items() if len(v)}

    def _save(self) -> None:
        w = self.c.welcome
        k = next((x.shape[0] for x in self.saved_lms if x is not None), w.num_landmarks)
        arr = np.full((len(self.saved_lms), k, 3), np.nan, np.float32)
        for i, x in enumerate(self.saved_lms):
            if x is not None and x.shape == (k, 3):
                arr[i] = x
        self.stats.landmarks_path = str(save_recording(
            self.save_path, arr, kind=w.kind, fps=self.source.fps or w.fps, aspect=self.aspect or 1.0,
            capture_ts=np.asarray(self.saved_ts, np.float64)))


# ------------------------------------------------------------------------------------------------------------
def capture(server: str | int = f"tcp://127.0.0.1:{DEFAULT_PORT}", source="0", *,
            record: str | os.PathLike | None = None, headless: bool = False,
            save_landmarks: str | os.PathLike | None = None, normalize: bool | str = "retarget",
            max_frames: int | None = None, timeout_s: float = 5.0, retries: int = 3, realtime: bool = True,
            loop: bool = False, show: bool | None = None, max_in_flight: int | None | str = "auto",
            log: Callable[[str], None] | None = None, server_key: str | os.PathLike | None = None,
            key: str | os.PathLike | None = None) -> CaptureStats:
    """The function behind ``posecast capture``: connect, open the source, stream, return :class:`CaptureStats`.

    CLI options (for argparse)::

        --server tcp://HOST:5555      server address (HOST:PORT also accepted)              -> server
        --source 0|VIDEO|REC.npz|synthetic[:SEED]
                                      camera index, video file, landmark recording, or the
                                      built-in synthetic dancer (default 0)                  -> source
        --record out.mp4              write the composed view (input | output + stats)      -> record
        --headless                    no window (recording still works)                     -> headless
        --save-landmarks rec.npz      save the raw landmarks sent, replayable as --source    -> save_landmarks
        --normalize MODE              retarget (default) | same-camera | off, see
                                      models.posenorm.NORMALIZE_MODES                       -> normalize
        --no-normalize                = --normalize off                                      -> normalize="off"
        --max-frames N                stop after N frames                                    -> max_frames
        --timeout S                   seconds to wait for the server (default 5)             -> timeout_s
        --retries N                   connection attempts (default 3)                        -> retries
        --fast                        read files as fast as the server renders them, not at
                                      their fps (lock-step: every frame rendered, the next
                                      one read only when it can be sent)                    -> realtime=False
        --loop                        loop a video / recording                               -> loop
        --server-key server.key       the server's CURVE public key (with --key)             -> server_key
        --key NAME.key_secret         this client's CURVE key pair (its .key allowed there)  -> key

    ``max_in_flight``: ``"auto"`` = 32 when paced (the server's latest-wins dropping keeps latency low) and 1
    with ``realtime=False`` (lock-step, so no frame is dropped); an int or None (unbounded) to override.

    Raises ``ConnectionError`` when no server answers, :class:`ServerLostError` when it goes away for good,
    ``FileNotFoundError`` / :class:`~clients.sources.SourceError` for an unusable source.
    """
    if max_in_flight == "auto":
        max_in_flight = 32 if realtime else 1
    client = CaptureClient(server, timeout_s=timeout_s, retries=retries, normalize=normalize,
                           max_in_flight=max_in_flight, log=log, server_key=server_key, key=key)
    try:
        welcome = client.connect()
        src = open_source(source, welcome.kind, realtime=realtime, loop=loop, default_fps=welcome.fps)
        return client.run(src, record=record, headless=headless, save_landmarks=save_landmarks,
                          max_frames=max_frames, show=show)
    finally:
        client.close()
