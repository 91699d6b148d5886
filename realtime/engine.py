"""One backend-agnostic interface over the compiled generator: ``Engine.step(feeds) -> frame``.

Backends (by name): ``torch`` (plain PyTorch, the reference path), ``onnxruntime`` (CPU, or CUDA when present),
``tensorrt`` and ``torch-tensorrt`` (NVIDIA GPUs, optional extras). All take and return numpy float32 arrays in
the generator's conventions (see models/generator.py, models/lite.py), named as ``realtime.export.io_shapes``
gives them, in the window (h, w) = ``cfg.crop_hw`` the generator draws in (the whole frame, or lite's person crop):

    labels   (1, (L+1)*C, h, w)  label maps of frames t-L..t in [0, 1]
    previous (1, L*3, h, w)      the L previously generated frames in [-1, 1] (absent when L = 0)
    plate    (1, 3, h, w)        the background plate's window in [-1, 1] (only when cfg.has_plate_input)
    -> frame (1, 3, h, w)        in [-1, 1]

``Engine.plate`` is the model's whole background plate (3, S, S) (None for models without one): a session
composites the window onto it.

``Engine.step_batch(inputs)`` runs B independent samples at once: ``inputs`` maps every input name
(``Engine.input_shapes``) to an array stacked along axis 0, ``(B, *per-sample shape)``, and the frames come
back as ``(B, 3, S, S)``. Backends run at most ``max_batch`` samples per call (torch: any; onnxruntime: any, with
the batch axis of the exported ONNX; TensorRT: the engine's static batch sizes, ``TRT_BATCH_SIZES``); larger
batches are split. The reference path (``_run`` one sample at a time) is what batching is checked against.

Loading never imports trainer/: the model is rebuilt from its checkpoint (models.checkpoint).
"""

from __future__ import annotations

import abc
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from models.presets import ModelConfig

if TYPE_CHECKING:
    import torch

from .errors import EngineError

_BACKENDS: dict[str, Callable[..., "Engine"]] = {}


def register_backend(name: str):
    def deco(factory):
        _BACKENDS[name] = factory
        return factory
    return deco


def list_backends() -> list[str]:
    return sorted(_BACKENDS)


