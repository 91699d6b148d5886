"""Capture client, sources and pose normalisation. CPU, loopback only, < 60 s.

A tiny fake ROUTER server (in a thread, speaking realtime/protocol) stands in for ``posecast serve``.
Tests on real footage read ``$POSECAST_SHARED_DATA`` (default ``<repo>/../shared/data``) and skip when absent.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from clients.capture import CaptureClient, ServerLostError, capture, server_address
from clients.sources import (RecordingSource, SourceError, SyntheticSource, VideoSource, load_recording,
                             open_source, save_recording)
from models.posenorm import PoseNormalizer, normalize_pose, pose_scale, subject_stats, to_square
from realtime import protocol as P
from models.motion import DanceMotion

from shared_data import MEGAMIND, MESSI, REPO, SHARED, needs_megamind, needs_messi  # noqa: F401

SIZE = 64
COLOR_BGR = (40, 160, 220)


def _quiet(_msg: str) -> None:
    pass


def _dance_stats(seed: int = 1, n: int = 30) -> dict:
    m = DanceMotion(seed, 30.0)
    return subject_stats(np.stack([m.landmarks(i) for i in range(n)]))


class FakeServer(threading.Thread):
    """A minimal posecast server: hello -> welcome, landmarks -> a solid-colour frame.

    ``drop``: seqs for which no frame is sent (counted in ``dropped``, like latest-wins dropping);
    ``mute_after``: the first session stops answering anything after this many frames (a hung server);
    ``error_seqs``: answer these landmarks with an error reply instead of a frame;
    ``garbage_seqs``: answer these with bytes that are no protocol message; ``bad_jpeg_seqs``: with a frame whose
    JPEG cannot be decoded; ``hello_error``: answer hellos with this error instead of a welcome; ``version``: the
    protocol version the welcome names; ``forget_after``: the first session is forgotten after this many frames
    (later landmarks get a no_session error until the next hello, as after a server restart); ``render_s``: each
    frame takes this long to render, one after another as the real server renders a client's frames (its reply
    held back until then; ``max_waiting``: the most landmarks received and not yet answered at one time).
    """

    def __init__(self, *, kind="dance", num_landmarks=33, subject_stats=None, drop=(), mute_after=None,
                 error_seqs=(), garbage_seqs=(), bad_jpeg_seqs=(), hello_error: P.Error | None = None,
                 version: int = P.PROTOCOL_VERSION, forget_after: int | None = None, render_s: float = 0.0):
        super().__init__(daemon=True)
        self.render_s, self.max_waiting = render_s, 0
        self._rendering: collections.deque = collections.deque()   # (due, ident, frame) of frames held back
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.kind, self.num_landmarks, self.stats = kind, num_landmarks, subject_stats
        self.drop, self.mute_after, self.error_seqs = set(drop), mute_after, set(error_seqs)
        self.garbage_seqs, self.bad_jpeg_seqs = set(garbage_seqs), set(bad_jpeg_seqs)
        self.hello_error, self.version, self.forget_after = hello_error, version, forget_after
        ok, buf = cv2.imencode(".jpg", np.full((SIZE, SIZE, 3), COLOR_BGR, np.uint8))
        self.jpeg = buf.tobytes()
        self.received: list[tuple[int, np.ndarray]] = []   # (seq, landmarks) of every landmarks message
        self.leads: list[float] = []                       # their lead_ms
        self.capture_ts: list[float] = []                  # their capture_ts
        self.replied_at: list[float] = []                  # time.time() when each held-back frame was sent
        self.sessions: list[bytes] = []
        self.hellos = 0
        self._halt = threading.Event()
        self._dropped: dict[bytes, int] = {}
        self._answered: dict[bytes, int] = {}

    def run(self) -> None:
        while not self._halt.is_set():
            while self._rendering and self._rendering[0][0] <= time.perf_counter():
                _, ident, frame = self._rendering.popleft()
                self.sock.send_multipart([ident, P.encode(frame)])
                self.replied_at.append(time.time())
            if not self.sock.poll(5 if self._rendering else 20):
                continue
            ident, raw = self.sock.recv_multipart()
            msg = P.decode(raw, min(self.version, P.PROTOCOL_VERSION))   # strict, as the real server
            if isinstance(msg, P.Hello):
                self.hellos += 1
                self.sessions.append(ident)
                if self.hello_error is not None:
                    self._reply(ident, self.hello_error)
                    continue
                self._reply(ident, P.Welcome(version=self.version, kind=self.kind, size=SIZE,
                                             history_frames=2, num_landmarks=self.num_landmarks,
                                             layout="mediapipe-pose-33", model="fake", backend="none",
                                             subject_stats=self.stats, fps=30.0))
            elif isinstance(msg, P.Landmarks):
                muted = (self.mute_after is not None and ident == self.sessions[0]
                         and self._answered.get(ident, 0) >= self.mute_after)
                if muted:
                    continue
                self.received.append((msg.seq, msg.array()))
                self.capture_ts.append(msg.capture_ts)
                self.leads.append(msg.lead_ms)
                if (self.forget_after is not None and self.hellos == 1
                        and self._answered.get(ident, 0) >= self.forget_after):
                    self._reply(ident, P.Error(P.ErrorCode.NO_SESSION, "fake: no session", msg.seq))
                    continue
                if msg.seq in self.drop:
                    self._dropped[ident] = self._dropped.get(ident, 0) + 1
                    continue
                self._answered[ident] = self._answered.get(ident, 0) + 1
                if msg.seq in self.error_seqs:
                    self._reply(ident, P.Error(P.ErrorCode.BAD_LANDMARKS, "fake: landmarks rejected", msg.seq))
                    continue
                if msg.seq in self.garbage_seqs:
                    self.sock.send_multipart([ident, b"\xc1 not msgpack"])
                    continue
                jpeg = b"not a jpeg" if msg.seq in self.bad_jpeg_seqs else self.jpeg
                frame = P.Frame(seq=msg.seq, capture_ts=msg.capture_ts, jpeg=jpeg,
                                timings={"decode": 0.1, "render": 0.5, "engine": 1.0, "encode": 0.3, "total": 1.9},
                                dropped=self._dropped.get(ident, 0))
                if self.render_s > 0:
                    start = max(time.perf_counter(), self._rendering[-1][0] if self._rendering else 0.0)
                    self._rendering.append((start + self.render_s, ident, frame))
                    self.max_waiting = max(self.max_waiting, len(self._rendering))
                else:
                    self._reply(ident, frame)

    def _reply(self, ident: bytes, msg) -> None:
        self.sock.send_multipart([ident, P.encode(msg)])

    def __enter__(self) -> "FakeServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join(timeout=2)
        self.sock.close(linger=0)


class FakeClock:
    """Stands in for the ``time`` module of clients.sources: ``sleep`` advances ``perf_counter`` and is logged."""

    def __init__(self):
        self.now, self.sleeps = 1000.0, []

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:                                  # capture timestamps
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    import clients.sources

    fake = FakeClock()
    monkeypatch.setattr(clients.sources, "time", fake)
    return fake


def _count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    n, shape = 0, None
    while True:
        ok, f = cap.read()
        if not ok:
            break
        n, shape = n + 1, f.shape[:2]
    cap.release()
    return n, shape


# -- connection --------------------------------------------------------------------------------------------
@pytest.mark.timeout(20)
def test_connect_fails_clearly_when_nothing_listens(tmp_path):
    address = f"ipc://{tmp_path}/nobody"                 # an endpoint nothing is bound to (no port to reserve)
    said = []
    client = CaptureClient(address, timeout_s=0.3, retries=2, log=said.append)
    with pytest.raises(ConnectionError) as e:
        client.connect()
    assert said == [f"no answer from {address} within 0.3 s (try 1/2); retrying"]   # two tries, one retry
    msg = str(e.value)
    assert f"no posecast server answered at {address} after 2 tries (0.3 s each)" in msg
    assert "posecast serve" in msg
    assert server_address("example.org:6000") == "tcp://example.org:6000"
    assert server_address("example.org") == "tcp://example.org:5555"


@pytest.mark.timeout(20)
def test_connect_welcome():
    with FakeServer(subject_stats={"x": 1}) as srv, CaptureClient(srv.address, timeout_s=2, log=_quiet) as c:
        w = c.connect()
        assert (w.kind, w.size, w.num_landmarks, w.fps) == ("dance", SIZE, 33, 30.0)
        assert w.subject_stats == {"x": 1}


@pytest.mark.timeout(20)
def test_connect_busy_refused_or_wrong_version_fails_clearly():
    logs: list[str] = []
    with FakeServer(hello_error=P.Error(P.ErrorCode.SERVER_BUSY, "16 clients")) as srv:
        with pytest.raises(ConnectionError, match=r"stayed busy after 2 tries: 16 clients"):
            CaptureClient(srv.address, timeout_s=0.2, retries=2, log=logs.append).connect()
        assert srv.hellos == 2                              # tried again, on a fresh socket
    assert [m for m in logs if "is busy" in m] == [f"server at {srv.address} is busy: 16 clients (try 1/2)",
                                                   f"server at {srv.address} is busy: 16 clients (try 2/2)"]
    assert not any("no answer" in m for m in logs)
    with FakeServer(hello_error=P.Error(P.ErrorCode.BAD_VERSION, "no version in common")) as srv:
        with pytest.raises(ConnectionError, match="refused the connection: bad_version: no version in common"):
            CaptureClient(srv.address, timeout_s=2, retries=3, log=_quiet).connect()
        assert srv.hellos == 1                              # refused: not tried again
    with FakeServer(version=99) as srv:
        c = CaptureClient(srv.address, timeout_s=2, retries=3, log=_quiet)
        with pytest.raises(ConnectionError, match=r"speaks protocol version 99, this client \[2, 3, 4\]"):
            c.connect()
        assert srv.hellos == 1 and c.welcome is None


@pytest.mark.timeout(20)
def test_client_send_and_receive_api():
    """The client's public streaming API, as the run loop uses it: send without waiting, poll, read replies."""
    lm = DanceMotion(1, 30.0).landmarks(0)
    with FakeServer(drop={1}, garbage_seqs={3}) as srv, CaptureClient(srv.address, timeout_s=2, log=_quiet) as c:
        c.connect()
        assert [c.send_landmarks(100.0 + i, lm) for i in range(4)] == [0, 1, 2, 3]
        assert c.send_landmarks(104.0, None) == 4          # nothing detected: sent as missing
        assert c.ping()
        got: list = []
        for _ in range(500):                               # (a bound on the loop, not a timing assertion)
            if len(got) == 4:
                break
            if c.poll(10):
                got.extend(c.replies())
        assert [type(m).__name__ for m in got] == ["Frame", "Frame", "ProtocolError", "Frame"]
        assert [m.seq for m in got if isinstance(m, P.Frame)] == [0, 2, 4] and got[-1].dropped == 1
        assert got[1].capture_ts == 102.0 and got[1].jpeg == srv.jpeg
        assert not c.poll(0) and list(c.replies()) == []   # nothing more waiting
        assert [s for s, _ in srv.received] == [0, 1, 2, 3, 4]
        assert np.isnan(srv.received[4][1]).all() and np.array_equal(srv.received[0][1], lm)


