"""Networks: every preset's generator and discriminators run forward and backward on CPU without NaNs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from models.checkpoint import CheckpointError, load_generator, read_checkpoint, save_checkpoint
from models.discriminators import ImageDiscriminator, TemporalDiscriminator
from models.generator import Generator
from models.flops import count_macs
from models.layers import up_block
from models.presets import ModelConfig, get_preset, list_presets, parse_overrides
from models.registry import ARCHITECTURES, build_generator
from models.warp import compose_flows, warp
from shared_data import REPO

SMALL = dict(size=32, ngf=8, ndf=8)


def _inputs(cfg: ModelConfig, batch: int = 2):
    g = torch.Generator().manual_seed(0)
    L, C, S = cfg.history_frames, cfg.label_nc, cfg.size
    labels = torch.rand(batch, (L + 1) * C, S, S, generator=g)
    prev = torch.rand(batch, L * 3, S, S, generator=g) * 2 - 1
    return labels, prev


def test_registry_has_the_required_presets():
    assert {"dance", "dance-perframe", "face", "lite"} <= set(list_presets())
    assert get_preset("lite").arch == "lite" and get_preset("lite").history_frames == 2
    assert get_preset("dance-perframe").history_frames == 0
    assert get_preset("dance").history_frames == 2
    assert get_preset("face").label_nc > 3
    with pytest.raises(KeyError, match="unknown preset 'nope'"):
        get_preset("nope")


def test_every_preset_builds_its_registered_architecture():
    assert set(ARCHITECTURES) == {"vid2vid", "lite"}
    for name in list_presets():
        cfg = get_preset(name, size=64)
        assert type(build_generator(cfg)) is ARCHITECTURES[cfg.arch], name
    with pytest.raises(ValueError, match=r"unknown generator architecture 'nope'; known: lite, vid2vid"):
        build_generator(dataclasses.replace(get_preset("dance", size=64), arch="nope"))


VARIANTS = [(name, 0) for name in list_presets()] + \
    [(name, 1) for name in list_presets() if get_preset(name).arch == "vid2vid"]  # + coarse-to-fine enhancer


@pytest.mark.parametrize("name,n_local", VARIANTS)
def test_generator_and_discriminators_forward_backward(name, n_local):
    cfg = get_preset(name, n_local=n_local, **SMALL)
    G, D = build_generator(cfg), ImageDiscriminator(cfg)
    labels, prev = _inputs(cfg)
    frame, flow, mask = G(labels, prev if cfg.history_frames else None)
    assert frame.shape == (2, 3, 32, 32) and flow.shape == (2, 2, 32, 32) and mask.shape == (2, 1, 32, 32)
    assert frame.abs().max() <= 1.0 and 0.0 <= mask.min() and mask.max() <= 1.0
    d_out = D(labels[:, -cfg.label_nc:], frame)
    assert len(d_out) == cfg.d_scales
    loss = frame.square().mean() + sum(s[-1].mean() for s in d_out)
    if cfg.is_temporal:
        DT = TemporalDiscriminator(cfg)
        k = cfg.temporal_frames
        for si in range(len(cfg.temporal_spacings)):
            t_out = DT(torch.cat([frame] * k, 1), torch.cat([flow] * (k - 1), 1), si)
            loss = loss + t_out[0][-1].mean()
    loss.backward()
    for net in (G, D):
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads, "no gradients reached the network"
        assert all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(frame).all()


def test_lite_in_its_person_crop_is_fifty_times_cheaper():
    from models.window import typical_crop

    dance = get_preset("dance", size=256)
    lite = get_preset("lite", size=256).replace(**dict(zip(("crop_height", "crop_width"), typical_crop(256))))
    labels, prev = _inputs(dance, 1)
    h, w = lite.crop_hw
    macs_dance = count_macs(build_generator(dance).eval(), labels, prev)
    macs_lite = count_macs(build_generator(lite).eval(), torch.rand(1, 9, h, w), torch.rand(1, 6, h, w),
                           torch.rand(1, 3, h, w), torch.tensor([[40.0, 8.0]]))
    assert (h, w) == (256, 208)
    assert macs_lite * 50 < macs_dance



@pytest.mark.parametrize("preset, field, value", [
    ("lite", "n_downsample", 2), ("lite", "n_blocks_flow", 1), ("lite", "max_ngf", 64), ("lite", "norm", "batch"),
    ("lite", "flow_max_px", 4.0), ("lite", "n_local", 1), ("dance", "crop_height", 128),
    ("dance", "person_crop", True), ("face", "head_crop", -1), ("dance", "window_border_px", 3),
    ("dance", "head_channels", 16)])
def test_a_config_refuses_a_field_its_architecture_would_ignore(preset, field, value):
    arch = get_preset(preset).arch
    with pytest.raises(ValueError, match=f"a '{arch}' generator does not read {field}={value!r}"):
        get_preset(preset, **{field: value})


def test_a_whole_frame_lite_config_refuses_a_window_smoothing_it_would_ignore():
    with pytest.raises(ValueError, match=r"does not read window_smoothing=0.5: its window is the whole frame \(no "
                                         r"person_crop\)"):
        get_preset("face-lite", window_smoothing=0.5)
    # a person crop sized from the data later (crop_height 0 until then) reads its smoothing; defaults always load
    assert get_preset("lite", window_smoothing=0.5).window_smoothing == 0.5
    assert get_preset("face-lite", head_crop=0).head_side == 0 and get_preset("face-lite").window_smoothing == 0.6


def test_a_config_saves_the_fields_its_architecture_reads_and_loads_older_files():
    lite = get_preset("lite", size=128)
    saved = lite.to_dict()
    assert "n_downsample" not in saved and "norm" not in saved and saved["window_smoothing"] == 0.6
    assert "crop_height" not in get_preset("dance").to_dict()
    assert ModelConfig.from_dict(saved) == lite
    older = {**saved, "n_downsample": 4, "n_blocks_flow": 0, "max_ngf": 512, "norm": "none", "flow_max_px": 0.0}
    del older["window_smoothing"], older["window_border_px"], older["flow_grad_scale"]
    assert ModelConfig.from_dict(older) == lite            # written by an older version: every field, no constants
    bundled = ModelConfig.from_dict(json.loads((REPO / "models" / "default" / "generator.json").read_text())["config"])
    assert bundled == get_preset("lite").replace(crop_height=256, crop_width=208) and bundled.head_side == 32
    hostile = {**get_preset("dance").to_dict(), "crop_height": 128}      # not a leftover default: refused
    with pytest.raises(ValueError, match="does not read crop_height=128"):
        ModelConfig.from_dict(hostile)
    for bad in ([], ["name"], "lite"):
        with pytest.raises(ValueError, match="a model config is a JSON object"):
            ModelConfig.from_dict(bad)
    with pytest.raises(ValueError, match="crop_height -16 must be between 0"):   # bounds before what uses them
        get_preset("lite", crop_height=-16)
    with pytest.raises(ValueError, match="face crop already"):
        get_preset("face-lite", crop_height=128, crop_width=128)


def test_lite_flow_branch_reaches_shared_features_scaled_down():
    cfg = get_preset("lite", size=32, ngf=8)
    torch.manual_seed(0)
    G = build_generator(cfg)
    labels, prev = _inputs(cfg, 1)
    G.eval()
    with torch.no_grad():
        ref = G(labels, prev)
    G.train()
    out = G(labels, prev)
    for a, b in zip(out, ref):  # the gradient scaling leaves the forward pass alone
        assert torch.allclose(a, b, atol=1e-6)

    def shared_grad(scale: float) -> torch.Tensor:
        g = build_generator(cfg.replace(flow_grad_scale=scale)).train()   # the config's constant, same weights
        g.load_state_dict(G.state_dict())
        _, flow, mask = g(labels, prev)
        (flow.square().sum() + mask.sum()).backward()
        return g.fuse.pw.weight.grad.clone(), g.flow_head.weight.grad.clone()

    full, branch_full = shared_grad(1.0)
    scaled, branch_scaled = shared_grad(0.1)
    assert full.abs().sum() > 0
    assert torch.allclose(scaled, 0.1 * full, rtol=1e-4, atol=1e-8)
    assert torch.allclose(branch_scaled, branch_full)  # the branch itself learns at full strength


def test_lite_draws_its_background_plate_where_alpha_is_zero():
    cfg = get_preset("lite", size=32, ngf=8)
    G = build_generator(cfg).eval()
    plate = torch.rand(3, 32, 32) * 1.6 - 0.8
    G.set_background(plate)
    with torch.no_grad():
        G.head.weight.zero_()
        G.head.bias.copy_(torch.tensor([0.9, 0.9, 0.9, -30.0]))  # a bright person, but alpha ~0: nothing drawn
        G.flow_head.weight.zero_()
        G.flow_head.bias.copy_(torch.tensor([0.0, 0.0, -30.0]))  # zero flow, occlusion mask ~0: all hallucinated
        G.head_branch.body[-1].weight.zero_()                   # and the head branch adds nothing
        frame, flow, mask = G(*_inputs(cfg, 1))
        assert mask.max() < 1e-6 and flow.abs().max() == 0
        assert torch.allclose(frame[0], plate, atol=1e-5)
        G.head.bias[3] = 30.0                                   # alpha ~1: the person inside, the plate at the rim
        frame = G(*_inputs(cfg, 1))[0][0]
    assert torch.allclose(frame[:, 8:-8, 8:-8], torch.full((3, 16, 16), float(torch.tanh(torch.tensor(0.9)))),
                          atol=1e-4)
    assert torch.allclose(frame[:, 0], plate[:, 0], atol=1e-5)   # alpha is zero on the window's border
    with pytest.raises(ValueError, match="background plate of shape"):
        G.set_background(torch.zeros(3, 16, 16))


def test_lite_in_a_person_crop_draws_the_plate_outside_it_and_needs_the_landmarks():
    """rollout places the window by the landmarks, composites it onto the plate and leaves the rest alone."""
    cfg = get_preset("lite", size=64, ngf=8, crop_height=48, crop_width=32)
    G = build_generator(cfg).eval()
    plate = torch.rand(3, 64, 64) * 1.6 - 0.8
    G.set_background(plate)
    lm = torch.full((1, 3, 33, 3), float("nan"))
    lm[..., 2] = 1.0
    lm[..., 0], lm[..., 1] = 0.8, 0.7                      # the person near the bottom-right corner
    with torch.no_grad():
        frames, flows, masks = G.rollout(torch.zeros(1, 3, 3, 64, 64), landmarks=lm)
    box = G.track_boxes(lm, 1, 3)[0][-1]
    assert (box.x0, box.y0, box.height, box.width) == (32, 16, 48, 32)   # clamped inside the frame
    assert frames.shape == (1, 3, 3, 64, 64) and flows.shape == (1, 3, 2, 48, 32) and masks.shape == (1, 3, 1, 48, 32)
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[16:64, 32:64] = False
    ref = torch.tanh(torch.atanh(plate.clamp(-0.99, 0.99)))
    assert torch.allclose(frames[0, -1][:, outside], ref[:, outside], atol=1e-6)
    with pytest.raises(ValueError, match="places its window by the landmarks"):
        G.rollout(torch.zeros(1, 2, 3, 64, 64))
    with pytest.raises(ValueError, match="needs the plate's window"):
        G(torch.zeros(1, 9, 48, 32), torch.zeros(1, 6, 48, 32))


@pytest.mark.parametrize("shape", [(2, 5, 6, 9), (1, 16, 1, 3)])
def test_up_block_is_upsample_pad_conv_in_its_sub_pixel_form(shape):
    """vid2vid's decoder step runs as one 2x2 convolution on the un-upsampled input: the same values and the
    same gradients as nearest x2 upsample, reflection pad and 3x3 conv, odd and one-pixel sizes included, with
    the state dict of that plain sequence (checkpoints written before load unchanged)."""
    torch.manual_seed(0)
    block = up_block(shape[1], 7, norm="none")               # norm "none": the conv has a bias too
    up, pad, conv, norm, relu = block
    x = torch.randn(*shape, requires_grad=True)
    got = block(x)
    want = relu(norm(conv(pad(up(x)))))
    assert got.shape == (shape[0], 7, 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (x, conv.weight, conv.bias), g),
                    torch.autograd.grad(want, (x, conv.weight, conv.bias), g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert sorted(block.state_dict()) == ["2.bias", "2.weight"]
    # counted as the plain 3x3 conv on the upsampled map, and traced (ONNX, TorchScript) as the plain sequence
    assert count_macs(block, x) == shape[0] * 7 * (2 * shape[2]) * (2 * shape[3]) * shape[1] * 9
    graph = str(torch.jit.trace(block, x.detach()).inlined_graph)
    assert "upsample_nearest2d" in graph and "conv_transpose" not in graph


def test_mac_count_of_a_known_conv():
    from models.flops import count_macs

    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    assert count_macs(conv, torch.zeros(1, 4, 10, 10)) == 8 * 10 * 10 * 4 * 9


def test_generator_rejects_wrong_shapes():
    cfg = get_preset("dance", **SMALL)
    G = Generator(cfg)
    labels, prev = _inputs(cfg)
    with pytest.raises(ValueError, match="expected shape"):
        G(labels[:, :3], prev)
    with pytest.raises(ValueError, match="needs previous frames"):
        G(labels, None)


def test_output_blends_warped_previous_and_hallucination():
    """frame = m * warp(prev, flow) + (1 - m) * h: forcing the mask to 1 and the flow to 0 copies prev."""
    cfg = get_preset("dance", **SMALL)
    G = Generator(cfg)
    with torch.no_grad():
        G.head_mask.weight.zero_()
        G.head_mask.bias.fill_(50.0)   # sigmoid -> 1
        G.head_flow.weight.zero_()
        G.head_flow.bias.zero_()       # zero flow
    labels, prev = _inputs(cfg)
    frame, flow, mask = G(labels, prev)
    assert torch.allclose(frame, prev[:, -3:], atol=1e-5)


def test_zero_flow_warp_is_identity_and_shift_moves_pixels():
    x = torch.rand(1, 3, 16, 20)
    assert torch.allclose(warp(x, torch.zeros(1, 2, 16, 20)), x, atol=1e-6)
    flow = torch.zeros(1, 2, 16, 20)
    flow[:, 0] = 2.0  # out(p) = x(p + (2, 0))
    assert torch.allclose(warp(x, flow)[..., :, :-2], x[..., :, 2:], atol=1e-5)
    # Two constant shifts compose into their sum (away from the border).
    total = compose_flows([flow, flow])
    assert torch.allclose(total[:, 0, :, :-4], torch.full((1, 16, 16), 4.0), atol=1e-5)
    assert torch.allclose(total[:, 1], torch.zeros(1, 16, 20), atol=1e-6)


def test_config_round_trip_and_overrides():
    cfg = get_preset("face", size=64)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert parse_overrides(["ngf=16", "norm=batch", "temporal_spacings=1,2"]) == \
        {"ngf": 16, "norm": "batch", "temporal_spacings": (1, 2)}
    with pytest.raises(ValueError, match="bad override"):
        parse_overrides(["nonsense=1"])
    with pytest.raises(ValueError, match="bad override 'ngf=wide'"):
        parse_overrides(["ngf=wide"])
    with pytest.raises(ValueError, match="multiple of"):
        get_preset("dance", size=100)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**cfg.to_dict(), "extra": 1})


def test_training_overrides_are_typed_against_train_config():
    from trainer.train import TrainConfig

    assert parse_overrides(["w_gan=0.1", "augment=off", "clip_frames_max=6"], TrainConfig) == \
        {"w_gan": 0.1, "augment": False, "clip_frames_max": 6}
    with pytest.raises(ValueError, match="bad override 'ngf=16'"):
        parse_overrides(["ngf=16"], TrainConfig)
    with pytest.raises(ValueError, match="expected true or false"):
        parse_overrides(["augment=maybe"], TrainConfig)


def test_checkpoint_round_trip_in_a_process_without_trainer(tmp_path):
    cfg = get_preset("dance", **SMALL)
    G = Generator(cfg).eval()
    save_checkpoint(tmp_path / "generator", {f"G.{k}": v for k, v in G.state_dict().items()}, cfg, {"note": "x"})
    labels, prev = _inputs(cfg, 1)
    with torch.no_grad():
        ref = G(labels, prev)[0]
    G2, meta = load_generator(tmp_path)
    assert meta == {"note": "x"}
    with torch.no_grad():
        assert torch.equal(G2(labels, prev)[0], ref)
    # A fresh interpreter loads it with the inference-side imports only: trainer/ stays unimported.
    code = ("import sys; from models.checkpoint import load_generator; load_generator(sys.argv[1]); "
            "bad = [m for m in sys.modules if m == 'trainer' or m.startswith('trainer.')]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_checkpoint_errors_name_the_problem(tmp_path):
    cfg = get_preset("dance", **SMALL)
    G = Generator(cfg)
    state = {f"G.{k}": v for k, v in G.state_dict().items()}
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.json")
    save_checkpoint(tmp_path / "a", state, cfg)
    # Weights of another config.
    save_checkpoint(tmp_path / "b", state, cfg.replace(ngf=16))
    with pytest.raises(CheckpointError, match="do not match the config"):
        load_generator(tmp_path / "b.json")
    # Corrupt weights.
    (tmp_path / "c.json").write_text((tmp_path / "a.json").read_text())
    (tmp_path / "c.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_generator(tmp_path / "c.json")
    # Not a checkpoint at all.
    (tmp_path / "d.json").write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match="not a posecast checkpoint"):
        load_generator(tmp_path / "d.json")
    (tmp_path / "e.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_generator(tmp_path / "e.json")
    # No temp files left behind by the atomic writes.
    assert not list(tmp_path.glob(".*.tmp"))


def test_head_branch_cuts_and_pastes_exactly_its_window():
    """The one-hot cut/paste of the head window is exact, and the residual lands only inside that window."""
    from models.lite import HeadBranch, one_hot_rows

    x = torch.rand(2, 3, 20, 16)
    rows, cols = one_hot_rows(torch.tensor([3.0, 12.0]), 8, 20), one_hot_rows(torch.tensor([0.0, 8.0]), 8, 16)
    cut = rows.transpose(2, 3) @ x @ cols
    assert torch.equal(cut[0], x[0, :, 3:11, 0:8]) and torch.equal(cut[1], x[1, :, 12:20, 8:16])
    branch = HeadBranch(3, 8)
    with torch.no_grad():
        branch.body[-1].bias.fill_(0.5)
    out = branch(x * 0, torch.zeros(2, 3, 20, 16), torch.tensor([[0.0, 3.0], [8.0, 12.0]]))
    changed = out.abs() > 0
    assert changed[0, :, 3:11, 0:8].any() and not changed[0, :, :3].any() and not changed[0, :, 11:].any()
    assert not changed[1, :, :, :8].any() and changed[1, :, 12:20, 8:16].any()
    assert out[0, :, 0, 0].abs().max() == 0 and out[0, :, 7, 4].min() > 0.4     # fades to zero at its border
