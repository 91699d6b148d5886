"""The browser front's bridge (clients/web/bridge.py) against a real posecast server, without a browser: a test
WebSocket plays the page. The page itself, in Chromium, is tests/test_browser.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("aiohttp")
from aiohttp import ClientSession, WSMsgType  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402

from clients.web import assets as A  # noqa: E402
from clients.web.bridge import Bridge, BridgeConfig, PageError, parse_frame_message, parse_page_message  # noqa: E402
from models.motion import DanceMotion  # noqa: E402
from trainer.synth import DancerRenderer  # noqa: E402


@pytest.fixture
def fake_assets(tmp_path):
    """An assets folder with every package marked complete (a stub script each): enough to serve the page."""
    for key, pkg in A.PACKAGES.items():
        d = A.package_dir(key, tmp_path)
        d.mkdir(parents=True)
        (d / pkg.check).write_text(f"// {pkg.name}\n")
        (d / ".complete").write_text("test\n")
    d = tmp_path / A.POSE_TASKS_FOLDER
    d.mkdir()
    (d / A.POSE_TASKS["full"]).write_bytes(b"task")
    (d / ".complete").write_text("test\n")
    assert A.missing(tmp_path) == []
    return tmp_path


@contextlib.asynccontextmanager
async def running_bridge(server: str, root, **cfg):
    cfg.setdefault("timeout_s", 10.0)
    b = Bridge(BridgeConfig(server=server, **cfg), root, log=lambda m: None)
    ts = TestServer(b.app(), host="127.0.0.1")
    await ts.start_server()
    try:
        async with ClientSession() as cs:
            yield b, ts, cs
    finally:
        await ts.close()


def landmarks_msg(i: int, motion=DanceMotion(seed=2), **over) -> str:
    pts = motion.landmarks(i)[:, :3]
    d = {"type": "landmarks", "id": i, "w": 640, "h": 480, "points": [float(v) for v in pts.ravel()]}
    d.update(over)
    return json.dumps(d)


async def next_message(ws, timeout=20.0):
    m = await asyncio.wait_for(ws.receive(), timeout)
    if m.type == WSMsgType.TEXT:
        return json.loads(m.data)
    if m.type == WSMsgType.BINARY:
        head, jpeg = parse_frame_message(m.data)
        return {**head, "jpeg": jpeg}
    return {"type": "closed", "ws_type": m.type}


async def frames_for(ws, ids: set, timeout=30.0) -> dict:
    """Read until every id in ``ids`` was answered (a frame or an error); returns id -> message."""
    got = {}
    while ids - set(got):
        m = await next_message(ws, timeout)
        if "id" in m and m["id"] is not None:
            got[m["id"]] = m
        elif m.get("type") == "closed":
            raise AssertionError(f"socket closed with {ids - set(got)} unanswered")
    return got


# -- the page's messages -----------------------------------------------------------------------------------------
def test_parse_page_message_accepts_landmarks_and_names_what_is_wrong():
    kind, d = parse_page_message(landmarks_msg(3), (33,))
    assert kind == "landmarks" and d["id"] == 3 and d["points"].shape == (33, 3) and d["points"].dtype == np.float32
    kind, d = parse_page_message(json.dumps({"type": "landmarks", "id": 1, "w": 2, "h": 2, "points": None}), (33,))
    assert d["points"] is None
    cases = {
        b"\x00\x01": "JSON text, got binary",
        "{nope": "not JSON",
        "[1, 2]": "JSON object, got list",
        '{"type": "hello"}': "unknown message type 'hello'",
        '{"type": "landmarks", "id": -1, "w": 1, "h": 1, "points": null}': "'id' must be an integer",
        '{"type": "landmarks", "id": true, "w": 1, "h": 1, "points": null}': "'id' must be an integer",
        '{"type": "landmarks", "id": 1, "w": 0, "h": 1, "points": null}': "'w' must be an integer in [1, 16384]",
        '{"type": "landmarks", "id": 1, "w": 1, "h": 1, "points": [1, 2, 3]}': "K in [33], got 3",
        '{"type": "landmarks", "id": 1, "w": 1, "h": 1, "points": {"a": 1}}': "got dict",
        '{"type": "landmarks", "id": 1, "w": 1, "h": 1, "points": null, "ms": "x"}': "'ms' must be a number",
    }
    for text, fragment in cases.items():
        with pytest.raises(PageError, match=None) as e:
            parse_page_message(text, (33,))
        assert fragment in e.value.reason, (text, e.value.reason)
    bad = [0.5] * 99
    bad[7] = "x"
    with pytest.raises(PageError, match="numbers only"):
        parse_page_message(json.dumps({"type": "landmarks", "id": 1, "w": 1, "h": 1, "points": bad}), (33,))
    bad[7] = float("nan")
    with pytest.raises(PageError, match="finite") as e:
        parse_page_message(json.dumps({"type": "landmarks", "id": 4, "w": 1, "h": 1, "points": bad}), (33,))
    assert e.value.code == "bad_landmarks" and e.value.page_id == 4
    kind, d = parse_page_message('{"type": "stats", "fps": 24.5, "junk": "x", "ok": true}', (33,))
    assert kind == "stats" and d == {"fps": 24.5}


# -- a page through the bridge to a real server ----------------------------------------------------------------------
def test_page_gets_welcome_and_a_frame_per_landmarks_in_order(make_server, fake_assets):
    srv = make_server()

    async def go():
        async with running_bridge(srv.endpoint, fake_assets) as (b, ts, cs):
            async with cs.ws_connect(ts.make_url("/ws")) as ws:
                w = await next_message(ws)
                assert w["type"] == "welcome" and w["kind"] == "dance" and w["num_landmarks"] == 33
                ids = []
                for i in range(10, 16):    # page ids are the page's own: echoed, never used as protocol seqs
                    await ws.send_str(landmarks_msg(i))
                    ids.append(i)
                    got = await frames_for(ws, {i})
                    f = got[i]
                    assert "jpeg" in f, f
                    img = cv2.imdecode(np.frombuffer(f["jpeg"], np.uint8), cv2.IMREAD_COLOR)
                    assert img.shape == (w["size"], w["size"], 3)
                    assert f["seq"] == i - 10 and f["dropped"] == 0
                await ws.send_str(json.dumps({"type": "landmarks", "id": 99, "w": 640, "h": 480, "points": None}))
                assert "jpeg" in (await frames_for(ws, {99}))[99]      # nothing detected is still answered
            assert b.counters.frames_sent == 7 and b.counters.frames_relayed == 7 and b.counters.bad_messages == 0

    asyncio.run(go())


def test_bridge_fuzz_bad_messages_get_errors_and_hurt_no_one(make_server, fake_assets):
    """A counted fuzz run: every malformed message from a page is answered with an error; the page's session goes
    on, and another page streaming at the same time gets every frame."""
    srv = make_server()
    rng = random.Random(7)

    def junk() -> str | bytes:
        while True:         # a malformed message by the parser's own judgement (some mutations stay valid)
            m = mutation()
            try:
                parse_page_message(m, (33,))
            except PageError:
                return m

    def mutation() -> str | bytes:
        r = rng.random()
        if r < 0.2:
            return rng.randbytes(rng.randint(1, 300))
        if r < 0.4:
            return "".join(rng.choice("{}[]\":,0123456789abcdefnull ") for _ in range(rng.randint(1, 80)))
        base = json.loads(landmarks_msg(rng.randint(0, 50)))
        key = rng.choice(["type", "id", "w", "h", "points", "ms"])
        base[key] = rng.choice([None, -5, 2 ** 60, "x", [], {}, 1.5, True, [1, 2], [[0.1] * 3] * 33,
                                [float(x) for x in range(12)], "landmarks"])
        return json.dumps(base)

    async def go():
        async with running_bridge(srv.endpoint, fake_assets, rate_hz=10_000, rate_burst=10_000) as (b, ts, cs):
            async with cs.ws_connect(ts.make_url("/ws")) as bad, cs.ws_connect(ts.make_url("/ws")) as good:
                assert (await next_message(bad))["type"] == "welcome"
                assert (await next_message(good))["type"] == "welcome"
                n = 300
                for k in range(n):
                    m = junk()
                    await (bad.send_bytes(m) if isinstance(m, bytes) else bad.send_str(m))
                    if k % 30 == 0:     # the other page streams meanwhile
                        await good.send_str(landmarks_msg(k))
                        assert "jpeg" in (await frames_for(good, {k}))[k]
                errors = [await next_message(bad) for _ in range(n)]
                assert all(e["type"] == "error" and e["code"] in ("bad_message", "bad_landmarks") for e in errors)
                assert b.counters.bad_messages == n
                await bad.send_str(landmarks_msg(500))           # the fuzzed page's session still works
                assert "jpeg" in (await frames_for(bad, {500}))[500]
            assert b.counters.frames_relayed == 11

    asyncio.run(go())


def test_rate_limit_drops_and_reports_the_excess(make_server, fake_assets):
    srv = make_server()

    async def go():
        async with running_bridge(srv.endpoint, fake_assets, rate_hz=1.0, rate_burst=5, max_in_flight=64) \
                as (b, ts, cs):
            async with cs.ws_connect(ts.make_url("/ws")) as ws:
                await next_message(ws)
                for i in range(40):
                    await ws.send_str(landmarks_msg(i))
                got, dropped, limited = set(), 0, None
                while 4 not in got or limited is None:     # the server may skip to the newest (latest wins)
                    m = await next_message(ws)
                    if "jpeg" in m:
                        got.add(m["id"])
                        dropped += m["dropped"]
                    elif m.get("code") == "rate_limited":
                        limited = m
                assert got <= set(range(5)) and len(got) + dropped == 5
                assert "more than 1 messages/s (burst 5)" in limited["reason"]
            assert b.counters.rate_limited >= 34 and b.counters.frames_sent <= 6

    asyncio.run(go())


def test_too_many_pages_oversize_messages_and_foreign_origins(make_server, fake_assets):
    srv = make_server()

    async def go():
        async with running_bridge(srv.endpoint, fake_assets, max_pages=1, max_message_bytes=4096) as (b, ts, cs):
            async with cs.ws_connect(ts.make_url("/ws")) as first:
                assert (await next_message(first))["type"] == "welcome"
                async with cs.ws_connect(ts.make_url("/ws")) as second:
                    m = await next_message(second)
                    assert m["code"] == "server_busy" and "already serves 1 pages" in m["reason"]
                    assert (await next_message(second))["type"] == "closed"
                with pytest.raises(Exception, match="403"):
                    await cs.ws_connect(ts.make_url("/ws"), headers={"Origin": "http://evil.example"})
                await first.send_str("x" * 10_000)             # over max_message_bytes: this page is closed ...
                assert (await next_message(first))["type"] == "closed"
            await asyncio.sleep(0.2)
            async with cs.ws_connect(ts.make_url("/ws")) as again:     # ... and the bridge serves the next one
                assert (await next_message(again))["type"] == "welcome"
                await again.send_str(landmarks_msg(1))
                assert "jpeg" in (await frames_for(again, {1}))[1]
            assert b.counters.pages_refused == 2

    asyncio.run(go())


def test_unreachable_server_is_reported_to_the_page(fake_assets):
    async def go():
        async with running_bridge("tcp://127.0.0.1:9", fake_assets, timeout_s=0.5) as (b, ts, cs):
            async with cs.ws_connect(ts.make_url("/ws")) as ws:
                m = await next_message(ws)
                assert m["code"] == "server_unreachable" and "no posecast server answered" in m["reason"]

    asyncio.run(go())


def test_files_served_and_paths_outside_refused(make_server, fake_assets):
    srv = make_server()

    async def go():
        async with running_bridge(srv.endpoint, fake_assets) as (b, ts, cs):
            async with cs.get(ts.make_url("/")) as r:
                assert r.status == 200 and "app.js" in await r.text()
            async with cs.get(ts.make_url("/static/app.js")) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
            async with cs.get(ts.make_url("/assets/tasks/vision_bundle.mjs")) as r:
                assert r.status == 200 and "@mediapipe/tasks-vision" in await r.text()
                assert r.headers["Content-Type"].startswith("text/javascript")     # a module script must be JS
            async with cs.get(ts.make_url("/assets/face/face_mesh.js")) as r:
                assert r.status == 200 and "@mediapipe/face_mesh" in await r.text()
            async with cs.get(ts.make_url("/assets/pose/pose_landmarker_full.task")) as r:
                assert r.status == 200 and await r.read() == b"task"
            for bad in ("/assets/tasks/.complete", "/assets/tasks/..%2F..%2Fetc%2Fpasswd", "/assets/nope/pose.js",
                        "/assets/pose-models/pose_landmark_full.tflite", "/static/..%2Fbridge.py"):
                async with cs.get(ts.make_url(bad)) as r:
                    assert r.status == 404, bad
            async with cs.get(ts.make_url("/stats")) as r:
                assert (await r.json())["pages"] == 0

    asyncio.run(go())


# -- the MediaPipe files -----------------------------------------------------------------------------------------
def _tarball(files: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_assets_are_checked_unpacked_whole_and_required_by_name(tmp_path):
    import base64
    import hashlib

    data = _tarball({"package/vision.mjs": b"js", "package/vision.mjs.map": b"no", "package/wasm/a.wasm": b"w",
                     "package/other/b.wasm": b"no", "package/../../evil": b"no", "package/.hidden": b"no",
                     "other/file": b"no"})
    good = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    pkg = A.Package("@mediapipe/tasks-vision", "1.0", good, "vision.mjs", subfolders=("wasm",))
    with pytest.raises(ValueError, match="integrity mismatch"):
        A.unpack(A.Package("@mediapipe/tasks-vision", "1.0", "sha512-AAAA", "vision.mjs"), data, tmp_path)
    assert list(tmp_path.iterdir()) == []                      # nothing written on a bad download
    dest = A.unpack(pkg, data, tmp_path)
    assert sorted(p.name for p in dest.iterdir()) == [".complete", "a.wasm", "vision.mjs"]
    assert not (tmp_path.parent / "evil").exists()
    only = A.Package("@mediapipe/pose", "1.0", good, "vision.mjs", only=("vision.mjs",))
    assert sorted(p.name for p in A.unpack(only, data, tmp_path / "o").iterdir()) == [".complete", "vision.mjs"]
    with pytest.raises(A.AssetsMissing, match=r"posecast web-assets.*") as e:
        A.require(tmp_path / "empty")
    assert "@mediapipe/tasks-vision@" in str(e.value) and "@mediapipe/face_mesh@" in str(e.value)
    assert "pose landmarker bundles" in str(e.value)


def test_fetch_downloads_nothing_present_and_removes_earlier_bundle_builds(fake_assets):
    """A complete folder is left as it is (no download), except bundles of an earlier build, which are removed."""
    old = fake_assets / "pose-landmarker-0.5.1675469404"
    old.mkdir()
    (old / A.POSE_TASKS["full"]).write_bytes(b"with the segmentation head")
    said = []

    def no_network(url, timeout):
        raise AssertionError(f"fetched {url}")

    assert A.fetch(fake_assets, log=said.append, opener=no_network) == fake_assets
    assert not old.exists() and (fake_assets / A.POSE_TASKS_FOLDER / A.POSE_TASKS["full"]).read_bytes() == b"task"
    assert sum("already in" in line for line in said) == len(A.PACKAGES)
    assert said[-1] == f"removed an earlier build of the pose landmarker bundles: {old}"


def test_posecast_web_without_the_mediapipe_files_says_which_command_fetches_them(tmp_path, capsys):
    from posecast.cli import main

    assert main(["web", "--assets", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("posecast web: error: the MediaPipe files the page runs are not in")
    assert "posecast web-assets" in err and err.count("\n") == 1


def test_pose_landmarker_bundle_is_built_from_the_legacy_models_with_input_metadata(tmp_path):
    """The Tasks API needs an uncompressed zip of the detector and a landmark model carrying input
    normalisation metadata; built here from the wheel's own full pose model (the npm one is the same file)."""
    import zipfile

    import mediapipe
    from mediapipe.tasks.python.metadata.metadata_writers.model_asset_bundle_utils import create_model_asset_bundle

    mods = Path(mediapipe.__file__).parent / "modules"
    files = A.pose_task((mods / "pose_landmark" / "pose_landmark_full.tflite").read_bytes(),
                        (mods / "pose_detection" / "pose_detection.tflite").read_bytes())
    assert sorted(files) == ["pose_detector.tflite", "pose_landmarks_detector.tflite"]
    model = files["pose_landmarks_detector.tflite"]
    assert b"TFLITE_METADATA" in model and b"pose landmarks" in model
    create_model_asset_bundle(files, str(tmp_path / "p.task"))
    with zipfile.ZipFile(tmp_path / "p.task") as z:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        assert z.read("pose_landmarks_detector.tflite") == model