@pytest.mark.timeout(30)
def test_malformed_and_undecodable_replies_are_counted_as_errors(tmp_path):
    n = 8
    logs: list[str] = []
    with FakeServer(garbage_seqs={3}, bad_jpeg_seqs={5}) as srv:
        with CaptureClient(srv.address, timeout_s=2, log=logs.append) as client:
            st = client.run(SyntheticSource(seed=1, num_frames=n, realtime=False, preview_size=0),
                            record=tmp_path / "v.mp4", headless=True)
    assert st.frames_sent == n and st.lost == 0 and st.dropped == 0
    # 3's reply is no message (frame 4's reply answers it); 5's frame is received but cannot be shown, so it
    # counts as received and as an error (see clients/ledger.py)
    assert st.frames_received == n - 1 and st.errors == 2
    reasons = sorted(st.error_reasons)
    assert reasons[0].startswith("malformed reply: ") and reasons[1] == "undecodable JPEG in a frame reply"
    assert list(st.error_reasons.values()) == [1, 1]
    assert any("server error on frame 5: undecodable JPEG" in m for m in logs)
    assert _count_frames(tmp_path / "v.mp4")[0] == n - 2    # every decodable reply recorded


# -- streaming ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_synthetic_stream_records_every_frame(tmp_path):
    n = 12
    drop = {1, 4, 7}
    logs: list[str] = []
    with FakeServer(subject_stats=_dance_stats(), drop=drop, error_seqs={9}) as srv:
        client = CaptureClient(srv.address, timeout_s=2, log=logs.append)
        with client:
            src = SyntheticSource(seed=3, fps=30, num_frames=n, realtime=False, preview_size=96)
            st = client.run(src, record=tmp_path / "out.mp4", headless=True)
    assert st.frames_sent == n
    assert st.dropped == len(drop) and st.errors == 1 and st.lost == 0
    assert st.frames_received + st.dropped + st.errors == st.frames_sent
    assert st.frames_received == n - len(drop) - 1
    assert any("fake: landmarks rejected" in m for m in logs)
    assert st.error_reasons == {"bad_landmarks: fake: landmarks rejected": 1}
    assert st.latency_p50_ms is not None and 0 < st.latency_p50_ms <= st.latency_p99_ms < 2000
    assert st.fps > 0 and {"capture_to_send", "server_total", "decode", "glass_to_glass"} <= st.stages.keys()
    assert st.output == str(tmp_path / "out.mp4")
    frames, shape = _count_frames(tmp_path / "out.mp4")
    assert frames == st.frames_received
    assert shape[0] > 256 and shape[1] >= 2 * 256  # input panel | output (enlarged), status bar below
    # every landmarks message reached the server: 33 finite rows, in order
    assert [s for s, _ in srv.received] == list(range(n))
    assert all(a.shape == (33, 3) and np.isfinite(a).all() for _, a in srv.received)


