"""``posecast capture``: camera / video / recording / synthetic dancer -> landmarks -> server -> live view.

Pipeline (one client, one server session)::

    source thread:  read frame -> MediaPipe (LandmarkExtractor, kind from the server's Welcome) -> queue
    main thread:    normalisation (models.posenorm.live_normalizer: the training crop, then with `retarget` the
                    training subject's body scale / face proportions) -> send Landmarks(seq, capture_ts) without
                    waiting
                    poll replies and the source queue: Frame -> decode JPEG -> compose input | output + status bar
                    -> window (when a display exists and not headless) and/or --record mp4

Sending never waits for replies (the server keeps only the newest landmarks of a client and reports how many
it dropped); ``max_in_flight`` only bounds how far ahead the client may get. A frame is *outstanding* until a
reply with a sequence number >= its own arrives or the server's ``dropped`` count accounts for it (the rules, and
what counts as lost: :mod:`clients.ledger`). When the server stops answering while frames are outstanding
(``timeout_s``), the client says so, reconnects (a fresh session, Lazy-Pirate style: close and reopen the
socket) and goes on; after ``retries`` failed reconnections it gives up with :class:`ServerLostError`.

Latencies (all in ms, medians in :class:`CaptureStats`): ``extract`` (MediaPipe), ``capture_to_send`` (capture
time -> landmarks on the wire), ``server_<stage>`` (the server's own timings: decode, render, engine, encode,
total), ``wire`` (glass-to-glass minus capture->send minus the server total: network + waiting in the server's
queue), ``decode`` (client JPEG decode) and ``glass_to_glass`` (reply received - capture time).

With ``capture(..., realtime=False)`` files are streamed in lock-step (one frame in flight), so every frame is
rendered; the source thread reads one frame ahead: the next frame's landmarks are found while the server renders
the last one, and it is sent when that one's reply comes back (glass-to-glass is the pipeline's own latency, that
wait included; nothing else queues on the client).

Where things live: the accounting (outstanding frames, drops, counts, latency samples) is the stream ledger of
:mod:`clients.ledger`; panels, status bar, window and recorder are :mod:`clients.view`; the socket is
:class:`CaptureClient`'s (connect, ``send_landmarks``, ``poll`` / ``replies``, ``ping``, ``close``); a run
(``_Run`` below) ties them to the source thread.

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
from typing import Callable, Iterator

import numpy as np
import zmq

from clients.ledger import STATS_WINDOW_S, FrameReply, Lead, StreamLedger
from clients.sources import Source, SourceError, SourceItem, open_source, save_recording
from clients.sinks import RecordSink, Sink, VirtualCamSink, WebViewSink, WindowSink
from clients.view import MIN_VIEW_HEIGHT, Display, InputPanel, compose, draw_landmarks, overlay_lines
from models.landmarks import layout_of
from realtime import protocol as P
from realtime.codec import decode_jpeg

__all__ = ["DEFAULT_PORT", "MIN_VIEW_HEIGHT", "STATS_WINDOW_S", "CaptureClient", "CaptureStats", "ServerLostError",
           "capture", "draw_landmarks", "has_display", "normalize_mode", "server_address"]

DEFAULT_PORT = 5555
POLL_MS = 10                # the main loop wakes at least this often (replies and new frames wake it at once)


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
    forecast: str = "none"            # the forecaster of the landmarks sent (models/forecast.py)
    lead_p50_ms: float | None = None  # how far ahead they were forecast (median over the frames sent)
    emulated_latency_ms: float = 0.0  # --emulate-latency: every reply held this long before it is handled
    display_error: float | None = None  # display-time pose error: the landmarks a shown frame was rendered from
    #                                     against the source's at the moment it was shown (frame fractions, mean)
    display_error_frames: int = 0     # frames that error was measured on

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
        if self.display_error is not None or self.forecast != "none" or self.emulated_latency_ms:
            lead = f", p50 {self.lead_p50_ms:.0f} ms ahead" if self.lead_p50_ms is not None else ""
            emu = f", {self.emulated_latency_ms:g} ms of latency emulated" if self.emulated_latency_ms else ""
            err = (f"display-time pose error {self.display_error:.4f} of the frame side over "
                   f"{self.display_error_frames} frames" if self.display_error is not None else
                   "display-time pose error not measured")
            lines.append(f"forecast {self.forecast}{lead}{emu}: {err}")
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


def open_dealer(ctx: zmq.Context, address: str, server_key=None, key=None) -> zmq.Socket:
    """A client's DEALER socket to a posecast server at ``address`` (CURVE with the server's public key file and
    this client's secret key file when given); ``ctx`` may be a ``zmq.asyncio.Context`` (the web bridge's)."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if key is not None:
        from realtime.security import apply_client_curve
        apply_client_curve(s, server_key, key)
    s.setsockopt(zmq.SNDHWM, 1000)
    s.setsockopt(zmq.RCVHWM, 1000)
    s.connect(address)
    return s


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
    shown: np.ndarray | None = None   # the landmarks sent (raw, before normalisation): forecast, or as detected
    lead_ms: float = 0.0              # how far ahead they were forecast
    step: np.ndarray | None = None    # a face's step since the last frame, measured on the image (HeadMotion)
    step_ms: float | None = None      # what measuring it took


