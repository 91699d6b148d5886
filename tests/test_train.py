"""A short training run on the synthetic dancer: losses move, output beats the mean frame, eval, resume, CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError, load_generator, read_checkpoint, subdict
from models.presets import get_preset
from trainer.clips import ClipSource
from trainer.dataset import Dataset, DatasetError, DatasetWriter
from trainer.synth import synthesize
from trainer.train import TrainConfig, Trainer

SIZE = 64
TINY = dict(size=SIZE, ngf=8, ndf=8, n_blocks=2, n_blocks_flow=1, n_downsample=2)
ITERATIONS = 120


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    train = synthesize(root / "train", seed=1, num_frames=60, size=SIZE, progress=False)
    heldout = synthesize(root / "heldout", seed=2, num_frames=20, size=SIZE, progress=False)
    cfg = get_preset("dance", **TINY)
    tc = TrainConfig(iterations=ITERATIONS, clip_frames_start=3, clip_frames_max=4, lr=1e-3, w_temporal=0.0,
                     checkpoint_every=10**6, sample_every=50, log_every=10)
    result = Trainer(cfg, tc, train, root / "run", progress=False).run()
    return {"root": root, "train": train, "heldout": heldout, "run": root / "run", "result": result, "cfg": cfg}


@pytest.mark.timeout(600)
def test_losses_move_and_output_beats_the_mean_frame(trained):
    hist = trained["result"]["history"]
    assert len(hist) == ITERATIONS
    for row in hist:
        assert all(np.isfinite(v) for v in row.values()), row
    first = np.mean([h["L1"] for h in hist[:10]])
    last = np.mean([h["L1"] for h in hist[-10:]])
    assert last < 0.8 * first, (first, last)
    # The flow head learns the motion: flow loss goes down too.
    assert np.mean([h["flow"] for h in hist[-10:]]) < np.mean([h["flow"] for h in hist[:10]])

    # Held-out motion, same dancer: generate from labels alone (zero history) and compare, where the person
    # is (pixels that differ from the static room), with the trivial baseline of predicting the mean frame.
    G, _ = load_generator(trained["run"])
    train_src = ClipSource(Dataset(trained["train"]), SIZE)
    train_frames = train_src.load(*train_src.clips[0])["frames"]
    mean_frame, room = train_frames.mean(0), train_frames.median(0).values
    src = ClipSource(Dataset(trained["heldout"]), SIZE)
    clip = src.load(*src.clips[0])
    with torch.no_grad():
        fake = G.rollout(clip["labels"][None])[0][0]
    real = clip["frames"]
    person = ((real - room).abs().amax(1, keepdim=True) > 0.15).float()
    person = torch.nn.functional.max_pool2d(person, 5, 1, 2)
    assert 0.05 < person.mean() < 0.6

    def mae(x):
        return float(((x - real).abs() * person).sum() / (3 * person.sum()))

    assert mae(fake) < mae(mean_frame.expand_as(real)), (mae(fake), mae(mean_frame.expand_as(real)))


def test_run_folder_contents(trained):
    run = trained["run"]
    for name in ("generator.json", "generator.safetensors", "latest.json", "latest.safetensors", "config.json"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.*")), "no TensorBoard event file"
    cfg, tensors, meta = read_checkpoint(run / "latest.json")
    assert cfg == trained["cfg"]
    assert meta["iteration"] == ITERATIONS
    assert any(k.startswith("optG.") for k in tensors) and any(k.startswith("D.") for k in tensors)
    assert meta["subject_stats"]["shoulder_width"] > 0


def test_eval_json_keys_and_ranges(trained):
    out = subprocess.run([sys.executable, "-m", "posecast", "eval", str(trained["run"]), "--data",
                          str(trained["heldout"]), "--json", "--video", str(trained["root"] / "side.mp4")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"psnr", "ssim", "flicker", "flicker_real", "frames", "psnr_person", "ssim_person", "psnr_head",
            "psnr_background", "psnr_baseline", "psnr_person_baseline", "flicker_ratio", "pose_error",
            "pose_error_real", "pose_error_ratio", "detect_rate", "detect_rate_real", "mirrored_rate",
            "mirrored_rate_real"} <= set(res)
    assert res["frames"] == 20
    assert 5.0 < res["psnr"] < 60.0
    assert -1.0 <= res["ssim"] <= 1.0 and -1.0 <= res["ssim_person"] <= 1.0
    assert res["flicker"] >= 0.0 and 0.0 <= res["flicker_real"] < 5.0
    # The room is easy, the person is not: the region figures tell them apart.
    assert res["psnr_person"] < res["psnr_background"] and res["psnr_person_baseline"] < res["psnr_baseline"]
    assert 0.0 <= res["detect_rate"] <= 1.0 and res["detect_rate_real"] > 0.5 and res["pose_error_real"] < 0.1
    import cv2
    cap = cv2.VideoCapture(str(trained["root"] / "side.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 20
    ok, frame = cap.read()
    assert ok and frame.shape[1] > 3 * SIZE  # label | generated | real
    text = subprocess.run([sys.executable, "-m", "posecast", "eval", str(trained["run"]), "--data",
                           str(trained["heldout"]), "--no-video", "--no-pose", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert text.returncode == 0, text.stderr
    assert "person region  PSNR" in text.stdout and "drawing nothing" in text.stdout
    assert "pose check" not in text.stdout
    assert "warning: only 20 frames to score: figures from fewer than 30 frames mean little" in text.stderr


@pytest.mark.timeout(300)
def test_resume_continues_from_the_checkpoint(trained, tmp_path):
    cfg = trained["cfg"]
    tc = TrainConfig(iterations=3, clip_frames_start=3, clip_frames_max=3, checkpoint_every=10**6)
    Trainer(cfg, tc, trained["train"], tmp_path / "r", progress=False).run()
    seen = []
    tc5 = TrainConfig(iterations=5, clip_frames_start=3, clip_frames_max=3, checkpoint_every=10**6)
    t = Trainer(cfg, tc5, trained["train"], tmp_path / "r", resume=True, progress=False,
                on_iteration=lambda it, logs: seen.append(it))
    assert t.iteration == 3
    t.run()
    assert seen == [4, 5]
    assert read_checkpoint(tmp_path / "r" / "latest.json")[2]["iteration"] == 5
    # Resuming with another model config is refused with a clear message.
    with pytest.raises(ValueError, match="different model config"):
        Trainer(cfg.replace(ngf=16), tc5, trained["train"], tmp_path / "r", resume=True, progress=False)


@pytest.mark.timeout(300)
def test_a_resumed_run_keeps_its_clock_and_says_when_nothing_is_left(trained, tmp_path):
    """A time-limited run's schedule follows the training seconds of every session, so --resume continues it."""
    import dataclasses

    cfg = trained["cfg"]
    tc = TrainConfig(iterations=2, clip_frames_start=3, clip_frames_max=3, checkpoint_every=10**6,
                     time_limit_s=1000.0, decay_start=0.0)
    Trainer(cfg, tc, trained["train"], tmp_path / "r", progress=False).run()
    latest = tmp_path / "r" / "latest.json"
    first = read_checkpoint(latest)[2]["trained_seconds"]
    assert 0 < first < 1000
    # As if that session had used 600 s of the 1000: the resumed one starts 60 % through its schedule.
    doc = json.loads(latest.read_text())
    doc["meta"]["trained_seconds"] = 600.0
    latest.write_text(json.dumps(doc))
    t = Trainer(cfg, dataclasses.replace(tc, iterations=3), trained["train"], tmp_path / "r", resume=True,
                progress=False)
    assert t.trained_seconds() == 600.0
    seen, step = [], t._iteration
    t._iteration = lambda progress, augment: (seen.append(progress), step(progress, augment))[1]
    t.run()
    assert len(seen) == 1 and 0.6 <= seen[0] < 0.7
    assert 600.0 < read_checkpoint(latest)[2]["trained_seconds"] < 700.0
    # Nothing left to do: said, with the option that gives more.
    with pytest.raises(ValueError, match="already at iteration 3 of its 3: give a larger --iterations"):
        Trainer(cfg, dataclasses.replace(tc, iterations=3), trained["train"], tmp_path / "r", resume=True,
                progress=False)
    with pytest.raises(ValueError, match=r"already trained for 6\d\d s of its --time-limit 500: give a larger"):
        Trainer(cfg, dataclasses.replace(tc, iterations=10, time_limit_s=500.0), trained["train"], tmp_path / "r",
                resume=True, progress=False)