@pytest.mark.timeout(60)
def test_forecasting_under_emulated_latency_shows_the_pose_of_the_moment():
    """100 ms of emulated latency on a paced synthetic stream: the frames shown without a forecast are one latency
    behind the body; forecast one measured latency ahead, they are much closer (display-time pose error)."""
    n, runs = 60, {}
    for forecast in ("none", "constant_velocity", "learned"):
        with FakeServer(subject_stats=_dance_stats()) as srv:
            runs[forecast] = capture(srv.address, "synthetic:8", headless=True, max_frames=n, timeout_s=3,
                                     normalize="same-camera", log=_quiet, forecast=forecast,
                                     emulate_latency_ms=100.0, one_euro=None)   # (a noise-free source)
            runs[forecast].leads = list(srv.leads)
    for name, st in runs.items():
        assert st.frames_received == n and st.forecast == name and st.emulated_latency_ms == 100.0
        assert st.latency_p50_ms >= 100.0                       # the replies were held back
        assert st.display_error_frames >= n - 5                 # nearly every shown frame scored
        assert "display-time pose error" in st.summary()
    assert runs["none"].lead_p50_ms is None and set(runs["none"].leads) == {0.0}
    learned = runs["learned"]
    assert 100.0 <= learned.lead_p50_ms <= 300.0                # the measured latency, sent with each frame
    assert learned.leads[0] == 0.0 and max(learned.leads) >= 100.0
    # (The first frames go out before any reply has measured the latency: forecast 0 ms ahead.)
    assert runs["constant_velocity"].display_error < 0.9 * runs["none"].display_error
    assert learned.display_error < 0.8 * runs["none"].display_error
    # An older server (protocol 3) gets no lead_ms (it would refuse the field); the forecast works the same.
    with FakeServer(subject_stats=_dance_stats(), version=3) as srv:
        st = capture(srv.address, "synthetic:8", headless=True, max_frames=20, timeout_s=3, log=_quiet,
                     emulate_latency_ms=50.0)
        assert st.errors == 0 and st.frames_received == 20 and st.forecast == "learned"
    with pytest.raises(ValueError, match="emulate_latency_ms must be in"):
        with FakeServer() as srv:
            capture(srv.address, "synthetic:8", headless=True, max_frames=2, log=_quiet, emulate_latency_ms=-5)


