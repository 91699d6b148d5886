"""Export the generator's one-step function for the realtime backends: ONNX (checked against PyTorch), TensorRT.

    posecast export RUN --backend onnxruntime|tensorrt|torch-tensorrt [--fp16]   ->   export(RUN, backend, ...)

ONNX: ``export_onnx`` traces ``Generator.forward`` with the TorchScript exporter (``dynamo=False``) at static
shapes but for a batch axis (``BATCH_AXIS``) on every input and output: inputs ``labels`` (B, (L+1)*C, h, w),
``previous`` (B, L*3, h, w) (none when L = 0) and, for models drawn on a background plate, ``plate``
(B, 3, h, w), all in the window (h, w) = ``cfg.crop_hw``, and for models with a head branch ``head`` (B, 2): the
head window's integer (x0, y0) in that window; outputs ``frame``, ``flow``, ``mask``. Before the file is
written, ONNX Runtime (CPU) runs it on random inputs of several seeds, one at a time and all as one batch, and
its outputs are compared with PyTorch's; an error over ``atol`` raises
``ExportError`` and writes nothing. The file's metadata_props record the model config (JSON) and a sha256 of
the generator weights (``posecast.config``, ``posecast.weights_sha256``), so an engine can tell which
checkpoint an .onnx belongs to and re-export a stale one.

TensorRT: ``build_tensorrt_engine`` builds a serialized engine from the ONNX, with one optimization profile per
static batch size in ``TRT_BATCH_SIZES``, and caches it under a key of
(ONNX sha256, GPU name + compute capability, TensorRT version, fp16): ``<stem>.<hash16>.engine`` plus a JSON
sidecar holding the key. A cached engine is reused only when its recorded key equals the current one; loading
an engine whose key differs is refused (``verify_engine_key``). Without an NVIDIA GPU or the ``tensorrt``
package every TensorRT entry point raises ``EngineError`` with one line saying so.

Nothing here imports trainer/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from models.checkpoint import read_checkpoint, resolve, subdict
from models.io import atomic_write
from models.presets import ModelConfig

from .errors import EngineError

EXPORT_VERSION = 2                 # 2: a dynamic batch axis on every input and output
BATCH_AXIS = "batch"               # the name of that axis in the ONNX graph
TRT_BATCH_SIZES = (1, 2, 4, 8, 16)  # one TensorRT optimization profile (a static batch size) each
META_CONFIG = "posecast.config"
META_WEIGHTS = "posecast.weights_sha256"
META_VERSION = "posecast.export_version"
META_ERROR = "posecast.max_abs_error"
INPUT_NAMES = ("labels", "previous", "plate", "head")
OUTPUT_NAMES = ("frame", "flow", "mask")
ONNX_BACKENDS = ("onnxruntime", "tensorrt", "torch-tensorrt")
CHECK_SEEDS = 3
TRT_WORKSPACE_BYTES = 4 << 30

NO_GPU = "needs an NVIDIA GPU with CUDA; none found (torch.cuda.is_available() is False)"


class ExportError(EngineError):
    """The export failed, or the exported model does not match PyTorch within tolerance."""


@dataclasses.dataclass
class ExportResult:
    onnx_path: Path
    max_abs_error: float                       # over all outputs and check seeds (ONNX Runtime CPU vs torch)
    seconds: float                             # export + check
    opset: int
    input_shapes: dict[str, tuple[int, ...]]
    output_shapes: dict[str, tuple[int, ...]]
    errors: dict[str, float] = dataclasses.field(default_factory=dict)   # max abs error per output
    weights_sha256: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["onnx_path"] = str(self.onnx_path)
        return d


# -- model identity ---------------------------------------------------------------------------------------
def weights_sha256(state: Mapping[str, Any]) -> str:
    """sha256 over a generator state dict (names, dtypes, shapes, bytes; sorted by name).

    ``G.*`` tensors of a checkpoint (prefix stripped) and ``Generator.state_dict()`` hash the same, so
    ``generator.*`` and ``latest.*`` of one run give one hash.
    """
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def config_json(cfg: ModelConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_onnx_path(model: str | os.PathLike) -> Path:
    """``<run>/generator.onnx`` for a run folder or its generator/latest checkpoint, else ``<dir>/<stem>.onnx``."""
    ckpt = resolve(model)
    stem = "generator" if ckpt.stem in ("generator", "latest") else ckpt.stem
    return ckpt.parent / f"{stem}.onnx"


def load_checkpoint_state(model: str | os.PathLike):
    """(cfg, generator state dict, weights sha256) of a checkpoint, without building the network."""
    from models.checkpoint import CheckpointError

    cfg, tensors, _ = read_checkpoint(model)
    state = subdict(tensors, "G")
    if not state:
        raise CheckpointError(f"{resolve(model)}: no generator tensors (expected keys 'G.*')")
    return cfg, state, weights_sha256(state)


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - a corrupt/partial file is just "not current"
        raise ExportError(f"{path}: unreadable ONNX file ({type(e).__name__}: {e})") from None
    return {p.key: p.value for p in m.metadata_props}


def config_from_metadata(meta: Mapping[str, str], where: str = "ONNX file") -> ModelConfig:
    if META_CONFIG not in meta:
        raise ExportError(f"{where}: no {META_CONFIG} metadata (not exported by posecast)")
    try:
        return ModelConfig.from_dict(json.loads(meta[META_CONFIG]))
    except (ValueError, TypeError) as e:
        raise ExportError(f"{where}: bad {META_CONFIG} metadata ({e})") from None


def metadata_matches(meta: Mapping[str, str], cfg: ModelConfig, sha: str) -> bool:
    """True when ONNX metadata says: this config, these weights, this export format version."""
    try:   # (read as a config: one saved by an older version, with the fields its architecture does not read, matches)
        same_cfg = ModelConfig.from_dict(json.loads(meta.get(META_CONFIG, "null"))) == cfg
    except (ValueError, TypeError, AttributeError):
        return False
    return same_cfg and meta.get(META_WEIGHTS) == sha and meta.get(META_VERSION) == str(EXPORT_VERSION)


def onnx_is_current(onnx_path: str | os.PathLike, cfg: ModelConfig, sha: str) -> bool:
    p = Path(onnx_path)
    if not p.is_file():
        return False
    try:
        return metadata_matches(read_onnx_metadata(p), cfg, sha)
    except ExportError:
        return False


# -- ONNX -------------------------------------------------------------------------------------------------
def io_shapes(cfg: ModelConfig) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(input name -> shape, output name -> shape) of one generator step, in the window it draws in."""
    L, C = cfg.history_frames, cfg.label_nc
    h, w = cfg.crop_hw
    inputs = {"labels": (1, (L + 1) * C, h, w)}
    if L:
        inputs["previous"] = (1, L * 3, h, w)
    if cfg.has_plate_input:
        inputs["plate"] = (1, 3, h, w)
    if cfg.head_side:
        inputs["head"] = (1, 2)
    return inputs, {"frame": (1, 3, h, w), "flow": (1, 2, h, w), "mask": (1, 1, h, w)}