def test_regression_only_training_builds_no_discriminator_and_resumes(trained, tmp_path):
    plain = dict(w_gan=0.0, w_fm=0.0, w_temporal=0.0, clip_frames_start=3, clip_frames_max=3, checkpoint_every=10**6)
    t = Trainer(trained["cfg"], TrainConfig(iterations=2, **plain), trained["train"], tmp_path / "r", progress=False)
    assert t.D is None and t.DT is None and t.opt_D is None
    hist = t.run()["history"]
    assert [sorted(h) for h in hist] == [["G", "L1", "flow", "mask", "warp"]] * 2
    _, tensors, meta = read_checkpoint(tmp_path / "r" / "latest.json")
    assert not any(k.startswith(("D.", "DT.", "optD.")) for k in tensors) and list(meta["optim"]) == ["optG"]
    t = Trainer(trained["cfg"], TrainConfig(iterations=3, **plain), trained["train"], tmp_path / "r", resume=True,
                progress=False)
    assert t.iteration == 2 and len(t.run()["history"]) == 1


def test_training_recipe_follows_the_architecture():
    from trainer.train import train_config_for

    assert train_config_for(get_preset("dance")) == TrainConfig()
    lite = train_config_for(get_preset("lite"), w_fm=3.0, iterations=7)
    assert (lite.w_gan, lite.w_fm, lite.w_temporal, lite.iterations) == (0.2, 3.0, 0.0, 7)
    assert (lite.gan_start, lite.w_person, lite.w_head, lite.ema_halflife) == (0.75, 3.0, 3.0, 100.0)
    assert (lite.w_stable, lite.w_alpha, lite.head_jitter_px) == (10.0, 3.0, 0.0)   # the eyes stay where drawn
    assert lite.channels_last and not TrainConfig().channels_last     # NHWC where it measured faster
    # The recipe belongs to the generator, whatever the preset is called.
    assert train_config_for(get_preset("dance", arch="lite")).gan_start == 0.75
    # ... and to the kind of landmarks it draws: a face on lite has the face GAN on its eyes and mouth
    face = train_config_for(get_preset("face-lite"))
    assert (face.w_face_gan, face.w_gan, face.gan_start, face.w_stable) == (1.0, 0.2, 0.75, 10.0)
    assert lite.w_face_gan == 0.0 and train_config_for(get_preset("face")).w_face_gan == 0.0
    assert face.tilt_prob == 0.5 and lite.tilt_prob == 0.0 == train_config_for(get_preset("face")).tilt_prob
    assert not train_config_for(get_preset("face-lite"), augment=False).augment   # no augmentation, tilt included
    assert train_config_for(get_preset("face-lite"), w_face_gan=0.0).w_face_gan == 0.0   # --train-set wins


def test_train_command_takes_the_recipes_learning_rate_unless_one_is_given():
    from posecast.cli import _train_configs, build_parser

    def lr(*options):
        args = build_parser().parse_args(["train", "--data", "d", "--out", "o", *options])
        return _train_configs(args)[1].lr

    assert lr("--preset", "face-lite") == 1e-3          # face-lite's recipe (KIND_TRAINING)
    assert lr("--preset", "lite") == lr("--preset", "dance") == TrainConfig().lr == 2e-4
    assert lr("--preset", "face-lite", "--lr", "3e-4") == 3e-4
    assert lr("--preset", "lite", "--train-set", "lr=5e-4") == 5e-4


def test_train_command_given_nothing_is_the_recipe():
    """Options left out are the recipe's (or TrainConfig's) values, not the command line's own copies of them."""
    from posecast.cli import _train_configs, build_parser
    from trainer.train import train_config_for

    cfg, tc = _train_configs(build_parser().parse_args(["train", "--data", "d", "--out", "o"]))
    assert cfg == get_preset("dance") and tc == train_config_for(cfg) == TrainConfig()
    with pytest.raises(ValueError, match="--data is required"):
        _train_configs(build_parser().parse_args(["train", "--out", "o"]))


