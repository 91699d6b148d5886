"""Landmark smoothing and forecasting (models/forecast.py) on known answers."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from models.forecast import ConstantVelocity, NoForecast, OneEuroFilter, bench_forecast, display_error

from shared_data import MEGAMIND, REPO, needs_megamind


def _moving(t: float, v=(0.1, -0.05)) -> np.ndarray:
    """Three landmarks at constant velocity ``v`` (frame fractions per second), all visible."""
    lm = np.zeros((3, 3), np.float32)
    lm[:, 0] = 0.2 + 0.1 * np.arange(3) + v[0] * t
    lm[:, 1] = 0.5 + v[1] * t
    lm[:, 2] = 1.0
    return lm


def test_constant_velocity_is_forecast_exactly_and_zero_horizon_returns_the_input():
    f = ConstantVelocity()
    for t in (0.0, 1 / 30, 2 / 30):
        f.update(t, _moving(t))
    np.testing.assert_allclose(f.predict(0.1), _moving(2 / 30 + 0.1), atol=1e-6)
    np.testing.assert_array_equal(f.predict(0.0), _moving(2 / 30))
    none = NoForecast()
    none.update(0.5, _moving(0.5))
    np.testing.assert_array_equal(none.predict(0.1), _moving(0.5))          # no forecast: the last sample
    with pytest.raises(ValueError, match="before any update"):
        ConstantVelocity().predict(0.1)


def test_hidden_or_missing_landmarks_stay_as_they_came():
    f = ConstantVelocity()
    a, b = _moving(0.0), _moving(0.1)
    b[0, 2] = 0.1                                                            # hidden now
    a[1, :2] = np.nan                                                        # missing before: no velocity
    b[2, :2] = np.nan                                                        # missing now
    f.update(0.0, a)
    f.update(0.1, b)
    p = f.predict(0.1)
    np.testing.assert_array_equal(p[0], b[0])
    np.testing.assert_array_equal(p[1], b[1])
    assert np.isnan(p[2, :2]).all()
    face = ConstantVelocity(has_visibility=False)                           # column 2 is depth: moved on anyway
    c, d = _moving(0.0), _moving(0.1)
    c[:, 2] = d[:, 2] = -0.05
    face.update(0.0, c)
    face.update(0.1, d)
    np.testing.assert_allclose(face.predict(0.1)[:, :2], _moving(0.2)[:, :2], atol=1e-6)
    smoothed = OneEuroFilter()(0.0, b)
    np.testing.assert_array_equal(smoothed[0], b[0])
    assert np.isnan(smoothed[2, :2]).all()


def test_one_euro_without_beta_is_the_first_order_low_pass_of_its_cutoff():
    f = OneEuroFilter(min_cutoff=2.0, beta=0.0)
    zero, one = _moving(0.0, (0, 0)), _moving(0.0, (0, 0))
    one[:, 0] += 1.0
    dt = 1 / 30
    alpha = 1.0 / (1.0 + 1.0 / (2 * math.pi * 2.0) / dt)
    f(0.0, zero)
    for n in range(1, 6):                                                   # a unit step: 1 - (1 - alpha)^n
        out = f(n * dt, one)
        np.testing.assert_allclose(out[:, 0] - zero[:, 0], 1 - (1 - alpha) ** n, rtol=1e-5)
    fast = OneEuroFilter(min_cutoff=2.0, beta=50.0)                         # speed raises the cutoff: less lag
    fast(0.0, zero)
    assert fast(dt, one)[0, 0] - zero[0, 0] > 1 - (1 - alpha) + 0.1
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroFilter(min_cutoff=0.0)


def test_display_time_error_is_zero_for_an_exact_forecast_and_grows_with_latency():
    times = np.arange(20) / 30
    observed = np.stack([_moving(t) for t in times])
    err, jitter = display_error(ConstantVelocity(), times, observed, _moving, 0.1)
    late, _ = display_error(NoForecast(), times, observed, _moving, 0.1)
    assert late == pytest.approx(0.1 * math.hypot(0.1, 0.05), rel=1e-3)    # one latency of motion behind
    assert err == pytest.approx(late / 20, rel=1e-3)                        # exact from the second sample on
    assert jitter == pytest.approx(late / 18, rel=1e-3)    # 18 second differences, only the first (frame 0 lags)


def test_bench_forecast_rows_and_cli(monkeypatch):
    rows = bench_forecast(seed=3, horizons_ms=(100,), seconds=2.0)
    assert [(r["forecaster"], r["smoothing"]) for r in rows] == [      # the bundled learned one included
        ("none", "none"), ("none", "one_euro"), ("constant_velocity", "none"), ("constant_velocity", "one_euro"),
        ("learned", "none"), ("learned", "one_euro")]
    assert all(r["what"] == "forecast" and r["horizon_ms"] == 100 and r["error"] > 0 for r in rows)
    assert rows[0]["jitter"] == rows[0]["jitter_raw"]                       # no forecast, no smoothing: the raw stream
    assert [(r["forecaster"], r["smoothing"]) for r in rows if r["client"]] == [   # one row each, as the client runs
        ("none", "none"), ("constant_velocity", "one_euro"), ("learned", "none")]
    out = subprocess.run([sys.executable, "-m", "posecast", "bench", "--forecast", "--seed", "3"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("display-time error") == 18 and "constant_velocity" in out.stdout


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A forecaster trained briefly (15 s of one motion seed): enough to beat showing the past."""
    import torch

    from trainer.forecast import train_forecaster

    torch.manual_seed(0)
    return train_forecaster(tmp_path_factory.mktemp("fc"), seeds=(0,), seconds=15.0, steps=1000, history=10,
                            hidden=32, arch="landmark", augment=False, progress=False)