def _one_step(G):
    """The exported function: ``Generator.forward`` with every output computed from the inputs.

    The per-frame generator's flow/mask are ``zeros_like`` constants; the exporter folds them into constant
    graph outputs, which TensorRT's ONNX parser may reject. Here they are ``frame * 0`` (still exact zeros for
    a finite frame; frame is a tanh).
    """
    import torch
    from torch import nn

    names = list(io_shapes(G.cfg)[0])

    class OneStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.G = G

        def forward(self, *inputs):
            feeds = dict(zip(names, inputs))
            previous = feeds.get("previous")
            extra = {k: feeds[k] for k in ("plate", "head") if k in feeds}
            frame, flow, mask = self.G(feeds["labels"], previous, **extra)
            if previous is None:
                zero = frame[:, :1] * 0.0
                flow, mask = torch.cat((zero, zero), 1), zero
            return frame, flow, mask

    return OneStep().eval()


def random_inputs(cfg: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """Labels in [0, 1], previous frames and plate in [-1, 1], float32, batch 1."""
    rng = np.random.default_rng(seed)
    shapes, _ = io_shapes(cfg)
    out = {"labels": rng.random(shapes["labels"], dtype=np.float32)}
    for name in ("previous", "plate"):
        if name in shapes:
            out[name] = rng.random(shapes[name], dtype=np.float32) * 2 - 1
    if "head" in shapes:  # integer (x0, y0) of the head window inside the generator's window
        h, w = cfg.crop_hw
        side = cfg.head_side
        out["head"] = np.array([[rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)]], np.float32)
    return out