def test_resume_takes_the_runs_own_settings_and_changes_only_what_is_given(tmp_path, capsys):
    import dataclasses

    from models.checkpoint import save_checkpoint
    from posecast.cli import _train_configs, build_parser
    from trainer.train import train_config_for

    cfg = get_preset("face-lite", size=128)
    saved = train_config_for(cfg, iterations=10**6, time_limit_s=3300.0, seed=3, w_stable=7.0,
                             frame_ranges=((0, 97), (152, 174)), clips=(0, 2), threads=1, device="cpu")
    (tmp_path / "run").mkdir()
    meta = {"iteration": 12, "train": {**dataclasses.asdict(saved), "retired_knob": 1}, "dataset": "/data/mm"}
    save_checkpoint(tmp_path / "run" / "latest", {"G.x": torch.zeros(1)}, cfg, meta)

    def configs(*options, out="run"):
        args = build_parser().parse_args(["train", "--out", str(tmp_path / out), "--resume", *options])
        return (*_train_configs(args), args.data)

    # Nothing given: the run's model, recipe (face-lite's lr, the --train-set), frames, seed, time limit and data;
    # where it runs (device, threads) is this machine's.
    here = dataclasses.replace(saved, threads=0, device="auto")
    assert configs() == (cfg, here, "/data/mm") and saved.lr == 1e-3
    assert "left out: retired_knob" in capsys.readouterr().err
    assert configs("--clips", "")[1] == dataclasses.replace(here, clips=None)    # "" drops the saved list
    # Given options change just those fields, each said; one equal to the run's own is no change.
    _, tc, _ = configs("--time-limit", "6000", "--train-set", "lr=5e-4", "--seed", "3", "--data", "/elsewhere")
    assert tc == dataclasses.replace(here, time_limit_s=6000.0, lr=5e-4)
    err = capsys.readouterr().err
    assert "resuming" in err and "at iteration 12" in err and "time_limit_s 3300.0 -> 6000.0" in err
    assert "lr 0.001 -> 0.0005" in err and "seed" not in err
    # The model cannot change under its weights; naming the run's own is fine.
    assert configs("--preset", "face-lite", "--size", "128")[0] == cfg
    with pytest.raises(ValueError, match=r"--preset dance \(the run's: face-lite\), --size 256 \(the run's: 128\)"):
        configs("--preset", "dance", "--size", "256")
    with pytest.raises(ValueError, match=r"--set head_channels=32 \(the run's: 16\).*--init"):
        configs("--set", "head_channels=32")
    with pytest.raises(ValueError, match="from its own weights; --init start a new schedule"):
        configs("--init", "models/default")
    with pytest.raises(CheckpointError, match="holds no run to continue"):
        configs(out="nothing-here")


def test_clip_length_grows_and_lr_decays():
    tc = TrainConfig(iterations=300, clip_frames_start=4, clip_frames_max=16, decay_start=0.5)
    lengths = [tc.clip_frames(tc.progress(i), 4) for i in range(300)]
    assert lengths[0] == 4 and lengths[-1] == 16 and sorted(lengths) == lengths
    assert set(lengths) == {4, 8, 16} and lengths.index(8) == 100 and lengths.index(16) == 200
    lrs = [tc.lr_at(tc.progress(i)) for i in (0, 150, 299)]
    assert lrs[0] == tc.lr and lrs[1] == tc.lr and lrs[2] < 0.01 * tc.lr


def test_schedules_follow_the_time_limit_when_it_binds_first():
    """A run that will stop on --time-limit gets its whole schedule in that time, not a tenth of it."""
    tc = TrainConfig(iterations=100_000, time_limit_s=600.0, clip_frames_start=4, clip_frames_max=16,
                     decay_start=0.5, gan_start=0.75)
    assert tc.progress(10, 0.0) == pytest.approx(1e-4)
    assert tc.progress(10, 300.0) == 0.5 and tc.progress(10, 900.0) == 1.0
    assert tc.lr_at(tc.progress(10, 299.0)) == tc.lr
    assert tc.lr_at(tc.progress(10, 450.0)) == pytest.approx(tc.lr / 2)
    assert [tc.clip_frames(tc.progress(10, t), 4) for t in (0.0, 199.0, 201.0, 401.0)] == [4, 4, 8, 16]
    assert not tc.gan_on(tc.progress(10, 449.0)) and tc.gan_on(tc.progress(10, 450.0))
    # Iterations still count when they run out first.
    assert TrainConfig(iterations=100, time_limit_s=1e6).progress(50, 1.0) == 0.5


def test_training_refuses_mismatched_or_tiny_data(tmp_path, trained):
    with pytest.raises(ValueError, match="expects 'face'"):
        Trainer(get_preset("face", size=SIZE, ngf=8, ndf=8), TrainConfig(iterations=1), trained["train"],
                tmp_path / "x", progress=False)
    with pytest.raises(DatasetError, match="no manifest.json"):
        Trainer(trained["cfg"], TrainConfig(iterations=1), tmp_path, tmp_path / "x", progress=False)
    tiny = synthesize(tmp_path / "tiny", seed=0, num_frames=6, size=SIZE, clip_frames=2, progress=False)
    with pytest.raises(ValueError, match="longest clip has 2 frames"):
        Trainer(trained["cfg"], TrainConfig(iterations=1), tiny, tmp_path / "x", progress=False)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * np.log10(4.0 / ((a - b) ** 2).mean().item()))


def test_background_plate_removes_the_person(trained):
    from trainer.synth import DancerRenderer

    source = ClipSource(Dataset(trained["train"]), SIZE)
    plate = source.background_plate()
    assert plate.shape == (3, SIZE, SIZE) and plate.min() >= -1 and plate.max() <= 1
    room = torch.from_numpy(DancerRenderer(SIZE, 0).background).permute(2, 0, 1).float() / 127.5 - 1
    frames = source.load(*source.clips[0])["frames"]
    # The per-pixel median of the frames keeps the dancer where it stands most of the time; the plate does not.
    assert _psnr(plate, room) > _psnr(frames.median(0).values, room) + 2.0