def test_landmark_model_without_its_segmentation_head_gives_the_same_landmarks(tmp_path):
    """The page's bundles drop the landmark model's person-mask head: fewer operators, the mask a
    constant, and the landmarks MediaPipe's Tasks API finds on the synthetic dancer the same to the last bit."""
    import mediapipe
    from mediapipe.tasks.metadata import schema_py_generated as tfl
    from mediapipe.tasks.python import BaseOptions, vision
    from mediapipe.tasks.python.metadata.metadata_writers.model_asset_bundle_utils import create_model_asset_bundle

    mods = Path(mediapipe.__file__).parent / "modules"
    full = (mods / "pose_landmark" / "pose_landmark_full.tflite").read_bytes()
    pruned = A.without_output(full, A.SEGMENTATION_OUTPUT)

    def graph(b):
        m = tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel(b, 0))
        return m, m.subgraphs[0]

    (_, g0), (m1, g1) = graph(full), graph(pruned)
    assert [g1.tensors[o].name for o in g1.outputs] == [g0.tensors[o].name for o in g0.outputs]
    assert 0 < len(g1.operators) < len(g0.operators) - 20
    mask = g1.tensors[g1.outputs[2]]
    assert mask.name == A.SEGMENTATION_OUTPUT.encode() and list(mask.shape) == [1, 256, 256, 1]
    assert not np.frombuffer(bytes(m1.buffers[mask.buffer].data), np.float32).any()
    with pytest.raises(ValueError, match="no output 'mask'.*Identity_2"):
        A.without_output(full, "mask")

    detector = (mods / "pose_detection" / "pose_detection.tflite").read_bytes()
    motion, renderer = DanceMotion(seed=3), DancerRenderer(256, 0)
    frames = [np.ascontiguousarray(renderer.render(motion.pose(i)).frame) for i in range(0, 12, 3)]
    found = []
    whole = {"pose_detector.tflite": detector, "pose_landmarks_detector.tflite": A.with_input_metadata(full)}
    for name, files in (("whole", whole), ("pruned", A.pose_task(full, detector))):
        create_model_asset_bundle(files, str(tmp_path / f"{name}.task"))
        opts = vision.PoseLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(tmp_path / f"{name}.task")),
                                            running_mode=vision.RunningMode.IMAGE, num_poses=1)
        with vision.PoseLandmarker.create_from_options(opts) as lm:
            found.append(np.array([[[q.x, q.y, q.z, q.visibility] for q in lm.detect(
                mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=f)).pose_landmarks[0]] for f in frames]))
    assert found[0].shape == (4, 33, 4)
    np.testing.assert_array_equal(found[1], found[0])