_END = object()


class _Reader(threading.Thread):
    """Reads the source and runs MediaPipe on images, feeding a small queue. ``motion``: a
    :class:`~models.forecast.HeadMotion` that measures a face's step on each image its landmarks are found in
    (a forecast of the face mesh moves by it)."""

    def __init__(self, source: Source, kind: str, max_frames: int | None, out: queue.Queue, wake: zmq.Socket,
                 extractor=None, demand: threading.Semaphore | None = None, motion=None):
        super().__init__(name="posecast-capture-source", daemon=True)
        self.source, self.kind, self.max_frames, self.out = source, kind, max_frames, out
        self.wake = wake            # inproc PAIR (used by this thread only): wakes the main loop's poll at once
        self.stop = threading.Event()
        self.extractor = extractor  # built by the main thread (its start-up silences fd 2 for a moment)
        self.demand = demand        # lock-step (--fast): read the next item only when the main loop asks for it
        self.motion = motion

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
                work = _Work(item, lm, ms, aspect)
                if self.motion is not None and ms is not None:   # (not on a preview drawn from the landmarks)
                    t = time.perf_counter()
                    work.step = self.motion(item.rgb, lm)
                    work.step_ms = (time.perf_counter() - t) * 1e3
                if not self._put(work):
                    break
                n += 1
            self._put(_END)
        except BaseException as e:  # handed to the main thread
            self._put(e)
        finally:
            if self.extractor is not None:
                self.extractor.close()
            self.wake.close(linger=0)


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