def test_the_plate_says_where_no_frame_shows_the_background(trained):
    """A dancer who keeps to one spot hides the room behind it in every frame: the plate there is inpainted, and
    with ``warn_unseen`` (what training asks for) says so, naming how much and where."""
    import warnings

    from trainer.clips import BackgroundUnseenWarning

    source = ClipSource(Dataset(trained["train"]), SIZE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet = source.background_plate()
        told = source.background_plate(warn_unseen=True)
    assert torch.equal(quiet, told)
    assert [w.category for w in caught] == [BackgroundUnseenWarning]
    m = re.match(r"background plate: (\d+\.\d)% of the frame \(x (\d+)-(\d+), y (\d+)-(\d+) of 64 px\) is behind a "
                 r"person in every one of the 60 frames sampled: no frame shows the background there", str(caught[0].message))
    assert m, caught[0].message
    share, x0, x1, y0, y1 = float(m[1]), *map(int, m.groups()[1:])
    assert 1.0 <= share < 60 and 0 < x0 < SIZE / 2 < x1 < SIZE and y0 < y1      # the middle, where it dances


def test_the_plate_is_what_a_pixel_shows_most_often_not_its_median():
    """A background seen in 40 % of the samples (with +-5 of noise), something of changing colours in the others
    (60 %): the plurality is the background where a median would not be; a pixel with no sample is NaN, counted 0."""
    from trainer.clips import plurality

    rng = np.random.default_rng(0)
    stack = rng.uniform(0, 255, (50, 6, 7, 3)).astype(np.float32)
    room = np.float32((100, 150, 200))
    seen = rng.random((50, 6, 7)) < 0.4
    stack[seen] = room + rng.uniform(-5, 5, (seen.sum(), 3))
    stack[:, 0, 0] = np.nan
    plate, agree = plurality(stack)
    assert plate.shape == (6, 7, 3) and agree.shape == (6, 7)
    assert np.isnan(plate[0, 0]).all() and agree[0, 0] == 0
    ok = np.ones((6, 7), bool)
    ok[0, 0] = False
    assert np.abs(plate[ok] - room).max() < 5.0
    assert (agree[ok] >= seen.sum(0)[ok] * 0.5).all() and (agree[ok] <= 50).all()
    assert np.abs(np.median(stack, 0)[ok] - room).max() > 20.0          # the median: not the room everywhere
    # A group that sits on a bin's edge in every grid (red at 16, green at 8: both grids' edges) is counted whole.
    edge = np.full((40, 1, 1, 3), np.nan, np.float32)
    edge[:22] = np.float32((16, 8, 100)) + rng.uniform(-3, 3, (22, 1, 1, 3))
    edge[22:] = rng.uniform(0, 255, (18, 1, 1, 3))
    plate, agree = plurality(edge)
    assert agree[0, 0] >= 22 and np.abs(plate[0, 0] - (16, 8, 100)).max() < 3.0


def test_a_passer_by_in_the_masks_leaves_no_ghost_in_the_plate(tmp_path):
    """Someone else crosses a corner of the room in most frames: with the person masks (which mark everyone) the
    plate there is the room; without them it keeps their ghost."""
    from trainer.dataset import DatasetWriter
    from trainer.synth import DancerRenderer, synthesize

    src = Dataset(synthesize(tmp_path / "s", seed=2, num_frames=30, size=64, progress=False))
    box = (slice(12, 58), slice(58, 64))                                  # down the right edge, off the dancer
    for name, with_masks in (("m", True), ("n", False)):
        with DatasetWriter(tmp_path / name, kind="dance", height=64, width=64, fps=30, num_landmarks=33) as w:
            for i in range(len(src)):
                frame, mask = np.array(src.frames[i]), np.array(src.masks[i])
                if i % 10 < 7:                                            # there in 70 % of the frames
                    frame[box] = (20, 30, 90)
                    mask[box] = 255
                w.add(frame, src.landmarks[i], src.flow[i], src.flow_conf[i], mask=mask if with_masks else None)
    room = DancerRenderer(64, 0).background.astype(np.float32)[box]

    def corner_error(name):
        plate = ClipSource(Dataset(tmp_path / name), 64).background_plate()
        return np.abs((plate.permute(1, 2, 0).numpy()[box] + 1) * 127.5 - room).mean()

    assert corner_error("m") < 3.0 < 40.0 < corner_error("n")
    # ... and the subject's mask (what alpha is pulled to, what eval scores) leaves the passer-by out
    clip = ClipSource(Dataset(tmp_path / "m"), 64).load(0, 10)
    subject, everyone = clip["person_mask"][:, 0].numpy(), np.asarray(Dataset(tmp_path / "m").masks[:10]) >= 128
    assert not subject[(slice(None), *box)].any() and everyone[(slice(0, 7), *box)].all()
    np.testing.assert_array_equal(subject[..., :58], everyone[..., :58])                 # the dancer: all of it


def test_lite_starts_from_the_plate_and_distils_from_a_teacher(trained, tmp_path):
    lite = get_preset("lite", size=SIZE, ngf=8, ndf=8)
    tc = TrainConfig(iterations=3, clip_frames_start=4, clip_frames_max=4, w_temporal=0.0, teacher=str(trained["run"]),
                     checkpoint_every=10**6)
    trainer = Trainer(lite, tc, trained["train"], tmp_path / "lite", progress=False)
    plate = ClipSource(Dataset(trained["train"]), SIZE).background_plate()
    assert torch.allclose(torch.tanh(trainer.G.background[0]), plate.clamp(-0.99, 0.99), atol=1e-5)
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    result = trainer.run()
    assert [("distill" in h) and h["distill"] > 0 for h in result["history"]] == [True] * 3
    G, meta = load_generator(tmp_path / "lite")
    assert meta["train"]["teacher"] == str(trained["run"])
    with pytest.raises(ValueError, match="needs a 'dance' teacher at 32px"):
        Trainer(get_preset("lite", size=32, ngf=8, ndf=8), tc, trained["train"], tmp_path / "x", progress=False)


def test_dataset_writer_is_atomic_and_checks_shapes(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(ValueError, match="frames: expected shape"):
        with DatasetWriter(out, kind="dance", height=8, width=8, fps=30, num_landmarks=33) as w:
            w.add(np.zeros((8, 8, 3), np.uint8), np.zeros((33, 3), np.float32))
            w.add(np.zeros((4, 4, 3), np.uint8), np.zeros((33, 3), np.float32))
    assert not out.exists() and not (tmp_path / "ds.partial").exists()
    with DatasetWriter(out, kind="dance", height=8, width=8, fps=30, num_landmarks=33) as w:
        for i in range(5):
            if i == 2:
                w.note_missing(i)
                continue
            w.add(np.full((8, 8, 3), i, np.uint8), np.zeros((33, 3), np.float32))
    ds = Dataset(out)
    assert len(ds) == 4 and ds.clips == [(0, 2), (2, 4)] and ds.manifest.missing_frames == [2]
    assert ds.flow_conf[0].max() == 0 and ds.flow_conf[2].max() == 0 and ds.flow_conf[1].min() == 255
    with pytest.raises(FileExistsError, match="already exists"):
        DatasetWriter(out, kind="dance", height=8, width=8, fps=30, num_landmarks=33)
    (out / "flow.npy").unlink()
    with pytest.raises(DatasetError, match="missing flow.npy"):
        Dataset(out)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "posecast", "train", "--data", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "posecast train: error:" in out.stderr and "no manifest.json" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_training_overrides_and_teacher_errors(trained, tmp_path):
    def train(*extra):
        return subprocess.run([sys.executable, "-m", "posecast", "train", "--data", str(trained["train"]),
                               "--preset", "lite", "--size", str(SIZE), "--out", str(tmp_path / "run"), *extra],
                              capture_output=True, text=True, timeout=120)

    out = train("--train-set", "w_gann=0")
    assert out.returncode == 2 and "posecast train: error: bad override 'w_gann=0'" in out.stderr
    out = train("--teacher", str(tmp_path / "no-such-run"))
    assert out.returncode == 2 and "posecast train: error:" in out.stderr and "no-such-run" in out.stderr
    assert "Traceback" not in out.stderr
    out = train("--train-set", "gan_mode=hinje")                  # a mistyped value fails before iteration 1
    assert out.returncode == 2 and "gan_mode = 'hinje' is not one of lsgan, hinge" in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value, rule", [
    ("gan_mode", "hinje", "is not one of lsgan, hinge"), ("precision", "fp8", "is not one of auto"),
    ("lr", 0.0, "must be > 0"), ("w_l1", -1.0, "must be >= 0"), ("w_gan", float("nan"), "finite"),
    ("iterations", 0, "integer >= 1"), ("batch_size", 1.5, "integer >= 1"), ("beta1", 1.5, "in [0, 1]"),
    ("device", "gpu", "auto, cpu, cuda"), ("frame_ranges", ((5, 2),), "start < stop"),
    ("clips", (-1,), "clip numbers >= 0"), ("d_frames", -1, "integer >= 0"), ("tilt_prob", 1.5, "in [0, 1]"),
    ("tilt_scale", 50.0, "must be <= 1"), ("tilt_deg", -5.0, "must be >= 0"), ("tilt_shift", 0.9, "<= 0.5")])
