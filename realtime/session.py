"""Per-client streaming state: the label-map and frame histories one client's generator runs on.

A ``Session`` turns one client's landmark stream into frames, exactly like ``Generator.rollout`` does at training
time: history starts at zero (and returns to zero on ``reset()``), each step renders the current full-frame label
map with the training renderer (``models.render``), places the generator's window (``models.window.Placer``: the
whole frame, or for person-crop models the box that follows the person), and feeds the engine that window of

    labels   (1, (L+1)*C, S, S)  the label maps of frames t-L..t, oldest first
    previous (1, L*3, S, S)      the L previously generated full frames in [-1, 1], oldest first
    plate                        the background plate (models drawn on one)

The window it returns is pasted into the plate (the whole frame for other models), and both histories shift by
one frame. All buffers are preallocated: the label map is rendered straight into the current slot of the label
buffer, windows are copied into the engine's input buffers, and the frame is converted to uint8 in place.

A step is ``prepare`` (render, place the window; returns the engine's feeds by name) -> the engine -> ``finish``
(paste, uint8, history shift), so that ``step_sessions`` can run many sessions through one batched engine call:
each input stacked along axis 0, the windows split back. ``Session.step`` is the same with a batch of one.

``DeviceSession`` is the same state kept where the engine computes (a CUDA GPU): the label and frame histories,
the plate and the frame being made are torch tensors on the engine's device; per step only the current label map
(rendered on the host) goes in and the finished uint8 frame comes out, instead of every history window each way.
``open_session`` picks it for engines on CUDA; on a CPU the numpy ``Session`` is the fast path. Both make the same
frames bit for bit (tested on CPU with torch tensors).

Sessions are not thread-safe; the server runs every session on its one worker thread.
"""

from __future__ import annotations

import time

import numpy as np

from models.landmarks import LandmarkError, layout_of, validate_landmarks
from models.render import render_labels
from models.visualize import to_uint8
from models.window import Placer, cut, paste
from realtime.protocol import ErrorCode, ProtocolError

# Landmark values whose magnitude exceeds this are rejected (x, y are normalised to [0, 1]; the renderer already
# treats anything beyond 4 image sizes outside the frame as missing). Catches pixel coordinates and garbage.
MAX_ABS_LANDMARK = 100.0


def _shift_history(labels, previous, frame, L: int, C: int) -> None:
    """Shift the histories one frame, in place (numpy arrays or torch tensors alike): ``labels`` ((L+1)*C, ...)
    and ``previous`` (L*3, ...) move one slot older, ``frame`` becomes the newest previous frame. Block by block,
    oldest first: no overlapping copies, no temporaries."""
    for i in range(L):
        labels[i * C:(i + 1) * C] = labels[(i + 1) * C:(i + 2) * C]
    for i in range(L - 1):
        previous[i * 3:(i + 1) * 3] = previous[(i + 1) * 3:(i + 2) * 3]
    previous[(L - 1) * 3:] = frame


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000.0