# ------------------------------------------------------------------------------------------------------------
class CaptureClient:
    """A posecast client session over ZeroMQ (DEALER -> the server's ROUTER); see the module docstring.

    ``server``: ``tcp://HOST:PORT`` (or ``HOST:PORT``). ``timeout_s``: how long to wait for the Welcome, and for
    any reply while frames are outstanding. ``retries``: connection attempts (and mid-stream reconnections in a
    row) before giving up. ``normalize``: the normalisation mode (:data:`models.posenorm.NORMALIZE_MODES`:
    ``"retarget"``, ``"same-camera"``, ``"off"``; True / False mean retarget / off). ``max_in_flight``: at most this many frames outstanding (the
    client waits for replies before sending more). ``log``: where progress messages go (default stderr).

    Streaming: :meth:`run` streams a source with everything around it (normalisation, view, accounting,
    reconnection). Underneath it, and usable alone: :meth:`connect`, :meth:`send_landmarks` (never waits),
    :meth:`poll` and :meth:`replies` (the replies waiting, decoded), :meth:`ping`, :meth:`close`.
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
        self._sock = open_dealer(self._ctx, self.address, self.server_key, self.key)

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _send(self, msg) -> bool:
        version = self.welcome.version if self.welcome is not None else P.PROTOCOL_VERSION
        try:
            self._sock.send(P.encode(msg, version), zmq.NOBLOCK)
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
            answer = self._await_welcome(attempt)
            if isinstance(answer, P.Welcome):
                self.welcome = answer
                self._session_frames = 0
                return answer
            if answer is not None:
                busy = answer
            elif attempt < self.retries:
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

    def _await_welcome(self, attempt: int) -> "P.Welcome | str | None":
        """The answer to this try's hello within ``timeout_s``: the Welcome, the reason of a busy server (after
        waiting out the try), or None (no answer). Raises ``ConnectionError`` when the server refuses us."""
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
                return msg
            if isinstance(msg, P.Error):
                if msg.code == P.ErrorCode.SERVER_BUSY:
                    self.log(f"server at {self.address} is busy: {msg.reason} (try {attempt}/{self.retries})")
                    time.sleep(max(0.0, deadline - time.monotonic()))
                    return msg.reason
                self._close_socket()
                raise ConnectionError(f"the posecast server at {self.address} refused the connection: "
                                      f"{msg.code}: {msg.reason}")
            # anything else (a late frame of an old session, a pong): ignore
        return None

    def hello_again(self) -> bool:
        """Say hello again on the open connection (the server lost our session: it restarted, or expired it); the
        Welcome comes back among the replies. False when the socket's queue is full."""
        return self._send(P.Hello(client=self.client_name, versions=list(P.SUPPORTED_VERSIONS)))

    def close(self) -> None:
        """Say bye (frees the server session at once) and close the socket."""
        if self._sock is not None:
            self._send(P.Bye())
            self._close_socket()

    # -- sending and receiving (one stream at a time; see :meth:`run`) ------------------------------------
    @property
    def context(self) -> zmq.Context:
        """The ZeroMQ context of this client's socket (a run's inproc wake-up sockets share it)."""
        return self._ctx

    def send_landmarks(self, capture_ts: float, landmarks: np.ndarray | None, lead_ms: float = 0.0) -> int | None:
        """Send one frame's landmarks (``(K, 3)`` or None: nothing detected; forecast ``lead_ms`` past
        ``capture_ts``) without waiting for the reply; returns the frame's sequence number, or None (with a
        message) when the socket's queue is full (the server is not reading at all)."""
        seq = self._seq
        msg = P.Landmarks.from_array(seq, capture_ts, landmarks, self.welcome.num_landmarks,
                                     min(float(lead_ms), P.MAX_LEAD_MS))
        if not self._send(msg):
            self.log(f"send queue full; frame {seq} not sent")
            return None
        self._seq += 1
        self._session_frames += 1
        return seq

    def ping(self) -> bool:
        """A heartbeat (the server answers with a pong); False when the socket's queue is full."""
        return self._send(P.Ping(ts=time.time()))

    def poll(self, timeout_ms: int, wake: zmq.Socket | None = None) -> bool:
        """Wait up to ``timeout_ms`` for a reply, or for a message on ``wake`` (a doorbell socket of
        :attr:`context` that cuts the wait short; its messages are read and discarded). True when a reply is
        waiting."""
        sock = self._sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        if wake is not None:
            poller.register(wake, zmq.POLLIN)
        events = dict(poller.poll(timeout_ms))
        if wake is not None and wake in events:
            while True:
                try:
                    wake.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
        return sock in events

    def replies(self) -> Iterator["P.Message | P.ProtocolError"]:
        """The replies waiting now (never waits), decoded: a message of :mod:`realtime.protocol`, or the
        ``ProtocolError`` of a malformed one (yielded, not raised: the stream goes on). Stops when the
        connection is replaced (a reconnection while handling a reply): later replies belong to the new one."""
        sock = self._sock
        while self._sock is sock:
            try:
                raw = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = P.decode(raw)
            except P.ProtocolError as e:
                msg = e
            yield msg

    def __enter__(self) -> "CaptureClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- streaming --------------------------------------------------------------------------------------
    def run(self, source: Source, *, record: str | os.PathLike | None = None, headless: bool = False,
            save_landmarks: str | os.PathLike | None = None, max_frames: int | None = None,
            show: bool | None = None, forecast: str = "auto", forecaster_model: str | os.PathLike | None = None,
            lead_ms: float | None = None, emulate_latency_ms: float = 0.0,
            one_euro: dict | str | None = "auto", virtual_cam: bool | dict = False, web_port: int | None = None,
            sinks: list[Sink] | None = None) -> CaptureStats:
        """Stream ``source`` through the server until it ends, ``max_frames`` were sent, or q/Esc/Ctrl-C.

        ``show``: open a window (default: when a display exists and not ``headless``). ``record``: write the
        composed view (input | output + status bar) to this mp4, headless or not. ``save_landmarks``: write the
        raw (un-normalised) landmarks of every frame taken from the source to this ``.npz`` recording (format:
        :mod:`clients.sources`). ``forecast``: send the landmarks forecast ``lead_ms`` ahead (None: the measured
        glass-to-glass latency, see :class:`~clients.ledger.Lead`) by ``none`` / ``constant_velocity`` /
        ``learned`` (the model in ``forecaster_model``, default the bundled one) / ``auto`` (the best measured for
        the model's kind: learned for dance, constant velocity of the mesh's centroid for faces, stepping as the image
        shows the head move; models/forecast.py). ``emulate_latency_ms``: hold every
        reply that long before handling it, as a slow network would (for demos and measurements on loopback).
        ``one_euro``: the One Euro filter in front of the forecaster (see models/forecast.py ``make_forecaster``).
        ``virtual_cam``: the output to a virtual camera (True, or pyvirtualcam's ``{"backend": ..., "device": ...}``);
        ``web_port``: the view as MJPEG on ``http://127.0.0.1:PORT/``; ``sinks``: more outputs of one's own
        (clients/sinks.py). A sink that cannot open raises :class:`~clients.sinks.SinkError` before streaming.
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
        if emulate_latency_ms < 0 or emulate_latency_ms > 10_000:
            raise ValueError(f"emulate_latency_ms must be in [0, 10000], got {emulate_latency_ms}")
        if lead_ms is not None and not 0 <= lead_ms <= P.MAX_LEAD_MS:
            raise ValueError(f"lead_ms must be in [0, {P.MAX_LEAD_MS:g}], got {lead_ms}")
        from models.forecast import make_forecaster
        forecaster = make_forecaster(forecast, kind, learned=forecaster_model, one_euro=one_euro)
        if not (source.live or source.realtime) and forecaster.name != "none":
            # Lock-step (--fast): frames are shown as rendered, not against a live body: nothing to catch up with.
            if forecast != "auto":
                self.log(f"--forecast {forecast}: not used on a lock-step stream (--fast), which is not live")
            forecaster = make_forecaster("none", kind)
        fps = float(source.fps or welcome.fps)
        paced = bool(source.live or source.realtime)
        outputs: list[Sink] = []
        try:
            if show:
                display = Display(f"posecast capture - {self.address}", self.log)
                if display.ok:
                    outputs.append(WindowSink(display))
            if record is not None:
                outputs.append(RecordSink(record, fps, paced))
            if virtual_cam:
                outputs.append(VirtualCamSink(welcome.size, fps, **(virtual_cam if isinstance(virtual_cam, dict)
                                                                    else {})))
                self.log(f"output to {outputs[-1].describe()} ({welcome.size}x{welcome.size} at {fps:g} fps)")
            if web_port is not None:
                outputs.append(WebViewSink(web_port, log=self.log))
        except BaseException:
            for out in outputs:
                out.close()
            raise
        outputs += list(sinks or [])
        run = _Run(self, source, sinks=outputs, save_landmarks=save_landmarks,
                   max_frames=max_frames, forecaster=forecaster, lead_ms=lead_ms,
                   emulate_latency_ms=emulate_latency_ms)
        return run.go()


class _Run:
    """One :meth:`CaptureClient.run`: the source thread, normalising and sending, handling replies, server loss.
    The accounting is the ledger's (clients/ledger.py), the pictures are the view's (clients/view.py), the
    socket is the client's."""

    def __init__(self, client: CaptureClient, source: Source, *, sinks: list[Sink], save_landmarks,
                 max_frames: int | None, forecaster=None, lead_ms: float | None = None,
                 emulate_latency_ms: float = 0.0):
        from models.forecast import DisplayErrorMeter, NoForecast

        self.c, self.source = client, source
        kind = client.welcome.kind
        self.forecaster = forecaster or NoForecast(has_visibility=kind == "dance")
        self.lead = Lead(fixed_ms=lead_ms)
        self.meter = DisplayErrorMeter(has_visibility=kind == "dance")
        self.delay_s = float(emulate_latency_ms) / 1e3
        self.delayed: collections.deque = collections.deque()     # (due, reply) held back by --emulate-latency
        self.leads_ms: list[float] = []
        self.log = client.log
        self.save_path = Path(save_landmarks) if save_landmarks is not None else None
        self.max_frames = max_frames
        self.stats = CaptureStats(forecast=self.forecaster.name, emulated_latency_ms=float(emulate_latency_ms))
        self.ledger = StreamLedger(STATS_WINDOW_S)
        self.sinks = sinks                           # window, mp4, virtual camera, web view (clients/sinks.py)
        # paced (real-time) stream, or lock-step (--fast on a file/recording: every frame rendered, one at a time)
        self.paced = bool(source.live or source.realtime)
        self.normalizer = None
        self.aspect: float | None = None             # the source's width / height, fixed by the first frame
        self.reconnects_in_row = 0
        self.ping_since: float | None = None         # when the oldest unanswered ping went out
        self.rehello_since: float | None = None      # when we said hello again on this connection (no welcome yet)
        self.wake_rx: zmq.Socket | None = None       # the source thread rings it when an item is queued
        self.saved_lms: list[np.ndarray | None] = []  # --save-landmarks: raw landmarks and capture times
        self.saved_ts: list[float] = []

    # -- helpers ----------------------------------------------------------------------------------------
    @property
    def want_view(self) -> bool:
        return bool(self.sinks)

    def _full(self) -> bool:
        """``max_in_flight`` frames are outstanding: wait for replies (or the drop count) before sending."""
        return self.c.max_in_flight is not None and self.ledger.outstanding >= self.c.max_in_flight

    def _quit_requested(self) -> bool:
        if any(sink.quit_requested() for sink in self.sinks):
            self.stats.interrupted = True
            return True
        return False

    def _make_normalizer(self, aspect: float):
        """The landmark transform of the normalisation mode for this model (see models/posenorm.py)."""
        from models.posenorm import live_normalizer

        w = self.c.welcome
        fn, how = live_normalizer(w.kind, w.subject_stats, self.c.normalize, aspect=aspect,
                                  warmup=self.c.warmup_frames, fps=w.fps)
        self.log(f"normalisation {how}")
        return fn

    # -- sending ----------------------------------------------------------------------------------------
    def _prepare(self, w: _Work) -> np.ndarray | None:
        """The landmarks to send for ``w`` (normalised); notes the raw ones (--save-landmarks) and timings."""
        item, raw = w.item, w.landmarks
        if self.aspect is None:
            self.aspect = w.aspect
            self.normalizer = self._make_normalizer(w.aspect)
            from models.forecast import for_frame
            self.forecaster = for_frame(self.forecaster, w.aspect)         # forecast in square units
        if raw is not None:
            self.stats.landmarks_found += 1
        w.shown = raw
        if raw is not None and self.forecaster.name != "none":
            t = time.perf_counter()
            self.forecaster.update(item.capture_ts, raw, w.step)
            w.lead_ms = self.lead.ms(self.ledger)
            w.shown = self.forecaster.predict(w.lead_ms / 1e3)
            self.ledger.sample("forecast", (time.perf_counter() - t) * 1e3)
            self.leads_ms.append(w.lead_ms)
        self.meter.sample(item.capture_ts, raw)
        t = time.perf_counter()
        lm = self.normalizer(w.shown) if self.normalizer is not None else w.shown
        self.ledger.sample("normalize", (time.perf_counter() - t) * 1e3)
        if w.extract_ms is not None:
            self.ledger.sample("extract", w.extract_ms)
        if w.step_ms is not None:
            self.ledger.sample("head_motion", w.step_ms)
        if self.save_path is not None:
            self.saved_lms.append(None if raw is None else np.asarray(raw, np.float32))
            self.saved_ts.append(item.capture_ts)
        num = self.c.welcome.num_landmarks
        if raw is not None and lm.shape[0] != num and lm.shape[0] not in layout_of(self.c.welcome.kind).accepted:
            if self.ledger.sent == 0:
                self.log(f"warning: sending {lm.shape[0]} landmarks, the server expects {num}")
        return lm

    def _send_work(self, w: _Work) -> None:
        lm = self._prepare(w)
        item = w.item
        seq = self.c.send_landmarks(item.capture_ts, lm, w.lead_ms)
        if seq is None:
            return
        c2s = (time.time() - item.capture_ts) * 1e3
        panel = None
        if self.want_view:
            panel = InputPanel.of(item.rgb, w.landmarks, lm, self.c.welcome.kind, self.c.welcome.size)
        self.ledger.record_send(seq, item.capture_ts, c2s, time.monotonic(), panel, w.shown)

    # -- receiving --------------------------------------------------------------------------------------
    def _poll(self, timeout_ms: int) -> None:
        """Handle the replies that are there (waiting up to ``timeout_ms`` for one, or for the source); with
        ``--emulate-latency`` each reply is handled ``delay_s`` after it arrived."""
        if self.delayed:
            timeout_ms = max(0, min(timeout_ms, int((self.delayed[0][0] - time.monotonic()) * 1e3) + 1))
        if self.c.poll(timeout_ms, self.wake_rx):
            for msg in self.c.replies():
                if self.delay_s:
                    self.delayed.append((time.monotonic() + self.delay_s, msg))
                else:
                    self._handle(msg)
        while self.delayed and self.delayed[0][0] <= time.monotonic():
            self._handle(self.delayed.popleft()[1])

    def _handle(self, msg) -> None:
        recv_wall = time.time()
        if isinstance(msg, P.ProtocolError):
            self._error(f"malformed reply: {msg.reason}")
            return
        self.ping_since = None   # the server is alive
        if isinstance(msg, P.Frame):
            self.reconnects_in_row = 0
            reply = self.ledger.record_frame(msg.seq, msg.capture_ts, msg.dropped, msg.timings, recv_wall,
                                             time.monotonic())
            self._frame(msg, reply)
        elif isinstance(msg, P.Error):
            reason = f"{msg.code}: {msg.reason}"
            now = time.monotonic()
            if msg.code == P.ErrorCode.SERVER_BUSY and self.rehello_since is not None:
                # the answer to our hello, not to a frame: reconnect, waiting for a free session as connect() does
                self._reconnect(f"the server at {self.c.address} is busy ({msg.reason})")
                return
            first_loss = msg.code == P.ErrorCode.NO_SESSION and self.rehello_since is None
            if first_loss:   # frames sent before this one went to a session that no longer exists
                self.ledger.session_lost(msg.seq)
            self._log_error(self.ledger.record_error_reply(msg.seq, reason, now), reason, msg.seq)
            if first_loss:   # more no_session errors may follow (frames already on the wire): one hello is enough
                self.reconnects_in_row += 1
                if self.reconnects_in_row > self.c.retries:
                    raise ServerLostError(f"the posecast server at {self.c.address} keeps losing our session; "
                                          f"gave up after {self.c.retries} tries")
                self.log("the server lost our session; saying hello again")
                self.c.hello_again()
                self.rehello_since, self.ping_since = now, None
        elif isinstance(msg, P.Welcome) and self.rehello_since is not None:
            self.rehello_since = None
            self._adopt(msg)
        # a late Welcome of an earlier hello, pongs and anything else: ignored

    def _error(self, reason: str, seq: int | None = None) -> None:
        """An error of the client's own (a reply it cannot use)."""
        self._log_error(self.ledger.count_error(reason), reason, seq)

    def _log_error(self, n_before: int, reason: str, seq: int | None) -> None:
        if n_before < 3:
            self.log(f"server error{'' if seq is None else f' on frame {seq}'}: {reason}"
                     + (" (further identical errors are counted, not shown)" if n_before == 2 else ""))

    def _frame(self, msg: P.Frame, reply: FrameReply) -> None:
        t = time.perf_counter()
        rgb = decode_jpeg(msg.jpeg)
        self.ledger.sample("decode", (time.perf_counter() - t) * 1e3)
        if rgb is None:
            self._error("undecodable JPEG in a frame reply", msg.seq)
            return
        if reply.frame is not None:
            self.meter.shown(time.time(), reply.frame.landmarks)
        if self.want_view:
            self._show(rgb, reply)

    def _show(self, out: np.ndarray, reply: FrameReply) -> None:
        """Compose input | output + status bar; to every sink (window, mp4, virtual camera, web view)."""
        size, own, led = out.shape[0], reply.frame, self.ledger
        if own is not None:
            panel = own.panel.render(self.c.welcome.kind, size)
        else:  # not outstanding any more (see clients/ledger.py): no input to show beside it
            panel = np.zeros((size, size, 3), np.uint8)
        extract = led.stages.get("extract")
        lines = overlay_lines(fps=led.recent_fps(), glass_to_glass_ms=reply.glass_to_glass_ms,
                              capture_to_send_ms=own.capture_to_send_ms if own is not None else None,
                              extract_ms=extract[-1] if extract else None, server_timings=reply.timings,
                              sent=led.sent, dropped=led.dropped, errors=led.errors, lost=led.lost)
        view = compose(panel, out, lines)
        now = time.monotonic()
        for sink in self.sinks:
            sink.write(view, out, now)

    # -- server loss --------------------------------------------------------------------------------------
    def _reconnect(self, reason: str) -> None:
        """A fresh connection and session (Lazy Pirate): what is outstanding is lost."""
        self.ledger.end_session()
        self.ping_since = self.rehello_since = None
        self.reconnects_in_row += 1
        if self.reconnects_in_row > self.c.retries:
            raise ServerLostError(f"the posecast server at {self.c.address} stopped answering; gave up after "
                                  f"{self.c.retries} reconnections")
        self.log(f"{reason}; reconnecting (attempt {self.reconnects_in_row}/{self.c.retries})")
        old = self.c.welcome
        try:
            w = self.c.connect()
        except ConnectionError as e:
            raise ServerLostError(f"lost the posecast server at {self.c.address} and could not reconnect: {e}") \
                from None
        self.c.welcome = old
        self._adopt(w)

    def _adopt(self, w: P.Welcome) -> None:
        """A new session after a lost one (one reconnect per outage, counted here): the same model, or give up."""
        old = self.c.welcome
        self.c.welcome = w
        self.stats.reconnects += 1
        if (w.kind, w.num_landmarks) != (old.kind, old.num_landmarks):
            raise ServerLostError(f"the server at {self.c.address} came back with a different model "
                                  f"({w.kind}, {w.num_landmarks} landmarks; was {old.kind}, {old.num_landmarks})")
        if self.normalizer is not None and w.subject_stats != old.subject_stats:
            self.normalizer = None
            self.normalizer = self._make_normalizer(self.aspect or 1.0)
        self.log(f"reconnected to {self.c.address}")

    def _check_server(self) -> None:
        """Server loss (no reply to outstanding frames, or to a ping, within ``timeout_s``) and the heartbeat:
        a ping whenever nothing was sent for half the server's ``heartbeat_s``, so the session never expires
        while the source is slow or every frame is still in flight."""
        now = time.monotonic()
        if self.ledger.stalled(now, self.c.timeout_s):
            self._reconnect(f"no reply from {self.c.address} for {self.c.timeout_s:g} s with "
                            f"{self.ledger.outstanding} frame(s) outstanding — did the server go away?")
        elif self.rehello_since is not None and now - self.rehello_since > self.c.timeout_s:
            self._reconnect(f"no welcome from {self.c.address} for {self.c.timeout_s:g} s after saying hello again")
        elif self.ping_since is not None and now - self.ping_since > self.c.timeout_s:
            self._reconnect(f"no pong from {self.c.address} for {self.c.timeout_s:g} s — did the server go away?")
        elif now - self.c.last_send >= 0.5 * self.c.welcome.heartbeat_s:
            if self.c.ping() and self.ping_since is None:
                self.ping_since = now

    # -- the loop -----------------------------------------------------------------------------------------
    def go(self) -> CaptureStats:
        from models.forecast import one_blas_thread

        with one_blas_thread():     # the forecaster's small products, beside MediaPipe and maybe a server
            return self._go()

    def _go(self) -> CaptureStats:
        t0 = time.monotonic()
        reader = self._start_reader()
        lost_error = None
        try:
            self._stream(reader.out, reader.demand)
            if not self.stats.interrupted:
                self._drain()
        except KeyboardInterrupt:
            self.stats.interrupted = True
            self.log("interrupted")
        except ServerLostError as e:
            lost_error = e
        finally:
            self._stop(reader)
            self._finish(time.monotonic() - t0)
        if lost_error is not None:
            lost_error.stats = self.stats
            self.log(str(lost_error))
            raise lost_error
        return self.stats

    def _start_reader(self) -> _Reader:
        """MediaPipe (image sources: loaded before the first frame), the wake-up pair, the source thread."""
        extractor = None
        if self.source.kind is None:
            from models.detect import LandmarkExtractor
            try:
                extractor = LandmarkExtractor(self.c.welcome.kind)
            except BaseException:
                self.source.close()
                raise
        q: queue.Queue = queue.Queue(maxsize=2)
        addr = f"inproc://posecast-capture-wake-{id(self):x}"
        self.wake_rx = self.c.context.socket(zmq.PAIR)
        self.wake_rx.setsockopt(zmq.LINGER, 0)
        self.wake_rx.bind(addr)
        wake_tx = self.c.context.socket(zmq.PAIR)
        wake_tx.setsockopt(zmq.LINGER, 0)
        wake_tx.connect(addr)
        # Lock-step (--fast on a file or recording): the reader takes the next item only when the main loop holds
        # none, one ahead of what is in flight, so no backlog builds in a client-side queue.
        demand = None if self.paced else threading.Semaphore(0)
        w = self.c.welcome
        self.log(f"streaming {self.source.describe()} to {self.c.address} ({w.kind} model {w.model or '?'}, "
                 f"{w.size}px{'' if self.paced else ', lock-step'})")
        motion = None
        if w.kind == "face" and self.forecaster.name != "none" and self.source.kind is None:   # (images only)
            from models.forecast import HeadMotion
            motion = HeadMotion()
        reader = _Reader(self.source, w.kind, self.max_frames, q, wake_tx, extractor, demand, motion)
        reader.start()
        return reader

    def _stream(self, q: queue.Queue, demand: threading.Semaphore | None) -> None:
        """Send what the source gives, handling replies in between, until it ends or q/Esc."""
        work, asked = None, False
        while True:
            full = self._full()
            if demand is not None and work is None and not asked:
                # lock-step reads one frame ahead: its landmarks are found while the last frame renders, and it
                # is sent when that one's reply makes room (waiting for room first ran the two one after the other)
                demand.release()
                asked = True
            ready = (not full) if work is not None else not q.empty()
            self._poll(0 if ready else POLL_MS)
            self._check_server()
            if self._quit_requested():
                return
            if work is None:
                try:
                    work = q.get_nowait()
                    asked = False
                except queue.Empty:
                    continue
            if work is _END:
                return
            if isinstance(work, BaseException):
                raise work
            if self._full():
                continue  # keep polling until replies (or the drop count) make room
            self._send_work(work)
            work = None

    def _drain(self) -> None:
        """Wait (up to timeout_s without progress) for replies to the outstanding frames."""
        while self.ledger.outstanding:
            if self.ledger.stalled(time.monotonic(), self.c.timeout_s):
                self.log(f"{self.ledger.outstanding} frame(s) got no reply within {self.c.timeout_s:g} s")
                return
            self._poll(20)
            if self._quit_requested():
                return

    def _stop(self, reader: _Reader) -> None:
        reader.stop.set()
        reader.join(timeout=5.0)
        if self.wake_rx is not None:
            self.wake_rx.close(linger=0)
            self.wake_rx = None
        self.source.close()
        self.ledger.end_session()

    def _finish(self, duration: float) -> None:
        st = self.stats
        st.duration_s = duration
        for sink in self.sinks:
            sink.close()
            if isinstance(sink, RecordSink):
                if sink.recorder is not None:
                    st.output = str(sink.path)
                    st.record_repeats = sink.recorder.repeats
                else:
                    self.log(f"no frames received: {sink.path} not written")
        if self.save_path is not None:
            self._save()
        for name, value in self.ledger.totals().items():
            setattr(st, name, value)
        st.lead_p50_ms = float(np.median(self.leads_ms)) if self.leads_ms else None
        st.display_error = self.meter.mean
        st.display_error_frames = len(self.meter.errors)

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
            key: str | os.PathLike | None = None, forecast: str = "auto",
            forecaster_model: str | os.PathLike | None = None, lead_ms: float | None = None,
            emulate_latency_ms: float = 0.0, one_euro: dict | str | None = "auto",
            virtual_cam: bool | dict = False, web_port: int | None = None) -> CaptureStats:
    """The function behind ``posecast capture``: connect, open the source, stream, return :class:`CaptureStats`.

    CLI options (for argparse)::

        --server tcp://HOST:5555      server address (HOST:PORT also accepted)              -> server
        --source 0|VIDEO|REC.npz|synthetic[:SEED]
                                      camera index, video file, landmark recording, or the
                                      synthetic dancer or face (the model's kind) (default 0) -> source
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
                                      one read while the last one renders)                  -> realtime=False
        --loop                        loop a video / recording                               -> loop
        --server-key server.key       the server's CURVE public key (with --key)             -> server_key
        --key NAME.key_secret         this client's CURVE key pair (its .key allowed there)  -> key
        --forecast auto|learned|constant_velocity|none
                                      send the pose forecast one glass-to-glass latency
                                      ahead (default auto: learned for dance, constant
                                      velocity of the centroid for faces)                    -> forecast
        --forecaster-model DIR        a learned forecaster of one's own                     -> forecaster_model
        --lead MS                     forecast this far ahead (default: measured latency)    -> lead_ms
        --emulate-latency MS          hold every reply MS before handling it                 -> emulate_latency_ms
        --one-euro auto|none|MIN_CUTOFF,BETA
                                      the One Euro filter in front of the forecaster         -> one_euro
        --virtual-cam                 the output to a virtual camera (pyvirtualcam)          -> virtual_cam
        --web PORT                    the view as MJPEG on http://127.0.0.1:PORT/            -> web_port

    ``max_in_flight``: ``"auto"`` = 32 when paced (the server's latest-wins dropping keeps latency low) and 1
    with ``realtime=False`` (lock-step, so no frame is dropped: two in flight would let latest-wins drop one
    whenever the next arrives before the server reads the last); an int or None (unbounded) to override.

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
                          max_frames=max_frames, show=show, forecast=forecast, forecaster_model=forecaster_model,
                          lead_ms=lead_ms, emulate_latency_ms=emulate_latency_ms, one_euro=one_euro,
                          virtual_cam=virtual_cam, web_port=web_port)
    finally:
        client.close()

