"""The posecast wire protocol: one schema, imported by the server and every client. See docs/protocol.md.

Transport: ZeroMQ, client DEALER <-> server ROUTER; every message is ONE frame holding a msgpack map with a
``"t"`` (type) key. Client -> server: hello, landmarks, reset, bye, ping. Server -> client: welcome, frame,
error, pong. Landmarks travel as raw little-endian float32 bytes plus their shape (compact and fast to pack).

``decode`` never trusts its input: any malformed message raises ``ProtocolError`` with an error code and a
human-readable reason, which the server sends back as an error reply.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20        # server-side ZMQ_MAXMSGSIZE; a 478x3 float32 face is ~5.7 KiB
MAX_LANDMARKS = 1024


class ErrorCode:
    BAD_MESSAGE = "bad_message"          # not msgpack, not a map, unknown type, missing/ill-typed field
    BAD_VERSION = "bad_version"          # protocol version not supported
    NO_SESSION = "no_session"            # landmarks/reset before hello (or after the session expired)
    BAD_LANDMARKS = "bad_landmarks"      # wrong count/shape/dtype, NaN/inf where not allowed
    SERVER_BUSY = "server_busy"          # too many clients
    INTERNAL = "internal"                # the server failed on this message; the session is kept


class ProtocolError(ValueError):
    def __init__(self, code: str, reason: str, seq: int | None = None):
        super().__init__(f"{code}: {reason}")
        self.code, self.reason, self.seq = code, reason, seq


_TYPES: dict[str, type] = {}


def _message(cls):
    _TYPES[cls.TYPE] = cls
    return dataclasses.dataclass(cls)


# -- Client -> server -------------------------------------------------------------------------------------
@_message
class Hello:
    TYPE: ClassVar[str] = "hello"
    version: int = PROTOCOL_VERSION   # protocol version the client speaks
    client: str = ""                  # free-form client name, for the server log


@_message
class Landmarks:
    TYPE: ClassVar[str] = "landmarks"
    seq: int                          # client's frame sequence number (monotonic)
    capture_ts: float                 # capture time, seconds (client clock; echoed back for latency)
    shape: tuple                      # (K, 3)
    data: bytes                       # K*3 float32 little-endian: x, y in [0,1], visibility/z; NaN = missing

    @classmethod
    def from_array(cls, seq: int, capture_ts: float, landmarks: np.ndarray | None, num_landmarks: int) -> "Landmarks":
        """Pack (K, 3) landmarks; ``None`` (nothing detected) is sent as all-NaN."""
        if landmarks is None:
            landmarks = np.full((num_landmarks, 3), np.nan, np.float32)
        arr = np.ascontiguousarray(landmarks, dtype="<f4")
        return cls(seq=seq, capture_ts=capture_ts, shape=tuple(arr.shape), data=arr.tobytes())

    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype="<f4").reshape(self.shape).astype(np.float32)


@_message
class Reset:
    TYPE: ClassVar[str] = "reset"     # start over from zero history


@_message
class Bye:
    TYPE: ClassVar[str] = "bye"       # free my session now


@_message
class Ping:
    TYPE: ClassVar[str] = "ping"
    ts: float = 0.0


# -- Server -> client -------------------------------------------------------------------------------------
@_message
class Welcome:
    TYPE: ClassVar[str] = "welcome"
    version: int                      # protocol version the server speaks
    kind: str                         # "dance" | "face": which MediaPipe solution the client must run
    size: int                         # output frame side in pixels
    history_frames: int               # L
    num_landmarks: int                # K the server expects (33 pose; 468/478 face accepted as 478/468)
    layout: str                       # "mediapipe-pose-33" | "mediapipe-face-mesh"
    model: str = ""                   # preset name
    backend: str = ""                 # engine backend
    subject_stats: dict | None = None # training subject's body statistics, for pose normalisation
    fps: float = 30.0                 # frame rate the model was trained at


@_message
class Frame:
    TYPE: ClassVar[str] = "frame"
    seq: int                          # the landmarks message this frame answers
    capture_ts: float                 # echoed from the landmarks message
    jpeg: bytes                       # the generated frame, JPEG
    timings: dict                     # per-stage server timings in ms: decode, render, engine, encode, total
    dropped: int = 0                  # landmark messages of this client dropped so far (latest wins)


@_message
class Error:
    TYPE: ClassVar[str] = "error"
    code: str
    reason: str
    seq: int | None = None


@_message
class Pong:
    TYPE: ClassVar[str] = "pong"
    ts: float = 0.0


Message = Hello | Landmarks | Reset | Bye | Ping | Welcome | Frame | Error | Pong


def encode(msg) -> bytes:
    d = {"t": msg.TYPE}
    for f in dataclasses.fields(msg):
        v = getattr(msg, f.name)
        d[f.name] = list(v) if isinstance(v, tuple) else v
    return msgpack.packb(d, use_bin_type=True)


# Field annotations (strings, under ``from __future__ import annotations``) -> accepted Python types.
_FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bytes": (bytes,), "tuple": (list, tuple),
                "dict": (dict,), "dict | None": (dict, type(None)), "int | None": (int, type(None))}


def decode(raw: bytes) -> Message:
    """Parse one message; raises ProtocolError (never anything else) for malformed input."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        d = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=MAX_MESSAGE_BYTES,
                            max_str_len=1 << 16, max_array_len=1 << 12, max_map_len=64)
    except Exception as e:  # msgpack raises several unrelated types (ExtraData, ValueError, ...)
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"not a msgpack message ({type(e).__name__})") from None
    if not isinstance(d, dict) or not isinstance(d.get("t"), str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "expected a msgpack map with a string 't' (type) key")
    cls = _TYPES.get(d.pop("t"))
    if cls is None:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "unknown message type")
    seq = d.get("seq") if isinstance(d.get("seq"), int) else None
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            if f.default is dataclasses.MISSING:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{cls.TYPE}: missing field {f.name!r}", seq)
            continue
        v = d.pop(f.name)
        types = _FIELD_TYPES[f.type]
        if not isinstance(v, types) or isinstance(v, bool):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{cls.TYPE}: field {f.name!r} has type {type(v).__name__}", seq)
        if isinstance(v, float) and not math.isfinite(v):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{cls.TYPE}: field {f.name!r} is not finite", seq)
        kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    if d:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{cls.TYPE}: unknown fields {sorted(map(str, d))[:5]}", seq)
    msg = cls(**kwargs)
    if isinstance(msg, Landmarks):
        _check_landmarks_wire(msg)
    return msg


def _check_landmarks_wire(msg: Landmarks) -> None:
    shape = msg.shape
    if len(shape) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape) \
            or shape[1] != 3 or not 0 < shape[0] <= MAX_LANDMARKS:
        raise ProtocolError(ErrorCode.BAD_LANDMARKS, f"landmark shape must be (K, 3) with 0 < K <= {MAX_LANDMARKS}, "
                                                     f"got {list(shape)}", msg.seq)
    if len(msg.data) != shape[0] * 3 * 4:
        raise ProtocolError(ErrorCode.BAD_LANDMARKS, f"landmark data has {len(msg.data)} bytes; shape {list(shape)} "
                                                     f"needs {shape[0] * 12} (float32)", msg.seq)
