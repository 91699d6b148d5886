"""Landmark smoothing and forecasting (models/forecast.py) on known answers."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from models.forecast import ConstantVelocity, NoForecast, OneEuroFilter, bench_forecast, display_error

from shared_data import REPO


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
    assert [(r["forecaster"], r["smoothing"]) for r in rows] == [
        ("none", "none"), ("none", "one_euro"), ("constant_velocity", "none"), ("constant_velocity", "one_euro")]
    assert all(r["what"] == "forecast" and r["horizon_ms"] == 100 and r["error"] > 0 for r in rows)
    assert rows[0]["jitter"] == rows[0]["jitter_raw"]                       # no forecast, no smoothing: the raw stream
    out = subprocess.run([sys.executable, "-m", "posecast", "bench", "--forecast", "--seed", "3"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("display-time error") == 12 and "constant_velocity" in out.stdout


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A forecaster trained briefly (15 s of one motion seed): enough to beat showing the past."""
    import torch

    from trainer.forecast import train_forecaster

    torch.manual_seed(0)
    return train_forecaster(tmp_path_factory.mktemp("fc"), seeds=(0,), seconds=15.0, steps=1000, progress=False)


def test_the_learned_forecaster_runs_the_trained_network_and_falls_back_where_it_cannot(learned):
    import json

    import torch
    from safetensors.torch import load_file

    from models.forecast import load_forecaster

    config = json.loads((learned / "forecaster.json").read_text())
    assert config["format"] == "posecast-forecaster" and config["trained_on"]["motion_seeds"] == [0]
    f = load_forecaster(learned)
    stream = [_moving(i / 30) for i in range(config["history"])]
    for i, lm in enumerate(stream[:2]):
        f.update(i / 30, lm)
    cv = ConstantVelocity()
    for i, lm in enumerate(stream[:2]):
        cv.update(i / 30, lm)
    np.testing.assert_array_equal(f.predict(0.1), cv.predict(0.1))         # too little history: constant velocity
    for i, lm in enumerate(stream[2:], 2):
        f.update(i / 30, lm)
    np.testing.assert_array_equal(f.predict(0.0), stream[-1])              # zero horizon: the input
    # The numpy inference is the network that was trained.
    w = load_file(str(learned / "forecaster.safetensors"))
    net = torch.nn.Sequential(torch.nn.Linear((config["history"] - 1) * 2 + 1, 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    net.load_state_dict({f"{i}.{k}": w[f"layers.{j}.{k}"] for j, i in enumerate((0, 2, 4)) for k in ("weight", "bias")})
    x, ok = f.features(0.1)
    want = stream[-1][:, :2] + net(torch.from_numpy(x)).detach().numpy() / config["scale"]
    assert ok.all()
    np.testing.assert_allclose(f.predict(0.1)[:, :2], want, atol=1e-6)
    hidden = [lm.copy() for lm in stream]
    hidden[-1][1, 2] = 0.0                                                  # hidden now: left as it came
    g = load_forecaster(learned)
    for i, lm in enumerate(hidden):
        g.update(i / 30, lm)
    np.testing.assert_array_equal(g.predict(0.1)[1], hidden[-1][1])
    with pytest.raises(ValueError, match="not a forecaster"):
        load_forecaster(learned.parent)


def test_a_learned_forecaster_beats_showing_the_past_on_motion_it_never_saw(learned):
    rows = {(r["forecaster"], r["smoothing"]): r for r in bench_forecast(seed=9, horizons_ms=(100,), seconds=6.0,
                                                                         learned=str(learned))}
    assert rows[("learned", "none")]["error"] < 0.85 * rows[("none", "none")]["error"]


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
