"""The floor under a training iteration: the generator alone, rolled over one clip from zero history as
``Trainer`` does (its person window sized and placed from the synthetic dancer's landmarks, as ``Trainer`` sizes
it from the training frames), then the backward pass of a trivial loss; no data loading, no real losses, no
discriminator, no optimiser. No loop that trains this generator on such clips can run faster than this
(docs/performance.md, "Training speed").

    .venv/bin/python scripts/generator-floor.py [--preset lite] [--size 256] [--frames 8] [--repeats 5]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.presets import get_preset  # noqa: E402
from models.registry import build_generator  # noqa: E402
from models.window import crop_size_for  # noqa: E402
from trainer.bench import bench_data  # noqa: E402
from trainer.dataset import Dataset  # noqa: E402
from trainer.precision import autocast  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="lite")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = get_preset(args.preset, size=args.size)
    with tempfile.TemporaryDirectory() as tmp:                      # the data `posecast bench --train` times on
        lms = np.asarray(Dataset(bench_data(args.size, tmp, kind=cfg.kind)).landmarks, np.float32)
    if cfg.person_crop:
        h, w = crop_size_for(lms, args.size)
        cfg = cfg.replace(crop_height=h, crop_width=w)
    gen = build_generator(cfg).train().to(memory_format=torch.channels_last)
    labels = torch.rand(1, args.frames, cfg.label_nc, args.size, args.size)
    landmarks = torch.from_numpy(lms[:args.frames][None])
    print(f"{args.preset} {args.size}px: window {cfg.crop_height or args.size} x {cfg.crop_width or args.size}")
    for precision in ("fp32", "bf16"):
        forward, backward = [], []
        for i in range(args.repeats + 1):                  # the first is a warm-up
            gen.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            with autocast(precision, torch.device("cpu")):
                frames, flows, masks = gen.rollout(labels, landmarks)
            loss = frames.float().abs().mean() + flows.float().abs().mean() + masks.float().mean()
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            if i:
                forward.append(t1 - t0)
                backward.append(t2 - t1)
        f, b = sorted(forward)[len(forward) // 2] * 1e3, sorted(backward)[len(backward) // 2] * 1e3
        print(f"{args.preset} {args.size}px, {args.frames} frames, {precision}: forward {f:.0f} ms, backward "
              f"{b:.0f} ms, together {f + b:.0f} ms (at most {1e3 / (f + b):.2f} it/s; median of {args.repeats})",
              flush=True)


if __name__ == "__main__":
    main()