def test_the_learned_forecaster_runs_the_trained_network_and_falls_back_where_it_cannot(learned):
    import json

    import torch
    from safetensors.torch import load_file

    from models.forecast import ONE_EURO, Smoothed, load_forecaster

    config = json.loads((learned / "forecaster.json").read_text())
    assert config["format"] == "posecast-forecaster" and config["trained_on"]["motion_seeds"] == [0]
    assert config["rate_alpha"] == 1.0 and load_forecaster(learned).rate_alpha == 1.0   # a per-landmark one's
    f = load_forecaster(learned)                                            # the network's own answers
    stream = [_moving(i / 30) for i in range(config["history"])]
    for i, lm in enumerate(stream[:2]):
        f.update(i / 30, lm)
    cv = Smoothed(ConstantVelocity(), ONE_EURO)
    for i, lm in enumerate(stream[:2]):
        cv.update(i / 30, lm)
    np.testing.assert_array_equal(f.predict(0.1), cv.predict(0.1))         # too little history: constant velocity
    assert isinstance(f._fallback, Smoothed)                                # (behind the One Euro filter)
    for i, lm in enumerate(stream[2:], 2):
        f.update(i / 30, lm)
    np.testing.assert_array_equal(f.predict(0.0), stream[-1])              # zero horizon: the input
    # The numpy inference is the network that was trained.
    w = load_file(str(learned / "forecaster.safetensors"))
    n_in, hidden = (config["history"] - 1) * 2 + (3 if config["context"] else 1), config["hidden"]
    net = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
    net.load_state_dict({f"{i}.{k}": w[f"layers.{j}.{k}"] for j, i in enumerate((0, 2, 4)) for k in ("weight", "bias")})
    x, ok = f.features(0.1)
    assert x.shape == (3, n_in) and ok.all()
    np.testing.assert_allclose(x[:, -1], 0.1 * config["fps"])                # the horizon, in frames
    want = stream[-1][:, :2] + net(torch.from_numpy(x)).detach().numpy() / config["scale"]
    np.testing.assert_allclose(f.predict(0.1)[:, :2], want, atol=1e-6)
    # The ONNX export is the same network (for runtimes without numpy).
    import onnxruntime as ort

    sess = ort.InferenceSession(str(learned / "forecaster.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], f.run(x), atol=1e-5)
    # Smoothed: each sample's rate (move / horizon) goes rate_alpha of the way from the last sample's (the first
    # sample has none: its "forecast" is itself).
    sm, f = load_forecaster_with(learned, rate_alpha=0.7), load_forecaster(learned)
    raw = []
    for i, lm in enumerate(stream):
        sm.update(i / 30, lm)
        f.update(i / 30, lm)
        raw.append((f.predict(0.1)[:, :2] - lm[:, :2]) / 0.1)
        if i < len(stream) - 1:
            sm.predict(0.1)
    np.testing.assert_array_equal(raw[0], 0.0)
    before = raw[1]
    for r in raw[2:-1]:
        before = before + 0.7 * (r - before)
    want = stream[-1][:, :2] + (before + 0.7 * (raw[-1] - before)) * 0.1
    np.testing.assert_allclose(sm.predict(0.1)[:, :2], want, atol=1e-5)
    np.testing.assert_allclose(sm.predict(0.1)[:, :2], want, atol=1e-5)    # asked again: smoothed once
    np.testing.assert_allclose(sm.predict(0.2)[:, :2] - stream[-1][:, :2], 2 * (want - stream[-1][:, :2]) +
                               0.7 * 0.2 * (((f.predict(0.2)[:, :2] - stream[-1][:, :2]) / 0.2) - raw[-1]),
                               atol=1e-5)                                   # another horizon: its own rate
    with pytest.raises(ValueError, match="rate_alpha must be in"):
        load_forecaster_with(learned, rate_alpha=0.0)
    from trainer.forecast import train_forecaster
    with pytest.raises(ValueError, match="rate_alpha must be in"):                  # before any training
        train_forecaster(learned.parent / "never", rate_alpha=1.5, progress=False)
    assert not (learned.parent / "never").exists()
    hidden = [lm.copy() for lm in stream]
    hidden[-1][1, 2] = 0.0                                                  # hidden now: left as it came
    g = load_forecaster(learned)
    for i, lm in enumerate(hidden):
        g.update(i / 30, lm)
    np.testing.assert_array_equal(g.predict(0.1)[1], hidden[-1][1])
    with pytest.raises(ValueError, match="not a forecaster"):
        load_forecaster(learned.parent)
    with pytest.raises(ValueError, match="do not fit history 12"):        # weights of another shape
        load_forecaster_with(learned, history=12)


def load_forecaster_with(folder, **changes):
    import json

    from safetensors.numpy import load_file

    from models.forecast import LearnedForecaster

    config = dict(json.loads((folder / "forecaster.json").read_text()), **changes)
    return LearnedForecaster(load_file(str(folder / "forecaster.safetensors")), config)


def test_a_learned_forecaster_beats_showing_the_past_on_motion_it_never_saw(learned):
    rows = {(r["forecaster"], r["smoothing"]): r for r in bench_forecast(seed=9, horizons_ms=(100,), seconds=6.0,
                                                                         learned=str(learned))}
    assert rows[("learned", "none")]["error"] < 0.9 * rows[("none", "none")]["error"]


def test_the_learned_forecaster_reads_its_history_at_its_own_frame_rate(learned):
    """A 24 fps camera, or one that skips a frame, feeds the model the 30 fps window it was trained on
    (interpolated: exact for motion at constant velocity); a gap too long for that falls back to constant
    velocity; time going back starts a new stream."""
    from models.forecast import ONE_EURO, Smoothed, load_forecaster

    at30, at24 = load_forecaster(learned), load_forecaster(learned)
    for i in range(12):
        at30.update(i / 30, _moving(i / 30))
    end = 11 / 30
    for t in np.arange(end, -0.01, -1 / 24)[::-1]:                         # 24 fps, ending at the same instant
        at24.update(float(t), _moving(float(t)))
    (w30, ok30), (w24, ok24) = at30.window(), at24.window()
    np.testing.assert_allclose(w24, w30, atol=1e-6)
    assert ok30.all() and ok24.all()
    np.testing.assert_allclose(at24.predict(0.1), at30.predict(0.1), atol=1e-5)
    skipped = load_forecaster(learned)
    for i in (*range(0, 10), 14, 15):                                       # frames 10-13 lost: 4 frames apart
        skipped.update(i / 30, _moving(i / 30))
    cv = Smoothed(ConstantVelocity(), ONE_EURO)                             # the fallback, fed the same samples
    for i in (*range(0, 10), 14, 15):
        cv.update(i / 30, _moving(i / 30))
    assert skipped.window() is None
    np.testing.assert_array_equal(skipped.predict(0.1), cv.predict(0.1))
    skipped.update(0.0, _moving(0.0))                                       # back in time: a new stream
    assert skipped.window() is None and len(skipped._samples) == 1


def test_a_face_mesh_moves_with_its_centroid_forecast():
    from models.forecast import MeshForecaster, make_forecaster

    f = make_forecaster("constant_velocity", "face")
    assert isinstance(f, MeshForecaster) and f.name == "constant_velocity"
    mesh = np.random.default_rng(0).uniform(0.3, 0.6, (478, 3)).astype(np.float32)
    mesh[:, 2] = -0.05                                                      # depth, not a visibility
    shift = lambda t: mesh + np.float32([0.2 * t, -0.1 * t, 0.0])           # noqa: E731 - the head moving
    moved = shift(1 / 30).copy()
    moved[5, :2] = np.nan                                                   # a point lost: stays lost
    f.update(0.0, shift(0.0))
    f.update(1 / 30, moved)
    out = f.predict(0.1)
    seen = np.arange(478) != 5
    np.testing.assert_allclose(out[seen, :2], moved[seen, :2] + np.float32([0.2, -0.1]) * 0.1 * f.gain, atol=1e-5)
    assert f.gain == 0.8
    exact = MeshForecaster(ConstantVelocity(), gain=1.0)                  # undamped: the head's step, exactly
    exact.update(0.0, shift(0.0))
    exact.update(1 / 30, moved)
    np.testing.assert_allclose(exact.predict(0.1)[seen, :2], shift(1 / 30 + 0.1)[seen, :2], atol=1e-5)
    assert np.isnan(out[5, :2]).all() and (out[:, 2] == -0.05).all()
    np.testing.assert_array_equal(f.predict(0.0), moved)
    assert make_forecaster("auto", "face").name == "constant_velocity"
    assert make_forecaster("auto", "dance").name == "learned"
    with pytest.raises(ValueError, match="forecaster must be one of"):
        make_forecaster("psychic", "dance")


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture (uint8 RGB): what optical flow can follow."""
    import cv2

    noise = np.random.default_rng(seed).uniform(0, 255, (h // 8, w // 8, 3)).astype(np.float32)
    return cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def test_head_motion_measures_the_faces_step_on_the_image():
    from models.forecast import HeadMotion

    big = _textured(300, 400)
    h, w = 240, 320
    at = lambda dx, dy: np.ascontiguousarray(big[30 - dy:30 - dy + h, 40 - dx:40 - dx + w])  # noqa: E731
    box = np.zeros((478, 3), np.float32)                                   # a mesh spanning a 120 x 100 px box
    box[:, 0] = np.linspace(100, 220, 478) / w
    box[:, 1] = np.linspace(70, 170, 478)[::-1] / h
    motion = HeadMotion()
    assert motion(at(0, 0), box) is None                                   # the first frame: nothing to compare
    step = motion(at(3, -2), box)                                          # the picture moved 3 px right, 2 up
    np.testing.assert_allclose(step * (w, h), (3, -2), atol=0.3)
    big_box = HeadMotion(max_side=32)                                      # measured on a 32-px box, in frame units
    big_box(at(0, 0), box)
    np.testing.assert_allclose(big_box(at(4, 1), box) * (w, h), (4, 1), atol=0.6)
    grey = at(3, -2)[:, :, 0].copy()
    motion.reset()
    motion(grey, box)
    np.testing.assert_allclose(motion(np.roll(grey, 2, axis=0), box) * (w, h), (0, 2), atol=0.3)
    assert motion(at(0, 0)[:100], box) is None                             # a new frame size: starts afresh
    assert motion(at(0, 0)[:100], None) is None                            # no face ...
    assert motion(at(1, 0)[:100], box) is None                             # ... and no step across the gap
    assert motion(at(1, 0)[:100], box) is not None
    small = box.copy()
    small[:, :2] = (small[:, :2] - 0.5) * 0.2 + 0.5                        # a 24 x 20 px face: too small to measure
    motion.reset()
    motion(at(0, 0), small)
    assert motion(at(2, 0), small) is None
    # Mostly below the frame: the square about the mesh, clipped, is 64 x 11 px; DIS would crash on it (OpenCV
    # 4.11 segfaults on wide images under 32 px high), so it is not measured.
    low = np.zeros((478, 3), np.float32)
    low[:, 0], low[:, 1] = np.linspace(0.4, 0.6, 478), np.linspace(0.97, 1.2, 478)
    motion(at(0, 0), low)
    assert motion(at(2, 0), low) is None
    half = low.copy()
    half[:, 0] = np.linspace(0.1, 0.9, 478)                                # a wide face half out: its square is in
    motion(at(0, 0), half)
    np.testing.assert_allclose(motion(at(2, 0), half) * (w, h), (2, 0), atol=0.3)
    with pytest.raises(ValueError, match="expected a uint8 image"):
        motion(at(0, 0).astype(np.float32), box)
    with pytest.raises(ValueError, match="max_side must be >= 32"):
        HeadMotion(max_side=16)


def test_a_face_mesh_driven_by_the_image_step_ignores_the_trackers_jitter():
    from models.forecast import MeshForecaster, for_frame

    mesh = np.random.default_rng(1).uniform(0.3, 0.6, (478, 3)).astype(np.float32)
    step = np.float32([0.01, -0.005])                                      # the head's true step a frame
    shake = np.float32([[0.0, 0.0], [0.004, 0.003], [-0.003, 0.004]])      # the tracker's whole-mesh jitter
    seen = [mesh.copy() for _ in range(3)]
    for i in range(3):
        seen[i][:, :2] += i * step + shake[i]
    f = MeshForecaster(ConstantVelocity(), gain=1.0)
    for i in range(3):
        f.update(i / 30, seen[i], step if i else None)
    # Moved on by the measured step (3 frames' worth in 0.1 s), whatever the mesh's own jitter did.
    np.testing.assert_allclose(f.predict(0.1)[:, :2], seen[2][:, :2] + 3 * step, atol=1e-5)
    g = MeshForecaster(ConstantVelocity(), gain=1.0)
    for i in range(3):
        g.update(i / 30, seen[i], np.float32([np.nan, np.nan]) if i else None)   # none measured: the points' step
    np.testing.assert_allclose(g.predict(0.1)[:, :2], seen[2][:, :2] + 3 * (step + shake[2] - shake[1]), atol=1e-5)
    with pytest.raises(ValueError, match=r"step must be \(2,\) frame fractions"):
        g.update(3 / 30, seen[2], step[None])
    # On a 2:1 frame the forecast runs in square units; the step comes and goes in the frame's own fractions.
    wide = for_frame(MeshForecaster(ConstantVelocity(), gain=1.0), 2.0)
    for i in range(3):
        wide.update(i / 30, seen[i], step if i else None)
    np.testing.assert_allclose(wide.predict(0.1)[:, :2], seen[2][:, :2] + 3 * step, atol=1e-5)


def test_the_stream_bench_scores_the_image_drive_where_the_steps_were_measured():
    from models.forecast import Shot, bench_forecast_stream

    rng = np.random.default_rng(2)
    mesh = rng.uniform(0.3, 0.6, (478, 3)).astype(np.float32)
    t = np.arange(40) / 30
    true = np.float32([0.09, -0.06]) * t[:, None]                            # a head moving steadily
    lms = np.repeat(mesh[None], 40, 0)
    lms[:, :, :2] += (true + rng.normal(0, 0.002, true.shape).astype(np.float32))[:, None]   # + tracker jitter
    steps = np.vstack([np.full((1, 2), np.nan), np.diff(true, axis=0)]).astype(np.float32)
    shot = Shot(t, lms, steps, np.full(40, 0.5))
    rows = {(r["forecaster"], r["drive"]): r for r in bench_forecast_stream([shot], "face", horizons_ms=(100,))}
    assert set(rows) == {("none", "points"), ("constant_velocity", "points"), ("constant_velocity", "centroid"),
                         ("constant_velocity", "image")}
    image, centroid = rows[("constant_velocity", "image")], rows[("constant_velocity", "centroid")]
    assert image["client"] and not centroid["client"] and rows[("none", "points")]["client"]
    assert image["error"] < 0.8 * centroid["error"] and image["jitter"] < centroid["jitter"]
    assert image["cost_ms"] >= 0.5                                          # measuring the step counts
    without = bench_forecast_stream([shot, Shot(t, lms)], "face", horizons_ms=(100,))   # one shot not measured
    assert "image" not in {r["drive"] for r in without}


@needs_megamind
def test_on_a_real_face_the_image_drive_forecasts_within_the_target():
    """The issue's real-face target, on the footage it names: shots 1-3 of Megamind's face mesh at 100 ms, the
    gain chosen on shot 0. Measured 0.68x no forecast (the points' centroid 0.74x)."""
    from models.forecast import bench_forecast_stream
    from posecast.forecasting import stream_shots

    shots = stream_shots(MEGAMIND, "face", progress=False)
    assert [len(s.times) for s in shots] == [97, 55, 45, 70]
    assert all(np.isfinite(s.steps[1:]).all() for s in shots)
    rows = {r["drive"] + r["forecaster"]: r["error"] for r in bench_forecast_stream(shots[1:], "face",
                                                                                     horizons_ms=(100,))}
    assert rows["imageconstant_velocity"] <= 0.7 * rows["pointsnone"]
    assert rows["imageconstant_velocity"] < rows["centroidconstant_velocity"] < rows["pointsconstant_velocity"]


def test_display_error_meter_scores_each_shown_frame_against_the_stream_at_that_moment():
    from models.forecast import DisplayErrorMeter

    m = DisplayErrorMeter()
    for i in range(4):
        m.sample(i / 10, _moving(i / 10))
    m.shown(0.25, _moving(0.05))                                            # shown 0.2 s late
    m.shown(0.3, _moving(0.3))                                              # on time
    m.shown(0.35, _moving(0.35))                                            # after the newest sample: waits
    assert len(m.errors) == 2
    assert m.errors[0] == pytest.approx(0.2 * math.hypot(0.1, 0.05), rel=1e-4)
    assert m.errors[1] == pytest.approx(0.0, abs=1e-7)
    m.sample(0.4, _moving(0.4))
    assert len(m.errors) == 3 and m.errors[2] == pytest.approx(0.0, abs=1e-6)
    hidden = _moving(0.5)
    hidden[:, 2] = 0.0                                                      # nothing visible: nothing to score
    m.sample(0.5, _moving(0.5))
    m.shown(0.45, hidden)
    assert len(m.errors) == 3
    assert m.mean == pytest.approx(np.mean(m.errors))


def test_the_lead_follows_the_measured_latency():
    from clients.ledger import Lead, StreamLedger

    led = StreamLedger()
    assert Lead().ms(led) == 0.0                                            # no reply yet
    led.glass_to_glass_ms.extend([40.0] * 10 + [120.0] * 30)
    assert Lead().ms(led) == 120.0                                          # the recent replies
    led.glass_to_glass_ms.extend([900.0] * 30)
    assert Lead().ms(led) == Lead.MAX_AUTO_MS
    assert Lead(fixed_ms=50.0).ms(led) == 50.0


def test_a_forecaster_trained_behind_the_one_euro_filter_carries_it():
    from models.forecast import LearnedForecaster

    weights = {"layers.0.weight": np.zeros((2, 11), np.float32), "layers.0.bias": np.zeros(2, np.float32)}
    config = {"layers": 1, "history": 6, "fps": 30.0, "scale": 30.0, "one_euro": {"min_cutoff": 1.0, "beta": 0.0}}
    f = LearnedForecaster(weights, config)
    ref = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    for i in range(8):
        lm = _moving(i / 30, (0.5, 0.0))
        f.update(i / 30, lm)
        want = ref(i / 30, lm)
    np.testing.assert_allclose(f.predict(0.0), want, atol=1e-7)            # what it saw: the filtered stream
    np.testing.assert_allclose(f.predict(0.1), want, atol=1e-7)            # (a zero network: no displacement)


def test_the_whole_body_forecaster_runs_its_network_on_the_pose_and_refuses_other_layouts(tmp_path):
    from models.forecast import body_features, load_forecaster, make_forecaster, window_features
    from models.motion import DanceMotion
    from trainer.forecast import train_forecaster

    out = train_forecaster(tmp_path, seeds=(0,), seconds=8.0, steps=100, history=6, hidden=32, arch="body",
                           progress=False)
    f = load_forecaster(out)
    assert (f.arch, f.num_landmarks, f.history) == ("body", 33, 6)
    motion = DanceMotion(9, 30.0)
    for i in range(8):
        lm = motion.landmarks(i)
        f.update(i / 30, lm)
    xy, ok = f.window()
    assert xy.shape == (6, 33, 2) and 0 < ok.sum() <= 33
    xb = body_features(window_features(xy[None], ok[None], 0.1 * 30, f.scale, f.context), ok[None])
    assert xb.shape == (1, 33 * (5 * 2 + 3) + 1)
    assert (xb[0, 33 * 12:33 * 13] == ok).all() and xb[0, -1] == pytest.approx(3.0)   # seen flags, horizon
    move = f.run(xb)[0].reshape(33, 2) / f.scale
    p = f.predict(0.1)
    np.testing.assert_allclose(p[ok, :2], lm[ok, :2] + move[ok], atol=1e-6)
    cv = ConstantVelocity()
    cv.update(6 / 30, motion.landmarks(6))
    cv.update(7 / 30, lm)
    np.testing.assert_allclose(p[~ok], cv.predict(0.1)[~ok], atol=1e-6)     # not seen throughout: as before
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "forecaster.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": xb})[0], f.run(xb), atol=1e-5)
    three = load_forecaster(out)
    for i in range(8):
        three.update(i / 30, _moving(i / 30))
    with pytest.raises(ValueError, match="trained on bodies of 33 landmarks; got 3"):
        three.predict(0.1)
    with pytest.raises(ValueError, match="forecasts whole bodies of 33 landmarks; a face mesh moves with its centroid"):
        make_forecaster("learned", "face", learned=out)