def _ort_outputs(session, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """ONNX Runtime outputs in OUTPUT_NAMES order (a seam for tests)."""
    return session.run(list(OUTPUT_NAMES), feeds)


_EXPORTER_NOISE = re.compile(
    r"legacy TorchScript-based ONNX export|feature will be removed|Constant folding|instance_norm|"
    r"Converting a tensor to a Python|torch\.tensor results are registered|TracerWarning")


def _trace_to_onnx(step, cfg: ModelConfig, opset: int) -> bytes:
    import torch

    shapes, _ = io_shapes(cfg)
    args = tuple(torch.zeros(s) for s in shapes.values())
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Known exporter chatter (legacy-exporter notice, shape-check tracer warnings, instance-norm train
        # flag): harmless at static shapes; the numeric check in export_onnx is what guards correctness.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"(?s).*(" + _EXPORTER_NOISE.pattern + ")")
        try:  # axis 0 of every input and output is the batch: the server runs every pending session at once
            torch.onnx.export(step, args, buf, dynamo=False, opset_version=opset,
                              input_names=list(shapes), output_names=list(OUTPUT_NAMES),
                              dynamic_axes={n: {0: BATCH_AXIS} for n in (*shapes, *OUTPUT_NAMES)},
                              do_constant_folding=True)
        except Exception as e:  # noqa: BLE001 - the exporter raises many types
            raise ExportError(f"torch.onnx.export failed for {cfg.name} ({type(e).__name__}: {e})") from e
    return buf.getvalue()


def _check_session(data: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def export_onnx(model, out_path: str | os.PathLike | None = None, *, opset: int = 17, check: bool = True,
                atol: float = 1e-3, seed: int = 0) -> ExportResult:
    """Export the generator of ``model`` (run folder / checkpoint .json, or a ``Generator``) to ONNX.

    ``out_path`` defaults to ``<run>/generator.onnx`` (required when ``model`` is a Generator). With
    ``check`` the ONNX Runtime CPU outputs are compared with torch's on ``CHECK_SEEDS`` random inputs from
    ``seed``; over ``atol`` raises ExportError and nothing is written. The write is atomic.
    """
    import onnx
    import torch

    from models.generator import SequentialGenerator
    from models.registry import build_generator

    t0 = time.perf_counter()
    if isinstance(model, SequentialGenerator):
        if out_path is None:
            raise ValueError("export_onnx(Generator, ...) needs out_path")
        G, cfg = model, model.cfg
        sha = weights_sha256(G.state_dict())
        where = f"generator {cfg.name}"
    else:
        from models.checkpoint import load_state

        cfg, state, sha = load_checkpoint_state(model)
        G = build_generator(cfg)
        load_state(G, state, "generator")
        where = str(resolve(model))
        out_path = default_onnx_path(model) if out_path is None else out_path
    out_path = Path(out_path)
    was_training = G.training
    G = G.eval()
    device = next(G.parameters()).device
    try:
        step = _one_step(G.cpu())
        data = _trace_to_onnx(step, cfg, opset)
        proto = onnx.load_from_string(data)
        in_shapes, out_shapes = io_shapes(cfg)
        got_in = {i.name: tuple(d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim)
                  for i in proto.graph.input}
        want_in = {k: (BATCH_AXIS, *v[1:]) for k, v in in_shapes.items()}
        if got_in != want_in or [o.name for o in proto.graph.output] != list(OUTPUT_NAMES):
            raise ExportError(f"{where}: exported graph has inputs {got_in} / outputs "
                              f"{[o.name for o in proto.graph.output]}, expected {want_in} / {list(OUTPUT_NAMES)}")

        errors = {n: 0.0 for n in OUTPUT_NAMES}
        if check:
            sess = _check_session(data)
            checks = [random_inputs(cfg, s) for s in range(seed, seed + CHECK_SEEDS)]
            # ... and the same inputs as one batch: the batch axis must really be one (no traced batch size).
            checks.append({k: np.concatenate([c[k] for c in checks]) for k in checks[0]})
            for feeds in checks:
                with torch.inference_mode():
                    ref = step(*(torch.from_numpy(feeds[n]) for n in in_shapes))
                got = _ort_outputs(sess, feeds)
                for name, r, o in zip(OUTPUT_NAMES, ref, got):
                    if o.shape != tuple(r.shape):
                        raise ExportError(f"{where}: ONNX output {name} has shape {o.shape}, torch {tuple(r.shape)}")
                    err = float(np.max(np.abs(o.astype(np.float64) - r.numpy().astype(np.float64))))
                    errors[name] = max(errors[name], err if np.isfinite(err) else float("inf"))
        max_err = max(errors.values())
        if check and not max_err <= atol:
            detail = ", ".join(f"{k} {v:.3g}" for k, v in errors.items())
            raise ExportError(f"{where}: ONNX Runtime output differs from PyTorch by {max_err:.3g} > atol {atol:g} "
                              f"({detail}; {CHECK_SEEDS} random inputs); {out_path} not written")

        meta = {META_CONFIG: config_json(cfg), META_WEIGHTS: sha, META_VERSION: str(EXPORT_VERSION),
                META_ERROR: repr(max_err) if check else "unchecked",
                "posecast.torch": torch.__version__}
        del proto.metadata_props[:]
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        proto.doc_string = f"posecast {cfg.name} generator one step, {cfg.size}px, L={cfg.history_frames}"
        blob = proto.SerializeToString()
        atomic_write(out_path, lambda p: Path(p).write_bytes(blob))
    finally:
        G.to(device).train(was_training)
    return ExportResult(onnx_path=out_path, max_abs_error=max_err, seconds=time.perf_counter() - t0, opset=opset,
                        input_shapes=in_shapes, output_shapes=out_shapes, errors=errors, weights_sha256=sha)


def ensure_onnx(model: str | os.PathLike, onnx_path: str | os.PathLike | None = None, *, opset: int = 17,
                atol: float = 1e-3) -> tuple[Path, ExportResult | None]:
    """The checkpoint's ONNX, exported (and checked) when missing or stale (config / weights hash mismatch).

    Returns (path, ExportResult or None when the existing file was current).
    """
    cfg, _, sha = load_checkpoint_state(model)
    path = Path(onnx_path) if onnx_path is not None else default_onnx_path(model)
    if onnx_is_current(path, cfg, sha):
        return path, None
    res = export_onnx(model, path, opset=opset, atol=atol)
    return res.onnx_path, res


# -- engine cache keys (pure Python) ------------------------------------------------------------------------
def engine_key(*, onnx_sha256: str, gpu_name: str, compute_capability: str, tensorrt_version: str,
               fp16: bool) -> dict:
    """What a serialized TensorRT engine is valid for. Any field differing means: rebuild, never load."""
    return {"format": "posecast-tensorrt-engine", "version": 2, "onnx_sha256": onnx_sha256,
            "batch_sizes": list(TRT_BATCH_SIZES),
            "gpu_name": gpu_name, "compute_capability": str(compute_capability),
            "tensorrt_version": str(tensorrt_version), "fp16": bool(fp16)}


def key_digest(key: Mapping) -> str:
    return hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()


def engine_cache_paths(cache_dir: str | os.PathLike, stem: str, key: Mapping,
                       suffix: str = ".engine") -> tuple[Path, Path]:
    """(engine file, JSON sidecar) for ``key``: ``<cache>/<stem>.<hash16><suffix>`` and ``... .json``."""
    engine = Path(cache_dir) / f"{stem}.{key_digest(key)[:16]}{suffix}"
    return engine, engine.with_name(engine.name + ".json")


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def read_engine_key(engine_path: str | os.PathLike) -> dict:
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise EngineError(f"{engine_path}: no key sidecar {side.name}; refusing to load an engine of unknown origin")
    try:
        doc = json.loads(side.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise EngineError(f"{side}: unreadable engine key ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("key"), dict):
        raise EngineError(f"{side}: not a posecast engine key file")
    return doc["key"]


def verify_engine_key(engine_path: str | os.PathLike, expected: Mapping) -> None:
    """Refuse (EngineError) an engine whose recorded key is not ``expected``."""
    recorded = read_engine_key(engine_path)
    if recorded != dict(expected):
        diff = ", ".join(f"{k}: {recorded.get(k)!r} != {expected.get(k)!r}"
                         for k in sorted(set(recorded) | set(expected)) if recorded.get(k) != expected.get(k))
        raise EngineError(f"{engine_path}: built for another model/GPU/TensorRT ({diff}); refusing to load it")


def write_engine(engine_path: Path, blob: bytes, key: Mapping, extra: Mapping | None = None) -> None:
    """Engine bytes first, then the sidecar (its presence marks a complete, keyed engine); both atomic."""
    atomic_write(engine_path, lambda p: Path(p).write_bytes(blob))
    doc = {"key": dict(key), "digest": key_digest(key), **(extra or {})}
    atomic_write(sidecar_path(engine_path), lambda p: Path(p).write_text(json.dumps(doc, indent=2)))


# -- TensorRT -------------------------------------------------------------------------------------------
def require_cuda(what: str = "TensorRT backend") -> None:
    import torch

    if not torch.cuda.is_available():
        raise EngineError(f"{what} {NO_GPU}")


def import_tensorrt():
    """The ``tensorrt`` module, after checking for a CUDA GPU; EngineError (one line) otherwise."""
    require_cuda("TensorRT backend")
    try:
        import tensorrt as trt
    except ImportError as e:
        raise EngineError(f"TensorRT backend needs the tensorrt package ({e}): pip install 'posecast[tensorrt]'") from None
    return trt


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of the current CUDA device."""
    import torch

    dev = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(dev)
    return torch.cuda.get_device_name(dev), f"{major}.{minor}"


def current_engine_key(onnx_path: str | os.PathLike, fp16: bool, trt=None) -> dict:
    trt = trt or import_tensorrt()
    name, cc = gpu_identity()
    return engine_key(onnx_sha256=file_sha256(onnx_path), gpu_name=name, compute_capability=cc,
                      tensorrt_version=trt.__version__, fp16=fp16)


def _trt_logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def _build_serialized(trt, onnx_path: Path, fp16: bool) -> bytes:
    """Parse the ONNX and build a serialized engine (TensorRT 10 API; 8.x needs the EXPLICIT_BATCH flag)."""
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errs or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, TRT_WORKSPACE_BYTES)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    for b in TRT_BATCH_SIZES:  # profile i = static batch size TRT_BATCH_SIZES[i] (min = opt = max)
        profile = builder.create_optimization_profile()
        for t in inputs:
            shape = (b, *tuple(t.shape)[1:])
            profile.set_shape(t.name, shape, shape, shape)
        config.add_optimization_profile(profile)
    if fp16:
        flag = getattr(trt.BuilderFlag, "FP16", None)
        if flag is None:
            raise EngineError(f"TensorRT {trt.__version__} has no FP16 builder flag (strongly typed only); "
                              "build without --fp16")
        if not getattr(builder, "platform_has_fast_fp16", True):  # deprecated in TensorRT 10
            warnings.warn("this GPU has no fast fp16; building an fp16 engine anyway", RuntimeWarning)
        config.set_flag(flag)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    return bytes(blob)


def default_engine_dir(onnx_path: str | os.PathLike) -> Path:
    return Path(onnx_path).parent / "engines"


def get_tensorrt_engine(onnx_path, fp16: bool, cache_dir) -> tuple[Path, dict, bool]:
    """(engine path, key, built now?) — reuse the cached engine when its key matches, else build it."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineError(f"{onnx_path}: ONNX file not found (run posecast export first)")
    trt = import_tensorrt()
    key = current_engine_key(onnx_path, fp16, trt)
    engine_path, _ = engine_cache_paths(cache_dir or default_engine_dir(onnx_path), onnx_path.stem, key)
    if engine_path.is_file():
        try:
            verify_engine_key(engine_path, key)
            return engine_path, key, False
        except EngineError:
            pass  # sidecar missing/different (e.g. a crash between the two writes): rebuild over it
    t0 = time.perf_counter()
    blob = _build_serialized(trt, onnx_path, fp16)
    write_engine(engine_path, blob, key, {"onnx": onnx_path.name, "build_seconds": time.perf_counter() - t0})
    return engine_path, key, True


def build_tensorrt_engine(onnx_path: str | os.PathLike, *, fp16: bool = False,
                          cache_dir: str | os.PathLike | None = None) -> Path:
    """Serialized TensorRT engine of ``onnx_path``, built or taken from the cache (default ``<onnx dir>/engines``)."""
    return get_tensorrt_engine(onnx_path, fp16, cache_dir)[0]


def load_tensorrt_engine(engine_path: str | os.PathLike, key: Mapping, trt=None):
    """Deserialize an engine after checking its recorded key equals ``key`` (refuses otherwise)."""
    trt = trt or import_tensorrt()
    verify_engine_key(engine_path, key)
    runtime = trt.Runtime(_trt_logger(trt))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise EngineError(f"{engine_path}: TensorRT could not deserialize this engine")
    return runtime, engine


# -- torch-tensorrt -----------------------------------------------------------------------------------------
def import_torch_tensorrt():
    require_cuda("torch-tensorrt backend")
    try:
        import torch_tensorrt
    except ImportError as e:
        raise EngineError(f"torch-tensorrt backend needs the torch_tensorrt package ({e}): "
                          "pip install 'posecast[torch-tensorrt]'") from None
    return torch_tensorrt


def torch_tensorrt_key(cfg: ModelConfig, sha: str, fp16: bool, torch_tensorrt) -> dict:
    import torch

    name, cc = gpu_identity()
    return {"format": "posecast-torch-tensorrt", "version": 1, "weights_sha256": sha,
            "config_sha256": hashlib.sha256(config_json(cfg).encode()).hexdigest(), "gpu_name": name,
            "compute_capability": cc, "torch_tensorrt_version": torch_tensorrt.__version__,
            "torch_version": torch.__version__, "fp16": bool(fp16)}


def compile_torch_tensorrt(model: str | os.PathLike, *, fp16: bool = False,
                           cache_dir: str | os.PathLike | None = None):
    """(compiled module on CUDA, cfg, program path, built now?) via torch_tensorrt (dynamo IR, static shapes).

    The compiled program is cached as an ExportedProgram ``<run>/engines/generator.<hash16>.ep`` + key sidecar.
    """
    import torch

    from models.checkpoint import load_state
    from models.registry import build_generator

    tt = import_torch_tensorrt()
    cfg, state, sha = load_checkpoint_state(model)
    key = torch_tensorrt_key(cfg, sha, fp16, tt)
    cache = Path(cache_dir) if cache_dir else default_engine_dir(default_onnx_path(model))
    path, _ = engine_cache_paths(cache, default_onnx_path(model).stem, key, suffix=".ep")
    if path.is_file():
        try:
            verify_engine_key(path, key)
            return torch.export.load(str(path)).module(), cfg, path, False
        except EngineError:
            pass
    G = build_generator(cfg)
    load_state(G, state, "generator")
    step = _one_step(G.cuda().eval())
    shapes, _ = io_shapes(cfg)
    inputs = [torch.zeros(s, device="cuda") for s in shapes.values()]
    precisions = {torch.float16, torch.float32} if fp16 else {torch.float32}
    t0 = time.perf_counter()
    try:
        mod = tt.compile(step, ir="dynamo", inputs=inputs, enabled_precisions=precisions)
    except Exception as e:  # noqa: BLE001
        raise EngineError(f"torch_tensorrt.compile failed ({type(e).__name__}: {e})") from e
    seconds = time.perf_counter() - t0
    try:
        import inspect

        kw = "arg_inputs" if "arg_inputs" in inspect.signature(tt.save).parameters else "inputs"
        atomic_write(path, lambda p: tt.save(mod, p, output_format="exported_program", **{kw: inputs}),
                     tmp_suffix=path.suffix)  # tt.save picks its format by the .ep suffix
        doc = {"key": key, "digest": key_digest(key), "build_seconds": seconds}
        atomic_write(sidecar_path(path), lambda p: Path(p).write_text(json.dumps(doc, indent=2)))
    except Exception as e:  # noqa: BLE001 - caching is an optimisation; the compiled module is still usable
        warnings.warn(f"could not cache the torch-tensorrt program at {path}: {e}", RuntimeWarning)
    return mod, cfg, path, True


# -- the CLI entry point -----------------------------------------------------------------------------------
def export(model: str | os.PathLike, backend: str = "onnxruntime", *, fp16: bool = False,
           out: str | os.PathLike | None = None, opset: int = 17, atol: float = 1e-3) -> dict:
    """``posecast export RUN --backend ... [--fp16]``: ONNX (always, checked), then the backend's engine.

    Returns a JSON-able summary: backend, onnx path, max_abs_error, seconds per stage, engine path if any.
    """
    if backend not in ONNX_BACKENDS:
        raise ValueError(f"unknown export backend {backend!r}; choose one of {', '.join(ONNX_BACKENDS)}")
    if fp16 and backend == "onnxruntime":
        raise ValueError("--fp16 applies to the tensorrt and torch-tensorrt backends only")
    # Fail fast (before the export) when the GPU backend cannot run here.
    if backend == "tensorrt":
        import_tensorrt()
    elif backend == "torch-tensorrt":
        import_torch_tensorrt()

    res = export_onnx(model, out, opset=opset, atol=atol)
    summary = {"backend": backend, "onnx": str(res.onnx_path), "max_abs_error": res.max_abs_error,
               "errors": res.errors, "onnx_seconds": round(res.seconds, 3), "opset": res.opset,
               "inputs": {k: list(v) for k, v in res.input_shapes.items()},
               "outputs": {k: list(v) for k, v in res.output_shapes.items()},
               "weights_sha256": res.weights_sha256, "fp16": fp16}
    if backend == "tensorrt":
        t0 = time.perf_counter()
        path, key, built = get_tensorrt_engine(res.onnx_path, fp16, None)
        summary.update(engine=str(path), engine_seconds=round(time.perf_counter() - t0, 3), engine_cached=not built,
                       gpu=f"{key['gpu_name']} (sm {key['compute_capability']})",
                       tensorrt_version=key["tensorrt_version"])
    elif backend == "torch-tensorrt":
        t0 = time.perf_counter()
        _, _, path, built = compile_torch_tensorrt(model, fp16=fp16)
        summary.update(engine=str(path), engine_seconds=round(time.perf_counter() - t0, 3), engine_cached=not built)
    return summary
