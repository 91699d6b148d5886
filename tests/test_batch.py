"""Batching: one engine call for every pending session equals per-session steps (vid2vid's dance, lite, face-lite).

Tolerance, stated: onnxruntime (CPU) on one thread batches bit-identically (MLAS runs each image of a batch
through the same kernels); on more threads it may share a batch's convolution among them otherwise than one
image's, and torch's oneDNN convolutions may re-block for a batch > 1: either changes the float rounding of a
single step by <= 1e-5 on frames in [-1, 1] (measured: 2e-6 torch; 1.5e-6 onnxruntime on 2 threads with
face-lite's 27 label channels, 0 with lite's and dance's). (Over many steps a random-weight model
whose history feedback is not contractive can amplify that; serve with ``--max-batch 1`` for bit-exactness on
such a backend.) GPU tests are marked ``gpu`` and skip without CUDA.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from realtime.engine import open_engine
from realtime.session import DeviceSession, Session, open_session, step_sessions

from test_server import REPO, motion

PRESETS = {"dance": dict(size=32, ngf=8, ndf=8), "lite": dict(size=32), "face-lite": dict(size=32)}


def landmarks(engine, seed: int, n: int) -> list[np.ndarray]:
    """n frames of moving landmarks of the engine's kind: a swaying skeleton, or the synthetic talking face."""
    if engine.cfg.kind == "face":
        from clients.sources import synthetic_motion

        face = synthetic_motion("face", seed)
        return [face.landmarks(i) for i in range(n)]
    return motion(seed, n)


@pytest.fixture(scope="module", params=sorted(PRESETS))
def run(request, tmp_path_factory, tiny_checkpoint):
    return tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param, **PRESETS[request.param])


