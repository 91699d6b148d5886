"""The posecast wire protocol: one schema, imported by the server and every client. See docs/protocol.md.

Transport: ZeroMQ, client DEALER <-> server ROUTER; every message is ONE frame holding a msgpack map with a
``"t"`` (type) key. Client -> server: hello, landmarks, reset, bye, ping. Server -> client: welcome, frame,
error, pong. Landmarks travel as raw little-endian float32 bytes plus their shape (compact and fast to pack).

``decode`` never trusts its input: any malformed message raises ``ProtocolError`` with an error code and a
human-readable reason, which the server sends back as an error reply. The value rules, for every field:

* ``int``: a msgpack integer in the int64 range (never a boolean, never a float such as ``1.0``);
* ``float``: a msgpack float or integer (an integer is read as a float), finite;
* ``str`` / ``bytes``: msgpack str (UTF-8) / bin; ``list[int]`` / ``list[float]``: arrays of those;
* ``map``: string keys; its values (and every value anywhere) plain msgpack: nil, bool, int, float, str, bin,
  array, map. msgpack ext values (timestamps included) are rejected wherever they appear.

``schema()`` is the machine-readable form of all of this (written to docs/protocol.schema.json).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import msgpack
import numpy as np

from models.landmarks import validate_landmarks

PROTOCOL_VERSION = 4               # the newest version this module speaks
SUPPORTED_VERSIONS = (2, 3, 4)      # every version the server accepts in a hello (highest common one is used)
MAX_MESSAGE_BYTES = 1 << 16        # the largest client message, in bytes; a 478x3 float32 face is ~5.7 KiB
CURVE_OVERHEAD_BYTES = 33          # what CURVE adds to a message on the wire (MESSAGE command name, nonce, MAC, flags)
MAX_LANDMARKS = 1024
MAX_LEAD_MS = 1000.0               # the furthest ahead a client may say it forecast its landmarks
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


class ErrorCode:
    BAD_MESSAGE = "bad_message"          # not msgpack, not a map, unknown type, missing/ill-typed field
    BAD_VERSION = "bad_version"          # no protocol version in common (the error lists the server's)
    NO_SESSION = "no_session"            # landmarks/reset before hello (or after the session expired)
    BAD_LANDMARKS = "bad_landmarks"      # wrong count/shape/dtype, NaN/inf where not allowed
    SERVER_BUSY = "server_busy"          # too many clients
    INTERNAL = "internal"                # the server failed on this message; the session is kept


#: When each error code is sent (for the schema and the docs).
ERROR_CODES = {
    ErrorCode.BAD_MESSAGE: "not msgpack, not a map, unknown type, a missing, unknown or ill-typed field, a "
                           "multi-frame message, a server-to-client message",
    ErrorCode.BAD_VERSION: "hello with no version in common; 'versions' lists the server's",
    ErrorCode.NO_SESSION: "landmarks or reset before hello, or after the session was freed",
    ErrorCode.BAD_LANDMARKS: "wrong K for the model, bad shape or data length, inf or |v| > 100",
    ErrorCode.SERVER_BUSY: "hello while the server (or this client key) holds its maximum of sessions",
    ErrorCode.INTERNAL: "the server failed on this message (logged); the session is kept",
}


class ProtocolError(ValueError):
    def __init__(self, code: str, reason: str, seq: int | None = None, versions: list | None = None):
        super().__init__(f"{code}: {reason}")
        self.code, self.reason, self.seq, self.versions = code, reason, seq, versions


_TYPES: dict[str, type] = {}


def _message(direction: str):
    def deco(cls):
        cls = dataclasses.dataclass(cls)
        cls.DIRECTION = direction
        _TYPES[cls.TYPE] = cls
        return cls
    return deco


def _f(doc: str, default=dataclasses.MISSING, *, factory=dataclasses.MISSING, **rules):
    """A message field: its documentation and value rules (``min``, ``max``, ``len``, ``max_len``) live in its
    metadata, where ``decode`` and ``schema`` read them; ``since``: the protocol version that added it (``encode``
    leaves it out of messages of older versions)."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"doc": doc, **rules})


# -- Client -> server -------------------------------------------------------------------------------------
@_message("client")
class Hello:
    TYPE: ClassVar[str] = "hello"
    version: int = _f("newest protocol version the client speaks", PROTOCOL_VERSION)
    client: str = _f("free-form client name, for the server log (256 chars kept)", "")
    versions: list[int] | None = _f("every version the client speaks (default: [version]); the server picks "
                                    "the highest one it also speaks", None, max_len=16)

    def offered(self) -> set[int]:
        return set(self.versions) if self.versions else {self.version}


