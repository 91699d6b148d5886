"""The live pipeline end to end on loopback: real server, real capture client, the demo command."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest

from clients.capture import capture
from posecast.demo import bundled_model, demo
from realtime.engine import open_engine
from realtime.server import Server


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_checkpoint):
    return tiny_checkpoint(tmp_path_factory.mktemp("model"), "dance", size=32, ngf=8, ndf=8, meta={
        "subject_stats": {"shoulder_width": 0.2, "torso_length": 0.25, "shoulder_center": [0.5, 0.35],
                          "hip_center": [0.5, 0.6], "frames": 10}, "dataset_fps": 30.0})


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_capture_client_and_server_account_for_every_frame(tiny_model, tmp_path, backend):
    engine = open_engine(tiny_model, backend)
    with Server(engine, "tcp://127.0.0.1:0", stats_interval_s=3600) as server:
        server.start()
        stats = capture(server.endpoint, "synthetic:4", record=tmp_path / "out.mp4", headless=True,
                        max_frames=120, realtime=False, max_in_flight=8, timeout_s=30)
        server.close()  # joins the serving thread: its counters are final
        counters = server.stats()
    assert stats.frames_sent == 120
    assert stats.frames_received + stats.dropped == stats.frames_sent
    assert stats.errors == 0 and stats.lost == 0
    assert counters["frames"] == stats.frames_received and counters["dropped"] == stats.dropped
    assert stats.latency_p50_ms is not None and 0 < stats.latency_p50_ms <= stats.latency_p99_ms
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == stats.frames_received


@pytest.mark.timeout(180)
def test_demo_reports_the_summary(tiny_model, tmp_path):
    res = demo(tiny_model, frames=60, out=tmp_path / "demo.mp4", realtime=False)
    assert {"frames_sent", "frames_received", "dropped", "fps", "latency_p50_ms", "latency_p99_ms",
            "output"} <= set(res)
    assert res["frames_sent"] == 60 and res["frames_received"] + res["dropped"] == 60
    assert res["fps"] > 0 and res["latency_p99_ms"] >= res["latency_p50_ms"] > 0
    assert res["output"] == str(tmp_path / "demo.mp4")


def test_bundled_model_loads_and_is_small():
    model = bundled_model()
    size = sum(p.stat().st_size for p in model.iterdir())
    assert size <= 25 * 2**20
    engine = open_engine(model, "torch")
    assert engine.cfg.kind == "dance" and engine.cfg.history_frames == 2
    assert engine.meta["subject_stats"]["shoulder_width"] > 0


@pytest.mark.timeout(120)
def test_capture_without_server_fails_clearly():
    out = subprocess.run([sys.executable, "-m", "posecast", "capture", "--server", "tcp://127.0.0.1:9",
                          "--source", "synthetic", "--headless", "--timeout", "0.5", "--retries", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "no posecast server answered at tcp://127.0.0.1:9" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.timeout(180)
def test_demo_cli_json(tiny_model, tmp_path):
    out = subprocess.run([sys.executable, "-m", "posecast", "demo", "--model", str(tiny_model), "--frames", "40",
                          "--out", str(tmp_path / "d.mp4"), "--json"], capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["frames_sent"] == 40 and res["frames_received"] + res["dropped"] == 40


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_welcome_carries_subject_stats_on_every_backend(tiny_model, backend):
    """Pose normalisation needs the training subject's statistics, whatever engine the server runs."""
    engine = open_engine(tiny_model, backend)
    with Server(engine, "tcp://127.0.0.1:0") as server:
        assert server.welcome.subject_stats["shoulder_width"] == 0.2
        assert server.welcome.fps == 30.0