def _inputs(engine, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    from realtime.export import random_inputs

    samples = [random_inputs(engine.cfg, seed + i) for i in range(n)]
    return {k: np.concatenate([x[k] for x in samples]) for k in samples[0]}


@pytest.mark.parametrize("backend,threads", [("onnxruntime", 1), ("onnxruntime", 2), ("torch", None)])
def test_batched_step_equals_per_sample_steps(run, backend, threads):
    engine = open_engine(run, backend, **({"threads": threads} if threads else {}))
    assert engine.max_batch > 1
    feeds = _inputs(engine, 5)
    batched = engine.step_batch(feeds)
    single = np.concatenate([engine.step({k: v[i:i + 1] for k, v in feeds.items()}) for i in range(5)])
    engine.max_batch = 2                       # larger batches are split into calls of max_batch
    chunked = engine.step_batch(feeds)
    assert batched.shape == (5, 3, *engine.cfg.crop_hw) and batched.dtype == np.float32
    for got in (batched, chunked):
        if threads == 1:
            np.testing.assert_array_equal(got, single)
        else:
            assert np.abs(got - single).max() <= 1e-5


def test_batched_sessions_equal_sessions_stepped_alone(run):
    engine = open_engine(run, "onnxruntime")
    n, frames = 3, 8
    lms = [landmarks(engine, 20 + j, frames) for j in range(n)]
    alone = [Session(engine) for _ in range(n)]
    together = [Session(engine) for _ in range(n)]
    for t in range(frames):
        want = [s.step(lms[j][t])[0].copy() for j, s in enumerate(alone)]
        got = step_sessions(engine, [(s, lms[j][t]) for j, s in enumerate(together)])
        assert len(got) == n and all(set(tm) == {"render", "engine", "post"} for _, tm in got)
        for j in range(n):
            np.testing.assert_array_equal(got[j][0], want[j])   # bit-identical, history included
    together[1].reset()                        # sessions stay independent inside a batch
    got = step_sessions(engine, [(s, lms[j][0]) for j, s in enumerate(together)])
    np.testing.assert_array_equal(got[1][0], Session(engine).step(lms[1][0])[0])


def test_step_batch_checks_its_inputs(run):
    engine = open_engine(run, "torch")
    feeds = _inputs(engine, 2)
    with pytest.raises(ValueError, match="inputs must be exactly"):
        engine.step_batch({"labels": feeds["labels"]})
    bad = dict(feeds, labels=feeds["labels"][:1])
    with pytest.raises(ValueError, match="one batch size"):
        engine.step_batch(bad)


@pytest.mark.timeout(300)
def test_bench_reports_frames_per_second_per_batch_size():
    out = subprocess.run([sys.executable, "-m", "posecast", "bench", "--json", "--presets", "lite", "--backends",
                          "onnxruntime", "--sizes", "32", "--runs", "3", "--stream-clients", "", "--batch-sizes",
                          "1,4"], capture_output=True, text=True, timeout=280, cwd=REPO)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if '"batch"' in line]
    assert [r["batch"] for r in rows] == [1, 4]
    for r in rows:
        assert {"preset", "backend", "size", "device", "batch", "p50_ms", "frames_per_s", "streams_at_30fps"} <= set(r)
        assert r["frames_per_s"] > 0 and r["streams_at_30fps"] == int(r["frames_per_s"] // 30)


def _skip_without_cuda_provider(backend: str) -> None:
    """onnxruntime on CUDA needs onnxruntime-gpu; the CPU wheel (the default install) has no CUDA provider."""
    if backend == "onnxruntime":
        import onnxruntime as ort
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip("onnxruntime without the CUDAExecutionProvider")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_cuda_batched_step_matches_cpu(run, backend):
    _skip_without_cuda_provider(backend)
    cpu, gpu = open_engine(run, backend), open_engine(run, backend, device="cuda")
    feeds = _inputs(cpu, 4)
    assert gpu.device.startswith("cuda")
    assert np.abs(gpu.step_batch(feeds) - cpu.step_batch(feeds)).max() < 1e-2   # cuDNN (TF32 allowed) vs CPU


def test_calibrate_batch_picks_the_fastest_size():
    import time

    from realtime.engine import calibrate_batch

    class Timed:       # call time by batch size: 2 is the fastest per frame, 4 and 8 lose (cache misses, say)
        input_shapes = {"labels": (1, 1, 2, 2)}
        cost = {1: 0.004, 2: 0.005, 4: 0.04, 8: 0.08}

        def step_batch(self, feeds):
            time.sleep(self.cost[len(feeds["labels"])])

    best, fps = calibrate_batch(Timed(), 8, runs=2)
    assert best == 2 and sorted(fps) == [1, 2, 4, 8]
    Timed.cost = {1: 0.004, 2: 0.0081, 4: 0.0162}   # no gain from batching: one call per session
    assert calibrate_batch(Timed(), 4, runs=2)[0] == 1


def test_the_batch_size_is_measured_once_per_model_engine_and_machine(run, tmp_path, monkeypatch, caplog):
    import logging

    from realtime.engine import cached_calibration, calibration_cache_path

    monkeypatch.setenv("POSECAST_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    class Counted:
        input_shapes = {"labels": (1, 1, 2, 2)}
        backend, device, threads = "fake", "cpu", 2

        def step_batch(self, feeds):
            calls.append(len(feeds["labels"]))

    log = logging.getLogger("test-calibration")
    first = cached_calibration(run, Counted(), 4, log=log)
    assert first[2] is False and calls and calibration_cache_path() == tmp_path / "cache" / "batch-calibration.json"
    measured = len(calls)
    again = cached_calibration(run, Counted(), 4, log=log)
    assert again == (first[0], first[1], True) and len(calls) == measured        # read back, not measured
    assert cached_calibration(run, Counted(), 2, log=log)[2] is False               # another limit: measured
    assert cached_calibration(run, Counted(), 4, recalibrate=True, log=log)[2] is False
    Counted.threads = 1                                                              # another engine set-up
    assert cached_calibration(run, Counted(), 4, log=log)[2] is False
    calibration_cache_path().write_text("{not json")
    with caplog.at_level(logging.WARNING, "test-calibration"):
        assert cached_calibration(run, Counted(), 4, log=log)[2] is False            # measured around, not fatal
    assert "unreadable" in caplog.text
    assert cached_calibration(run, Counted(), 4, log=log)[2] is True                # and the cache is whole again


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_device_history_makes_the_host_sessions_frames(run, backend):
    """A DeviceSession (history as torch tensors on the engine's device; here the CPU) makes the same frames as the
    numpy Session, bit for bit, history and reset included; on a CPU engine 'auto' keeps the host session."""
    engine = open_engine(run, backend)
    lm = landmarks(engine, 5, 10)
    host, dev = Session(engine), DeviceSession(engine, device="cpu")
    assert type(open_session(engine)) is Session and type(open_session(engine, history="device")) is DeviceSession
    for t in range(8):
        want, got = host.step(lm[t])[0], dev.step(lm[t])[0]
        assert got.shape == want.shape == (engine.cfg.size, engine.cfg.size, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
        assert dev.box == host.box
    dev.reset()
    host.reset()
    np.testing.assert_array_equal(dev.step(lm[9])[0], host.step(lm[9])[0])
    with pytest.raises(ValueError, match="history must be"):
        open_session(engine, history="gpu")


def test_batched_device_sessions_equal_device_sessions_alone(run):
    engine = open_engine(run, "onnxruntime")
    n, frames = 3, 6
    lms = [landmarks(engine, 30 + j, frames) for j in range(n)]
    alone = [DeviceSession(engine, device="cpu") for _ in range(n)]
    together = [DeviceSession(engine, device="cpu") for _ in range(n)]
    for t in range(frames):
        want = [s.step(lms[j][t])[0].copy() for j, s in enumerate(alone)]
        got = step_sessions(engine, [(s, lms[j][t]) for j, s in enumerate(together)])
        for j in range(n):
            np.testing.assert_array_equal(got[j][0], want[j])
    with pytest.raises(ValueError, match="host and device sessions"):
        step_sessions(engine, [(together[0], lms[0][0]), (Session(engine), lms[1][0])])


def test_step_tensors_checks_its_inputs(run):
    engine = open_engine(run, "torch")
    feeds = {k: torch.zeros(s) for k, s in engine.input_shapes.items()}
    assert tuple(engine.step_tensors(feeds).shape) == (1, 3, *engine.cfg.crop_hw)
    with pytest.raises(ValueError, match="engine inputs must be exactly"):
        engine.step_tensors({k: v for k, v in list(feeds.items())[:1]})
    bad = dict(feeds, labels=torch.zeros((2, *engine.input_shapes["labels"][1:])))
    with pytest.raises(ValueError, match="one batch size"):
        engine.step_tensors(bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_cuda_device_history_matches_host_history(run, backend):
    _skip_without_cuda_provider(backend)
    engine = open_engine(run, backend, device="cuda")
    assert type(open_session(engine)) is DeviceSession           # auto: on the GPU
    lm = landmarks(engine, 5, 6)
    host, dev = Session(engine), open_session(engine)
    for t in range(6):
        want, got = host.step(lm[t])[0], dev.step(lm[t])[0]
        assert np.abs(got.astype(int) - want).max() <= 1          # same kernels; uint8 rounding of float noise