@_message("client")
class Landmarks:
    TYPE: ClassVar[str] = "landmarks"
    seq: int = _f("the client's frame sequence number, increasing", min=0)
    capture_ts: float = _f("capture time in seconds on the client's clock; echoed back")
    shape: list[int] = _f("[K, 3], 0 < K <= 1024", len=2)
    data: bytes = _f("K*3 little-endian float32, row-major: x, y in [0, 1], visibility or z; NaN = missing")
    lead_ms: float = _f("how far past capture_ts the client forecast these landmarks (its expected glass-to-glass "
                        "latency; 0 = the pose as captured); echoed back", 0.0, min=0.0, max=MAX_LEAD_MS, since=4)

    @classmethod
    def from_array(cls, seq: int, capture_ts: float, landmarks: np.ndarray | None, num_landmarks: int,
                   lead_ms: float = 0.0) -> "Landmarks":
        """Pack (K, 3) landmarks; ``None`` (nothing detected) is sent as all-NaN."""
        if landmarks is None:
            landmarks = np.full((num_landmarks, 3), np.nan, np.float32)
        arr = np.ascontiguousarray(landmarks, dtype="<f4")
        return cls(seq=seq, capture_ts=capture_ts, shape=list(arr.shape), data=arr.tobytes(), lead_ms=float(lead_ms))

    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype="<f4").reshape(self.shape).astype(np.float32)


@_message("client")
class Reset:
    TYPE: ClassVar[str] = "reset"     # start over from zero history


@_message("client")
class Bye:
    TYPE: ClassVar[str] = "bye"       # free my session now


@_message("client")
class Ping:
    TYPE: ClassVar[str] = "ping"
    ts: float = _f("any number; echoed in the pong", 0.0)


# -- Server -> client -------------------------------------------------------------------------------------
@_message("server")
class Welcome:
    TYPE: ClassVar[str] = "welcome"
    version: int = _f("the protocol version of this session (the highest both sides speak)")
    kind: str = _f("'dance' or 'face': which MediaPipe solution the client must run")
    size: int = _f("output frame side in pixels", min=1)
    history_frames: int = _f("L, frames of history the generator uses", min=0)
    num_landmarks: int = _f("K the server expects (33 pose; face: 478, 468 also accepted)", min=1)
    layout: str = _f("'mediapipe-pose-33' or 'mediapipe-face-mesh'")
    model: str = _f("preset name", "")
    backend: str = _f("engine backend", "")
    subject_stats: dict | None = _f("training subject's statistics for client-side normalisation: body (dance) "
                                    "or face proportions (face), and the training crop", None)
    fps: float = _f("frame rate the model was trained at", 30.0, min=0.0)
    versions: list[int] = _f("every protocol version the server speaks", factory=lambda: list(SUPPORTED_VERSIONS),
                             max_len=16)
    heartbeat_s: float = _f("send something (a ping when idle) at least this often", 1.0, min=0.0)
    idle_timeout_s: float = _f("a session that sends nothing for this long is freed", 2.0, min=0.0)
    max_message_bytes: int = _f("the largest message accepted (CURVE included); a larger one closes the connection "
                                "or is answered bad_message", MAX_MESSAGE_BYTES, min=1)
    rate_hz: float = _f("messages per second per connection (burst: rate_burst); a faster connection is read "
                        "slower, nothing is dropped", 120.0, min=0.0)
    rate_burst: int = _f("token-bucket size of the rate limit, in messages", 32, min=1)
    reply_queue: int = _f("replies queued per connection for a client that does not read; more than rate_burst, "
                          "so a burst within the rate is answered in full", 64, min=1, since=3)
    max_clients: int = _f("live sessions the server holds, all clients together (more: server_busy)", 16, min=1,
                          since=3)
    sessions_per_key: int = _f("live sessions per CURVE key; a new one takes over the oldest", 4, min=1, since=3)
    max_connections: int = _f("open connections; a newcomer beyond it closes the oldest one without a session",
                              1024, min=1, since=3)
    max_connections_per_address: int = _f("the same, per source address", 128, min=1, since=3)


@_message("server")
class Frame:
    TYPE: ClassVar[str] = "frame"
    seq: int = _f("the landmarks message this frame answers", min=0)
    capture_ts: float = _f("echoed from the landmarks message")
    jpeg: bytes = _f("the generated frame, JPEG")
    timings: dict = _f("per-stage server timings in ms (str -> float): decode, render, engine, encode, total")
    dropped: int = _f("landmarks of this session that got no frame so far", 0, min=0)
    lead_ms: float = _f("echoed from the landmarks message: the frame shows the pose forecast this far past "
                        "capture_ts", 0.0, min=0.0, max=MAX_LEAD_MS, since=4)