def pose_at(motion, frame: float) -> np.ndarray:
    """The synthetic motion's landmarks between frames (linear between the two around ``frame``)."""
    i = int(frame)
    a, b = motion.landmarks(i), motion.landmarks(i + 1)
    return a + (b - a) * (frame - i)


@pytest.mark.parametrize("forecast", ["none", "auto"])
def test_bridge_forecasts_each_page_by_the_latency_it_measures(fake_assets, forecast):
    """The page says when each frame was captured (its clock) and its glass-to-glass latency; the bridge sends the
    pose forecast that far ahead, with lead_ms, as the capture client does (none: the pose as captured)."""
    from test_capture import FakeServer

    motion = DanceMotion(seed=4)

    async def go(srv):
        async with running_bridge(srv.address, fake_assets, normalize="off", forecast=forecast) as (b, ts, cs):
            async with cs.ws_connect(ts.make_url("/ws")) as ws:
                await next_message(ws)
                for i in range(30):               # the dancer moving, 30 fps on the page's clock, 120 ms latency
                    pts = motion.landmarks(i)[:, :3]
                    await ws.send_str(json.dumps({"type": "landmarks", "id": i, "w": 480, "h": 480,
                                                  "points": [float(v) for v in pts.ravel()],
                                                  "t": 1000.0 + i * 1000 / 30, "lead_ms": 120}))
                    f = (await frames_for(ws, {i}))[i]
                assert "lead_ms" in f             # the server's echo (this fake one does not echo: 0)

    with FakeServer() as srv:
        asyncio.run(go(srv))
        sent = srv.received[-1][1]
    last, future = motion.landmarks(29)[:, :2], pose_at(motion, 29 + 0.12 * 30)[:, :2]
    vis = motion.landmarks(29)[:, 2] > 0.5
    err = np.linalg.norm(sent[:, :2] - future, axis=1)[vis].mean()
    err_none = np.linalg.norm(last - future, axis=1)[vis].mean()
    if forecast == "none":
        np.testing.assert_allclose(sent[:, :2], last, atol=1e-6)
        assert srv.leads[-1] == 0.0
    else:
        assert err < 0.8 * err_none, (err, err_none)     # nearer the pose 120 ms later than the pose captured
        # (auto for dance: the bundled learned forecaster, models/forecaster/)
        assert srv.leads[-1] == 120.0, srv.leads