@pytest.mark.timeout(30)
def test_recorded_mp4_has_all_frames_and_output_panel(tmp_path):
    n = 8
    with FakeServer() as srv:
        st = capture(srv.address, "synthetic:2", record=tmp_path / "v.mp4", headless=True, max_frames=n,
                     realtime=False, timeout_s=2, log=_quiet)
    assert st.frames_sent == st.frames_received == n and st.dropped == 0
    cap = cv2.VideoCapture(str(tmp_path / "v.mp4"))
    got = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        got.append(f)
    assert len(got) == n
    # the right panel is the server's solid colour (the status bar is below the panels)
    patch = got[-1][20:230, -200:-20].reshape(-1, 3).mean(0)
    assert np.abs(patch - COLOR_BGR).max() < 20


@pytest.mark.timeout(30)
def test_record_keeps_wall_clock_time_when_frames_are_dropped(tmp_path):
    n = 30
    drop = set(range(1, n - 1, 2))                  # every other frame never comes back (latest-wins drops)
    with FakeServer(drop=drop) as srv:
        st = capture(srv.address, "synthetic:1", record=tmp_path / "v.mp4", headless=True, max_frames=n,
                     timeout_s=2, log=_quiet)       # paced at the source's 30 fps
    assert st.frames_sent == n and st.frames_received == n - len(drop)
    frames, _ = _count_frames(tmp_path / "v.mp4")
    # one video frame per 1/30 s of the stream, the last view repeated where replies were dropped
    assert frames >= n - 2 and st.record_repeats == frames - st.frames_received >= len(drop) - 2


class _ProbeSource(SyntheticSource):
    """A landmark source that notes, whenever an item is taken, how many landmarks the server has received."""

    def __init__(self, server: "FakeServer", n: int):
        super().__init__(seed=1, num_frames=n, realtime=False, preview_size=0)
        self.server, self.seen = server, []

    def _items(self):
        for item in super()._items():
            self.seen.append(len(self.server.received))
            yield item


@pytest.mark.timeout(30)
def test_fast_mode_reads_one_frame_ahead_never_more():
    n = 10
    with FakeServer(render_s=0.02) as srv:
        src = _ProbeSource(srv, n)
        with CaptureClient(srv.address, timeout_s=2, max_in_flight=1, log=_quiet) as client:
            st = client.run(src, headless=True)
    assert st.frames_sent == st.frames_received == n
    # item k is taken once frame k - 1 went out (the server has it, or it is on its way), never earlier: no backlog
    # builds in a client-side queue
    assert all(k - 1 <= seen <= k for k, seen in enumerate(src.seen)), src.seen


@pytest.mark.timeout(30)
def test_lock_step_finds_the_next_frame_while_the_server_renders_and_drops_none():
    """--fast keeps one frame in flight (a second could be dropped by the server's latest-wins) but reads one ahead:
    each frame is captured and its landmarks found while the server renders the one before, and sent when that
    one's reply comes back (before, the client waited for the reply to start reading)."""
    n = 10
    with FakeServer(render_s=0.05) as srv:
        st = capture(srv.address, "synthetic:1", headless=True, realtime=False, max_frames=n, timeout_s=2,
                     log=_quiet)
        assert [seq for seq, _ in srv.received] == list(range(n))
        assert srv.max_waiting == 1
        captured = [ts for ts in srv.capture_ts]
        replied = srv.replied_at
    assert (st.frames_sent, st.frames_received, st.dropped, st.lost) == (n, n, 0, 0)
    assert all(captured[i + 1] < replied[i] for i in range(n - 1)), (captured, replied)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["same-camera", "off", "retarget"])
def test_normalisation_modes_apply_the_training_crop(mode):
    from models.posenorm import crop_landmarks

    crop = {"mode": "fixed", "box": [0.25, 0.1, 0.5], "aspect": 1.0}
    stats = {**_dance_stats(), "crop": crop}
    n = 6
    motion = DanceMotion(1, 30.0)
    raw = [motion.landmarks(i) for i in range(n)]
    with FakeServer(subject_stats=stats) as srv:
        capture(srv.address, "synthetic:1", headless=True, realtime=False, max_frames=n, timeout_s=2,
                normalize=mode, log=_quiet)
        sent = [a for _, a in srv.received]
    cropped = [crop_landmarks(r, crop["box"], 1.0) for r in raw]
    if mode == "retarget":   # body scale and torso position mapped onto the subject's: not the bare crop
        assert max(np.abs(a[:, :2] - c[:, :2]).max() for a, c in zip(sent, cropped)) > 0.05
    else:                    # the live camera is the training camera: only the crop transform, no re-centring
        for a, c in zip(sent, cropped):
            np.testing.assert_array_equal(a, c)
        np.testing.assert_allclose(sent[0][:, 0], (raw[0][:, 0] - 0.25) / 0.5, atol=1e-6)
    # a model trained on full frames (no crop in its statistics): same-camera / off send what was detected
    if mode != "retarget":
        with FakeServer(subject_stats=_dance_stats()) as srv:
            capture(srv.address, "synthetic:1", headless=True, realtime=False, max_frames=n, timeout_s=2,
                    normalize=mode, log=_quiet)
            for (_, a), r in zip(srv.received, raw):
                np.testing.assert_array_equal(a, r)
    with pytest.raises(ValueError, match="unknown normalisation mode 'sideways'"):
        CaptureClient("tcp://127.0.0.1:1", normalize="sideways")


