"""``posecast bench``: generator latency per preset × backend × size, and the live loopback stream.

Every generator figure comes with the preset's multiply-accumulates per frame and the compute floor on this
machine (MACs / a measured convolution throughput), so it can be read as a ratio to the floor. Timings live
here, never in tests.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _percentiles(times_ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(times_ms, 50)), float(np.percentile(times_ms, 99))


def random_checkpoint(preset: str, size: int, folder: str | os.PathLike, seed: int = 0) -> Path:
    """A randomly initialised generator checkpoint (latency does not depend on the weights)."""
    import torch

    from models.checkpoint import save_checkpoint
    from models.window import typical_crop
    from models.presets import get_preset
    from models.registry import build_generator

    torch.manual_seed(seed)
    cfg = get_preset(preset, size=size)
    if cfg.person_crop:  # the window a trained model would have (its size comes from the training data)
        cfg = cfg.replace(**dict(zip(("crop_height", "crop_width"), typical_crop(size))))
    G = build_generator(cfg)
    save_checkpoint(Path(folder) / "generator", {f"G.{k}": v for k, v in G.state_dict().items()}, cfg,
                    {"subject_stats": None})
    return Path(folder)


def conv_throughput_gmacs(threads: int | None = None, repeats: int = 20) -> float:
    """Measured ONNX Runtime CPU throughput of a plain 3x3 convolution stack, in GMAC/s."""
    import onnxruntime as ort
    import torch

    net = torch.nn.Sequential(*[torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(4)]).eval()
    x = torch.randn(1, 64, 64, 64)
    macs = 4 * 64 * 64 * 64 * 64 * 9
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conv.onnx"
        torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17,
                          dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {"x": x.numpy()}
        for _ in range(3):
            sess.run(None, feed)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
    return macs / float(np.median(times)) / 1e9


def _time_calls(call, warmup: int, runs: int) -> tuple[float, float]:
    """(p50, p99) in ms of ``call()`` over ``runs`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return _percentiles(times)


def bench_generator(preset: str, backend: str, size: int, *, runs: int = 50, warmup: int = 5,
                    throughput_gmacs: float | None = None, model: str | os.PathLike | None = None,
                    engine_kwargs: dict | None = None) -> dict:
    """Latency of ``Engine.step`` (p50/p99 over ``runs`` timed calls after ``warmup``)."""
    import torch

    from models.flops import count_macs
    from models.registry import build_generator
    from realtime.engine import open_engine
    from realtime.export import random_inputs

    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(model or random_checkpoint(preset, size, tmp), backend, **(engine_kwargs or {}))
        cfg = engine.cfg
        feeds = random_inputs(cfg, 0)
        p50, p99 = _time_calls(lambda: engine.step(feeds), warmup, runs)
    G = build_generator(cfg).eval()
    gmac = count_macs(G, *(torch.from_numpy(v) for v in feeds.values())) / 1e9
    out = {"what": "generator", "preset": preset, "backend": backend, "size": size, "p50_ms": round(p50, 2),
           "p99_ms": round(p99, 2), "gmac": round(gmac, 4)}
    if throughput_gmacs:
        out["floor_ms"] = round(gmac / throughput_gmacs * 1000, 2)
        out["ratio_to_floor"] = round(p50 / out["floor_ms"], 2) if out["floor_ms"] else None
    return out


def bench_batch(preset: str, backend: str, size: int, batch_sizes=(1, 2, 4, 8), *, runs: int = 20, warmup: int = 3,
                model: str | os.PathLike | None = None, device: str = "cpu",
                engine_kwargs: dict | None = None) -> list[dict]:
    """Throughput of ``Engine.step_batch`` per batch size: frames/s (batch / p50 call time) and how many 30-fps
    streams that holds. One row per batch size."""
    from realtime.engine import open_engine

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        kw = dict(engine_kwargs or {})
        if device != "cpu":
            kw["device"] = device
        engine = open_engine(model or random_checkpoint(preset, size, tmp), backend, **kw)
        from realtime.export import random_inputs

        for b in batch_sizes:
            samples = [random_inputs(engine.cfg, i) for i in range(b)]
            feeds = {k: np.concatenate([x[k] for x in samples]) for k in samples[0]}
            p50, p99 = _time_calls(lambda: engine.step_batch(feeds), warmup, runs)
            fps = b / (p50 / 1000)
            rows.append({"what": "batch", "preset": preset, "backend": backend, "size": size, "device": device,
                         "batch": b, "max_batch": engine.max_batch, "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
                         "frames_per_s": round(fps, 1), "streams_at_30fps": int(round(fps, 1) // 30)})
    return rows


def _recording(path: Path, frames: int, fps: float = 30.0, seed: int = 3, kind: str = "dance") -> Path:
    """A landmark recording (what `capture --save-landmarks` writes) of the synthetic dancer, or for ``kind`` "face"
    of the synthetic talking face."""
    from clients.sources import save_recording, synthetic_motion

    motion = synthetic_motion(kind, seed, fps)
    lms = np.stack([motion.landmarks(i) for i in range(frames)]).astype(np.float32)
    save_recording(path, lms, kind=kind, fps=fps)
    return path


def bench_stream(preset: str, backend: str, size: int, *, frames: int = 300, clients: int = 1,
                 model: str | os.PathLike | None = None, fps: float = 30.0, threads: int | None = None) -> dict:
    """The live loopback stream: a `posecast serve` process and ``clients`` capture clients replaying a landmark
    recording at ``fps`` (the synthetic dancer's, or for a face model the synthetic talking face's). Reports received
    fps (per client, averaged), glass-to-glass latency p50/p99 and the server's own work per frame other than the
    generator (decode + render + encode)."""
    import threading

    from clients.capture import capture

    from .process import server_process

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = model or random_checkpoint(preset, size, tmp / "model")
        from models.checkpoint import read_config

        cfg = read_config(model)[0]
        preset, size = cfg.name, cfg.size                # the row names what streamed: a given model's own
        rec = _recording(tmp / "rec.npz", frames, fps, kind=cfg.kind)   # the model's landmarks
        with server_process(model, backend, threads=threads) as address:
            results: list = [None] * clients
            errors: list = []

            def run(i):
                try:
                    results[i] = capture(address, str(rec), headless=True, timeout_s=60.0, retries=2,
                                         normalize=False, log=lambda m: None)
                except Exception as e:  # noqa: BLE001 - re-raised below, after the server is stopped
                    errors.append(e)

            workers = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        if errors:
            raise RuntimeError(f"stream benchmark failed: {errors[0]}")
    stats = [r for r in results if r is not None]
    st = stats[0].stages
    overhead = sum(st.get(f"server_{k}") or 0.0 for k in ("decode", "render", "encode"))
    return {"what": "stream", "preset": preset, "backend": backend, "size": size, "clients": clients,
            "fps": round(float(np.mean([s.fps for s in stats])), 2),
            "latency_p50_ms": round(float(np.mean([s.latency_p50_ms for s in stats])), 2),
            "latency_p99_ms": round(float(np.max([s.latency_p99_ms for s in stats])), 2),
            "server_overhead_ms": round(overhead, 2), "server_threads": threads,
            "engine_ms": round(st.get("server_engine") or 0.0, 2),
            "frames_sent": sum(s.frames_sent for s in stats),
            "frames_received": sum(s.frames_received for s in stats),
            "dropped": sum(s.dropped for s in stats)}


@dataclasses.dataclass
class BenchPlan:
    presets: tuple = ("lite", "dance")          # generator presets to time
    backends: tuple = ("onnxruntime", "torch")  # engine backends to time
    sizes: tuple = (128, 256)                   # frame sides in pixels
    runs: int = 50                              # timed runs per generator figure (after warm-up)
    stream_preset: str = "lite"                 # preset of the live-stream figure
    stream_size: int = 256
    stream_frames: int = 300
    stream_clients: tuple = (1,)                # concurrent clients per stream figure
    stream_model: str | None = None             # a trained model for the stream (default: random weights)
    stream_threads: int | None = None           # server onnxruntime threads (None: all cores)
    batch_sizes: tuple = (1, 2, 4, 8)           # batched-engine throughput per batch size (() for none)
    device: str = "cpu"                         # engine device of the batch figures (cuda for a GPU)


def run_bench(plan: BenchPlan, emit) -> list[dict]:
    """Run every measurement of ``plan``, calling ``emit(row)`` as each finishes."""
    rows = []
    gmacs = conv_throughput_gmacs()
    row = {"what": "machine", "cpu_count": os.cpu_count(), "conv_gmac_per_s": round(gmacs, 2)}
    rows.append(row)
    emit(row)
    for preset in plan.presets:
        for size in plan.sizes:
            for backend in plan.backends:
                row = bench_generator(preset, backend, size, runs=plan.runs, throughput_gmacs=gmacs)
                rows.append(row)
                emit(row)
    for preset in plan.presets if plan.batch_sizes else ():
        for size in plan.sizes:
            for backend in plan.backends:
                for row in bench_batch(preset, backend, size, plan.batch_sizes, runs=max(3, plan.runs // 2),
                                       device=plan.device):
                    rows.append(row)
                    emit(row)
    for n in plan.stream_clients:
        row = bench_stream(plan.stream_preset, "onnxruntime", plan.stream_size, frames=plan.stream_frames,
                           clients=n, model=plan.stream_model, threads=plan.stream_threads)
        rows.append(row)
        emit(row)
    return rows