def test_training_config_names_a_bad_value_when_it_is_made(field, value, rule):
    with pytest.raises(ValueError, match=f"training config: {field} = .* {re.escape(rule)}"):
        TrainConfig(**{field: value})


def test_lite_trains_in_its_person_crop_then_adversarially_and_saves_the_ema(trained, tmp_path):
    from trainer.train import train_config_for

    lite = get_preset("lite", size=SIZE, ngf=8, ndf=8)
    tc = train_config_for(lite, iterations=4, clip_frames_start=4, clip_frames_max=4, gan_start=0.5,
                          checkpoint_every=10**6, ema_halflife=2.0)
    trainer = Trainer(lite, tc, trained["train"], tmp_path / "lite", progress=False)
    h, w = trainer.cfg.crop_hw
    assert trainer.cfg.person_crop and h % 16 == 0 and w % 16 == 0 and w < SIZE   # sized from the data
    result = trainer.run()
    phases = [("G_adv" in row, "D" in row) for row in result["history"]]
    assert phases == [(False, False)] * 2 + [(True, True)] * 2         # regression first, then the GAN phase
    regression, _ = load_generator(tmp_path / "lite" / "generator-regression.json")
    assert regression.cfg.crop_hw == (h, w)
    # generator.* holds the EMA of G's weights, latest.* both (for --resume).
    _, tensors, _ = read_checkpoint(tmp_path / "lite" / "latest.json")
    _, saved, _ = read_checkpoint(tmp_path / "lite" / "generator.json")
    key = "G.in_label.weight"
    assert torch.equal(saved[key], tensors["E.in_label.weight"]) and not torch.equal(saved[key], tensors[key])
    resumed = Trainer(lite, train_config_for(lite, iterations=5, clip_frames_start=4, clip_frames_max=4,
                                             checkpoint_every=10**6, ema_halflife=2.0),
                      trained["train"], tmp_path / "lite", resume=True, progress=False)
    assert resumed.iteration == 4 and torch.equal(resumed.G_ema.in_label.weight, tensors["E.in_label.weight"])


def test_init_starts_from_a_trained_generator_with_a_fresh_schedule(trained, tmp_path):
    cfg = trained["cfg"]
    tc = TrainConfig(iterations=2, clip_frames_start=3, clip_frames_max=3, w_temporal=0.0, checkpoint_every=10**6,
                     init=str(trained["run"]))
    trainer = Trainer(cfg, tc, trained["train"], tmp_path / "ft", progress=False)
    source, _ = load_generator(trained["run"])
    for (name, a), b in zip(source.state_dict().items(), trainer.G.state_dict().values()):
        assert torch.equal(a, b), name                                  # every weight (and the plate) carried over
    assert trainer.iteration == 0                                      # the schedule starts afresh
    assert trainer.run()["iterations"] == 2
    other = get_preset("dance", **{**TINY, "ngf": 16})
    with pytest.raises(CheckpointError, match=r"--init .* differs from this run's in ngf \(8 there, 16 here\)"):
        Trainer(other, tc, trained["train"], tmp_path / "ft2", progress=False)


def test_limb_weight_lifts_the_l1_on_the_limbs_only(trained):
    cfg = trained["cfg"]
    trainer = Trainer(cfg, TrainConfig(w_limbs=4.0, w_temporal=0.0), trained["train"], trained["root"] / "w",
                      progress=False)
    batch = trainer.source.load(0, 2)
    assert batch["limbs"].shape == batch["person"].shape and 0 < batch["limbs"].mean() < batch["person"].mean()
    real = batch["frames"]
    on_limbs = real + 0.5 * batch["limbs"]                               # the same error budget, placed on the limbs
    off_limbs = real + 0.5 * (batch["limbs"].sum() / (1 - batch["limbs"]).sum()) * (1 - batch["limbs"])
    regions = {k: batch[k] for k in ("person", "head", "limbs", "features")}
    assert trainer._loss_l1(on_limbs, real, **regions)[0] > 2 * trainer._loss_l1(off_limbs, real, **regions)[0]


def test_silhouette_is_where_the_frame_differs_from_the_plate():
    from trainer.train import silhouette

    plate = torch.zeros(2, 3, 8, 8)
    frames = plate.clone()
    frames[0, 1, 2:4, 3:6] = 0.5                                        # a person in one channel
    frames[1, :, 0, 0] = 0.1                                           # below the threshold: room noise
    sil = silhouette(frames, plate)
    assert sil.shape == (2, 1, 8, 8) and sil[0, 0, 2:4, 3:6].all() and sil[0].sum() == 6 and sil[1].sum() == 0


def test_alpha_supervision_makes_the_person_opaque_in_the_loss(trained, tmp_path):
    from models.window import cut_clips
    from trainer.train import train_config_for

    lite = get_preset("lite", size=SIZE, ngf=8, ndf=8)
    tc = train_config_for(lite, iterations=2, clip_frames_start=4, clip_frames_max=4, gan_start=1.0, w_alpha=1.0,
                          checkpoint_every=10**6)
    trainer = Trainer(lite, tc, trained["train"], tmp_path / "alpha", progress=False)
    result = trainer.run()
    assert all(np.isfinite(row["alpha"]) and row["alpha"] > 0 for row in result["history"])
    assert trainer.G.record_alpha is None                               # nothing recorded outside the rollout
    # the silhouette is the dataset's exact mask (the synthetic dancer's) within the subject's region, per window
    clip = trainer._generate(0.0, None)
    assert clip.person_mask is not None and clip.silhouette.shape == clip.alpha.shape
    places = trainer.G.placements(clip.landmarks, clip.labels.shape[0], clip.T)
    want = cut_clips((clip.person_mask >= 0.5).float(), [[p.box for p in row] for row in places])
    assert torch.equal(clip.silhouette, want) and 0.05 < float(want.mean()) < 0.9
    sil = torch.zeros(1, 1, 1, *trainer.cfg.crop_hw)
    sil[..., 20:40, 20:40] = 1.0
    right, _ = trainer._loss_alpha(sil.clamp(0.01, 0.99), sil)
    wrong, _ = trainer._loss_alpha(0.4 * sil, sil)                      # the see-through person the loss fixes
    assert right < 0.05 < wrong