def test_draw_landmarks_on_the_input_panel():
    from clients.capture import draw_landmarks

    lm = DanceMotion(2, 30.0).landmarks(5)
    img = draw_landmarks(np.zeros((128, 128, 3), np.uint8), lm, "dance")
    drawn = img.any(axis=2)
    x, y = (lm[11, :2] * 128).astype(int)              # the left shoulder is on the skeleton
    assert drawn[y - 1:y + 2, x - 1:x + 2].any() and 100 < drawn.sum() < 0.5 * 128 * 128
    hidden = lm.copy()
    hidden[13:23, 2] = 0.0                              # arms and hands not visible: their lines are not drawn
    assert draw_landmarks(np.zeros((128, 128, 3), np.uint8), hidden, "dance").any(axis=2).sum() < drawn.sum()
    assert not draw_landmarks(np.zeros((64, 64, 3), np.uint8), np.full((33, 3), np.nan), "dance").any()
    face = np.random.default_rng(0).uniform(0.3, 0.7, (478, 3)).astype(np.float32)
    assert draw_landmarks(np.zeros((64, 64, 3), np.uint8), face, "face").any()


@pytest.mark.timeout(30)
def test_save_landmarks_then_replay_is_identical(tmp_path):
    n = 15
    rec = tmp_path / "rec.npz"
    stats = _dance_stats(seed=1)
    with FakeServer(subject_stats=stats) as srv:
        st = capture(srv.address, "synthetic:5", save_landmarks=rec, headless=True, max_frames=n,
                     realtime=False, timeout_s=2, log=_quiet)
        first = [a for _, a in srv.received]
    assert st.landmarks_path == str(rec) and st.frames_sent == n
    with np.load(rec, allow_pickle=False) as z:
        assert str(z["format"]) == "posecast-landmarks" and str(z["kind"]) == "dance"
        assert z["landmarks"].shape == (n, 33, 3) and z["landmarks"].dtype == np.float32
        assert float(z["fps"]) == 30.0 and z["capture_ts"].shape == (n,)
    # the raw (un-normalised) synthetic motion was saved
    m = DanceMotion(5, 30.0)
    np.testing.assert_array_equal(load_recording(rec)["landmarks"], np.stack([m.landmarks(i) for i in range(n)]))
    # normalisation changed what was sent (different subject) ...
    assert not np.allclose(first[0], m.landmarks(0))
    # ... and replaying the recording sends exactly the same landmarks again
    with FakeServer(subject_stats=stats) as srv:
        src = open_source(str(rec), "dance", realtime=False)
        assert isinstance(src, RecordingSource) and len(src) == n
        with CaptureClient(srv.address, timeout_s=2, log=_quiet) as c:
            st2 = c.run(src, headless=True)
        second = [a for _, a in srv.received]
    assert st2.frames_sent == st2.frames_received == n
    np.testing.assert_array_equal(np.stack(first), np.stack(second))
    # a recording of the wrong kind is refused clearly
    with pytest.raises(SourceError, match="'dance' landmarks but the server's model is 'face'"):
        open_source(str(rec), "face")


@pytest.mark.timeout(30)
def test_recording_source_pacing_and_missing_frames(tmp_path, clock):
    lm = np.stack([DanceMotion(0).landmarks(i) for i in range(6)])
    lm[2] = np.nan
    path = save_recording(tmp_path / "r.npz", lm, kind="dance", fps=50.0, aspect=4 / 3)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left nothing behind
    src = RecordingSource(path)
    assert (src.kind, src.fps, src.aspect) == ("dance", 50.0, pytest.approx(4 / 3))
    items = list(src)
    assert clock.sleeps == pytest.approx([1 / 50] * 5)   # paced at its fps: each item after the first waits 1/fps
    assert [it.index for it in items] == list(range(6)) and all(it.rgb is None for it in items)
    assert items[2].landmarks is None
    np.testing.assert_array_equal(items[3].landmarks, lm[3])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(SourceError, match="cannot read landmark recording"):
        RecordingSource(tmp_path / "bad.npz")


@pytest.mark.timeout(30)
def test_server_goes_away_and_comes_back(tmp_path):
    logs: list[str] = []
    with FakeServer(mute_after=4) as srv:
        client = CaptureClient(srv.address, timeout_s=0.5, retries=2, log=logs.append)
        with client:
            st = client.run(SyntheticSource(seed=0, num_frames=60, realtime=True, fps=60, preview_size=0),
                            headless=True)
        assert srv.hellos == 2
    assert st.reconnects == 1 and st.lost >= 1
    assert st.frames_sent == 60
    assert st.frames_received + st.dropped + st.errors + st.lost == st.frames_sent
    assert st.frames_received >= 4 + 10  # answered before the hang, and again after reconnecting
    assert any("did the server go away" in m for m in logs) and any("reconnected" in m for m in logs)


@pytest.mark.timeout(30)
def test_server_forgets_the_session_and_the_client_says_hello_again():
    n = 10
    logs: list[str] = []
    with FakeServer(forget_after=4) as srv:
        st = capture(srv.address, "synthetic:1", headless=True, realtime=False, max_frames=n, timeout_s=2,
                     log=logs.append)
        assert srv.hellos == 2 and [s for s, _ in srv.received] == list(range(n))
    # frame 4 got the no_session error (an answer: not lost), the others frames
    assert (st.frames_sent, st.frames_received, st.errors, st.lost, st.reconnects) == (n, n - 1, 1, 0, 1)
    assert st.error_reasons == {"no_session: fake: no session": 1}
    assert "the server lost our session; saying hello again" in logs and f"reconnected to {srv.address}" in logs
    assert not any("did the server go away" in m for m in logs)