def test_the_forecast_video_shows_three_panels_and_the_forecast_errs_less(tmp_path):
    import cv2

    from posecast.forecasting import forecast_video

    res = forecast_video(tmp_path / "f.mp4", seconds=2.0, seed=8, progress=False)   # 20 frames of history first
    cap = cv2.VideoCapture(res["output"])
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(frames) == res["frames"] == 60
    h, w = frames[0].shape[:2]
    assert w == 3 * h                                       # the pose now | no forecast | forecast
    assert res["error_forecast"] < 0.8 * res["error_none"]
    with pytest.raises(ValueError, match="latency_ms must be in"):
        forecast_video(tmp_path / "g.mp4", latency_ms=5000)


def test_a_recorded_stream_is_scored_shot_by_shot_against_itself(tmp_path):
    from clients.sources import save_recording
    from models.forecast import bench_forecast_stream
    from posecast.forecasting import stream_shots

    rng = np.random.default_rng(0)
    mesh = rng.uniform(0.3, 0.6, (478, 3)).astype(np.float32)
    t = np.arange(60) / 30
    lms = np.stack([mesh + np.float32([0.1 * s, 0.05 * s, 0.0]) for s in t])     # a head drifting steadily
    lms[30] = np.nan                                                             # nothing detected: a cut
    rec = save_recording(tmp_path / "r.npz", lms, kind="face", fps=30.0, capture_ts=t + 100.0)
    shots = stream_shots(rec, "face")
    assert [len(s[0]) for s in shots] == [30, 29] and shots[0][0][0] == 0.0
    rows = {(r["forecaster"], r["drive"]): r for r in bench_forecast_stream(shots, "face", horizons_ms=(100,))}
    assert set(rows) == {("none", "points"), ("constant_velocity", "points"), ("constant_velocity", "centroid")}
    none = rows[("none", "points")]
    assert none["frames"] == 59 and none["shots"] == 2 and none["jitter"] == none["jitter_raw"]
    # Steady motion: constant velocity per point is exact once two samples are in (the end of each shot, where
    # the truth runs out, is not scored); the damped centroid forecast goes 80 % of the way.
    assert rows[("constant_velocity", "points")]["error"] < 0.1 * none["error"]
    assert 0.1 * none["error"] < rows[("constant_velocity", "centroid")]["error"] < 0.35 * none["error"]
    with pytest.raises(ValueError, match="no shot of 3 frames"):
        bench_forecast_stream([(t[:2], lms[:2])], "face")