def test_subject_stats_carry_face_proportions_and_the_training_crop(tmp_path):
    from models.posenorm import FaceCropConfig, face_stats

    rng = np.random.default_rng(0)
    lms = np.zeros((12, 478, 3), np.float32)
    lms[:, :, :2] = rng.uniform(0.3, 0.7, (12, 478, 2))
    with DatasetWriter(tmp_path / "face", kind="face", height=32, width=32, fps=25.0, num_landmarks=478) as w:
        w.manifest.extra = {"source_fps": 25.0, "crop": {**FaceCropConfig(scale=2.0, fps=25.0).to_dict(),
                                                         "mode": "tracked", "boxes": []}}
        for lm in lms:
            w.add(np.zeros((32, 32, 3), np.uint8), lm)
    stats = Dataset(tmp_path / "face").subject_stats
    assert stats["eye_distance"] == pytest.approx(face_stats(lms)["eye_distance"])
    assert FaceCropConfig.from_dict(stats["crop"]) == FaceCropConfig(scale=2.0, fps=25.0)
    # a dance video made by prepare: its fixed crop, in source-frame heights, for same-camera serving
    with DatasetWriter(tmp_path / "dance", kind="dance", height=32, width=32, fps=25.0, num_landmarks=33) as w:
        w.manifest.extra = {"crop": {"mode": "fixed", "box": [10.0, 20.0, 300.0], "aspect": 1.5,
                                     "box_height_units": [0.05, 0.1, 1.5]}}
        for i in range(4):
            w.add(np.zeros((32, 32, 3), np.uint8), np.full((33, 3), 0.5, np.float32))
    stats = Dataset(tmp_path / "dance").subject_stats
    assert stats["crop"] == {"mode": "fixed", "box": [0.05, 0.1, 1.5], "aspect": 1.5}
    # the synthetic dancer (no crop): body measures only
    synth = Dataset(synthesize(tmp_path / "s", seed=0, num_frames=4, size=32, progress=False))
    assert "crop" not in synth.subject_stats and synth.subject_stats["shoulder_width"] > 0


def test_subject_stats_are_computed_once_when_the_dataset_is_written(tmp_path):
    import json

    path = synthesize(tmp_path / "s", seed=0, num_frames=4, size=32, progress=False)
    manifest = json.loads((path / "manifest.json").read_text())
    stored = manifest["extra"]["subject_stats"]
    assert stored == Dataset(path).subject_stats and stored["shoulder_width"] > 0
    manifest["extra"]["subject_stats"] = {"shoulder_width": 0.123}     # what is stored is what is read ...
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert Dataset(path).subject_stats == {"shoulder_width": 0.123}
    del manifest["extra"]["subject_stats_version"]                      # ... a dataset from before: computed
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert Dataset(path).subject_stats == stored


def test_the_discriminators_judge_d_frames_random_frames_of_each_clip(trained, tmp_path):
    """d_frames = K: the image and face discriminators see K frames of each clip (vid2vid's phi_I samples one), a
    new draw every iteration, in both D's step and G's adversarial loss; the rest of G's losses see every frame."""
    from trainer.clips import Clip
    from trainer.train import train_config_for

    lite = get_preset("lite", size=SIZE, ngf=8, ndf=8)
    tc = train_config_for(lite, iterations=4, batch_size=2, clip_frames_start=4, clip_frames_max=4, gan_start=0.0,
                          d_frames=2, w_face_gan=1.0, checkpoint_every=10**6)
    trainer = Trainer(lite, tc, trained["train"], tmp_path / "run", progress=False)
    seen = {"D": [], "DF": []}
    trainer.D.register_forward_hook(lambda m, args, out: seen["D"].append(args[1].shape[0]))
    trainer.DF.register_forward_hook(lambda m, args, out: seen["DF"].append(args[1].shape[0]))
    draws = []
    for _ in range(4):
        _, clip = trainer._iteration(0.5, None)
        assert clip.fake.shape[:2] == (2, 4) and clip.judged.shape == (2, 2)
        for row in clip.judged.tolist():
            assert row == sorted(set(row)) and all(0 <= t < 4 for t in row)
        draws.append(clip.judged.tolist())
        # what is judged is those frames: frame t of clip b carries the value 10 b + t
        marked = (10 * torch.arange(2)[:, None] + torch.arange(4)[None]).float()[..., None, None, None]
        picked = clip.judged_frames(marked.expand(2, 4, 1, 3, 3))[:, 0, 0, 0]
        assert picked.tolist() == [10 * b + t for b, row in enumerate(clip.judged.tolist()) for t in row]
    assert seen["D"] == [2 * 2 * 2, 2 * 2] * 4 and seen["DF"] == [2 * 2 * 2, 2 * 2] * 4  # real + fake, then G's
    assert len({str(d) for d in draws}) > 1                                             # a new draw each time
    _, clip = trainer._iteration(0.5, None)
    assert clip.judged is not None
    trainer.tc.gan_start = 0.9                                                          # the regression phase:
    calls = len(seen["D"])                                                              # no draw, no D
    _, clip = trainer._iteration(0.5, None)
    assert clip.judged is None and len(seen["D"]) == calls
    everything = Clip(T=3, labels=torch.zeros(1), real=torch.zeros(1), flow=torch.zeros(1), conf=torch.zeros(1),
                      person=torch.zeros(1), head=torch.zeros(1), limbs=torch.zeros(1), features=torch.zeros(1),
                      landmarks=torch.zeros(1))
    assert everything.judged_frames(torch.arange(6.0).reshape(2, 3)).tolist() == list(range(6))  # d_frames 0: all


def test_face_gan_judges_the_head_window_and_resumes(trained, tmp_path):
    from trainer.train import train_config_for

    lite = get_preset("lite", size=SIZE, ngf=8, ndf=8)
    tc = train_config_for(lite, iterations=4, clip_frames_start=4, clip_frames_max=4, gan_start=0.5, w_face_gan=1.0,
                          w_stable=1.0, checkpoint_every=10**6)
    trainer = Trainer(lite, tc, trained["train"], tmp_path / "face", progress=False)
    side = trainer.face_side
    assert side == trainer.cfg.head_side and trainer.DF is not None
    # The head window is cut where the head landmarks are: a marker at their centre lands in the window's middle.
    clip = trainer.source.load(0, 1)
    landmarks = clip["landmarks"][None]
    places = trainer.G.placements(landmarks, 1, 1)
    centre = np.nanmean(landmarks[0, 0, :11, :2].numpy(), axis=0) * SIZE
    frames = torch.zeros(1, 1, 1, SIZE, SIZE)
    frames[0, 0, 0, int(centre[1]), int(centre[0])] = 1.0
    heads = trainer._heads(frames, places)
    assert heads.shape == (1, 1, 1, side, side) and heads.sum() == 1.0
    ys, xs = torch.nonzero(heads[0, 0, 0], as_tuple=True)
    assert abs(int(ys[0]) - side / 2) <= 1.5 and abs(int(xs[0]) - side / 2) <= 1.5
    result = trainer.run()
    assert [("G_face" in row, "G_adv" in row) for row in result["history"]] == [(False, False)] * 2 + [(True, True)] * 2
    assert all(np.isfinite(row["G_face_fm"]) for row in result["history"][2:])
    assert all(np.isfinite(row["stable"]) for row in result["history"])
    _, tensors, _ = read_checkpoint(tmp_path / "face" / "latest.json")
    key = next(k for k in tensors if k.startswith("DF."))
    resumed = Trainer(lite, train_config_for(lite, iterations=5, w_face_gan=1.0, checkpoint_every=10**6),
                      trained["train"], tmp_path / "face", resume=True, progress=False)
    assert torch.equal(resumed.DF.state_dict()[key[3:]], tensors[key])
    face = get_preset("face", size=SIZE, ngf=8, ndf=8)
    with pytest.raises(ValueError, match="w_face_gan judges the head window .* this .face. model has none"):
        Trainer(face, TrainConfig(w_face_gan=1.0), trained["train"], tmp_path / "f2", progress=False)


