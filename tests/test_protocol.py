"""The wire protocol: the published schema matches the code, the wire test vectors replay against a real server,
and the value rules (no booleans as integers, no ext values, int vs float) hold for every field."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import msgpack
import pytest
import zmq

from realtime import protocol as P
from realtime.server import Server

from test_server import K, Client, motion

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "vectors" / "wire_v4.json"
SCHEMA = REPO / "docs" / "protocol.schema.json"


def test_published_schema_is_the_code():
    assert json.loads(SCHEMA.read_text()) == json.loads(json.dumps(P.schema())), \
        "docs/protocol.schema.json is stale: python -c 'import json; from realtime import protocol as P; " \
        "print(json.dumps(P.schema(), indent=1))' > docs/protocol.schema.json"
    s = P.schema()
    assert set(s["messages"]) == {"hello", "landmarks", "reset", "bye", "ping", "welcome", "frame", "error", "pong"}
    assert s["messages"]["landmarks"]["fields"]["seq"] == {"type": "int", "nullable": False, "required": True,
                                                          "min": 0, "doc": s["messages"]["landmarks"]["fields"]["seq"]["doc"]}
    assert set(s["errors"]) == {v for k, v in vars(P.ErrorCode).items() if k.isupper()}


def test_every_message_round_trips():
    msgs = [P.Hello(client="x", versions=[2]), P.Landmarks.from_array(3, 1.5, motion(0, 1)[0], K), P.Reset(),
            P.Bye(), P.Ping(ts=2.0), P.Welcome(2, "dance", 32, 2, 33, "mediapipe-pose-33", subject_stats={"a": [1.0]}),
            P.Frame(seq=1, capture_ts=0.5, jpeg=b"\xff\xd8", timings={"total": 1.0}, dropped=2),
            P.Error(code="bad_version", reason="r", versions=[2]), P.Pong(ts=1.0)]
    for m in msgs:
        assert P.decode(P.encode(m)) == m


def _fields(cls):
    return [f for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls", [c for c in P._TYPES.values() if dataclasses.fields(c)], ids=lambda c: c.TYPE)
def test_no_boolean_or_ext_passes_as_any_field(cls):
    base = {"hello": P.Hello(), "landmarks": P.Landmarks.from_array(3, 1.5, motion(0, 1)[0], K), "ping": P.Ping(),
            "welcome": P.Welcome(2, "dance", 32, 2, 33, "x"), "frame": P.Frame(1, 0.5, b"j", {"total": 1.0}),
            "error": P.Error("internal", "r", 4), "pong": P.Pong()}[cls.TYPE]
    good = msgpack.unpackb(P.encode(base))
    for f in _fields(cls):
        for bad in (True, False, msgpack.ExtType(3, b"x"), msgpack.Timestamp(5, 0), 2 ** 64 - 1):
            d = dict(good, **{f.name: bad})
            with pytest.raises(P.ProtocolError) as e:
                P.decode(msgpack.packb(d, use_bin_type=True))
            assert e.value.code in (P.ErrorCode.BAD_MESSAGE, P.ErrorCode.BAD_LANDMARKS)
            assert e.value.seq is None or type(e.value.seq) is int
        if f.type == "int":          # a float is never an integer, not even 1.0
            with pytest.raises(P.ProtocolError, match="must be int"):
                P.decode(msgpack.packb(dict(good, **{f.name: 1.0}), use_bin_type=True))
        if f.type == "float":        # an integer is a float, read as one
            assert type(getattr(P.decode(msgpack.packb(dict(good, **{f.name: 3}))), f.name)) is float


def test_nested_values_are_plain_msgpack():
    w = msgpack.unpackb(P.encode(P.Welcome(2, "dance", 32, 2, 33, "x")))
    for bad in ({"a": msgpack.Timestamp(1, 0)}, {"a": [msgpack.ExtType(1, b"")]}, {1: 2}):
        with pytest.raises(P.ProtocolError):
            P.decode(msgpack.packb(dict(w, subject_stats=bad), use_bin_type=True, strict_types=False))
    f = msgpack.unpackb(P.encode(P.Frame(1, 0.5, b"j", {"total": 1.0})))
    for bad in ({"total": math.nan}, {"total": "1"}, {"total": True}):
        with pytest.raises(P.ProtocolError, match="timings"):
            P.decode(msgpack.packb(dict(f, timings=bad), use_bin_type=True))


def test_negotiate():
    assert P.negotiate(P.Hello(version=2)) == 2
    assert P.negotiate(P.Hello()) == 4
    assert P.negotiate(P.Hello(version=3)) == 3                     # a version-3 client keeps speaking 3
    assert P.negotiate(P.Hello(version=5, versions=[1, 2, 5])) == 2
    assert P.negotiate(P.Hello(version=3, versions=[2, 3]), supported=(2, 3)) == 3
    with pytest.raises(P.ProtocolError) as e:
        P.negotiate(P.Hello(version=1))
    assert (e.value.code, e.value.versions) == ("bad_version", [2, 3, 4])


def test_fields_of_later_versions_stay_out_of_older_sessions():
    w = P.Welcome(2, "dance", 32, 2, 33, "x")
    v2 = msgpack.unpackb(P.encode(w, version=2))
    v3 = msgpack.unpackb(P.encode(w, version=3))
    added = {"reply_queue", "max_clients", "sessions_per_key", "max_connections", "max_connections_per_address"}
    assert set(v3) - set(v2) == added and "rate_burst" in v2
    assert {f.name for f in dataclasses.fields(P.Welcome) if f.metadata.get("since") == 3} == added
    assert P.decode(P.encode(w, version=2)) == w        # a v3 reader fills them in with their defaults


@pytest.fixture(scope="module")
def vector_server(engine):
    srv = Server(engine, "tcp://127.0.0.1:0", stats_interval_s=0, idle_timeout_s=30.0)   # clients do not heartbeat
    srv.start()
    yield srv
    srv.close()


@pytest.mark.timeout(120)
def test_wire_vectors_replay_against_a_real_server(vector_server):
    doc = json.loads(VECTORS.read_text())
    assert doc["version"] == P.PROTOCOL_VERSION and doc["num_landmarks"] == K
    valid = sum(v["expect"] is None or v["expect"]["t"] != "error" for v in doc["vectors"])
    assert valid >= 10 and len(doc["vectors"]) - valid >= 40
    with zmq.Context() as ctx:
        for v in doc["vectors"]:
            c = Client(ctx, vector_server.endpoint, "vectors")
            try:
                if v["session"]:
                    c.hello()
                c.send_raw(*[bytes.fromhex(h) for h in v["frames"]])
                if v["expect"] is None:           # no reply: the next message must be the pong of this ping
                    c.send(P.Ping(ts=99.0))
                    assert c.recv(5) == P.Pong(ts=99.0), v["name"]
                    continue
                reply = c.recv(5)
                want = v["expect"]
                assert reply.TYPE == want["t"], (v["name"], reply)
                for k, x in want.items():
                    if k != "t":
                        assert getattr(reply, k) == x, (v["name"], k, reply)
                assert type(getattr(reply, "seq", None)) in (int, type(None))
            finally:
                c.close()
    assert vector_server.stats()["internal_errors"] == 0


def test_version_4_carries_the_forecast_lead_and_older_sessions_never_see_it():
    lm = P.Landmarks.from_array(3, 1.5, motion(0, 1)[0], K, lead_ms=120.0)
    assert P.decode(P.encode(lm)) == lm and P.decode(P.encode(lm)).lead_ms == 120.0
    assert "lead_ms" not in msgpack.unpackb(P.encode(lm, version=3))      # left out of a version-3 session
    assert P.decode(P.encode(lm, version=3)).lead_ms == 0.0
    frame = P.Frame(3, 1.5, b"j", {"total": 1.0}, lead_ms=120.0)
    assert P.decode(P.encode(frame)) == frame
    assert "lead_ms" not in msgpack.unpackb(P.encode(frame, version=3))
    # A field of a later version inside an older session is refused by name, not silently read.
    with pytest.raises(P.ProtocolError, match="'lead_ms' needs protocol version 4; this session speaks 3") as e:
        P.decode(P.encode(lm), version=3)
    assert (e.value.code, e.value.seq) == ("bad_message", 3)
    assert P.decode(P.encode(lm), version=4).lead_ms == 120.0
    for bad in (-1.0, P.MAX_LEAD_MS + 1, math.nan, math.inf, True):
        raw = msgpack.unpackb(P.encode(lm))
        raw["lead_ms"] = bad
        with pytest.raises(P.ProtocolError):
            P.decode(msgpack.packb(raw, use_bin_type=True))