def test_bench_forecast_on_a_recording_from_the_command_line(tmp_path, capsys):
    import json

    from clients.sources import save_recording
    from posecast.cli import main

    t = np.arange(40) / 30
    lms = np.stack([_moving(s) for s in t])
    lms[20] = np.nan
    rec = save_recording(tmp_path / "r.npz", lms, kind="dance", fps=30.0)
    assert main(["bench", "--forecast", "--json", "--stream", str(rec), "--stream-kind", "dance", "--shots", "1",
                 "--forecaster-model", str(tmp_path / "none")]) == 2        # no forecaster there: an error
    assert "not a forecaster" in capsys.readouterr().err
    assert main(["bench", "--forecast", "--json", "--stream", str(rec), "--stream-kind", "dance", "--shots", "0-1"]) \
        == 2                                                               # 3 landmarks: the body model refuses
    assert "trained on bodies of 33 landmarks" in capsys.readouterr().err
    from models.motion import DanceMotion

    motion = DanceMotion(9, 30.0)
    body = save_recording(tmp_path / "b.npz", np.stack([motion.landmarks(i) for i in range(60)]), kind="dance",
                          fps=30.0)
    assert main(["bench", "--forecast", "--json", "--stream", str(body), "--stream-kind", "dance"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["forecaster"], r["horizon_ms"]) for r in rows] == [
        (f, h) for f in ("none", "constant_velocity", "learned") for h in (50, 100, 150)]
    assert all(r["frames"] == 60 and r["shot_ids"] == [0] and r["error"] > 0 for r in rows)
    assert main(["bench", "--forecast", "--stream", str(rec), "--stream-kind", "dance", "--shots", "7"]) == 2
    assert "--shots: " in capsys.readouterr().err