def test_temporal_change_loss_costs_flicker_not_motion_or_a_steady_offset():
    from trainer.losses import temporal_change_loss

    g = torch.Generator().manual_seed(0)
    real = torch.rand(1, 4, 3, 16, 16, generator=g) * 2 - 1            # a clip whose content changes every frame
    flow = torch.zeros(1, 4, 2, 16, 16)
    conf = torch.ones(1, 4, 1, 16, 16)
    assert temporal_change_loss(real, real, flow, conf) == 0            # the real clip's own change costs nothing
    assert temporal_change_loss(real + 0.3, real, flow, conf) < 1e-6    # nor does a steady colour offset
    flicker = real.clone()
    flicker[:, 2] += 0.2                                                # one frame jumps, then falls back
    assert abs(float(temporal_change_loss(flicker, real, flow, conf)) - 0.2 * 2 / 3) < 1e-5
    conf[:, 2:] = 0.0                                                   # where the flow is not trusted: not judged
    assert float(temporal_change_loss(flicker, real, flow, conf)) == 0.0
    assert temporal_change_loss(real[:, :1], real[:, :1], flow[:, :1], conf[:, :1]) == 0  # one frame: no change


def test_bf16_training_keeps_losses_weights_and_optimiser_in_fp32_and_records_it(trained, tmp_path):
    from trainer.train import train_config_for

    lite = get_preset("lite", size=SIZE, ngf=8, ndf=8)
    tc = train_config_for(lite, iterations=3, clip_frames_start=4, clip_frames_max=4, gan_start=0.0,
                          checkpoint_every=10**6, precision="bf16")
    trainer = Trainer(lite, tc, trained["train"], tmp_path / "bf16", progress=False)
    result = trainer.run()
    assert trainer.precision == "bf16" and len(result["history"]) == 3
    assert all(np.isfinite(v) for row in result["history"] for v in row.values())
    assert all(p.dtype == torch.float32 for p in trainer.G.parameters())
    assert all(v.dtype == torch.float32 for st in trainer.opt_G.state.values() for v in st.values()
               if torch.is_tensor(v) and v.is_floating_point())
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["precision"] == "bf16"
    assert read_checkpoint(tmp_path / "bf16" / "latest.json")[2]["precision"] == "bf16"


def test_the_progress_bar_follows_the_time_limit():
    import io

    from tqdm import tqdm

    from trainer.train import _time_limited_total

    with tqdm(total=100_000, file=io.StringIO()) as bar:
        bar.update(10)
        _time_limited_total(bar, 10, 5.0, 55.0, 100_000)     # 2 it/s with 55 s left: 110 more
        assert bar.total == 120
        _time_limited_total(bar, 10, 70.0, -10.0, 100_000)   # past the limit: this iteration is the last
        assert bar.total == 11
        # A resumed run: 10 iterations in this session's 5 s, 20 s of its limit left: 40 more, not the whole limit's
        _time_limited_total(bar, 10, 5.0, 20.0, 100_000)
        assert bar.total == 50
    with tqdm(total=50, file=io.StringIO()) as bar:
        bar.update(10)
        _time_limited_total(bar, 10, 1.0, 3599.0, 50)        # the iterations bind first
        assert bar.total == 50


def test_grow_from_loads_a_trained_run_as_the_coarse_stage_of_a_twice_larger_model(trained, tmp_path):
    from models.generator import grow_from, grown_config

    coarse, tensors, _ = read_checkpoint(trained["run"] / "generator.json")
    cfg = grown_config(coarse)
    assert (cfg.size, cfg.n_local, cfg.ngf) == (2 * SIZE, coarse.n_local + 1, coarse.ngf)
    tc = TrainConfig(iterations=2, clip_frames_start=3, clip_frames_max=3, w_temporal=0.0, checkpoint_every=10**6,
                     grow_from=str(trained["run"]))
    trainer = Trainer(cfg, tc, trained["train"], tmp_path / "grown", progress=False)
    state = trainer.G.state_dict()
    trunk = [k for k in state if k.startswith("trunk.")]
    assert trunk and all(torch.equal(state[k], tensors[f"G.{k}"]) for k in trunk)   # the coarse stage, loaded
    assert any(k.startswith("locals.0.") for k in state)                            # the new finest level
    assert len(trainer.run()["history"]) == 2
    with pytest.raises(ValueError, match=r"not that run grown by one level \(size: 256 here, 128"):
        grow_from(trainer.G.__class__(cfg.replace(size=256, n_local=2)), coarse, subdict(tensors, "G"))
    with pytest.raises(ValueError, match="only vid2vid generators grow"):
        grown_config(get_preset("lite", size=SIZE))


@pytest.mark.timeout(300)
def test_posecast_train_grow_from_turns_a_128_run_into_the_coarse_stage_of_a_256_model(tmp_path):
    """The issue's case through the command line: a 128-px `dance` run grown into a 256-px model."""
    from posecast.cli import main

    data = synthesize(tmp_path / "data", seed=1, num_frames=12, size=256, progress=False)
    tiny = [a for k, v in dict(ngf=4, ndf=4, n_blocks=1, n_blocks_flow=1, n_downsample=2).items()
            for a in ("--set", f"{k}={v}")]
    short = ["--iterations", "1", "--max-clip-frames", "3", "--quiet", "--train-set", "clip_frames_start=3",
             "--train-set", "w_temporal=0", "--precision", "fp32"]
    assert main(["train", "--data", str(data), "--preset", "dance", "--size", "128", "--out", str(tmp_path / "c"),
                 *tiny, *short]) == 0
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "f"), "--grow-from", str(tmp_path / "c"),
                 *short]) == 0
    coarse, ct, _ = read_checkpoint(tmp_path / "c" / "generator.json")
    fine, ft, meta = read_checkpoint(tmp_path / "f" / "generator.json")
    assert (coarse.size, fine.size, fine.n_local, fine.ngf) == (128, 256, coarse.n_local + 1, 4)
    assert meta["train"]["grow_from"] == str(tmp_path / "c")
    assert any(k.startswith("G.locals.0.") for k in ft)
    # one step of training later the coarse stage is where it started, moved by at most one Adam step a weight
    trunk = [k for k in ct if k.startswith("G.trunk.") and ct[k].is_floating_point()]
    assert trunk and all((ft[k] - ct[k]).abs().max() <= 2.1e-4 for k in trunk)


