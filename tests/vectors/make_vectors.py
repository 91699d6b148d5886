"""Writes tests/vectors/wire_v4.json: wire test vectors of the posecast protocol, replayed by tests/test_protocol.py.

    python tests/vectors/make_vectors.py

Each vector is one client message (``frames``: hex of the ZeroMQ frames, usually one msgpack map) sent on a fresh
connection, after a hello when ``session`` is true, and the reply the server must give: ``expect`` names its
type and the fields that must match (``null``: no reply at all; the replay checks that with a ping that must be
answered next). The landmark payloads are a 33-point pose of a model with K = 33. Anyone implementing a client
or a server can replay them; ``reason`` texts are not part of the protocol and are never compared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgpack
import numpy as np

K = 33
OUT = Path(__file__).with_name("wire_v4.json")


def pose(seed: int = 0, nan_rows=(), bad: float | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    lm = rng.uniform(0.3, 0.7, (K, 3)).astype("<f4")
    lm[:, 2] = 1.0
    lm[list(nan_rows)] = np.nan
    if bad is not None:
        lm[4, 1] = bad
    return lm.tobytes()


def pack(d) -> str:
    return msgpack.packb(d, use_bin_type=True).hex()


def lmk(**kw) -> dict:
    d = {"t": "landmarks", "seq": 5, "capture_ts": 12.25, "shape": [K, 3], "data": pose()}
    d.update(kw)
    return d


def err(code: str, seq=None, **more) -> dict:
    return {"t": "error", "code": code, "seq": seq, **more}


def vectors() -> list[dict]:
    v = []

    def add(name, frames, expect, session=False):
        if isinstance(frames, dict):
            frames = [pack(frames)]
        v.append({"name": name, "session": session, "frames": frames, "expect": expect})

    # -- valid ------------------------------------------------------------------------------------------
    add("hello", {"t": "hello", "version": 4, "client": "vectors"},
        {"t": "welcome", "version": 4, "versions": [2, 3, 4], "rate_burst": 32, "reply_queue": 64,
         "max_clients": 16})
    add("hello with defaults", {"t": "hello"}, {"t": "welcome", "version": 4})
    add("hello of a version-3 client gets a version-3 welcome", {"t": "hello", "version": 3},
        {"t": "welcome", "version": 3, "versions": [2, 3, 4]})
    add("hello of a version-2 client gets a version-2 welcome", {"t": "hello", "version": 2},
        {"t": "welcome", "version": 2, "versions": [2, 3, 4]})
    add("hello offering versions 1-5 gets the highest common one", {"t": "hello", "version": 5, "versions": [1, 2, 3, 4, 5]},
        {"t": "welcome", "version": 4})
    add("hello offering versions 1, 2 and 5 gets 2", {"t": "hello", "version": 5, "versions": [1, 2, 5]},
        {"t": "welcome", "version": 2})
    add("ping", {"t": "ping", "ts": 1.5}, {"t": "pong", "ts": 1.5})
    add("ping: an integer is a valid float", {"t": "ping", "ts": 2}, {"t": "pong", "ts": 2.0})
    add("ping without ts", {"t": "ping"}, {"t": "pong", "ts": 0.0})
    add("landmarks", lmk(), {"t": "frame", "seq": 5, "capture_ts": 12.25, "dropped": 0}, session=True)
    add("landmarks: NaN marks missing landmarks", lmk(data=pose(1, nan_rows=range(10, 20))),
        {"t": "frame", "seq": 5}, session=True)
    add("landmarks: all NaN (nothing detected)", lmk(data=np.full((K, 3), np.nan, "<f4").tobytes()),
        {"t": "frame", "seq": 5}, session=True)
    add("landmarks: integer capture_ts", lmk(capture_ts=7), {"t": "frame", "seq": 5, "capture_ts": 7.0},
        session=True)
    add("landmarks: seq 0", lmk(seq=0), {"t": "frame", "seq": 0}, session=True)
    add("landmarks forecast 120 ms ahead: the lead is echoed", lmk(lead_ms=120.0),
        {"t": "frame", "seq": 5, "lead_ms": 120.0}, session=True)
    add("landmarks: integer lead_ms", lmk(lead_ms=80), {"t": "frame", "seq": 5, "lead_ms": 80.0}, session=True)
    add("reset (no reply)", {"t": "reset"}, None, session=True)
    add("bye (no reply)", {"t": "bye"}, None, session=True)
    add("bye without a session (no reply)", {"t": "bye"}, None)
    # -- invalid: framing and msgpack ----------------------------------------------------------------------
    add("not msgpack", ["c1c1c1"], err("bad_message"))
    add("empty frame", [""], err("bad_message"))
    add("two frames", [pack({"t": "ping"}), pack({"t": "ping"})], err("bad_message"))
    add("trailing bytes after the map", [pack({"t": "ping"}) + "c0"], err("bad_message"))
    add("an array, not a map", [pack(["ping"])], err("bad_message"))
    add("a map without t", {"ts": 1.0}, err("bad_message"))
    add("t is not a string", {"t": 1}, err("bad_message"))
    add("unknown type", {"t": "teleport"}, err("bad_message"))
    add("a server-to-client type", {"t": "pong", "ts": 1.0}, err("bad_message"))
    add("integer map keys", [msgpack.packb({"t": "ping", 1: 2}, strict_types=False).hex()], err("bad_message"))
    # -- invalid: field types (booleans are never integers, floats never integers, no ext values) ------------
    add("hello: bad version (none in common)", {"t": "hello", "version": 1},
        err("bad_version", versions=[2, 3, 4]))
    add("hello: versions without a common one", {"t": "hello", "version": 9, "versions": [7, 8, 9]},
        err("bad_version", versions=[2, 3, 4]))
    add("hello: version true", {"t": "hello", "version": True}, err("bad_message"))
    add("hello: version 2.0", {"t": "hello", "version": 2.0}, err("bad_message"))
    add("hello: versions holds a boolean", {"t": "hello", "versions": [True]}, err("bad_message"))
    add("hello: client is bytes", {"t": "hello", "client": b"x"}, err("bad_message"))
    add("hello: unknown field", {"t": "hello", "nick": "x"}, err("bad_message"))
    add("landmarks before hello", lmk(seq=3), err("no_session", 3))
    add("landmarks: seq true (never echoed as a seq)", lmk(seq=True), err("bad_message", None), session=True)
    add("landmarks: seq false", lmk(seq=False), err("bad_message", None), session=True)
    add("landmarks: seq 1.0", lmk(seq=1.0), err("bad_message", None), session=True)
    add("landmarks: seq -1", lmk(seq=-1), err("bad_message", None), session=True)
    add("landmarks: seq 2^64-1 (beyond int64)", lmk(seq=2**64 - 1), err("bad_message", None), session=True)
    add("landmarks: seq as a string", lmk(seq="8"), err("bad_message", None), session=True)
    add("landmarks: missing seq", {k: x for k, x in lmk().items() if k != "seq"}, err("bad_message"), session=True)
    add("landmarks: capture_ts NaN", lmk(capture_ts=math.nan), err("bad_message", 5), session=True)
    add("landmarks: capture_ts inf", lmk(capture_ts=math.inf), err("bad_message", 5), session=True)
    add("landmarks: capture_ts true", lmk(capture_ts=True), err("bad_message", 5), session=True)
    add("landmarks: unknown field (seq echoed)", lmk(seq=6, extra=1), err("bad_message", 6), session=True)
    add("landmarks: shape as an ext value", lmk(shape=msgpack.ExtType(1, b"\x21\x03")), err("bad_message"),
        session=True)
    add("landmarks: data as an ext value", lmk(data=msgpack.ExtType(2, pose())), err("bad_message"), session=True)
    add("ping: ts as a msgpack timestamp", {"t": "ping", "ts": msgpack.Timestamp(1, 0)}, err("bad_message"))
    add("landmarks: shape with a boolean", lmk(shape=[K, True]), err("bad_message", 5), session=True)
    add("landmarks: data as a string", lmk(data="abc"), err("bad_message", 5), session=True)
    add("landmarks: lead_ms -1", lmk(lead_ms=-1.0), err("bad_message", 5), session=True)
    add("landmarks: lead_ms beyond 1000", lmk(lead_ms=1000.5), err("bad_message", 5), session=True)
    add("landmarks: lead_ms NaN", lmk(lead_ms=math.nan), err("bad_message", 5), session=True)
    add("landmarks: lead_ms true", lmk(lead_ms=True), err("bad_message", 5), session=True)
    # -- invalid: landmark values -------------------------------------------------------------------------
    add("landmarks: shape [33, 2]", lmk(shape=[K, 2]), err("bad_landmarks", 5), session=True)
    add("landmarks: shape [33]", lmk(shape=[K]), err("bad_landmarks", 5), session=True)
    add("landmarks: K = 0", lmk(shape=[0, 3], data=b""), err("bad_landmarks", 5), session=True)
    add("landmarks: K = 32 for a 33-landmark model", lmk(shape=[32, 3], data=pose()[:32 * 12]),
        err("bad_landmarks", 5), session=True)
    add("landmarks: data too short", lmk(data=pose()[:40]), err("bad_landmarks", 5), session=True)
    add("landmarks: inf value", lmk(data=pose(bad=math.inf)), err("bad_landmarks", 5), session=True)
    add("landmarks: pixel coordinates", lmk(data=pose(bad=640.0)), err("bad_landmarks", 5), session=True)
    add("reset before hello", {"t": "reset"}, err("no_session"))
    return v


def main() -> None:
    doc = {"protocol": "posecast", "version": 4, "num_landmarks": K, "model_kind": "dance",
           "about": __doc__.split("\n\n", 2)[2].strip(), "vectors": vectors()}
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT} ({len(doc['vectors'])} vectors)")


if __name__ == "__main__":
    main()