def test_constant_velocity_on_poses_runs_behind_the_one_euro_filter_unless_told_otherwise():
    from models.forecast import ONE_EURO, Smoothed, make_forecaster

    f = make_forecaster("constant_velocity", "dance")
    assert isinstance(f, Smoothed) and f.name == "constant_velocity"
    raw = make_forecaster("constant_velocity", "dance", one_euro=None)
    assert type(raw) is ConstantVelocity
    ref, filt = ConstantVelocity(), OneEuroFilter(**ONE_EURO)
    rng = np.random.default_rng(1)
    for i in range(6):
        lm = _moving(i / 30)
        lm[:, :2] += rng.normal(0, 0.002, (3, 2)).astype(np.float32)
        f.update(i / 30, lm)
        ref.update(i / 30, filt(i / 30, lm))
    np.testing.assert_array_equal(f.predict(0.1), ref.predict(0.1))
    mine = make_forecaster("constant_velocity", "dance", one_euro={"min_cutoff": 3.0, "beta": 0.0})
    assert mine.filter.min_cutoff == 3.0
    assert not isinstance(make_forecaster("learned", "dance"), Smoothed)                # sees through noise itself


def test_the_bundled_forecaster_follows_a_body_gliding_at_constant_velocity():
    """Known answer: a pose carried across the frame at constant velocity (someone walking sideways) is where the
    bundled forecaster says, within the stated tolerance: at most 0.45x the error of showing the past (measured
    0.20-0.37x), and a pose at rest stays within 0.007 of the frame side (measured 0.0055-0.0057; 1.8 px at 256).
    Predicted at every sample, as the client does (its rate smoothing runs)."""
    from models.forecast import make_forecaster
    from models.motion import DanceMotion

    for seed, frame in ((9, 50), (3, 10)):
        base = DanceMotion(seed, 30.0).landmarks(frame)
        for v in ((0.0, 0.0), (0.15, -0.05), (0.3, 0.0)):
            f, v = make_forecaster("learned", "dance"), np.float32(v)
            for i in range(25):
                lm = base.copy()
                lm[:, :2] += v * i / 30
                f.update(i / 30, lm)
                shown = f.predict(0.1)
            want = lm[:, :2] + v * 0.1
            seen = lm[:, 2] >= 0.5
            err = float(np.linalg.norm(shown[seen, :2] - want[seen], axis=1).mean())
            late = float(np.linalg.norm(v)) * 0.1
            assert err <= (0.45 * late if late else 0.007), (seed, v, err, late)