@_message("server")
class Error:
    TYPE: ClassVar[str] = "error"
    code: str = _f("one of ERROR_CODES")
    reason: str = _f("human-readable explanation")
    seq: int | None = _f("the landmarks message this answers, when known", None, min=0)
    versions: list[int] | None = _f("bad_version only: every version the server speaks", None, max_len=16)


@_message("server")
class Pong:
    TYPE: ClassVar[str] = "pong"
    ts: float = _f("echoed from the ping", 0.0)


Message = Hello | Landmarks | Reset | Bye | Ping | Welcome | Frame | Error | Pong


def encode(msg, version: int = PROTOCOL_VERSION) -> bytes:
    """One message as its wire bytes, for a session of protocol ``version`` (fields added later are left out)."""
    d = {"t": msg.TYPE}
    for f in dataclasses.fields(msg):
        if f.metadata.get("since", 0) > version:
            continue
        v = getattr(msg, f.name)
        d[f.name] = list(v) if isinstance(v, tuple) else v
    return msgpack.packb(d, use_bin_type=True)


# -- decoding ---------------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return type(v) is int and INT64_MIN <= v <= INT64_MAX


def _is_float(v) -> bool:
    return (type(v) is float or _is_int(v)) and math.isfinite(v)


def _plain(v, depth: int = 0) -> bool:
    """Only plain msgpack values (no ext, no timestamps), nested at most 8 deep."""
    if v is None or type(v) in (bool, str, bytes):
        return True
    if type(v) is int:
        return _is_int(v)
    if type(v) is float:
        return True
    if depth >= 8:
        return False
    if type(v) is list:
        return all(_plain(x, depth + 1) for x in v)
    if type(v) is dict:
        return all(type(k) is str and _plain(x, depth + 1) for k, x in v.items())
    return False


# Field annotation (a string under ``from __future__ import annotations``) -> (schema type, check, nullable).
_CHECKS = {
    "int": ("int", _is_int),
    "float": ("float", _is_float),
    "str": ("str", lambda v: type(v) is str),
    "bytes": ("bytes", lambda v: type(v) is bytes),
    "list[int]": ("list[int]", lambda v: type(v) is list and all(_is_int(x) for x in v)),
    "dict": ("map", lambda v: type(v) is dict and _plain(v)),
}


def _field_rule(annotation: str) -> tuple[str, object, bool]:
    nullable = annotation.endswith(" | None")
    base = annotation[:-len(" | None")] if nullable else annotation
    name, check = _CHECKS[base]
    return name, check, nullable


def _wire_seq(d: dict) -> int | None:
    v = d.get("seq")
    return v if _is_int(v) and v >= 0 else None


def _no_ext(code: int, data: bytes):
    raise ValueError(f"msgpack ext type {code}")