@pytest.mark.timeout(30)
def test_server_gone_for_good_gives_up():
    srv = FakeServer()
    srv.start()
    client = CaptureClient(srv.address, timeout_s=0.3, retries=1, log=_quiet)
    client.connect()
    srv.__exit__()  # the server dies
    with pytest.raises(ServerLostError) as e:
        client.run(SyntheticSource(seed=0, num_frames=200, realtime=True, fps=60, preview_size=0), headless=True)
    assert "tcp://127.0.0.1" in str(e.value) and e.value.stats is not None
    assert e.value.stats.frames_received == 0 and e.value.stats.lost > 0
    client.close()


# -- sources -----------------------------------------------------------------------------------------------
def test_video_source_missing_or_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="video file not found: .*nope.mp4"):
        VideoSource(tmp_path / "nope.mp4")
    with pytest.raises(FileNotFoundError):
        open_source(str(tmp_path / "nope.mp4"))
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(SourceError, match="corrupt"):
        VideoSource(bad)


def test_video_source_reads_paces_and_loops(tmp_path, clock):
    path = tmp_path / "v.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (48, 32))
    for i in range(5):
        w.write(np.full((32, 48, 3), i * 40, np.uint8))
    w.release()
    src = VideoSource(path, realtime=False)
    assert src.fps == pytest.approx(25.0) and src.aspect == pytest.approx(1.5)
    items = list(src)
    assert len(items) == 5 and items[0].rgb.shape == (32, 48, 3) and items[0].landmarks is None
    assert clock.sleeps == []                             # realtime=False: as fast as it decodes
    items = list(VideoSource(path, realtime=True))
    assert len(items) == 5 and clock.sleeps == pytest.approx([1 / 25] * 4)
    looped = VideoSource(path, loop=True, realtime=False)
    it = iter(looped)
    assert [next(it).index for _ in range(12)] == list(range(12))
    looped.close()
    assert isinstance(open_source(str(path), realtime=False), VideoSource)


def test_synthetic_source_matches_motion():
    src = open_source("synthetic:4", "dance", realtime=False, num_frames=3, default_fps=24)
    assert isinstance(src, SyntheticSource) and src.fps == 24
    items = list(src)
    m = DanceMotion(4, 24.0)
    assert len(items) == 3
    for i, it in enumerate(items):
        np.testing.assert_array_equal(it.landmarks, m.landmarks(i))
        assert it.rgb.shape == (256, 256, 3) and it.rgb.max() > 0  # rendered skeleton preview
    face = open_source("synthetic:4", "face", realtime=False, num_frames=1)    # the talking face for a face model
    assert face.kind == "face" and next(iter(face)).landmarks.shape == (478, 3)


# -- pose normalisation ------------------------------------------------------------------------------------
def _scaled(base: np.ndarray, k: float, shift) -> np.ndarray:
    out = base.copy()
    out[..., :2] = base[..., :2] * k + np.asarray(shift, np.float32)
    return out


def test_normalize_pose_maps_scale_and_position():
    base = np.stack([DanceMotion(1).landmarks(i) for i in range(30)])
    target = subject_stats(base)
    src = _scaled(base, 0.5, (0.3, 0.1))
    source = subject_stats(src)
    assert pose_scale(source, target) == pytest.approx(2.0, rel=1e-5)
    assert pose_scale(source, target, "torso") == pytest.approx(2.0, rel=1e-5)
    frame = src[7].copy()
    frame[13] = np.nan                 # a missing elbow
    frame[15, 2] = 0.1                 # a barely visible wrist
    out = normalize_pose(frame, source, target)
    assert np.isnan(out[13]).all()
    assert out[15, 2] == pytest.approx(0.1)
    keep = np.arange(33) != 13
    np.testing.assert_allclose(out[keep, :2], base[7][keep, :2], atol=1e-5)
    np.testing.assert_array_equal(out[keep, 2], frame[keep, 2])   # visibility untouched
    got = subject_stats(out[None])
    ref = subject_stats(base[7][None])
    for key in ("shoulder_width", "torso_length"):
        assert got[key] == pytest.approx(ref[key], abs=1e-5)
    np.testing.assert_allclose(got["hip_center"], ref["hip_center"], atol=1e-5)
    # shoulder-width-only scaling of a person with other proportions
    wide = src.copy()
    sh = wide[:, [11, 12], :2]
    wide[:, [11, 12], :2] = (sh - sh.mean(1, keepdims=True)) * 1.5 + sh.mean(1, keepdims=True)
    assert pose_scale(subject_stats(wide), target, "shoulders") == pytest.approx(2.0 / 1.5, rel=1e-4)
    assert pose_scale(subject_stats(wide), target, "torso") == pytest.approx(2.0, rel=1e-4)
    # a source frame of a 16:9 camera: x is compressed by the aspect ratio
    aspect = 16 / 9
    cam = src.copy()
    cam[..., 0] /= aspect
    cam_stats = subject_stats(to_square(cam, aspect))
    np.testing.assert_allclose(normalize_pose(cam[3], cam_stats, target, aspect=aspect), base[3], atol=1e-5)


