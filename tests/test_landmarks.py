"""The one landmark layout table and the one validator (models/landmarks.py), as every layer sees them."""

import msgpack
import numpy as np
import pytest

from models.landmarks import (FACE_LAYOUT, KINDS, LAYOUTS, POSE_LAYOUT, LandmarkError, layout_of,
                              validate_landmarks)
from models.presets import get_preset
from models.render import LABEL_KINDS, check_landmarks
from realtime import protocol as P
from realtime.session import MAX_ABS_LANDMARK, Session


def test_layout_table():
    assert KINDS == LABEL_KINDS == tuple(LAYOUTS) == ("dance", "face")
    assert (POSE_LAYOUT.name, POSE_LAYOUT.num_landmarks, POSE_LAYOUT.accepted, POSE_LAYOUT.third) == \
        ("mediapipe-pose-33", 33, (33,), "visibility")
    assert (FACE_LAYOUT.name, FACE_LAYOUT.num_landmarks, FACE_LAYOUT.accepted, FACE_LAYOUT.third) == \
        ("mediapipe-face-mesh", 478, (468, 478), "z")
    assert len(POSE_LAYOUT.names) == 33 and POSE_LAYOUT.head == tuple(range(11))
    assert [POSE_LAYOUT.index(n) for n in ("nose", "left_shoulder", "right_hip", "right_foot_index")] == [0, 11, 24, 32]
    face_points = ("right_eye_outer", "left_eye_outer", "forehead", "chin")
    assert [FACE_LAYOUT.index(n) for n in face_points] == [33, 263, 10, 152]
    assert layout_of("face") is FACE_LAYOUT
    with pytest.raises(KeyError, match="no landmark 'tail' in the dance layout"):
        POSE_LAYOUT.index("tail")
    with pytest.raises(ValueError, match=r"unknown label kind 'hands'; expected one of \('dance', 'face'\)"):
        layout_of("hands")


@pytest.mark.parametrize("arr,problem,msg", [
    (np.zeros((32, 3)), "count", r"dance landmarks: wrong number of landmarks K=32, expected 33 \(mediapipe-pose-33\)"),
    (np.zeros((33, 2)), "shape", r"must have 3 columns \(x, y, visibility\), got shape \(33, 2\)"),
    (np.zeros((33,)), "shape", r"2-D \(K, 3\) array, got ndim=1"),
    (np.array([["a"] * 3] * 33), "dtype", r"real numeric array, got dtype <U1"),
    ([[0.0, 0.0, 0.0], [1.0]], "dtype", r"not a numeric array"),
])
def test_validator_names_the_problem(arr, problem, msg):
    with pytest.raises(LandmarkError, match=msg) as e:
        validate_landmarks(arr, "dance")
    assert e.value.problem == problem


def test_validator_values():
    x = np.full((33, 3), 0.5, np.float64)
    x[2:4] = np.nan                                  # missing: fine
    out = validate_landmarks(x, POSE_LAYOUT, max_abs=100.0)
    assert out.dtype == np.float32 and out.shape == (33, 3)
    x[4, 0] = 250.0                                  # pixel coordinates
    assert validate_landmarks(x, "dance")[4, 0] == 250.0   # no bound: the renderer treats it as off-frame
    with pytest.raises(LandmarkError, match=r"values beyond \+-100 \(rows \[4\]\); x, y must be normalised") as e:
        validate_landmarks(x, "dance", max_abs=100.0)
    assert e.value.problem == "range"
    x[6, 1] = -np.inf                                # inf is named first, with its rows
    with pytest.raises(LandmarkError, match=r"1 inf value\(s\) \(rows \[4, 6\]\)") as e:
        validate_landmarks(x, "dance", max_abs=100.0)
    assert e.value.problem == "inf"
    assert validate_landmarks(np.full((5, 3), np.inf), max_count=8, values=False).shape == (5, 3)
    with pytest.raises(LandmarkError, match=r"K=9, expected 0 < K <= 8"):
        validate_landmarks(np.zeros((9, 3)), max_count=8)


class _FaceEngine:  # a Session validates with its model's config only
    cfg = get_preset("face", size=32)
    plate = None

    def zero_inputs(self):
        return {}


def test_renderer_session_and_wire_share_the_validator():
    bad = np.zeros((33, 3), np.float32)
    with pytest.raises(LandmarkError) as ref:
        validate_landmarks(bad, "face", max_abs=MAX_ABS_LANDMARK)
    with pytest.raises(ValueError) as rendered:
        check_landmarks("face", bad)
    with pytest.raises(P.ProtocolError) as live:
        Session(_FaceEngine()).check(bad, seq=3)
    assert str(rendered.value) == live.value.reason == str(ref.value)
    assert "K=33, expected 468 or 478 (mediapipe-face-mesh)" in live.value.reason
    assert (live.value.code, live.value.seq) == (P.ErrorCode.BAD_LANDMARKS, 3)
    # the wire decoder checks the declared shape with it, before the data is read
    raw = msgpack.packb({"t": "landmarks", "seq": 4, "capture_ts": 0.0, "shape": [33, 2], "data": b"\0" * 264})
    with pytest.raises(P.ProtocolError, match=r"shape must be \[K, 3\].*got \[33, 2\] \(landmarks must have 3 columns"):
        P.decode(raw)
    raw = msgpack.packb({"t": "landmarks", "seq": 4, "capture_ts": 0.0, "shape": [-1, 3], "data": b"\0" * 12})
    with pytest.raises(P.ProtocolError, match=r"got \[-1, 3\]") as e:
        P.decode(raw)
    assert (e.value.code, e.value.seq) == (P.ErrorCode.BAD_LANDMARKS, 4)


def test_protocol_docs_name_the_table():
    import dataclasses

    docs = {f.name: f.metadata["doc"] for f in dataclasses.fields(P.Welcome)}
    assert all(f"'{lay.name}'" in docs["layout"] for lay in LAYOUTS.values())
    assert f"{POSE_LAYOUT.num_landmarks} pose" in docs["num_landmarks"]
    assert f"face: {FACE_LAYOUT.num_landmarks}, {FACE_LAYOUT.accepted[0]} also accepted" in docs["num_landmarks"]
