"""realtime/export.py and the engine backends: ONNX parity with PyTorch, metadata, staleness, engine-cache keys.

CPU only and fast: tiny random-init checkpoints (32 px, ngf 8). The TensorRT round trip is a ``gpu`` test.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import realtime.export as X
from models.checkpoint import load_generator
from tiny import random_checkpoint
from realtime.engine import EngineError, TorchEngine, open_engine
from realtime.export import ExportError, export, export_onnx

SMALL = dict(size=32, ngf=8, ndf=8)
CASES = [("dance", 0), ("dance-perframe", 0), ("face", 0), ("dance", 1), ("lite", 0), ("lite-crop", 0),
         ("face-lite", 0)]
# lite in a person crop smaller than the frame, with its head branch.
VARIANT = {"lite-crop": ("lite", dict(size=48, crop_height=32, crop_width=16, head_crop=8))}
HAS_CUDA = torch.cuda.is_available()


def make_run(root: Path, name: str, n_local: int = 0, seed: int = 0) -> Path:
    preset, extra = VARIANT.get(name, (name, {}))
    return random_checkpoint(root, preset, seed=seed, n_local=n_local, **{**SMALL, **extra})


def compare_steps(engine, reference, steps: int = 4, seed: int = 0) -> list[float]:
    """Max |engine - reference| of each of ``steps`` sequential steps on the same inputs (random labels, a
    random starting history; test_first_frame_from_zero_history_matches covers the zero history).

    Both engines see the same history: the reference's frames are fed back (teacher forcing). Free-running
    each engine on its own frames compounds 1e-6 differences through the untrained, random-init feedback loop
    (x3-10 per step), which measures the loop's chaos, not the export.
    """
    cfg = reference.cfg
    L, C = cfg.history_frames, cfg.label_nc
    h, w = cfg.crop_hw
    rng = np.random.default_rng(seed + 100)
    feeds = X.random_inputs(cfg, seed)
    errors = []
    for _ in range(steps):
        feeds["labels"] = np.concatenate((feeds["labels"][:, C:], rng.random((1, C, h, w), dtype=np.float32)), 1)
        ref = reference.step(feeds)
        got = engine.step(feeds)
        assert got.shape == ref.shape == (1, 3, h, w) and got.dtype == np.float32
        errors.append(float(np.abs(got - ref).max()))
        if L:
            feeds["previous"] = np.concatenate((feeds["previous"], ref), 1)[:, 3:]
    return errors


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-local{k}" for n, k in CASES])
def exported(request, tmp_path_factory):
    name, n_local = request.param
    run = make_run(tmp_path_factory.mktemp(f"{name}{n_local}"), name, n_local)
    return run, export_onnx(run)


@pytest.fixture
def tiny_run(tmp_path):
    return make_run(tmp_path / "run", "dance-perframe")


def test_export_parity_with_torch(exported):
    run, res = exported
    cfg = load_generator(run)[0].cfg
    L, C = cfg.history_frames, cfg.label_nc
    h, w = cfg.crop_hw
    assert res.onnx_path == run / "generator.onnx" and res.onnx_path.is_file()
    assert 0.0 <= res.max_abs_error < 1e-3
    assert res.max_abs_error == max(res.errors.values()) and set(res.errors) == {"frame", "flow", "mask"}
    want_in = {"labels": (1, (L + 1) * C, h, w), **({"previous": (1, L * 3, h, w)} if L else {})}
    if cfg.arch == "lite":  # the plate's window, and the head window's place when there is a head branch
        want_in["plate"] = (1, 3, h, w)
        if cfg.head_side:
            want_in["head"] = (1, 2)
    assert res.input_shapes == want_in and res.opset == 17
    assert res.output_shapes == {"frame": (1, 3, h, w), "flow": (1, 2, h, w), "mask": (1, 1, h, w)}
    import onnx

    m = onnx.load(str(res.onnx_path))
    ins = {i.name: tuple(d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim) for i in m.graph.input}
    assert ins == {k: ("batch", *v[1:]) for k, v in want_in.items()}  # a batch axis; no `previous` when L == 0
    assert [o.name for o in m.graph.output] == ["frame", "flow", "mask"]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # atomic write left nothing behind


def test_onnx_metadata_carries_config_and_weights_hash(exported):
    run, res = exported
    G, _ = load_generator(run)
    meta = X.read_onnx_metadata(res.onnx_path)
    assert json.loads(meta["posecast.config"]) == G.cfg.to_dict()
    assert X.config_from_metadata(meta) == G.cfg
    assert meta["posecast.weights_sha256"] == X.weights_sha256(G.state_dict()) == res.weights_sha256
    assert X.onnx_is_current(res.onnx_path, G.cfg, res.weights_sha256)
    assert not X.onnx_is_current(res.onnx_path, G.cfg.replace(ngf=G.cfg.ngf * 2), res.weights_sha256)
    assert not X.onnx_is_current(res.onnx_path, G.cfg, "0" * 64)


def test_onnxruntime_engine_matches_torch_engine(exported):
    run, res = exported
    mtime = res.onnx_path.stat().st_mtime_ns
    ort_engine = open_engine(run, "onnxruntime")
    assert ort_engine.export_result is None and res.onnx_path.stat().st_mtime_ns == mtime  # current: reused
    assert ort_engine.backend == "onnxruntime" and ort_engine.device == "cpu"
    assert ort_engine.threads == os.cpu_count()
    torch_engine = TorchEngine(run)
    assert max(compare_steps(ort_engine, torch_engine, steps=4)) < 1e-3
    # The .onnx alone is enough (config from its metadata).
    solo = open_engine(res.onnx_path, "onnxruntime", threads=1)
    assert solo.cfg == ort_engine.cfg and solo.threads == 1
    assert max(compare_steps(solo, torch_engine, steps=1)) < 1e-3


def test_first_frame_from_zero_history_matches(exported):
    """Every stream starts from zero history: that frame must not depend on the backend (convs before a norm
    carry no bias, so an all-zero input stays exactly zero instead of amplifying rounding noise)."""
    run, _ = exported
    ort_engine, torch_engine = open_engine(run, "onnxruntime"), TorchEngine(run)
    cfg = torch_engine.cfg
    C = cfg.label_nc
    h, w = cfg.crop_hw
    feeds = torch_engine.zero_inputs()
    assert set(feeds) == set(X.io_shapes(cfg)[0]) and not feeds["labels"].any()
    if "plate" in feeds:
        y0, x0 = (cfg.size - h) // 2, (cfg.size - w) // 2  # a centred window until a person is seen
        np.testing.assert_array_equal(feeds["plate"][0], torch_engine.plate[:, y0:y0 + h, x0:x0 + w])
    blank = {k: v.copy() for k, v in feeds.items()}  # nobody in view, no history
    feeds["labels"][:, -C:] = np.random.default_rng(1).random((1, C, h, w), dtype=np.float32)
    assert np.abs(ort_engine.step(feeds) - torch_engine.step(feeds)).max() < 1e-3
    assert np.abs(ort_engine.step(blank) - torch_engine.step(blank)).max() < 1e-4


def test_stale_onnx_is_reexported(tmp_path):
    run = make_run(tmp_path / "run", "dance-perframe", seed=0)
    first = open_engine(run, "onnxruntime")
    assert first.export_result is not None  # missing -> exported
    old_sha = X.read_onnx_metadata(run / "generator.onnx")["posecast.weights_sha256"]
    make_run(run, "dance-perframe", seed=1)  # the checkpoint changes (e.g. training went on)
    second = open_engine(run, "onnxruntime")
    assert second.export_result is not None and second.export_result.max_abs_error < 1e-3
    new_sha = X.read_onnx_metadata(run / "generator.onnx")["posecast.weights_sha256"]
    assert new_sha != old_sha and new_sha == X.weights_sha256(load_generator(run)[0].state_dict())
    assert max(compare_steps(second, TorchEngine(run), steps=1)) < 1e-3
    # A truncated/corrupt file is stale too (never loaded as current).
    bad = tmp_path / "bad.onnx"
    bad.write_bytes((run / "generator.onnx").read_bytes()[:1000])
    assert not X.onnx_is_current(bad, second.cfg, new_sha)
    assert not X.onnx_is_current(tmp_path / "missing.onnx", second.cfg, new_sha)


def test_export_fails_loudly_over_tolerance(tiny_run, tmp_path, monkeypatch):
    out = tiny_run / "generator.onnx"
    real = X._ort_outputs

    def perturbed(session, feeds):  # ONNX Runtime "drifts" by 1e-2 on the frame
        frame, flow, mask = real(session, feeds)
        return [frame + 1e-2, flow, mask]

    monkeypatch.setattr(X, "_ort_outputs", perturbed)
    with pytest.raises(ExportError, match=r"differs from PyTorch by 0\.01\d* > atol 0\.001.*not written"):
        export_onnx(tiny_run)
    assert not out.exists()  # nothing written on failure
    # The same drift under a looser tolerance passes; the CLI summary reports it.
    s = export(tiny_run, "onnxruntime", out=tmp_path / "g.onnx", atol=0.02)
    assert 1e-2 - 1e-5 < s["max_abs_error"] < 1e-2 + 1e-3 and s["errors"]["frame"] == s["max_abs_error"]
    assert s["onnx"] == str(tmp_path / "g.onnx") and Path(s["onnx"]).is_file() and s["backend"] == "onnxruntime"
    json.dumps(s)  # the CLI prints it


def test_export_bad_arguments(tiny_run):
    with pytest.raises(ValueError, match="unknown export backend"):
        export(tiny_run, "nope")
    with pytest.raises(ValueError, match="fp16"):
        export(tiny_run, "onnxruntime", fp16=True)
    with pytest.raises(EngineError, match="unknown backend"):
        open_engine(tiny_run, "nope")
    with pytest.raises(EngineError, match="CUDAExecutionProvider"):
        if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
            pytest.skip("this onnxruntime has CUDA")
        open_engine(tiny_run, "onnxruntime", device="cuda")


@pytest.mark.parametrize("backend", ["tensorrt", "torch-tensorrt"])
def test_gpu_backends_fail_with_one_clear_line_without_gpu(tiny_run, backend):
    if HAS_CUDA:
        pytest.skip("a CUDA GPU is present here")
    for call in (lambda: open_engine(tiny_run, backend), lambda: export(tiny_run, backend)):
        with pytest.raises(EngineError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and "NVIDIA GPU" in msg and backend in msg.lower()
    assert not (tiny_run / "generator.onnx").exists()  # failed fast, before any export
    with pytest.raises(EngineError, match="NVIDIA GPU"):
        X.build_tensorrt_engine(tiny_run / "generator.json")


def test_engine_key_refusal_logic(tmp_path):
    base = dict(onnx_sha256="a" * 64, gpu_name="NVIDIA H100", compute_capability="9.0",
                tensorrt_version="10.3.0", fp16=False)
    key = X.engine_key(**base)
    assert X.key_digest(key) == X.key_digest(X.engine_key(**base))  # stable
    for field, other in [("onnx_sha256", "b" * 64), ("gpu_name", "NVIDIA A10"), ("compute_capability", "8.6"),
                         ("tensorrt_version", "10.4.0"), ("fp16", True)]:
        assert X.key_digest(X.engine_key(**{**base, field: other})) != X.key_digest(key), field
    engine, side = X.engine_cache_paths(tmp_path, "generator", key)
    assert engine.name == f"generator.{X.key_digest(key)[:16]}.engine" and side.name == engine.name + ".json"
    engine.write_bytes(b"x")
    with pytest.raises(EngineError, match="no key sidecar"):  # an engine of unknown origin is never loaded
        X.verify_engine_key(engine, key)
    X.write_engine(engine, b"serialized", key)
    X.verify_engine_key(engine, key)
    assert json.loads(side.read_text())["key"] == key
    newer = X.engine_key(**{**base, "tensorrt_version": "10.4.0"})
    with pytest.raises(EngineError, match=r"tensorrt_version: '10.3.0' != '10.4.0'.*refusing to load"):
        X.verify_engine_key(engine, newer)
    side.write_text("{broken")
    with pytest.raises(EngineError, match="unreadable engine key"):
        X.verify_engine_key(engine, key)


def test_tensorrt_cache_reuses_and_rebuilds_by_key(tmp_path, monkeypatch):
    """build_tensorrt_engine's caching with TensorRT and the GPU faked (no GPU needed)."""
    onnx_file = tmp_path / "generator.onnx"
    onnx_file.write_bytes(b"pretend onnx")

    class FakeTRT:
        __version__ = "10.3.0"

    builds = []
    monkeypatch.setattr(X, "import_tensorrt", lambda: FakeTRT)
    monkeypatch.setattr(X, "gpu_identity", lambda: ("Fake GPU", "8.9"))
    monkeypatch.setattr(X, "_build_serialized", lambda trt, p, fp16: builds.append((trt.__version__, fp16)) or b"E")
    first = X.build_tensorrt_engine(onnx_file)
    assert first.parent == tmp_path / "engines" and first.read_bytes() == b"E" and len(builds) == 1
    assert X.build_tensorrt_engine(onnx_file) == first and len(builds) == 1  # cached
    fp16 = X.build_tensorrt_engine(onnx_file, fp16=True)
    assert fp16 != first and builds[-1] == ("10.3.0", True)
    FakeTRT.__version__ = "10.4.0"  # TensorRT upgraded -> new key -> rebuilt, the old engine is refused
    second = X.build_tensorrt_engine(onnx_file)
    assert second != first and len(builds) == 3
    with pytest.raises(EngineError, match="refusing to load"):
        X.load_tensorrt_engine(first, X.current_engine_key(onnx_file, False), trt=FakeTRT)
    onnx_file.write_bytes(b"re-exported onnx")  # the ONNX changed -> rebuilt
    assert X.build_tensorrt_engine(onnx_file) not in (first, second) and len(builds) == 4
    first.with_name(first.name + ".json").unlink()  # sidecar lost -> rebuilt in place, never trusted
    FakeTRT.__version__ = "10.3.0"
    onnx_file.write_bytes(b"pretend onnx")
    assert X.build_tensorrt_engine(onnx_file) == first and len(builds) == 5


def test_realtime_never_imports_trainer():
    """realtime/ (and models/, which it uses) import nothing from trainer/ — checked on the source."""
    import ast

    root = Path(__file__).resolve().parents[1]
    for path in [*(root / "realtime").glob("*.py"), *(root / "models").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "trainer" or n.startswith("trainer.") for n in names), f"{path.name} imports {names}"


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and importlib.util.find_spec("tensorrt")), reason="needs CUDA and tensorrt")
def test_tensorrt_engine_builds_and_matches_torch(tmp_path):
    run = make_run(tmp_path / "run", "dance")
    s = export(run, "tensorrt")
    assert Path(s["engine"]).is_file() and s["max_abs_error"] < 1e-3 and not s["engine_cached"]
    engine = open_engine(run, "tensorrt")
    assert not engine.built and engine.device == "cuda"  # reused the cached engine
    assert max(compare_steps(engine, TorchEngine(run, device="cuda"), steps=4)) < 2e-2  # TRT may use TF32