def test_a_wide_frame_is_forecast_in_square_units():
    from models.forecast import SquareFrame

    seen = []

    class Spy(ConstantVelocity):
        def update(self, t, landmarks, step=None):
            seen.append(np.array(landmarks))
            super().update(t, landmarks, step)

    f = SquareFrame(Spy(), 16 / 9)
    for i in range(3):
        f.update(i / 30, _moving(i / 30))
    np.testing.assert_allclose(seen[-1][:, 0], _moving(2 / 30)[:, 0] * 16 / 9, rtol=1e-6)   # what the model sees
    np.testing.assert_allclose(f.predict(0.1), _moving(2 / 30 + 0.1), atol=1e-6)            # back in frame units
    with pytest.raises(ValueError, match="aspect must be > 0"):
        SquareFrame(ConstantVelocity(), 0.0)


def test_carried_motion_drifts_no_faster_than_its_frequency_allows():
    """The training copies carried around the frame move the pose as a whole (every landmark by the same
    offset, no zoom here), smoothly: three sinusoids of at most ``shift`` each at <= ``max_hz``. Known answer: with
    every random draw at its upper end the three add up to one sinusoid of 3 x ``shift`` at exactly ``max_hz``."""
    from trainer.forecast import STEP_HZ, carried

    class Highest:                      # an rng that draws the upper end of every range
        def uniform(self, low, high, size=None):
            return np.full(size, high) if size is not None else high

    track = np.tile(_moving(0.0)[None], (STEP_HZ * 20, 1, 1))            # a pose at rest for 20 s
    for hz in (0.3, 0.8):
        out = carried(track, Highest(), shift=0.06, zoom=0.0, max_hz=hz)
        move = out[..., :2] - track[..., :2]
        np.testing.assert_allclose(move, np.broadcast_to(move[:, :1], move.shape), atol=1e-6)   # rigid
        t = np.arange(len(track)) / STEP_HZ
        want = 3 * 0.06 * np.sin(2 * np.pi * hz * t)
        np.testing.assert_allclose(move[:, 0, 0], want, atol=1e-5)
        np.testing.assert_allclose(move[:, 0, 1], want, atol=1e-5)
        np.testing.assert_array_equal(out[..., 2], track[..., 2])         # visibility untouched
        random = carried(track, np.random.default_rng(1), shift=0.06, zoom=0.0, max_hz=hz)[:, 0, :2] - track[:, 0, :2]
        speed = np.linalg.norm(np.diff(random, axis=0), axis=1) * STEP_HZ
        assert 0 < speed.max() <= 3 * 2 * np.pi * hz * 0.06 * np.sqrt(2) + 1e-3, (hz, speed.max())