def decode(raw: bytes, version: int | None = None) -> Message:
    """Parse one message; raises ProtocolError (never anything else) for malformed input. ``version``: the
    session's protocol version, when there is one: a field added in a later version is refused as unknown (it
    would mean something the session never agreed on)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        d = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=MAX_MESSAGE_BYTES, ext_hook=_no_ext,
                            max_str_len=1 << 16, max_array_len=1 << 12, max_map_len=64, max_ext_len=0)
    except Exception as e:  # msgpack raises several unrelated types (ExtraData, ValueError, ...)
        if "ext" in str(e):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "msgpack ext values (timestamps included) are not allowed") \
                from None
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"not a msgpack message ({type(e).__name__})") from None
    if type(d) is not dict or type(d.get("t")) is not str:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "expected a msgpack map with a string 't' (type) key")
    cls = _TYPES.get(d.pop("t"))
    if cls is None:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "unknown message type")
    seq = _wire_seq(d)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if version is not None and f.metadata.get("since", 0) > version and f.name in d:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{cls.TYPE}: field {f.name!r} needs protocol version "
                                                       f"{f.metadata['since']}; this session speaks {version}", seq)
        if f.name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{cls.TYPE}: missing field {f.name!r}", seq)
            continue
        v = d.pop(f.name)
        kind, check, nullable = _field_rule(f.type)
        if not ((v is None and nullable) or check(v)):
            what = "a non-finite or out-of-range number" if type(v) in (int, float) else f"type {type(v).__name__}"
            if type(v) in (list, dict):
                what = f"a {type(v).__name__} that is not {kind}"
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{cls.TYPE}: field {f.name!r} must be {kind}"
                                                       f"{' or nil' if nullable else ''}, got {what}", seq)
        if v is not None:
            meta = f.metadata
            if "min" in meta and v < meta["min"] or "max" in meta and v > meta["max"]:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{cls.TYPE}: field {f.name!r} is out of range", seq)
            if "max_len" in meta and len(v) > meta["max_len"]:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{cls.TYPE}: field {f.name!r} is too long", seq)
            if kind == "float":
                v = float(v)
        kwargs[f.name] = v
    if d:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{cls.TYPE}: unknown fields {sorted(map(str, d))[:5]}", seq)
    msg = cls(**kwargs)
    if isinstance(msg, Landmarks):
        _check_landmarks_wire(msg)
    elif isinstance(msg, Frame) and not all(_is_float(x) for x in msg.timings.values()):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "frame: timings must map str -> finite float", seq)
    return msg


def _check_landmarks_wire(msg: Landmarks) -> None:
    """The shape (by the one landmark validator, on a data-less array of that shape) and the data length; the
    values are checked by the session, which knows the model's layout."""
    shape = msg.shape
    try:
        validate_landmarks(np.broadcast_to(np.float32(0), shape), max_count=MAX_LANDMARKS, values=False)
    except ValueError as e:  # LandmarkError, or numpy's for a negative or too large dimension
        raise ProtocolError(ErrorCode.BAD_LANDMARKS, f"landmark shape must be [K, 3] with 0 < K <= {MAX_LANDMARKS}, "
                                                     f"got {list(shape)} ({e})", msg.seq) from None
    if len(msg.data) != shape[0] * 3 * 4:
        raise ProtocolError(ErrorCode.BAD_LANDMARKS, f"landmark data has {len(msg.data)} bytes; shape {list(shape)} "
                                                     f"needs {shape[0] * 12} (float32)", msg.seq)


def negotiate(hello: Hello, supported=SUPPORTED_VERSIONS) -> int:
    """The version of a session: the highest one both sides speak; raises BAD_VERSION (listing ours) if none."""
    common = hello.offered() & set(supported)
    if not common:
        raise ProtocolError(ErrorCode.BAD_VERSION,
                            f"no protocol version in common: this server speaks {list(supported)}, the client "
                            f"{sorted(hello.offered())}", versions=list(supported))
    return max(common)


# -- the machine-readable schema --------------------------------------------------------------------------
def schema() -> dict:
    """Every message, field, value rule, error code and limit, as plain JSON (docs/protocol.schema.json)."""
    messages = {}
    for name, cls in _TYPES.items():
        fields = {}
        for f in dataclasses.fields(cls):
            kind, _, nullable = _field_rule(f.type)
            spec = {"type": kind, "nullable": nullable, "doc": f.metadata.get("doc", "")}
            if f.default is not dataclasses.MISSING:
                spec["default"] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                spec["default"] = f.default_factory()
            else:
                spec["required"] = True
            for rule in ("min", "max", "len", "max_len", "since"):
                if rule in f.metadata:
                    spec[rule] = f.metadata[rule]
            fields[f.name] = spec
        messages[name] = {"direction": cls.DIRECTION, "fields": fields}
    return {
        "protocol": "posecast", "version": PROTOCOL_VERSION, "supported_versions": list(SUPPORTED_VERSIONS),
        "transport": "ZeroMQ DEALER (client) -> ROUTER (server); one frame per message: a msgpack map whose 't' "
                     "is the message type; unknown fields and unknown types are rejected",
        "types": {
            "int": "msgpack integer in [-2^63, 2^63-1]; booleans and floats are not integers",
            "float": "msgpack float or integer (read as a float); NaN and +-inf rejected",
            "str": "msgpack str (UTF-8)", "bytes": "msgpack bin",
            "list[int]": "msgpack array of int",
            "map": "msgpack map with str keys; values plain msgpack (nil, bool, int, float, str, bin, array, map)",
            "ext": "msgpack ext values (timestamps included) are rejected anywhere",
        },
        "messages": messages,
        "errors": dict(ERROR_CODES),
        "limits": {"max_message_bytes": MAX_MESSAGE_BYTES, "max_landmarks": MAX_LANDMARKS,
                   "max_str_bytes": 1 << 16, "max_array_items": 1 << 12, "max_map_entries": 64,
                   "max_abs_landmark": 100.0},
    }