def test_pose_normalizer_online():
    base = np.stack([DanceMotion(2).landmarks(i) for i in range(40)])
    target = subject_stats(base[:10])
    src = _scaled(base, 1.6, (-0.2, -0.25))
    src[0, [23, 24], 2] = 0.2          # hips hidden in the first frame: not used for the estimate
    norm = PoseNormalizer(target, warmup=10)
    assert norm(None) is None
    np.testing.assert_array_equal(norm(src[0]), src[0])   # nothing learned yet: passes through
    outs = [norm(f) for f in src[1:11]]
    assert norm.ready and norm.source_stats["frames"] == 10
    assert norm.source_stats["torso_length"] == pytest.approx(1.6 * subject_stats(base[1:11])["torso_length"],
                                                              rel=1e-5)
    # frozen after warm-up: later frames map with the same transform
    nan_frame = src[30].copy()
    nan_frame[25:29] = np.nan
    out = norm(nan_frame)
    assert np.isnan(out[25:29]).all()
    t_stats = subject_stats(base[1:11])
    expected = _scaled(base[30], 1.0, (0, 0))
    # same subject -> identity up to the difference between the medians of frames 0-9 and 1-10
    k = target["torso_length"] / t_stats["torso_length"]
    assert abs(k - 1) < 0.05
    np.testing.assert_allclose(out[:25, :2], expected[:25, :2], atol=0.02)
    assert len(outs) == 10
    # no target statistics: pass-through
    assert not PoseNormalizer(None).active
    np.testing.assert_array_equal(PoseNormalizer(None)(src[5]), src[5])
    # face meshes pass through
    face = np.random.default_rng(0).random((478, 3)).astype(np.float32)
    np.testing.assert_array_equal(PoseNormalizer(target)(face), face)