def test_a_recorded_pose_stream_is_resampled_as_truth_and_stream():
    """Known answer: a recording of a pose gliding at constant velocity, at an uneven frame rate, resampled on its
    timestamps: the track at STEP_HZ is the glide itself, and the stream the forecaster sees is every
    (STEP_HZ / fps)-th sample of it."""
    from trainer.forecast import STEP_HZ, recorded_track

    rng = np.random.default_rng(3)
    times = np.cumsum(rng.uniform(0.025, 0.042, 60))                       # 24-40 fps, jittery
    lms = np.stack([_moving(t) for t in times])
    track, stream = recorded_track(times, lms, fps=30.0, history=20, horizon_max_s=0.3)
    grid = np.arange(len(track)) / STEP_HZ
    np.testing.assert_allclose(track, np.stack([_moving(times[0] + g) for g in grid]), atol=1e-5)
    np.testing.assert_array_equal(stream[0], track[::STEP_HZ // 30])
    assert recorded_track(times[:20], lms[:20], fps=30.0, history=20, horizon_max_s=0.3) is None   # 0.6 s: too short


def test_train_forecaster_takes_pose_recordings_beside_the_synthetic_motion(tmp_path, capsys):
    import json

    from clients.sources import save_recording
    from models.motion import DanceMotion
    from posecast.cli import main

    motion = DanceMotion(7, 30.0)
    lms = np.stack([motion.landmarks(i) for i in range(100)])
    lms[:, :, :2] += np.random.default_rng(0).normal(0, 0.002, lms[:, :, :2].shape).astype(np.float32)
    lms[50] = np.nan                                                         # nothing detected: two shots
    rec = save_recording(tmp_path / "me.npz", lms, kind="dance", fps=30.0, aspect=16 / 9)
    out = tmp_path / "fc"
    assert main(["train-forecaster", "--out", str(out), "--seeds", "0", "--seconds", "3", "--steps", "3",
                 "--recording", str(rec), "--quiet"]) == 0
    assert "2 of 2 recorded shots" in capsys.readouterr().out
    config = json.loads((out / "forecaster.json").read_text())
    assert config["trained_on"]["recorded_shots"] == 2 and config["trained_on"]["motion_seeds"] == [0]
    face = save_recording(tmp_path / "face.npz", np.zeros((40, 478, 3), np.float32), kind="face", fps=30.0)
    assert main(["train-forecaster", "--out", str(tmp_path / "x"), "--seeds", "0", "--seconds", "3", "--steps", "1",
                 "--recording", str(face), "--quiet"]) != 0
    assert "is a face recording: the forecaster learns poses" in capsys.readouterr().err
    short = save_recording(tmp_path / "short.npz", lms[:20], kind="dance", fps=30.0)
    assert main(["train-forecaster", "--out", str(tmp_path / "y"), "--seeds", "0", "--seconds", "3", "--steps", "1",
                 "--recording", str(short), "--quiet"]) != 0
    assert "none of the 1 recorded shots is long enough" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_observed_streams_train_with_their_exact_truth_and_gaps(tmp_path):
    """``observed`` pairs (a tracker's view of a motion, with the exact motion as the truth) are trained on at
    ``real_share``; a frame the tracker missed (NaN) is left out of the loss, not spread through the weights."""
    from safetensors.numpy import load_file

    from trainer.forecast import STEP_HZ, motion_samples, train_forecaster

    track = motion_samples(7, 3.0)
    seen = track[::STEP_HZ // 30].copy()
    seen[:, :, :2] += np.random.default_rng(0).normal(0, 0.003, seen[:, :, :2].shape).astype(np.float32)
    seen[40] = np.nan
    out = train_forecaster(tmp_path / "fc", seeds=(0,), seconds=3.0, steps=4, batch=1024, observed=[(track, seen)],
                           real_share=1.0, augment=False, progress=False)
    weights = load_file(str(out / "forecaster.safetensors"))
    assert all(np.isfinite(w).all() for w in weights.values())
    import json
    trained = json.loads((out / "forecaster.json").read_text())["trained_on"]
    assert trained["observed_streams"] == 1 and trained["real_share"] == 1.0
    with pytest.raises(ValueError, match="an observed stream of 5 landmarks"):
        train_forecaster(tmp_path / "x", seeds=(0,), seconds=3.0, steps=1, observed=[(track, seen[:, :5])],
                         progress=False)


def test_redetected_motion_pairs_what_mediapipe_saw_with_the_exact_motion():
    """``train-forecaster --redetect``: the rendered dancer re-detected by MediaPipe, frame by frame, beside the
    exact motion; MediaPipe finds the dancer within a few hundredths of the frame of its true joints."""
    from trainer.forecast import STEP_HZ, redetected

    track, seen = redetected(9, 0.5, size=192)
    assert seen.shape == (15, 33, 3) and track.shape[1:] == (33, 3) and len(track) >= 14 * STEP_HZ // 30
    truth = track[::STEP_HZ // 30][:15]
    vis = (seen[:, :, 2] >= 0.5) & (truth[:, :, 2] >= 0.5)
    assert np.isfinite(seen).all() and vis.mean() > 0.5
    assert np.median(np.linalg.norm(seen[:, :, :2] - truth[:, :, :2], axis=2)[vis]) < 0.03
