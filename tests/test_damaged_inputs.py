"""Damaged input files fail in one line naming the file and the field, before anything is allocated from them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.checkpoint import CheckpointError, read_checkpoint
from trainer.dataset import Dataset, DatasetError
from trainer.synth import synthesize

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("data") / "d", seed=0, num_frames=6, size=32, progress=False)


def damaged(dataset: Path, tmp_path: Path, edit) -> Path:
    out = tmp_path / "damaged"
    shutil.copytree(dataset, out)
    m = json.loads((out / "manifest.json").read_text())
    m = edit(m)
    (out / "manifest.json").write_text(json.dumps(m) if not isinstance(m, str) else m)
    return out


CASES = [  # (edit of manifest.json, text the one-line error must contain)
    (lambda m: [], "expected a JSON object, got list"),
    (lambda m: dict(m, clips=[5]), "field 'clips' must be a list of [start, stop] integer pairs"),
    (lambda m: dict(m, clips=[[0, "6"]]), "field 'clips'"),
    (lambda m: dict(m, fps=float("nan")), "field 'fps' must be a finite number > 0, got nan"),
    (lambda m: dict(m, fps=float("inf")), "field 'fps' must be a finite number > 0, got inf"),
    (lambda m: dict(m, fps=0), "field 'fps'"),
    (lambda m: dict(m, height=True), "field 'height'"),
    (lambda m: dict(m, num_landmarks=10**9), "field 'num_landmarks'"),
    (lambda m: {k: v for k, v in m.items() if k != "kind"}, "kind"),
]


@pytest.mark.parametrize("edit, message", CASES)
def test_damaged_manifest_is_one_clear_error(dataset, tmp_path, edit, message):
    path = damaged(dataset, tmp_path, edit)
    with pytest.raises(DatasetError) as e:
        Dataset(path)
    text = str(e.value)
    assert text.startswith(f"{path / 'manifest.json'}: ") and message in text and "\n" not in text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("edit, message", CASES[:2])
def test_train_cli_on_a_damaged_manifest(dataset, tmp_path, edit, message):
    path = damaged(dataset, tmp_path, edit)
    out = subprocess.run([sys.executable, "-m", "posecast", "train", "--data", str(path), "--preset", "lite",
                          "--size", "32", "--out", str(tmp_path / "run"), "--iterations", "1", "--quiet"],
                         capture_output=True, text=True, timeout=110, cwd=REPO)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"posecast train: error: {path / 'manifest.json'}: ") and message in out.stderr
    assert out.stderr.count("\n") == 1


@pytest.mark.parametrize("field, value, message", [
    ("size", 1 << 30, "field 'size' must be in [16, 4096], got 1073741824"),
    ("size", "256", "field 'size' must be int, got '256'"),
    ("size", True, "field 'size' must be int, got True"),
    ("ngf", 10**6, "field 'ngf' must be in [1, 1024]"),
    ("history_frames", 10**6, "field 'history_frames'"),
    ("window_smoothing", float("nan"), "field 'window_smoothing' must be float"),
])
def test_damaged_generator_json_is_one_clear_error_before_allocating(tmp_path, tiny_checkpoint, field, value,
                                                                     message):
    tiny_checkpoint(tmp_path, "lite", size=32)
    doc = json.loads((tmp_path / "generator.json").read_text())
    doc["config"][field] = value
    (tmp_path / "generator.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path)               # would try to allocate terabytes for size 2^30 without the check
    text = str(e.value)
    assert text.startswith(f"{tmp_path / 'generator.json'}: bad model config") and message in text