@pytest.fixture(scope="module")
def two_people(tmp_path_factory):
    """A synthetic dataset of 4 clips whose clip table (what posecast prepare stores) says A B A B."""
    path = synthesize(tmp_path_factory.mktemp("ids") / "d", seed=4, num_frames=48, size=SIZE, clip_frames=12,
                      progress=False)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["clips"] == [[0, 12], [12, 24], [24, 36], [36, 48]]
    manifest["extra"]["clip_table"] = [
        {"start": 100 * k, "end": 100 * k + 12, "length": 12, "reason": "cut", "identity": "AB"[k % 2],
         "dataset": clip} for k, clip in enumerate(manifest["clips"])]
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_frames_are_chosen_by_clip_identity_and_range(two_people):
    from trainer.clips import parse_clip_numbers, parse_frame_ranges

    ds = Dataset(two_people)
    assert ds.clip_identities() == ["A", "B", "A", "B"]
    a = ds.select(identity="A")
    assert a.ranges == ((0, 12), (24, 36)) and a.clips == (0, 2) and a.identities == ("A",) and a.mixed() is None
    part = ds.select(clips=[0, 2], frames=[(0, 30)])                       # clip 0 and the first half of clip 2
    assert part.ranges == ((0, 12), (24, 30)) and part.frames == 18
    both = ds.select(clips=[1, 2])
    assert both.identities == ("A", "B") and "span identities A, B" in both.mixed()
    assert ds.select().frames == 48
    overlap = ds.select(frames=[(0, 8), (4, 10), (10, 12), (30, 40)])    # overlapping, touching: merged
    assert overlap.ranges == ((0, 12), (30, 36), (36, 40)) and overlap.frames == 22
    for kwargs, message in ((dict(clips=[7]), "no clip 7 (clips 0-3)"), (dict(identity="C"), "no clip of identity "
                            "'C' (the clip table has A, B)"), (dict(clips=[0], frames=[(30, 40)]), "no frames")):
        with pytest.raises(DatasetError, match=re.escape(message)):
            ds.select(**kwargs)
    assert parse_frame_ranges(":200,400:450") == ((0, 200), (400, 450)) and parse_frame_ranges("") is None
    assert parse_clip_numbers("0,2") == [0, 2]
    with pytest.raises(ValueError, match="START:STOP"):
        parse_frame_ranges("5")


def test_clip_sampling_draws_every_shot_alike_or_every_window_alike(two_people):
    """``clip_sampling="clips"`` (vid2vid's) draws a 4-frame shot as often as a 12-frame one; "frames" draws every
    window alike, so the short shot's one window of T=4 comes up 1 time in 10."""
    src = ClipSource(Dataset(two_people), SIZE, frame_ranges=((0, 12), (24, 28)))
    assert src.clips == [(0, 12), (24, 28)]
    drawn = []
    src.load = lambda start, stop, seed=None, augment=None: drawn.append((start, stop)) or {"x": torch.zeros(1)}
    rng = np.random.default_rng(0)
    for by_clip in (True, False):
        drawn.clear()
        for _ in range(400):
            src.sample_batch(4, 1, rng, by_clip=by_clip)
        short = sum(start == 24 for start, _ in drawn) / len(drawn)
        assert all(stop - start == 4 and (stop <= 12 or (start, stop) == (24, 28)) for start, stop in drawn)
        assert 0.42 <= short <= 0.58 if by_clip else 0.05 <= short <= 0.16, (by_clip, short)
        assert {start for start, _ in drawn if start < 12} == set(range(9))       # every window of the long shot
    with pytest.raises(DatasetError, match="no clip has 13 consecutive frames"):
        src.sample_batch(13, 1, rng, by_clip=True)
    with pytest.raises(ValueError, match="clip_sampling = 'shots' is not one of frames, clips"):
        TrainConfig(clip_sampling="shots")


def test_a_run_keeps_the_statistics_of_its_own_frames_and_warns_of_mixed_identities(two_people, tmp_path):
    from trainer.dataset import subject_stats_for
    from trainer.train import MixedIdentityWarning

    cfg = get_preset("dance", **TINY)
    ds = Dataset(two_people)
    tc = TrainConfig(iterations=1, identity="A", frame_ranges=((0, 30),), checkpoint_every=10**6)
    trainer = Trainer(cfg, tc, two_people, tmp_path / "a", progress=False)
    rows = np.r_[0:12, 24:30]
    want = subject_stats_for("dance", np.asarray(ds.landmarks[rows]), ds.manifest.extra, ds.manifest.fps)
    assert trainer.subject_stats == want and trainer.subject_stats != ds.subject_stats
    assert trainer.source.clips == [(0, 12), (24, 30)]
    with pytest.warns(MixedIdentityWarning, match=r"18 training frames \(clips 0, 1\) span identities A, B"):
        Trainer(cfg, TrainConfig(iterations=1, clips=(0, 1), frame_ranges=((0, 18),)), two_people, tmp_path / "b",
                progress=False)
    out = subprocess.run([sys.executable, "-m", "posecast", "train", "--data", str(two_people), "--preset", "dance",
                          "--size", str(SIZE), "--out", str(tmp_path / "c"), "--clips", "1,2", "--iterations", "1",
                          "--quiet", *[a for k, v in TINY.items() if k != "size" for a in ("--set", f"{k}={v}")]],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "warning: the 24 training frames (clips 1, 2) span identities A, B" in out.stderr


def test_tilted_clips_on_a_plate_generator_need_the_datasets_person_masks(trained, tmp_path):
    """Without masks.npy a plate generator's alpha is pulled to where a frame differs from the (untilted)
    background plate: all of a tilted frame. Refused at the start, naming the way out."""
    import shutil

    from trainer.train import train_config_for

    bare = tmp_path / "bare"
    shutil.copytree(trained["train"], bare)
    (bare / "masks.npy").unlink()
    lite = get_preset("lite", size=SIZE, ngf=8, ndf=8)
    tc = train_config_for(lite, iterations=2, tilt_prob=0.5)
    with pytest.raises(ValueError, match=r"tilt_prob = 0.5: a tilted clip needs the dataset's person masks .*"
                                         r"Re-run `posecast prepare`.*--train-set tilt_prob=0"):
        Trainer(lite, tc, bare, tmp_path / "r", progress=False)
    assert Trainer(lite, train_config_for(lite, iterations=2), bare, tmp_path / "ok", progress=False)
    # with the masks it trains, every clip tilted
    tilted = train_config_for(lite, iterations=2, tilt_prob=1.0, clip_frames_start=4, clip_frames_max=4,
                              checkpoint_every=10**6)
    Trainer(lite, tilted, trained["train"], tmp_path / "tilted", progress=False).run()
    assert (tmp_path / "tilted" / "generator.safetensors").exists()