def checkpoint_meta(model: str | os.PathLike) -> dict:
    """The ``meta`` of a checkpoint (training subject's statistics, dataset fps, ...); {} for a bare .onnx."""
    import json

    from models.checkpoint import CheckpointError, resolve

    if Path(model).suffix == ".onnx":
        return {}
    try:
        meta = json.loads(resolve(model).read_text()).get("meta", {})
    except (CheckpointError, OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def checkpoint_plate(model: str | os.PathLike) -> np.ndarray | None:
    """The background plate (3, S, S) in [-1, 1] stored in a checkpoint (``G.background``, before its tanh), or
    None when the model has none. A bare ``.onnx`` is looked up by its run folder's generator.json."""
    from safetensors import safe_open

    from models.checkpoint import CheckpointError, resolve

    p = Path(model)
    if p.suffix == ".onnx":
        p = p.with_name("generator.json")
    try:
        weights = resolve(p).with_suffix(".safetensors")
        with safe_open(str(weights), framework="np") as f:
            if "G.background" not in f.keys():
                return None
            return np.tanh(f.get_tensor("G.background")[0]).astype(np.float32)
    except (CheckpointError, OSError) as e:
        raise EngineError(f"{model}: the background plate of this model could not be read ({e})") from None


class Engine(abc.ABC):
    """Base class: subclasses set ``cfg``, ``backend`` and implement ``_run``. ``meta`` carries the checkpoint's
    metadata (e.g. ``subject_stats``, which the server announces to clients for pose normalisation)."""

    cfg: ModelConfig
    meta: dict = {}
    backend: str = "?"
    device: str = "cpu"
    plate: np.ndarray | None = None
    max_batch: int = 1                # samples per _run call (step_batch splits larger batches)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every input name -> its shape at batch 1, in the generator's argument order."""
        from .export import io_shapes

        return io_shapes(self.cfg)[0]

    def zero_inputs(self) -> dict[str, np.ndarray]:
        """Feeds of the first step from zero history, with the plate's window where a window stands before a person
        is seen (models/window.py)."""
        feeds = {name: np.zeros(shape, np.float32) for name, shape in self.input_shapes.items()}
        if "plate" in feeds and self.plate is not None:
            from models.window import Placer, cut

            feeds["plate"][0] = cut(self.plate, Placer.of(self.cfg).first().box)
        return feeds

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One generator step on the named inputs (``input_shapes``); returns the frame (1, 3, h, w)."""
        want = self.input_shapes
        if set(feeds) != set(want):
            raise ValueError(f"engine inputs must be {sorted(want)}, got {sorted(feeds)}")
        for name, shape in want.items():
            if feeds[name].shape != shape:
                raise ValueError(f"{name} must be {shape}, got {feeds[name].shape}")
        return self._run({name: np.ascontiguousarray(feeds[name], np.float32) for name in want})

    def step_batch(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """B samples at once: ``inputs[name]`` is ``input_shapes[name]`` with B rows instead of 1 (every input
        stacked along axis 0); returns the frames ``(B, 3, h, w)``."""
        shapes = self.input_shapes
        if set(inputs) != set(shapes):
            raise ValueError(f"engine inputs must be exactly {sorted(shapes)}, got {sorted(inputs)}")
        batch = {len(x) for x in inputs.values()}
        if len(batch) != 1 or not all(inputs[n].shape[1:] == s[1:] for n, s in shapes.items()):
            raise ValueError(f"inputs must share one batch size and have per-sample shapes "
                             f"{ {n: s[1:] for n, s in shapes.items()} }, got { {n: x.shape for n, x in inputs.items()} }")
        (n,) = batch
        feeds = {k: np.ascontiguousarray(inputs[k], np.float32) for k in shapes}
        step = max(1, int(self.max_batch))
        if n <= step:
            return self._run(feeds)
        return np.concatenate([self._run({k: v[i:i + step] for k, v in feeds.items()}) for i in range(0, n, step)])

    def step_tensors(self, inputs: dict) -> "torch.Tensor":
        """``step_batch`` on torch tensors that already live on ``self.device`` (a device-resident session's
        history, realtime/session.py ``DeviceSession``); returns the frames as a tensor on that device, so the
        history never makes a round trip through the host. Backends that run on device memory (torch,
        TensorRT, torch-tensorrt, onnxruntime on CUDA) override ``_run_tensors``; the others go through numpy."""
        shapes = self.input_shapes
        if set(inputs) != set(shapes):
            raise ValueError(f"engine inputs must be exactly {sorted(shapes)}, got {sorted(inputs)}")
        batch = {int(x.shape[0]) for x in inputs.values()}
        if len(batch) != 1 or not all(tuple(inputs[n].shape[1:]) == s[1:] for n, s in shapes.items()):
            raise ValueError(f"inputs must share one batch size and have per-sample shapes "
                             f"{ {n: s[1:] for n, s in shapes.items()} }, got "
                             f"{ {n: tuple(x.shape) for n, x in inputs.items()} }")
        (n,) = batch
        feeds = {k: inputs[k].float().contiguous() for k in shapes}
        step = max(1, int(self.max_batch))
        if n <= step:
            return self._run_tensors(feeds)
        import torch

        return torch.cat([self._run_tensors({k: v[i:i + step] for k, v in feeds.items()}) for i in range(0, n, step)])

    def _run_tensors(self, feeds: dict) -> "torch.Tensor":
        """``_run`` on contiguous float32 torch tensors of one batch; default: through host numpy arrays."""
        import torch

        device = next(iter(feeds.values())).device
        out = self._run({k: v.cpu().numpy() for k, v in feeds.items()})
        return torch.from_numpy(out).to(device)

    @abc.abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run the compiled generator on validated, contiguous float32 inputs of batch ``1..max_batch`` (every
        name of ``input_shapes``); return the frames ``(B, 3, h, w)``."""

    def describe(self) -> str:
        return f"{self.backend} on {self.device} ({self.cfg.name}, {self.cfg.size}px, L={self.cfg.history_frames})"


@register_backend("torch")
class TorchEngine(Engine):
    """Plain PyTorch: the reference path the other backends are checked against."""

    backend = "torch"
    max_batch = 64

    def __init__(self, model: str | os.PathLike, device: str = "cpu", **_):
        import torch

        from models.checkpoint import load_generator

        self._torch = torch
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(f"torch backend on {device}: no CUDA device here (torch.cuda.is_available() is False)")
        self.device = device
        self.G, self.meta = load_generator(model, device)
        self.cfg = self.G.cfg
        if self.G.uses_background_plate:
            with torch.inference_mode():
                self.plate = self.G.plate()[0].float().cpu().numpy()

    def _run(self, feeds):
        torch = self._torch
        with torch.inference_mode():
            args = [torch.from_numpy(feeds[name]).to(self.device) for name in self.input_shapes]
            return self.G(*args)[0].float().cpu().numpy()

    def _run_tensors(self, feeds):
        with self._torch.inference_mode():
            return self.G(*(feeds[name] for name in self.input_shapes))[0].float()


def _onnx_for(model: str | os.PathLike, onnx_path: str | os.PathLike | None):
    """(ONNX path, export result or None): an .onnx as given, else the checkpoint's, (re-)exported when stale."""
    from . import export as X

    p = Path(model)
    if p.suffix == ".onnx":
        if not p.is_file():
            raise EngineError(f"{p}: ONNX file not found")
        return p, None
    return X.ensure_onnx(model, onnx_path)


@register_backend("onnxruntime")
class OnnxRuntimeEngine(Engine):
    """ONNX Runtime: CPU by default; ``device="cuda"`` uses the CUDAExecutionProvider (onnxruntime-gpu).

    ``model`` is a run folder / checkpoint .json (its ``generator.onnx`` is exported, checked against PyTorch
    and cached next to it when missing or stale) or an exported ``.onnx`` (used as is; its config comes from
    the file's metadata). ``threads``: intra-op threads (default ``os.cpu_count()``); inter-op 1, sequential.
    """

    backend = "onnxruntime"

    def __init__(self, model: str | os.PathLike, device: str = "cpu", threads: int | None = None,
                 onnx_path: str | os.PathLike | None = None, **_):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EngineError(f"onnxruntime backend needs the onnxruntime package ({e}): pip install onnxruntime") from None
        from . import export as X

        if device != "cpu" and not (device == "cuda" or str(device).startswith("cuda:")):
            raise EngineError(f"onnxruntime backend: device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        if device != "cpu":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineError("onnxruntime backend on cuda needs the CUDAExecutionProvider; this onnxruntime has "
                                  f"{', '.join(ort.get_available_providers())} (pip install onnxruntime-gpu)")
            gpu = int(device.split(":", 1)[1]) if ":" in device else 0
            providers = [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.onnx_path, self.export_result = _onnx_for(model, onnx_path)
        self.meta = checkpoint_meta(model)
        self.plate = checkpoint_plate(model)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(self.onnx_path), so, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise EngineError(f"{self.onnx_path}: onnxruntime could not load it ({type(e).__name__}: {e})") from None
        self.cfg = X.config_from_metadata(self._session.get_modelmeta().custom_metadata_map, str(self.onnx_path))
        want_in, _ = X.io_shapes(self.cfg)
        got_in = {i.name: tuple(i.shape) for i in self._session.get_inputs()}
        if {k: v[1:] for k, v in got_in.items()} != {k: v[1:] for k, v in want_in.items()} \
                or not all(v[0] in (1, X.BATCH_AXIS) for v in got_in.values()):
            raise EngineError(f"{self.onnx_path}: inputs {got_in} do not match its config (expected {want_in})")
        # An ONNX exported with a batch axis runs any batch in one call; an older static one, one sample at a time.
        self.max_batch = 256 if all(v[0] == X.BATCH_AXIS for v in got_in.values()) else 1
        self.device = device if self._session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.threads = so.intra_op_num_threads

    def _run(self, feeds):
        return self._session.run(["frame"], feeds)[0]

    def _run_tensors(self, feeds):
        """On CUDA: the inputs are bound where they lie (IOBinding on the tensors' device memory) and the frame is
        written into a torch tensor on the same device; on CPU, plain ``_run`` on zero-copy numpy views."""
        import torch

        first = next(iter(feeds.values()))
        if first.device.type != "cuda" or self.device == "cpu":
            return super()._run_tensors(feeds)
        n = int(first.shape[0])
        out = torch.empty((n, 3, *self.cfg.crop_hw), dtype=torch.float32, device=first.device)
        binding = self._session.io_binding()
        for name, x in feeds.items():
            binding.bind_input(name, "cuda", x.device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output("frame", "cuda", out.device.index or 0, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(first.device).synchronize()   # the inputs' copies are done before ORT reads them
        self._session.run_with_iobinding(binding)
        return out


@register_backend("tensorrt")
class TensorRTEngine(Engine):
    """TensorRT: the cached serialized engine of the checkpoint's ONNX (built on first use), run on a CUDA
    stream with preallocated torch CUDA tensors as its I/O buffers. The engine has one optimization profile
    per static batch size (``export.TRT_BATCH_SIZES``); each gets its own execution context and buffers, and a
    batch of n runs on the smallest size >= n (the rows past n are ignored)."""

    backend = "tensorrt"

    def __init__(self, model: str | os.PathLike, device: str = "cuda", fp16: bool = False,
                 cache_dir: str | os.PathLike | None = None, onnx_path: str | os.PathLike | None = None, **_):
        from . import export as X

        trt = X.import_tensorrt()  # one clear line without a GPU or the package
        import torch

        if device != "cuda" and not str(device).startswith("cuda"):
            raise EngineError(f"tensorrt backend runs on cuda only, got device={device!r}")
        self._torch = torch
        self.onnx_path, self.export_result = _onnx_for(model, onnx_path)
        self.meta = checkpoint_meta(model)
        self.plate = checkpoint_plate(model)
        self.cfg = X.config_from_metadata(X.read_onnx_metadata(self.onnx_path), str(self.onnx_path))
        self.engine_path, key, self.built = X.get_tensorrt_engine(self.onnx_path, fp16, cache_dir)
        self._runtime, self._engine = X.load_tensorrt_engine(self.engine_path, key, trt)
        if self._engine.num_optimization_profiles != len(X.TRT_BATCH_SIZES):
            raise EngineError(f"{self.engine_path}: {self._engine.num_optimization_profiles} optimization profiles, "
                              f"expected {len(X.TRT_BATCH_SIZES)} (batch sizes {X.TRT_BATCH_SIZES}); rebuild it")
        self.device, self.fp16 = "cuda", fp16
        self.batch_sizes = X.TRT_BATCH_SIZES
        self.max_batch = max(self.batch_sizes)
        self._stream = torch.cuda.Stream()
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
        in_shapes, out_shapes = X.io_shapes(self.cfg)
        per_sample = {k: v[1:] for k, v in {**in_shapes, **out_shapes}.items()}
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        if "frame" not in names or set(in_shapes) - set(names):
            raise EngineError(f"{self.engine_path}: engine tensors {names} lack an input of {sorted(in_shapes)} "
                              f"or the frame output")
        self._slots = {}   # batch size -> (execution context, {tensor name: buffer})
        for profile, b in enumerate(self.batch_sizes):
            ctx = self._engine.create_execution_context()
            if ctx is None:
                raise EngineError(f"{self.engine_path}: TensorRT could not create an execution context")
            ctx.set_optimization_profile_async(profile, self._stream.cuda_stream)
            for name in in_shapes:
                ctx.set_input_shape(name, (b, *per_sample[name]))
            buffers = {}
            for name in names:
                shape = tuple(ctx.get_tensor_shape(name))
                if name in per_sample and shape != (b, *per_sample[name]):
                    raise EngineError(f"{self.engine_path}: tensor {name} is {shape} at batch {b}, the config "
                                      f"expects {(b, *per_sample[name])}")
                dtype = dtypes.get(self._engine.get_tensor_dtype(name))
                if dtype is None:
                    raise EngineError(f"{self.engine_path}: unsupported tensor type "
                                      f"{self._engine.get_tensor_dtype(name)} for {name}")
                buffers[name] = buf = torch.empty(shape, dtype=dtype, device="cuda")
                ctx.set_tensor_address(name, buf.data_ptr())
            self._slots[b] = (ctx, buffers)
        self._stream.synchronize()

    def _run(self, feeds):
        torch = self._torch
        n = len(next(iter(feeds.values())))
        b = min(s for s in self.batch_sizes if s >= n)
        ctx, buffers = self._slots[b]
        with torch.cuda.stream(self._stream):
            for name, x in feeds.items():
                buffers[name][:n].copy_(torch.from_numpy(x))
            if not ctx.execute_async_v3(self._stream.cuda_stream):
                raise EngineError(f"{self.engine_path}: TensorRT execution failed")
            frame = buffers["frame"][:n].float().cpu()  # D2H on this stream, then waits for it
        self._stream.synchronize()
        return frame.numpy()

    def _run_tensors(self, feeds):
        """Device-to-device copies into the profile's buffers; the frame stays on the GPU."""
        torch = self._torch
        n = int(next(iter(feeds.values())).shape[0])
        b = min(s for s in self.batch_sizes if s >= n)
        ctx, buffers = self._slots[b]
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            for name, x in feeds.items():
                buffers[name][:n].copy_(x)
            if not ctx.execute_async_v3(self._stream.cuda_stream):
                raise EngineError(f"{self.engine_path}: TensorRT execution failed")
            frame = buffers["frame"][:n].float().clone()
        torch.cuda.current_stream().wait_stream(self._stream)
        return frame


@register_backend("torch-tensorrt")
class TorchTensorRTEngine(Engine):
    """torch-tensorrt (dynamo IR, static shapes); the compiled program is cached next to the run."""

    backend = "torch-tensorrt"

    def __init__(self, model: str | os.PathLike, device: str = "cuda", fp16: bool = False,
                 cache_dir: str | os.PathLike | None = None, **_):
        from . import export as X

        X.import_torch_tensorrt()  # one clear line without a GPU or the package
        self.meta = checkpoint_meta(model)
        self.plate = checkpoint_plate(model)
        import torch

        if device != "cuda" and not str(device).startswith("cuda"):
            raise EngineError(f"torch-tensorrt backend runs on cuda only, got device={device!r}")
        self._torch = torch
        self._module, self.cfg, self.program_path, self.built = X.compile_torch_tensorrt(
            model, fp16=fp16, cache_dir=cache_dir)
        self.device, self.fp16 = "cuda", fp16

    def _run(self, feeds):  # compiled at batch 1 (max_batch 1): step_batch feeds it one sample at a time
        torch = self._torch
        with torch.no_grad():
            args = [torch.from_numpy(feeds[name]).cuda() for name in self.input_shapes]
            return self._module(*args)[0].float().cpu().numpy()

    def _run_tensors(self, feeds):  # batch 1, as _run
        with self._torch.no_grad():
            return self._module(*(feeds[name].cuda() for name in self.input_shapes))[0].float()


def open_engine(model: str | os.PathLike, backend: str = "onnxruntime", **kwargs) -> Engine:
    """Build or load the engine of ``model`` (a run folder or checkpoint .json) on ``backend``."""
    if backend not in _BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; available: {', '.join(list_backends())}")
    return _BACKENDS[backend](model, **kwargs)


def calibration_cache_path() -> Path:
    """Where measured batch sizes are kept: ``$POSECAST_CACHE_DIR`` or ``$XDG_CACHE_HOME/posecast`` (default
    ``~/.cache/posecast``), file ``batch-calibration.json``."""
    root = os.environ.get("POSECAST_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "posecast")
    return Path(root) / "batch-calibration.json"


def calibration_key(model: str | os.PathLike, engine: "Engine", limit: int) -> str:
    """What a measured batch size depends on: the model's weights and config, the engine (backend, device,
    threads), the machine (CPU model, core count, host name, GPU) and the size limit."""
    import hashlib
    import platform

    from models.checkpoint import resolve

    stem = resolve(model)
    digest = hashlib.sha256()
    for part in (stem.with_suffix(".json"), stem.with_suffix(".safetensors")):
        digest.update(part.read_bytes() if part.is_file() else b"")
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
    except OSError:
        pass
    machine = f"{platform.node()}|{platform.machine()}|{cpu}|{os.cpu_count()}"
    parts = [digest.hexdigest()[:16], engine.backend, str(engine.device), str(getattr(engine, "threads", "")),
             machine, str(int(limit))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def cached_calibration(model: str | os.PathLike, engine: "Engine", limit: int, *, recalibrate: bool = False,
                       log=None) -> tuple[int, dict, bool]:
    """``calibrate_batch`` once per model, engine and machine: the result is kept in ``calibration_cache_path()``
    and read back on the next start. Returns (size, {size: frames/s}, whether it came from the cache). A cache that
    cannot be read or written is measured around (and said so in ``log``), never fatal."""
    path = calibration_cache_path()
    key = calibration_key(model, engine, limit)
    cache: dict = {}
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError) as e:
        if log:
            log.warning("batch calibration cache %s unreadable (%s): measuring again", path, e)
    hit = cache.get(key)
    if not recalibrate and isinstance(hit, dict) and type(hit.get("max_batch")) is int and hit["max_batch"] >= 1:
        return hit["max_batch"], {int(k): v for k, v in dict(hit.get("fps") or {}).items()}, True
    best, fps = calibrate_batch(engine, limit)
    cache[key] = {"max_batch": best, "fps": {str(k): v for k, v in fps.items()}, "model": str(model),
                  "backend": engine.backend, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        if log:
            log.warning("batch calibration cache %s not written (%s)", path, e)
    return best, fps, False


def calibrate_batch(engine: Engine, limit: int = 16, *, runs: int = 5, gain: float = 1.05) -> tuple[int, dict]:
    """The batch size (a power of two <= ``limit``) at which ``engine`` makes the most frames per second here.

    Batching pays on a GPU; on a CPU it depends on the model and the frame size (larger activations fall out of
    cache), so the server measures instead of assuming. A larger size is chosen only when it beats the best
    smaller one by ``gain``; each size's time is its fastest of ``runs`` calls. Returns (size, {size: frames/s}).
    """
    fps: dict[int, float] = {}
    best, b = 1, 1
    while b <= max(1, int(limit)):
        feeds = {k: np.zeros((b, *s[1:]), np.float32) for k, s in engine.input_shapes.items()}
        engine.step_batch(feeds)                      # warm-up: allocations, kernel selection
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            engine.step_batch(feeds)
            times.append(time.perf_counter() - t0)
        fps[b] = round(b / max(min(times), 1e-9), 1)
        if fps[b] > fps[best] * gain:
            best = b
        b *= 2
    return best, fps