class Session:
    """One client's generator state over an ``Engine`` (see realtime/engine.py).

    ``step(landmarks)`` -> ``(frame, timings)``: ``frame`` is uint8 RGB ``(S, S, 3)``, a buffer owned by the
    session and overwritten by the next step (copy it to keep it); ``timings`` holds per-stage milliseconds
    ``render``, ``engine`` and ``post`` (float -> uint8 and the history shift).
    """

    def __init__(self, engine, name: str = ""):
        cfg = engine.cfg
        self.engine = engine
        self.name = name
        self.kind = cfg.kind
        self.size = S = cfg.size
        self.history_frames = L = cfg.history_frames
        self.label_nc = C = cfg.label_nc
        self.landmark_layout = layout_of(cfg.kind)                   # models.landmarks.LandmarkLayout
        self._labels = np.zeros((1, (L + 1) * C, S, S), np.float32)
        self._current = self._labels[0, L * C:]                     # (C, S, S) view: the current frame's slot
        self._previous = np.zeros((1, L * 3, S, S), np.float32) if L else None
        self._frame = np.zeros((3, S, S), np.float32)               # the full frame being made
        self._feeds = engine.zero_inputs()                          # the engine's input buffers (window-sized)
        self._placer = Placer.of(cfg)                                # where each frame is drawn (models/window.py)
        self._plate = engine.plate
        if cfg.has_plate_input and self._plate is None:
            raise ValueError(f"the {cfg.name} model draws on a background plate but its engine has none")
        self._planes_f = np.empty((3, S, S), np.float32)
        self._planes_u8 = np.empty((3, S, S), np.uint8)
        self._rgb = np.empty((S, S, 3), np.uint8)
        self.frames = 0                                              # frames generated since start / reset
        self.box = None                                              # the window of the last frame (CropBox)
        self._box_next = None                                        # the window of the frame being made

    # -- validation --------------------------------------------------------------------------------------
    def check(self, landmarks, seq: int | None = None) -> np.ndarray:
        """Validate one client's landmarks; return them as float32 ``(K, 3)`` or raise ProtocolError BAD_LANDMARKS.

        ``models.landmarks.validate_landmarks`` against the model's layout: K must match it (face: 468 or 478);
        NaN marks a missing value and is allowed; inf and values beyond +-MAX_ABS_LANDMARK are not.
        """
        try:
            return validate_landmarks(landmarks, self.landmark_layout, max_abs=MAX_ABS_LANDMARK)
        except LandmarkError as e:  # the message names the kind, the layout, the problem and the rows
            raise ProtocolError(ErrorCode.BAD_LANDMARKS, str(e), seq) from None

    # -- the hot path ------------------------------------------------------------------------------------
    def prepare(self, landmarks, seq: int | None = None) -> dict[str, np.ndarray]:
        """Validate and render ``landmarks``, place the window; return the engine's feeds by name, batch 1
        (this session's own input buffers, valid until its next ``prepare``)."""
        lm = self.check(landmarks, seq)
        S, L = self.size, self.history_frames
        render_labels(self.kind, lm, S, S, out=self._current)
        place = self._placer.update(lm)
        box = place.box
        feeds = self._feeds
        feeds["labels"][0] = cut(self._labels[0], box)
        if L:
            feeds["previous"][0] = cut(self._previous[0], box)
        if "plate" in feeds:
            feeds["plate"][0] = cut(self._plate, box)
        if "head" in feeds:
            feeds["head"][0] = place.head
        self._box_next = box
        return feeds

    def finish(self, window: np.ndarray) -> np.ndarray:
        """Take the engine's window ``(3, h, w)`` in [-1, 1]: paste it (onto the plate for crop models), convert
        the frame to uint8 RGB and shift the histories. Returns the RGB frame (a buffer this session owns)."""
        L, C = self.history_frames, self.label_nc
        box = self._box_next
        frame = self._frame
        if self._placer.follows:
            frame[:] = self._plate
        paste(frame, np.asarray(window, np.float32), box)
        self.box = box if self._placer.follows else None
        to_uint8(frame, out=self._rgb, scratch=(self._planes_f, self._planes_u8))
        if L:
            _shift_history(self._labels[0], self._previous[0], frame, L, C)
        self.frames += 1
        return self._rgb

    def step(self, landmarks, seq: int | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """Generate the next frame from ``landmarks`` (K, 3); see the class docstring."""
        t0 = time.perf_counter()
        feeds = self.prepare(landmarks, seq)
        t1 = time.perf_counter()
        window = self._run_engine(feeds)
        t2 = time.perf_counter()
        rgb = self.finish(window)
        t3 = time.perf_counter()
        return rgb, {"render": _ms(t0, t1), "engine": _ms(t1, t2), "post": _ms(t2, t3)}

    def _run_engine(self, feeds):
        """The engine on this session's feeds: the window (3, h, w)."""
        return np.asarray(self.engine.step(feeds))[0]

    def reset(self) -> None:
        """Back to zero history: the next frame is generated exactly as the first one of a new session."""
        self._labels.fill(0.0)
        if self._previous is not None:
            self._previous.fill(0.0)
        self._placer.reset()
        self.frames = 0
        self.box = None


class DeviceSession(Session):
    """A ``Session`` whose histories live on ``device`` (default: the engine's) as torch tensors; see the module
    docstring. ``prepare`` returns the engine's feeds as tensors on that device (views into the histories) and
    ``finish`` takes the engine's window as a tensor there; the engine runs them with ``Engine.step_tensors``."""

    def __init__(self, engine, name: str = "", device=None):
        super().__init__(engine, name)
        import torch

        self._torch = torch
        S, L, C = self.size, self.history_frames, self.label_nc
        self.device = dev = torch.device(device if device is not None else engine.device)
        pinned = dev.type == "cuda"                                   # page-locked host buffers: async copies
        self._t_labels = torch.zeros(((L + 1) * C, S, S), device=dev)
        self._t_previous = torch.zeros((L * 3, S, S), device=dev) if L else None
        self._t_frame = torch.zeros((3, S, S), device=dev)
        self._t_plate = torch.from_numpy(self._plate).to(dev) if self._plate is not None else None
        self._host_current = torch.zeros((C, S, S), pin_memory=pinned)
        self._current = self._host_current.numpy()                    # the renderer draws here
        self._host_rgb = torch.empty((S, S, 3), dtype=torch.uint8, pin_memory=pinned)
        self._rgb = self._host_rgb.numpy()

    def prepare(self, landmarks, seq: int | None = None) -> dict:
        lm = self.check(landmarks, seq)
        torch, S, L, C = self._torch, self.size, self.history_frames, self.label_nc
        render_labels(self.kind, lm, S, S, out=self._current)
        self._t_labels[L * C:].copy_(self._host_current, non_blocking=True)
        place = self._placer.update(lm)
        box = place.box
        feeds = {"labels": cut(self._t_labels, box)[None]}
        if L:
            feeds["previous"] = cut(self._t_previous, box)[None]
        if self.engine.cfg.has_plate_input:
            feeds["plate"] = cut(self._t_plate, box)[None]
        if "head" in self._feeds:
            feeds["head"] = torch.from_numpy(np.asarray(place.head, np.float32))[None].to(self.device)
        self._box_next = box
        return feeds

    def finish(self, window) -> np.ndarray:
        """``window``: the engine's (3, h, w) tensor on this session's device. Returns the uint8 RGB frame."""
        torch, L, C = self._torch, self.history_frames, self.label_nc
        box = self._box_next
        frame = self._t_frame
        if self._placer.follows:
            frame.copy_(self._t_plate)
        paste(frame, window, box)
        self.box = box if self._placer.follows else None
        # models.visualize.to_uint8 in the same float32 operations: clip((x + 1) * 127.5 + 0.5, 0, 255), truncated.
        rgb = frame.add(1.0).mul_(127.5).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8).permute(1, 2, 0)
        self._host_rgb.copy_(rgb)                                     # the one device -> host copy of a step
        if L:
            _shift_history(self._t_labels, self._t_previous, frame, L, C)
        self.frames += 1
        return self._rgb

    def _run_engine(self, feeds):
        return self.engine.step_tensors(feeds)[0]

    def reset(self) -> None:
        super().reset()
        for t in (self._t_labels, self._t_previous, self._t_frame):
            if t is not None:
                t.zero_()


