"""posecast bench: the JSON lines it prints have the documented keys (figures are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from posecast.bench import bench_stream


@pytest.mark.timeout(300)
def test_bench_json_lines():
    out = subprocess.run([sys.executable, "-m", "posecast", "bench", "--json", "--presets", "lite,dance",
                          "--backends", "onnxruntime,torch", "--sizes", "32", "--runs", "3", "--stream-clients", "", "--batch-sizes", ""],
                         capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows[0]["what"] == "machine" and rows[0]["conv_gmac_per_s"] > 0
    gen = [r for r in rows if r["what"] == "generator"]
    assert {(r["preset"], r["backend"]) for r in gen} == {("lite", "onnxruntime"), ("lite", "torch"),
                                                          ("dance", "onnxruntime"), ("dance", "torch")}
    for r in gen:
        assert {"preset", "backend", "size", "p50_ms", "p99_ms", "gmac", "floor_ms"} <= set(r)
        assert r["size"] == 32 and 0 < r["p50_ms"] <= r["p99_ms"] and r["gmac"] > 0 and r["floor_ms"] > 0
    macs = {r["preset"]: r["gmac"] for r in gen}
    assert macs["lite"] < macs["dance"] / 50


@pytest.mark.timeout(300)
def test_bench_stream_accounts_for_every_frame():
    row = bench_stream("lite", "onnxruntime", 32, frames=40, clients=2, fps=60.0)
    assert {"what", "preset", "backend", "size", "clients", "fps", "latency_p50_ms", "latency_p99_ms",
            "server_overhead_ms"} <= set(row)
    assert row["what"] == "stream" and row["clients"] == 2
    assert row["frames_sent"] == 80 and row["frames_received"] + row["dropped"] == 80
    assert row["fps"] > 0 and 0 < row["latency_p50_ms"] <= row["latency_p99_ms"] and row["server_overhead_ms"] > 0


@pytest.mark.timeout(300)
def test_bench_stream_drives_a_face_model_with_the_talking_face():
    """A face model is streamed face-mesh landmarks (the synthetic talking face), not a dancer's it would refuse."""
    row = bench_stream("face-lite", "onnxruntime", 32, frames=20, fps=60.0)
    assert row["preset"] == "face-lite" and row["frames_sent"] == 20
    assert row["frames_received"] + row["dropped"] == 20 and row["frames_received"] > 0


@pytest.mark.timeout(300)
def test_bench_stream_row_names_the_model_it_streamed(tmp_path):
    """With a trained model (--stream-model) the row says that model's preset and size, not the defaults'."""
    from posecast.bench import random_checkpoint

    model = random_checkpoint("face-lite", 32, tmp_path / "model")
    row = bench_stream("lite", "onnxruntime", 256, frames=10, fps=60.0, model=model)
    assert (row["preset"], row["size"], row["frames_sent"]) == ("face-lite", 32, 10)


@pytest.mark.timeout(300)
def test_bench_train_times_the_real_loop_stage_by_stage(tmp_path):
    from trainer.bench import bench_data, bench_train
    from trainer.clock import STAGES

    data = bench_data(32, tmp_path, frames=16)
    rows = {phase: bench_train("lite", 32, phase=phase, iterations=2, clip_frames=4, data=data)
            for phase in ("regression", "adversarial")}
    for phase, r in rows.items():
        assert (r["what"], r["preset"], r["size"], r["phase"], r["precision"], r["precision_used"]) == \
            ("train", "lite", 32, phase, "fp32", "fp32")
        assert {f"{s}_ms" for s in STAGES} | {"it_per_s", "other_ms"} <= set(r) and r["it_per_s"] > 0
        assert r["generator_ms"] > 0 and r["backward_ms"] > 0 and r["data_ms"] > 0
    assert rows["regression"]["discriminators_ms"] == 0 < rows["adversarial"]["discriminators_ms"]
    with pytest.raises(ValueError, match="phase must be one of"):
        bench_train("lite", 32, phase="both", data=data)


@pytest.mark.timeout(300)
def test_bench_train_times_a_face_preset_on_the_talking_face(capsys):
    """`posecast bench --only-train` covers face presets too (the face model the issue timed at 0.29 it/s)."""
    import json

    from posecast.cli import main

    assert main(["bench", "--only-train", "--presets", "face-lite", "--sizes", "32", "--precisions", "fp32",
                 "--train-iterations", "1", "--json"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert [(r["what"], r["preset"], r["phase"]) for r in rows] == [("train", "face-lite", "regression"),
                                                                    ("train", "face-lite", "adversarial")]
    assert all(r["it_per_s"] > 0 and r["generator_ms"] > 0 for r in rows)