# -- end to end through MediaPipe ----------------------------------------------------------------------------
@needs_messi
@pytest.mark.timeout(60)
def test_video_of_a_real_person_through_mediapipe(tmp_path):
    img = cv2.imread(str(MESSI))
    h, w = img.shape[:2]
    path = tmp_path / "messi.mp4"
    n = 10
    W, H = 640, 400
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (W, H))
    for i in range(n):
        s = 0.85 + 0.02 * i
        im = cv2.resize(img, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
        canvas = np.full((H, W, 3), 90, np.uint8)
        x0, y0 = 10 + 6 * i, 20 + 2 * i
        canvas[y0:y0 + im.shape[0], x0:x0 + im.shape[1]] = im[:H - y0, :W - x0]
        vw.write(canvas)
    vw.release()
    with FakeServer(subject_stats=_dance_stats()) as srv:
        st = capture(srv.address, str(path), headless=True, realtime=False, timeout_s=10,
                     record=tmp_path / "view.mp4", save_landmarks=tmp_path / "messi.npz", log=_quiet)
        sent = [a for _, a in srv.received]
    assert st.frames_sent == n and st.landmarks_found == n
    assert st.frames_received + st.dropped == n
    assert len(sent) == n and all(a.shape == (33, 3) for a in sent)
    assert all(np.isfinite(a).all() for a in sent)
    assert "extract" in st.stages and st.stages["extract"] > 0
    rec = load_recording(tmp_path / "messi.npz")
    assert rec["aspect"] == pytest.approx(W / H) and np.isfinite(rec["landmarks"]).all()
    raw = rec["landmarks"]
    assert (raw[:, [11, 12, 23, 24], 2] > 0.5).all()   # shoulders and hips clearly visible
    # the player moves right and grows between the first and the last frame, in the raw landmarks ...
    assert raw[-1, [11, 12, 23, 24], 0].mean() > raw[0, [11, 12, 23, 24], 0].mean()
    # ... and normalisation puts his torso where the training subject's is
    tgt = _dance_stats()
    centre = lambda a: a[[11, 12, 23, 24], :2].mean(0)  # noqa: E731
    tc = (np.asarray(tgt["shoulder_center"]) + np.asarray(tgt["hip_center"])) / 2
    assert np.abs(centre(sent[0]) - tc).max() < 0.05
    assert _count_frames(tmp_path / "view.mp4")[0] == st.frames_received


@needs_megamind
@pytest.mark.timeout(120)
def test_live_face_labels_equal_training_labels(tmp_path):
    """One crop for face landmarks: the capture client applies prepare's stabilised face crop to the live mesh,
    so the label map the server renders for a frame is the very label map the model was trained on."""
    from models.posenorm import FaceNormalizer, face_stats
    from models.render import render_face
    from trainer.dataset import Dataset
    from trainer.prepare import prepare_video

    n = 30
    prepare_video(MEGAMIND, tmp_path / "face", kind="face", size=128, max_frames=n, min_clip_frames=1,
                  progress=False)
    ds = Dataset(tmp_path / "face")
    stats = ds.subject_stats                      # what `posecast train` saves with the model
    assert stats["crop"]["mode"] == "face" and stats["crop"]["fps"] == pytest.approx(23.976, abs=0.01)
    with FakeServer(kind="face", num_landmarks=478, subject_stats=stats) as srv:
        st = capture(srv.address, str(MEGAMIND), headless=True, realtime=False, max_frames=n, timeout_s=10,
                     normalize="same-camera", save_landmarks=tmp_path / "face.npz", log=_quiet)
        sent = dict(srv.received)
    assert st.frames_sent == n and sorted(sent) == list(range(n))
    src = ds.manifest.extra["source_frame_indices"]
    assert len(src) >= n - 2
    for i, j in enumerate(src):
        live, train = render_face(sent[j], 128, 128), render_face(np.asarray(ds.landmarks[i]), 128, 128)
        assert np.array_equal(live, train), f"frame {j}: live label differs from the training label"
    missing = sorted(set(range(n)) - set(src))
    assert all(np.isnan(sent[j]).all() for j in missing)  # no face: sent as missing
    # what MediaPipe found is still what was recorded (un-normalised, full-frame coordinates)
    rec = load_recording(tmp_path / "face.npz")
    assert rec["kind"] == "face" and rec["landmarks"].shape == (n, 478, 3)
    raw = rec["landmarks"]
    assert 0.3 < np.nanmedian(raw[:, :, 0]) < 0.7 and np.nanmax(raw[:, :, 0]) - np.nanmin(raw[:, :, 0]) < 0.6

    # retarget: a wider, shorter face (another person, say) is mapped onto the training face's proportions
    found = [f for f in raw if not np.isnan(f).all()]
    wide = []
    for f in found:
        c = f[:, :2].mean(axis=0)
        g = f.copy()
        g[:, :2] = c + (f[:, :2] - c) * (1.3, 0.85)
        wide.append(g)

    def mapped(mode, faces):  # the live face's statistics are learnt on a first pass, then frozen
        norm = FaceNormalizer(stats, mode, aspect=float(rec["aspect"]), warmup=len(faces))
        [norm(f) for f in faces]
        assert norm(None) is None  # no face: the crop starts over, the learnt statistics stay
        return face_stats(np.stack([norm(f) for f in faces]))

    same, stretched = mapped("same-camera", found), mapped("same-camera", wide)
    assert stretched["eye_distance"] / stretched["face_height"] > 1.4 * same["eye_distance"] / same["face_height"]
    # retarget undoes the stretch: the wide face comes out with the training face's proportions and place
    got = mapped("retarget", wide)
    # (within 3 %: the measures are lengths of tilted segments, the mapping scales x and y separately)
    for key in ("eye_distance", "face_height"):
        assert got[key] == pytest.approx(stats[key], rel=0.03), key
    assert abs(got["face_height"] / stats["face_height"] - 1) < 0.25 * abs(stretched["face_height"] /
                                                                         stats["face_height"] - 1)
    assert got["face_center"] == pytest.approx(stats["face_center"], abs=0.01)
    with FakeServer(kind="face", num_landmarks=478) as srv:                   # synthetic: the talking face
        st = capture(srv.address, "synthetic", headless=True, max_frames=2, timeout_s=2, log=_quiet)
        sent = [a for _, a in srv.received]
    assert st.frames_sent == 2 and sent[0].shape == (478, 3)


@needs_megamind
@pytest.mark.timeout(120)
def test_a_live_face_is_forecast_with_its_step_measured_on_the_image(monkeypatch):
    """On a camera or a video the client measures each frame's head step on the image (models/forecast.py
    HeadMotion, in the source thread) and the face mesh's forecast moves by it."""
    from models import forecast

    steps = []
    update = forecast.MeshForecaster.update

    def spy(self, t, landmarks, step=None):
        steps.append(step)
        return update(self, t, landmarks, step)

    monkeypatch.setattr(forecast.MeshForecaster, "update", spy)
    n = 12
    with FakeServer(kind="face", num_landmarks=478) as srv:
        st = capture(srv.address, str(MEGAMIND), headless=True, max_frames=n, timeout_s=10, normalize="off",
                     lead_ms=100, log=_quiet)
    assert st.frames_sent == n and st.forecast == "constant_velocity"
    assert st.stages.get("head_motion", 0) > 0
    measured = [s for s in steps if s is not None]
    assert len(steps) >= n - 2 and len(measured) >= len(steps) - 2      # all but the first (and a lost face)
    assert all(s.shape == (2,) and np.isfinite(s).all() and np.abs(s).max() < 0.2 for s in measured)
    steps.clear()
    with FakeServer(kind="face", num_landmarks=478) as srv:
        st = capture(srv.address, str(MEGAMIND), headless=True, max_frames=4, timeout_s=10, normalize="off",
                     forecast="none", log=_quiet)
    assert st.frames_sent == 4 and "head_motion" not in st.stages and not steps   # nothing forecast: not measured


def test_face_crop_is_causal_stable_and_restarts_on_jumps():
    from models.posenorm import FaceCrop, FaceCropConfig, crop_landmarks, face_box
    from trainer.prepare import map_landmarks

    rng = np.random.default_rng(0)
    base = np.zeros((478, 3), np.float32)
    base[:, :2] = rng.uniform(0.4, 0.6, (478, 2))
    cfg = FaceCropConfig(fps=25.0)
    crop = FaceCrop(cfg)
    box0, restarted = crop.update(base, 1.5)
    assert restarted
    cx, cy, side = face_box(base, 1.5, cfg)
    assert box0 == pytest.approx((cx - side / 2, cy - side / 2, side))
    assert crop.update(base, 1.5) == (pytest.approx(box0), False)        # a still face: a still crop
    moved = base.copy()
    moved[:, 0] += 0.01                                                  # a small move: followed with a lag
    box1, restarted = crop.update(moved, 1.5)
    alpha = 1 - np.exp(-1 / (25.0 * cfg.tau_center_s))
    assert not restarted and box1[0] == pytest.approx(box0[0] + alpha * 0.01 * 1.5)
    far = base.copy()
    far[:, 0] -= 0.3                                                     # another shot: start over at once
    box2, restarted = crop.update(far, 1.5)
    assert restarted and box2[0] == pytest.approx(box0[0] - 0.3 * 1.5)
    assert crop(None) is None and crop.update(base, 1.5)[1]              # no face resets
    # the crop transform is prepare's landmark mapping (boxes in source pixels there, frame heights here)
    w, h = 720, 480
    box_px = (100.0, 40.0, 300.0)
    np.testing.assert_array_equal(map_landmarks(base, box_px, w, h, "face"),
                                  crop_landmarks(base, (100 / h, 40 / h, 300 / h), w / h, scale_z=True))