def wants_device_history(engine) -> bool:
    """True when ``engine`` computes on a CUDA device and takes torch tensors there (``Engine.step_tensors``)."""
    return str(getattr(engine, "device", "cpu")).startswith("cuda") and hasattr(engine, "step_tensors")


def open_session(engine, name: str = "", history: str = "auto") -> Session:
    """A session over ``engine``: ``history`` "host" (numpy ``Session``), "device" (``DeviceSession`` on the
    engine's device) or "auto" (device for engines on CUDA, host otherwise)."""
    if history not in ("auto", "host", "device"):
        raise ValueError(f"history must be 'auto', 'host' or 'device', got {history!r}")
    if history == "device" or (history == "auto" and wants_device_history(engine)):
        return DeviceSession(engine, name)
    return Session(engine, name)


def step_sessions(engine, work: list[tuple[Session, np.ndarray]]) -> list[tuple[np.ndarray, dict[str, float]]]:
    """One step of every ``(session, landmarks)`` in ``work`` with ONE batched engine call.

    Every session's feeds are stacked along axis 0, name by name (whatever inputs the engine has: labels,
    previous, plate, head, ...), and row i of the engine's output goes back to session i. Returns, per session,
    its frame (a buffer the session owns) and timings; ``engine`` is the batch's engine time, shared by all.
    With one session (or an engine without ``step_batch``) this is ``Session.step`` for each.
    """
    if len(work) == 1 or not hasattr(engine, "step_batch"):
        return [s.step(lm) for s, lm in work]
    on_device = {isinstance(s, DeviceSession) for s, _ in work}
    if len(on_device) != 1:
        raise ValueError("step_sessions: host and device sessions cannot share a batch")
    t0 = time.perf_counter()
    feeds = [s.prepare(lm) for s, lm in work]
    t1 = time.perf_counter()
    if on_device == {True}:
        torch = work[0][0]._torch
        out = engine.step_tensors({k: torch.cat([f[k] for f in feeds]) for k in feeds[0]})
    else:
        out = engine.step_batch({k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]})
    t2 = time.perf_counter()
    results = []
    for i, (s, _) in enumerate(work):
        t = time.perf_counter()
        rgb = s.finish(out[i])
        results.append((rgb, {"render": _ms(t0, t1) / len(work), "engine": _ms(t1, t2),
                              "post": _ms(t, time.perf_counter())}))
    return results
