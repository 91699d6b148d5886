"""``posecast`` — the one command-line entry. Each subcommand imports its heavy modules lazily."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path


def _cmd_synth(args) -> int:
    if args.kind == "face":
        from trainer.synth_face import synthesize_face as synthesize
    else:
        from trainer.synth import synthesize

    out = synthesize(args.out, seed=args.seed, num_frames=args.frames, size=args.size, fps=args.fps,
                     clip_frames=args.clip_frames, overwrite=args.overwrite, progress=not args.quiet,
                     appearance_seed=args.appearance_seed)
    what = "talking face" if args.kind == "face" else "dancer"
    print(f"wrote {out} (synthetic {what}: {args.frames} frames, {args.size}px, motion seed {args.seed}, "
          f"appearance seed {args.appearance_seed})")
    return 0


@contextlib.contextmanager
def _plain_warnings():
    """The library's warnings are for this user: one plain line each on stderr, no source line."""
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}", file=sys.stderr)
        yield


def _cmd_prepare(args) -> int:
    from trainer.prepare import format_clip_table, prepare_video

    with _plain_warnings():
        report = prepare_video(args.video, args.out, kind=args.kind, size=args.size, start=args.start,
                               max_frames=args.max_frames, overwrite=args.overwrite, progress=not args.quiet,
                               person=args.person, max_people=args.max_people,
                               min_clip_frames=args.min_clip_frames, min_subject_fraction=args.min_subject,
                               log=print)
    if report.people:
        print("people seen (id, frames, first-last frame, median height px, median centre x px):")
        for p in report.people:
            mark = "  <- tracked" if p["id"] == report.person else ""
            print(f"  person {p['id']}: {p['frames']} frames, {p['first']}-{p['last']}, {p['height_px']:.0f} px, "
                  f"x {p['center_x_px']:.0f}{mark}")
    print("clips (source frames [start, end); reason = why the clip ends):")
    print(format_clip_table(report.clip_table))
    print(f"wrote {report.out}: {report.frames_written} of {report.frames_read} frames in "
          f"{len(report.clips)} clip(s), {report.seconds:.1f}s")
    if report.missing:
        print(f"the {'person' if args.kind == 'dance' else 'face'} is missing from {len(report.missing)} frame(s):")
        for why in sorted(set(report.missing_why.values())):
            frames = sorted(i for i, w in report.missing_why.items() if w == why)
            print(f"  {why}: {len(frames)} ({_ranges(frames)})")
    return 0


def _ranges(frames: list[int], most: int = 8) -> str:
    """Sorted frame numbers as runs: ``2-4, 6, 9-14`` (the first ``most`` runs, then ``...``)."""
    runs: list[list[int]] = []
    for f in frames:
        if runs and f == runs[-1][1] + 1:
            runs[-1][1] = f
        else:
            runs.append([f, f])
    text = [f"{a}-{b}" if b > a else str(a) for a, b in runs[:most]]
    return ", ".join(text) + (", ..." if len(runs) > most else "")


def _without_option(argv: list[str], flag: str) -> list[str]:
    """``argv`` less ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def _torchrun(nproc: int, argv: list[str]) -> int:
    """``torchrun --standalone --nproc_per_node N -m posecast ARGV`` (``posecast train --nproc N``); a failed
    rank ends the run with a message naming it."""
    import re
    import subprocess
    import tempfile

    # (torchrun's own per-attempt folders go to a temporary folder removed after the run, not left in /tmp)
    with tempfile.TemporaryDirectory(prefix="posecast-torchrun-") as logs:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
               f"--log-dir={logs}", "-m", "posecast", *argv]
        proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if not proc.returncode:
        sys.stderr.write(proc.stderr)
        return 0
    # The ranks' own one-line errors (and tracebacks' last lines), not torchrun's traceback around them.
    lines = [re.sub(r"^\[rank\d+\]:", "", ln) for ln in proc.stderr.splitlines()]   # the ranks' own lines
    errors = [ln for ln in lines if "error:" in ln or (ln and not ln.startswith((" ", "Traceback", "=")) and
                                                         "Error" in ln.split(":")[0])]
    sys.stderr.write("\n".join(dict.fromkeys(errors or lines[-20:])) + "\n")
    who, killed = _who_failed(proc.stderr)
    why = (f", killed by {killed} (torchrun exit {proc.returncode}; any other rank's error above follows from its "
           f"loss)") if killed else f" (torchrun exit {proc.returncode}; the failing rank's error is above)"
    raise RuntimeError(f"distributed training failed: {who} of {nproc} ended the run{why}")


def _who_failed(stderr: str) -> tuple[str, str]:
    """(who, signal): the rank(s) that ended a torchrun run, from its failure summary (``rank : R ... exitcode : C``
    blocks, the first observed under "Root Cause"). A rank killed by a signal (out of memory, a lost node) is named
    alone, with the signal's name: the others then fail only because their peer is gone (gloo's "Connection reset
    by peer", torchrun's SIGTERM). Otherwise every rank that failed with an error of its own, and no signal."""
    import re
    import signal

    blocks = re.findall(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", stderr, re.S)
    root = re.search(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", stderr, re.S)
    if root and int(root[2]) < 0:
        try:
            return f"rank {root[1]}", signal.Signals(-int(root[2])).name
        except ValueError:
            return f"rank {root[1]}", f"signal {-int(root[2])}"
    failed = sorted({r for r, c in blocks if int(c) >= 0} or {r for r, _ in blocks}, key=int)
    return (f"rank {', '.join(failed)}" if failed else "a process"), ""


def _selection_options(s, verb: str) -> None:
    """--clips / --identity / --frames: which of a dataset's frames a command uses (``Dataset.select``)."""
    s.add_argument("--clips", default=None, metavar="N,N", help=f"{verb} these clips only (the numbers of the clip "
                   "table posecast prepare printed, e.g. 0,2)")
    s.add_argument("--identity", default=None, metavar="ID", help=f"{verb} the clips of this identity only (the "
                   "clip table's letter, e.g. A)")
    s.add_argument("--frames", default=None, metavar="START:STOP[,START:STOP]",
                   help=f"{verb} these dataset frame ranges only (within the clips chosen)")


def _cmd_train(args) -> int:
    from trainer.distributed import init_from_env, shutdown
    from trainer.train import Trainer

    if args.nproc > 1:   # torchrun this very command on N processes (a resumed run's batch is checked by its ranks)
        batch = args.batch_size or 1
        if not args.resume and batch % args.nproc:
            raise ValueError(f"--batch-size {batch} must divide among the {args.nproc} processes (each "
                             f"trains on batch_size / {args.nproc} clips an iteration)")
        return _torchrun(args.nproc, _without_option(args.argv, "--nproc"))
    cfg, tc = _train_configs(args)
    dist = init_from_env(tc.device)
    try:
        with _plain_warnings():
            trainer = Trainer(cfg, tc, args.data, args.out, resume=args.resume, progress=not args.quiet, dist=dist)
        result = trainer.run()
    finally:
        shutdown()
    if dist.main:
        session = len(result["history"])
        done = (f"to iteration {result['iterations']} ({session} in this session, " if session != result["iterations"]
                else f"for {result['iterations']} iterations (")
        print(f"trained {cfg.name} {cfg.size}px {done}{result['it_per_s']:.2f} it/s on {trainer.device}"
              f"{f' x {dist.world} process' + 'es' * (dist.world > 1) if dist.on else ''}); checkpoint {result['checkpoint']}")
    return 0


def _train_configs(args):
    """The model config and the TrainConfig that ``posecast train`` ARGS ask for: the preset's recipe under the
    options given; with ``--resume``, the run's own (its checkpoint's) under the options given."""
    from models.presets import get_preset, parse_overrides
    from trainer.train import train_config_for

    if args.resume:
        return _resume_configs(args)
    if args.data is None:
        raise ValueError("--data is required: the dataset folder to train on (from posecast synth or prepare)")
    overrides = parse_overrides(args.set or [])
    if args.grow_from:   # vid2vid's coarse-to-fine: that run's model, twice the resolution, one more local level
        from models.checkpoint import read_checkpoint
        from models.generator import grown_config

        cfg = grown_config(read_checkpoint(args.grow_from)[0])
        if args.size and args.size != cfg.size:
            raise ValueError(f"--grow-from {args.grow_from}: that run is {cfg.size // 2}px, so this one is "
                             f"{cfg.size}px, not --size {args.size}")
        cfg = cfg.replace(**overrides) if overrides else cfg
    else:
        if args.size:
            overrides["size"] = args.size
        cfg = get_preset(args.preset or "dance", **overrides)
    return cfg, train_config_for(cfg, **_given_train_fields(args))


# `posecast train` options -> the TrainConfig fields they set. Every one defaults to None on the command line, so
# that what was given is known: a fresh run takes the recipe (trainer/train.py) for the rest, a resumed one its own.
_TRAIN_OPTIONS = {"iterations": "iterations", "batch_size": "batch_size", "lr": "lr",
                  "max_clip_frames": "clip_frames_max", "gan_mode": "gan_mode", "time_limit": "time_limit_s",
                  "threads": "threads", "checkpoint_every": "checkpoint_every", "sample_every": "sample_every",
                  "device": "device", "precision": "precision", "seed": "seed", "identity": "identity",
                  "teacher": "teacher", "init": "init", "grow_from": "grow_from"}


def _given_train_fields(args) -> dict:
    """The TrainConfig fields the command line sets: its options given, then ``--train-set``."""
    from models.presets import parse_overrides
    from trainer.clips import parse_clip_numbers, parse_frame_ranges
    from trainer.train import TrainConfig

    fields = {name: getattr(args, opt) for opt, name in _TRAIN_OPTIONS.items() if getattr(args, opt) is not None}
    if args.frames is not None:
        fields["frame_ranges"] = parse_frame_ranges(args.frames)
    if args.clips is not None:   # ("" = every clip: how a resumed run drops its saved list)
        clips = parse_clip_numbers(args.clips)
        fields["clips"] = None if clips is None else tuple(clips)
    for name in ("teacher", "init", "grow_from"):   # (saved absolute, so that --resume finds them from anywhere)
        if fields.get(name):
            fields[name] = str(Path(fields[name]).resolve())
    fields.update(parse_overrides(args.train_set or [], TrainConfig, exclude=("frame_ranges", "clips", "identity")))
    return fields


def _resume_configs(args):
    """``--resume``: the run's model config and TrainConfig from its checkpoint (RUN/latest.json), with only the
    training options given on this command line changed (each change said on stderr). The model cannot change
    under its weights: --preset, --size and --set must agree with the run's, or be left out."""
    import dataclasses

    from models.checkpoint import CheckpointError, read_config
    from models.presets import parse_overrides
    from trainer.train import TrainConfig

    latest = Path(args.out) / "latest.json"
    if not latest.is_file():
        raise CheckpointError(f"--resume: {latest} not found: {args.out} holds no run to continue (leave out "
                              f"--resume to start one there)")
    cfg, meta, _ = read_config(latest)
    asked = {"preset": (args.preset, cfg.name), "size": (args.size, cfg.size)}
    asked.update({f"--set {k}": (v, getattr(cfg, k)) for k, v in parse_overrides(args.set or []).items()})
    differ = [f"--{k} {a} (the run's: {r})" if not k.startswith("--") else f"{k}={a} (the run's: {r})"
              for k, (a, r) in asked.items() if a is not None and a != r]
    fresh = [f"--{o.replace('_', '-')}" for o in ("init", "grow_from") if getattr(args, o)]
    if fresh:
        raise ValueError(f"--resume continues {args.out} from its own weights; {' and '.join(fresh)} start a new "
                         f"schedule from another run's: give one or the other")
    if differ:
        raise ValueError(f"--resume: {args.out} is a {cfg.name} {cfg.size}px model; its model cannot change under "
                         f"its weights: {', '.join(differ)}. Leave those out to continue it, or start a new run "
                         f"from its weights with --init {args.out}")
    if not isinstance(meta.get("train"), dict):
        raise CheckpointError(f"--resume: {latest} holds no training settings (its meta has no 'train'): not a "
                              f"checkpoint posecast train wrote")
    saved, dropped = TrainConfig.from_dict(meta["train"])
    # Where it runs is this machine's business, not the run's: the device and threads are this command's.
    saved = dataclasses.replace(saved, device=TrainConfig.device, threads=TrainConfig.threads)
    main = os.environ.get("RANK", "0") == "0"   # (torchrun's ranks each resolve this; rank 0 speaks)
    if dropped and main:
        print(f"posecast train: note: {latest} has training settings this version no longer knows, left out: "
              f"{', '.join(dropped)}", file=sys.stderr)
    given = _given_train_fields(args)
    changed = {k: v for k, v in given.items() if getattr(saved, k) != v}
    tc = dataclasses.replace(saved, **changed)
    if changed and main:
        print(f"posecast train: resuming {args.out} at iteration {meta['iteration']} with its own settings, but "
              + ", ".join(f"{k} {getattr(saved, k)!r} -> {v!r}" for k, v in changed.items())
              + " (from this command line)", file=sys.stderr)
    if args.data is None:
        args.data = meta["dataset"]
    return cfg, tc


def _cmd_eval(args) -> int:
    from trainer.clips import parse_clip_numbers, parse_frame_ranges
    from trainer.evaluate import evaluate, format_report

    video = None if args.no_video else (args.video or str(Path(args.run) / "eval.mp4"))
    with _plain_warnings():
        res = evaluate(args.run, args.data, clips=parse_clip_numbers(args.clips), identity=args.identity,
                       frame_ranges=parse_frame_ranges(args.frames), video=video,
                       max_frames=args.max_frames, device=args.device, pose=not args.no_pose,
                       progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps(res))
    else:
        print(format_report(res))
        if video:
            print(f"side-by-side video (label | generated | real): {video}")
    return 0


def _cmd_export(args) -> int:
    from realtime.export import export

    res = export(args.run, args.backend, fp16=args.fp16, out=args.out)
    for k, v in res.items():
        print(f"{k}: {v}")
    return 0


def _cmd_keys(args) -> int:
    from realtime.security import new_keypair

    public, secret = new_keypair(args.name, args.dir)
    print(f"wrote {public} (public: copy it to the other side) and {secret} (secret: keep it here)")
    if args.name == "server":
        print(f"serve with: posecast serve RUN --keys {secret} --allow DIR_OF_CLIENT_KEYS")
    else:
        print(f"allow it with: cp {public} SERVER_ALLOW_DIR/; capture with: --key {secret} --server-key server.key")
    return 0


def _cmd_serve(args) -> int:
    from realtime.security import CurveConfig
    from realtime.server import serve

    engine_kwargs = {"threads": args.threads} if args.threads else {}
    if args.device != "cpu":
        engine_kwargs["device"] = args.device
    if args.onnx_cache:
        Path(args.onnx_cache).mkdir(parents=True, exist_ok=True)
        engine_kwargs["onnx_path"] = Path(args.onnx_cache) / f"{Path(args.model).resolve().name}.onnx"
    if bool(args.keys) != bool(args.allow):
        raise ValueError("--keys and --allow go together: the server's key pair and the folder of client keys")
    curve = CurveConfig(Path(args.keys), Path(args.allow)) if args.keys else None
    serve(args.model, args.bind, args.backend, engine_kwargs=engine_kwargs, curve=curve, insecure=args.insecure,
          max_clients=args.max_clients, sessions_per_key=args.sessions_per_key, rate_hz=args.rate,
          rate_burst=args.burst, max_connections=args.max_connections,
          max_connections_per_address=args.max_connections_per_address,
          idle_timeout_s=args.idle_timeout or args.heartbeat + 1.0, heartbeat_s=args.heartbeat,
          max_batch=args.max_batch, history=args.history, jpeg_quality=args.jpeg_quality,
          stats_interval_s=args.stats_interval, recalibrate=args.recalibrate)
    return 0


def _cmd_capture(args) -> int:
    from clients.capture import capture

    stats = capture(args.server, args.source, record=args.record, headless=args.headless,
                    save_landmarks=args.save_landmarks, normalize="off" if args.no_normalize else args.normalize,
                    max_frames=args.max_frames, timeout_s=args.timeout, retries=args.retries, realtime=not args.fast,
                    loop=args.loop, server_key=args.server_key, key=args.key, forecast=args.forecast,
                    forecaster_model=args.forecaster_model, lead_ms=args.lead,
                    emulate_latency_ms=args.emulate_latency, one_euro=_one_euro(args.one_euro),
                    virtual_cam=({"device": args.virtual_cam_device} if args.virtual_cam_device else True)
                    if args.virtual_cam or args.virtual_cam_device else False, web_port=args.web)
    print(stats.summary())
    return 0


def _cmd_web(args) -> int:
    from clients.web.bridge import BridgeConfig, serve_web

    cfg = BridgeConfig(server=args.server, server_key=args.server_key, key=args.key,
                       normalize="off" if args.no_normalize else args.normalize, max_pages=args.max_pages,
                       rate_hz=args.rate, rate_burst=args.burst, complexity=args.complexity, delegate=args.delegate,
                       timeout_s=args.timeout, forecast=args.forecast)
    serve_web(cfg, host=args.host, port=args.port, cert=args.cert, key_file=args.tls_key,
              assets_root=Path(args.assets) if args.assets else None)
    return 0


def _cmd_web_assets(args) -> int:
    from clients.web.assets import fetch

    fetch(Path(args.dir) if args.dir else None)
    return 0


def _one_euro(text: str) -> dict | str | None:
    """``--one-euro``: auto, none, or MIN_CUTOFF,BETA."""
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        cutoff, beta = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--one-euro: expected auto, none or MIN_CUTOFF,BETA (e.g. 1.5,2), got {text!r}") from None
    return {"min_cutoff": cutoff, "beta": beta}


def _cmd_demo(args) -> int:
    from posecast.demo import demo

    res = demo(args.model, source=args.source, frames=args.frames, out=args.out, backend=args.backend,
               headless=args.headless or args.json)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"demo: {res['frames_received']} of {res['frames_sent']} frames back ({res['dropped']} dropped by "
              f"latest-wins) at {res['fps']:.1f} fps; glass-to-glass latency p50 {res['latency_p50_ms']} ms, "
              f"p99 {res['latency_p99_ms']} ms ({res['backend']})")
        print(f"input | output video: {res['output']}")
    return 0


def _seed_list(text: str) -> tuple[int, ...]:
    """``0-5,10,12-13`` -> (0, 1, 2, 3, 4, 5, 10, 12, 13)."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        a, _, b = part.partition("-")
        try:
            lo, hi = int(a), int(b) if b else int(a)
        except ValueError:
            raise ValueError(f"--seeds: {part!r} is not a seed or a range a-b") from None
        if hi < lo:
            raise ValueError(f"--seeds: the range {part!r} runs backwards")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise ValueError("--seeds: no seed given")
    return tuple(seeds)


def _cmd_forecast_video(args) -> int:
    from posecast.forecasting import forecast_video

    res = forecast_video(args.out, model=args.model, latency_ms=args.latency, seed=args.seed, seconds=args.seconds,
                         noise=args.noise, forecaster=args.forecaster_model, backend=args.backend,
                         progress=not args.quiet)
    print(f"wrote {res['output']} ({res['frames']} frames, motion seed {res['seed']}, {res['latency_ms']:g} ms of "
          f"latency): display-time pose error {res['error_none']:.4f} of the frame side without a forecast, "
          f"{res['error_forecast']:.4f} with it ({res['error_forecast'] / res['error_none']:.2f}x)")
    return 0


def _cmd_train_forecaster(args) -> int:
    from trainer.forecast import train_forecaster

    seeds = _seed_list(args.seeds)
    recorded = []
    for path in args.recording or []:
        from clients.sources import load_recording
        from posecast.forecasting import stream_shots

        rec = load_recording(path)
        if rec["kind"] != "dance":
            raise ValueError(f"{path} is a {rec['kind']} recording: the forecaster learns poses (record with a "
                             f"dance model: posecast capture --save-landmarks)")
        for times, lms, *_ in stream_shots(path, "dance", progress=False):
            square = lms.copy()
            square[:, :, 0] *= rec["aspect"]            # the forecaster runs in square units (models/forecast.py)
            recorded.append((times, square))
    observed = []
    if args.redetect:
        from trainer.forecast import redetected

        observed = [redetected(s, args.seconds, progress=not args.quiet) for s in _seed_list(args.redetect)]
    out = train_forecaster(args.out, seeds=seeds, seconds=args.seconds, history=args.history, steps=args.steps,
                           arch=args.arch, recorded=recorded, observed=observed, real_share=args.real_share,
                           progress=not args.quiet)
    used = json.loads((out / "forecaster.json").read_text())["trained_on"]["recorded_shots"]
    extra = (f", {used} of {len(recorded)} recorded shots" if recorded else "") + \
        (f", motion {args.redetect} re-detected by MediaPipe" if observed else "")
    print(f"wrote {out}/forecaster.{{json,safetensors,onnx}} (motion seeds {', '.join(map(str, seeds))}{extra}; "
          f"report on others: posecast bench --forecast --forecaster-model {out} --seed N)")
    return 0


def _cmd_bench(args) -> int:
    from posecast.bench import BenchPlan, run_bench

    plan = BenchPlan(presets=tuple(p for p in args.presets.split(",") if p), backends=tuple(args.backends.split(",")),
                     sizes=tuple(int(s) for s in args.sizes.split(",")), runs=args.runs,
                     stream_preset=args.stream_preset, stream_size=args.stream_size, stream_frames=args.stream_frames,
                     stream_clients=tuple(int(c) for c in args.stream_clients.split(",") if c),
                     stream_model=args.stream_model, stream_threads=args.stream_threads,
                     batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",") if b), device=args.device)

    def emit(row):
        if args.json:
            print(json.dumps(row), flush=True)
        elif row["what"] == "machine":
            print(f"machine: {row['cpu_count']} CPUs, conv throughput {row['conv_gmac_per_s']} GMAC/s", flush=True)
        elif row["what"] == "generator":
            print(f"generator {row['preset']:>14} {row['backend']:>12} {row['size']:>4}px: p50 {row['p50_ms']:7.2f} ms "
                  f"p99 {row['p99_ms']:7.2f} ms  {row['gmac']:.3f} GMAC  floor {row.get('floor_ms', '-')} ms", flush=True)
        elif row["what"] == "batch":
            print(f"batch {row['preset']:>14} {row['backend']:>12} {row['size']:>4}px on {row['device']} x{row['batch']:<3}: "
                  f"{row['frames_per_s']:8.1f} frames/s ({row['streams_at_30fps']} streams at 30 fps), "
                  f"p50 {row['p50_ms']:.2f} ms per call", flush=True)
        elif row["what"] == "forecast":
            where = f"seed {row['seed']}" if "seed" in row else f"{row['frames']} frames, {row['drive']}"
            print(f"forecast {row['forecaster']:>17} smoothing {row['smoothing']:>8} {row['horizon_ms']:>4} ms ahead "
                  f"({where}): display-time error {row['error']:.4f} of the frame side, jitter "
                  f"{row['jitter']:.4f} (raw stream {row['jitter_raw']:.4f}), {row['cost_ms']:.3f} ms a frame",
                  flush=True)
        elif row["what"] == "train":
            stages = ", ".join(f"{k[:-3]} {row[k]:.0f}" for k in row if k.endswith("_ms"))
            print(f"train {row['preset']:>8} {row['size']:>4}px {row['phase']:>11} {row['precision_used']:>4} "
                  f"T={row['clip_frames']}: {row['it_per_s']:6.3f} it/s on {row['device']} (ms/it: {stages})",
                  flush=True)
        else:
            print(f"stream {row['preset']} {row['backend']} {row['size']}px x{row['clients']}: {row['fps']} fps, "
                  f"latency p50 {row['latency_p50_ms']} ms p99 {row['latency_p99_ms']} ms, server overhead "
                  f"{row['server_overhead_ms']} ms/frame (engine {row['engine_ms']} ms)", flush=True)

    if args.forecast:   # the forecasters' figures only (models/forecast.py)
        from models.forecast import bench_forecast, bench_forecast_stream

        if args.stream:     # a recorded stream (a video through MediaPipe, or a landmark recording)
            from posecast.forecasting import stream_shots

            shots = stream_shots(args.stream, args.stream_kind, progress=not args.json)
            picked = _seed_list(args.shots) if args.shots else range(len(shots))
            if any(not 0 <= i < len(shots) for i in picked):
                raise ValueError(f"--shots: {args.stream} has shots 0-{len(shots) - 1}")
            for row in bench_forecast_stream([shots[i] for i in picked], args.stream_kind,
                                             learned=args.forecaster_model):
                emit(dict(row, source=str(args.stream), shot_ids=list(picked)))
            return 0
        for row in bench_forecast(args.seed, learned=args.forecaster_model):
            emit(row)
        return 0
    if not args.only_train:
        run_bench(plan, emit)
    if args.train or args.only_train:
        import tempfile

        from models.presets import get_preset
        from trainer.bench import PHASES, bench_data, bench_train

        # Timed on the synthetic dancer, or the synthetic talking face for face presets.
        with tempfile.TemporaryDirectory() as tmp:
            for size in plan.sizes:
                datasets: dict[str, object] = {}             # one dataset a kind, made when first needed
                for preset in plan.presets:
                    kind = get_preset(preset).kind
                    if kind not in datasets:
                        datasets[kind] = bench_data(size, tmp, kind=kind)
                    data = datasets[kind]
                    for phase in PHASES:
                        for precision in args.precisions.split(","):
                            emit(bench_train(preset, size, phase=phase, precision=precision, data=data,
                                             iterations=args.train_iterations, device=args.train_device))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posecast", description="Streaming real-time pose-to-video (vid2vid).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="write the built-in synthetic dancer (or talking face) dataset")
    s.add_argument("--out", required=True, help="dataset folder to write")
    s.add_argument("--kind", choices=["dance", "face"], default="dance",
                   help="dance: the synthetic dancer (pose landmarks); face: the synthetic talking face (face-mesh "
                        "landmarks, for face models) (default dance)")
    s.add_argument("--seed", type=int, default=0, help="motion seed (default 0)")
    s.add_argument("--appearance-seed", type=int, default=0,
                   help="the person's looks and the room (default 0); keep it fixed for held-out data")
    s.add_argument("--frames", type=int, default=300, help="number of frames (default 300)")
    s.add_argument("--size", type=int, default=256, help="frame side in pixels (default 256)")
    s.add_argument("--fps", type=float, default=30.0, help="frame rate (default 30)")
    s.add_argument("--clip-frames", type=int, default=None, help="split into clips of this many frames")
    s.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_synth)

    s = sub.add_parser("prepare", help="turn a video into a training dataset (MediaPipe landmarks + optical flow)")
    s.add_argument("video", help="input video file")
    s.add_argument("--kind", required=True, choices=["dance", "face"], help="pose (dance) or face-mesh (face)")
    s.add_argument("--out", required=True, help="dataset folder to write")
    s.add_argument("--size", type=int, default=256, help="output frame side in pixels (default 256)")
    s.add_argument("--start", type=int, default=0, help="first source frame to use (default 0)")
    s.add_argument("--max-frames", type=int, default=None, help="use at most this many source frames")
    s.add_argument("--person", type=int, default=None,
                   help="dance: the id of the person to track, from the printed list of people "
                        "(default: the largest, most central, most often seen)")
    s.add_argument("--max-people", type=int, default=4, help="dance: people looked for per frame (default 4)")
    s.add_argument("--min-clip-frames", type=int, default=8, help="drop clips shorter than this (default 8)")
    s.add_argument("--min-subject", type=float, default=0.2,
                   help="dance: refuse when the person is shorter than this fraction of the crop (default 0.2; "
                        "a warning below 0.4; 0 accepts any size)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_prepare)

    s = sub.add_parser("train", help="train a vid2vid model on a dataset")
    s.add_argument("--data", default=None, help="dataset folder (from synth or prepare; with --resume, default: the "
                                                "run's own)")
    s.add_argument("--preset", default=None, help="model preset (dance, dance-perframe, face, ...; default dance)")
    s.add_argument("--out", required=True, help="run folder (checkpoints, config, TensorBoard logs)")
    s.add_argument("--size", type=int, default=None, help="override the preset's frame side in pixels")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a model config field (repeatable)")
    s.add_argument("--train-set", action="append", metavar="KEY=VALUE",
                   help="override a training config field, e.g. w_gan=0.1 (repeatable; see trainer/train.py)")
    s.add_argument("--teacher", default=None, metavar="RUN",
                   help="distil from this trained run's generator (same kind and size), e.g. a dance run for lite")
    s.add_argument("--init", default=None, metavar="RUN",
                   help="start from this trained run's generator weights (same preset and size; a fresh schedule, "
                        "unlike --resume), e.g. fine-tune models/default")
    s.add_argument("--grow-from", default=None, metavar="RUN",
                   help="vid2vid's coarse-to-fine: train a dance/face model at twice RUN's resolution with RUN's "
                        "generator as its coarse stages and one new local enhancer (the preset and size follow RUN)")
    s.add_argument("--iterations", type=int, default=None, help="generator updates (default 2000)")
    s.add_argument("--batch-size", type=int, default=None, help="clips per iteration (default 1)")
    s.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default: the preset's recipe: 1e-3 for face-lite, else vid2vid's 2e-4)")
    s.add_argument("--max-clip-frames", type=int, default=None, help="clip length T grows up to this (default 8)")
    s.add_argument("--gan-mode", choices=["lsgan", "hinge"], default=None, help="GAN loss (default lsgan)")
    _selection_options(s, "train on")
    s.add_argument("--time-limit", type=float, default=None,
                   help="stop after this many seconds of training, counted over every --resume (default: none); lr "
                        "decay, clip growth and the GAN phase then follow the time used, so the whole schedule fits "
                        "in the time given")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    s.add_argument("--checkpoint-every", type=int, default=None, help="iterations between checkpoints (default 500)")
    s.add_argument("--sample-every", type=int, default=None, help="iterations between TensorBoard sample grids (default 200)")
    s.add_argument("--device", default=None, help="auto (CUDA when present; the default), cpu, cuda, cuda:N")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="the networks' forward passes: auto (default): bf16 where the CPU (AVX512-BF16/AMX) or GPU "
                        "does it natively, fp16 on older GPUs, else fp32; losses, optimiser and EMA stay fp32")
    s.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    s.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint, with its own settings (model, recipe, "
                        "data, time limit); options given change those (e.g. a larger --time-limit or --iterations)")
    s.add_argument("--nproc", type=int, default=1,
                   help="processes (one per GPU; gloo on a CPU): N > 1 runs torchrun --nproc_per_node N on this command; "
                        "--batch-size is the total, split among them")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_train)

    s = sub.add_parser("train-forecaster", help="train the learned pose forecaster (models/forecast.py) on the "
                                                "synthetic dancer's motion")
    s.add_argument("--out", required=True, help="folder to write forecaster.{json,safetensors,onnx} to")
    s.add_argument("--seeds", default="0-5,10-39,100-135",
                   help="motion seeds to train on, ranges allowed (default 0-5,10-39,100-135; report on 6-9, 40-99)")
    s.add_argument("--seconds", type=float, default=60.0, help="seconds of motion per seed (default 60)")
    s.add_argument("--history", type=int, default=20, help="past frames (30 fps) the model sees (default 20)")
    s.add_argument("--redetect", default=None, metavar="SEEDS",
                   help="also train on these motion seeds rendered and re-detected by MediaPipe (its own jitter, the "
                        "exact motion as the truth), ranges allowed, e.g. 10-21 (keep them out of the reports)")
    s.add_argument("--real-share", type=float, default=None, metavar="F",
                   help="fraction of steps drawn from recordings and re-detected motion (default: each as likely "
                        "as a motion seed)")
    s.add_argument("--recording", action="append", metavar="REC.npz",
                   help="a pose recording (capture --save-landmarks) to train on beside the synthetic motion: real "
                        "tracker jitter, the recording itself as the truth (repeat for more)")
    s.add_argument("--steps", type=int, default=None, help="optimiser steps (default 20000)")
    s.add_argument("--arch", default="body", choices=["body", "landmark"],
                   help="body (default): one network over the whole 33-joint pose; landmark: one small network "
                        "shared by every landmark (any layout: poses, a face mesh's centroid)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(fn=_cmd_train_forecaster)

    s = sub.add_parser("forecast-video", help="a side-by-side video: the pose now | the output without forecast | "
                                              "with the pose forecast one latency ahead (synthetic dancer)")
    s.add_argument("--out", default="demo/forecast.mp4", help="the mp4 to write (default demo/forecast.mp4)")
    s.add_argument("--model", default=None, help="a dance model (default: the bundled one)")
    s.add_argument("--latency", type=float, default=100.0, metavar="MS", help="glass-to-glass latency (default 100)")
    s.add_argument("--seed", type=int, default=8, help="motion seed (default 8; the forecaster never saw 6-9, 40-99)")
    s.add_argument("--seconds", type=float, default=10.0, help="length (default 10 s at 30 fps)")
    s.add_argument("--noise", type=float, default=0.002, help="landmark noise, frame fractions (default 0.002)")
    s.add_argument("--forecaster-model", default=None, metavar="DIR", help="a learned forecaster (default: bundled)")
    s.add_argument("--backend", default=None, help="engine backend (default onnxruntime when installed)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_forecast_video)

    s = sub.add_parser("eval", help="evaluate a trained model on held-out clips: PSNR/SSIM in the person's region "
                                    "and the full frame, pose re-detected on the output, flicker, baselines")
    s.add_argument("run", help="run folder or checkpoint .json")
    s.add_argument("--data", required=True, help="dataset folder with held-out clips")
    _selection_options(s, "evaluate on")
    s.add_argument("--max-frames", type=int, default=None, help="evaluate at most this many frames")
    s.add_argument("--video", default=None, help="side-by-side mp4 path (default RUN/eval.mp4)")
    s.add_argument("--no-video", action="store_true", help="do not write the side-by-side video")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    s.add_argument("--no-pose", action="store_true", help="skip re-detecting the pose on the output (MediaPipe)")
    s.add_argument("--json", action="store_true",
                   help="print one JSON object (psnr, psnr_person, pose_error, ...: see trainer/evaluate.py)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_eval)

    s = sub.add_parser("export", help="compile the generator (ONNX, checked against PyTorch; TensorRT engines)")
    s.add_argument("run", help="run folder or checkpoint .json")
    s.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt", "torch-tensorrt"],
                   help="target backend (default onnxruntime)")
    s.add_argument("--fp16", action="store_true", help="half precision (TensorRT backends)")
    s.add_argument("--out", default=None, help="ONNX output path (default RUN/generator.onnx)")
    s.set_defaults(fn=_cmd_export)

    s = sub.add_parser("keys", help="CURVE key pairs for serve and capture")
    ks = s.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = ks.add_parser("new", help="write NAME.key (public) and NAME.key_secret (secret)")
    k.add_argument("name", help="key name: 'server' for the server, anything else for a client")
    k.add_argument("--dir", default="keys", help="folder to write the pair into (default ./keys)")
    k.set_defaults(fn=_cmd_keys)

    s = sub.add_parser("serve", help="serve a model to capture clients over ZeroMQ")
    s.add_argument("model", help="run folder or checkpoint .json")
    s.add_argument("--bind", default="tcp://127.0.0.1:5555",
                   help="ZeroMQ address (default tcp://127.0.0.1:5555); anything but loopback needs --keys/--allow "
                        "(or --insecure)")
    s.add_argument("--keys", default=None, metavar="FILE|DIR",
                   help="the server's secret key (server.key_secret, or a folder holding it): CURVE encryption")
    s.add_argument("--allow", default=None, metavar="DIR", help="folder of allowed client public keys (*.key)")
    s.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --bind without keys (no authentication, no encryption)")
    s.add_argument("--backend", default=None, help="onnxruntime (default), torch, tensorrt, torch-tensorrt")
    s.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N] for the torch and onnxruntime backends")
    s.add_argument("--threads", type=int, default=None,
                   help="onnxruntime intra-op threads (default: all cores; 1 leaves a core for a local client)")
    s.add_argument("--onnx-cache", default=None, metavar="DIR",
                   help="keep the exported ONNX here instead of next to the model (for read-only model folders)")
    s.add_argument("--max-clients", type=int, default=16, help="concurrent sessions (default 16)")
    s.add_argument("--sessions-per-key", type=int, default=4,
                   help="concurrent sessions per client key (default 4); a new one takes over the oldest")
    s.add_argument("--rate", type=float, default=120.0,
                   help="messages per second per connection (default 120); a faster client is read slower")
    s.add_argument("--burst", type=int, default=32, help="messages a client may send at once (default 32)")
    s.add_argument("--max-connections", type=int, default=1024,
                   help="open connections (default 1024); a newcomer beyond it closes the oldest one without a session")
    s.add_argument("--max-connections-per-address", type=int, default=128,
                   help="open connections from one address (default 128), the same rule")
    s.add_argument("--heartbeat", type=float, default=1.0,
                   help="clients send something at least every S seconds (default 1)")
    s.add_argument("--idle-timeout", type=float, default=None,
                   help="free a silent client's session after S seconds (default: heartbeat + 1)")
    s.add_argument("--max-batch", type=int, default=0,
                   help="sessions per batched engine call (default 0: the fastest size up to 16, measured at the "
                        "first start and kept per model, engine and machine in ~/.cache/posecast; 1: one call per "
                        "session)")
    s.add_argument("--recalibrate", action="store_true",
                   help="measure the fastest batch size again instead of using the one measured before")
    s.add_argument("--history", choices=["auto", "device", "host"], default="auto",
                   help="where each client's history frames live (default auto: on the GPU when the engine runs on "
                        "CUDA, so only the label map goes in and the uint8 frame comes out per step; else host memory)")
    s.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the frames sent (default 90)")
    s.add_argument("--stats-interval", type=float, default=10.0, help="seconds between stats log lines")
    s.set_defaults(fn=_cmd_serve)

    s = sub.add_parser("capture", help="stream landmarks from a webcam/video/recording to a server, show the result")
    s.add_argument("--server", default="tcp://127.0.0.1:5555", help="server address (default tcp://127.0.0.1:5555)")
    s.add_argument("--server-key", default=None, metavar="FILE", help="the server's public key (server.key): CURVE")
    s.add_argument("--key", default=None, metavar="FILE", help="this client's secret key (NAME.key_secret)")
    s.add_argument("--source", default="0",
                   help="camera index, video file, landmark recording (.npz) or synthetic[:SEED] (the synthetic "
                        "dancer, or the talking face for a face model) (default 0)")
    s.add_argument("--record", default=None, metavar="OUT.mp4", help="record input | output to an mp4")
    s.add_argument("--headless", action="store_true", help="no window (recording still works)")
    s.add_argument("--save-landmarks", default=None, metavar="REC.npz",
                   help="save the raw landmarks of every frame, as detected, before any forecast or normalisation "
                   "(a replayable recording)")
    s.add_argument("--normalize", default="retarget", choices=["retarget", "same-camera", "off"],
                   help="retarget (default): map your body size / face proportions onto the training subject's; "
                        "same-camera: this is the training camera, apply only the training crop; off: no person "
                        "mapping (the crop a crop-trained model needs is still applied)")
    s.add_argument("--no-normalize", action="store_true", help="the same as --normalize off")
    s.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    s.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server (default 5)")
    s.add_argument("--retries", type=int, default=3, help="connection attempts (default 3)")
    s.add_argument("--fast", action="store_true", help="read files as fast as the server renders, not at their fps")
    s.add_argument("--loop", action="store_true", help="loop a video or recording")
    s.add_argument("--forecast", default="auto", choices=["auto", "none", "constant_velocity", "learned"],
                   help="send the pose forecast one glass-to-glass latency ahead, so the frame shown matches the "
                        "body now (default auto: the bundled learned forecaster for dance, constant velocity of "
                        "the mesh's centroid for faces, stepping as the image shows the head move; none: the pose "
                        "as captured)")
    s.add_argument("--forecaster-model", default=None, metavar="DIR",
                   help="a learned forecaster of your own (posecast train-forecaster --out DIR)")
    s.add_argument("--lead", type=float, default=None, metavar="MS",
                   help="forecast this far ahead (default: the measured glass-to-glass latency, at most 300 ms)")
    s.add_argument("--one-euro", default="auto", metavar="auto|none|MIN_CUTOFF,BETA",
                   help="the One Euro filter in front of the forecaster (default auto: 1.5 Hz, beta 2 for constant "
                        "velocity on poses, none for the learned forecaster and faces)")
    s.add_argument("--emulate-latency", type=float, default=0.0, metavar="MS",
                   help="hold every reply MS before handling it, as a slow network would (demos, measurements)")
    s.add_argument("--virtual-cam", action="store_true",
                   help="send the output to a virtual camera (OBS, video calls): v4l2loopback on Linux, OBS Virtual "
                        "Camera on Windows/macOS; needs pip install 'posecast[virtualcam]'")
    s.add_argument("--virtual-cam-device", default=None, metavar="DEV",
                   help="which virtual camera (e.g. /dev/video10; implies --virtual-cam)")
    s.add_argument("--web", type=int, default=None, metavar="PORT",
                   help="show the live view (input | output + figures) on http://127.0.0.1:PORT/ as MJPEG "
                        "(headless servers, screen sharing)")
    s.set_defaults(fn=_cmd_capture)

    s = sub.add_parser("web", help="a page for the browser: MediaPipe in the page, landmarks to a server through "
                                   "this bridge, the frames back (docs/web.md)")
    s.add_argument("--server", default="tcp://127.0.0.1:5555", help="server address (default tcp://127.0.0.1:5555)")
    s.add_argument("--server-key", default=None, metavar="FILE", help="the server's public key (server.key): CURVE")
    s.add_argument("--key", default=None, metavar="FILE", help="the bridge's secret key (NAME.key_secret)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for other machines, with --cert)")
    s.add_argument("--port", type=int, default=8080, help="HTTP(S) port (default 8080)")
    s.add_argument("--cert", default=None, metavar="PEM", help="TLS certificate: serve https (needed for the webcam "
                                                               "on any host but localhost)")
    s.add_argument("--tls-key", default=None, metavar="PEM", help="the certificate's private key")
    s.add_argument("--assets", default=None, metavar="DIR",
                   help="the MediaPipe JS files (default $POSECAST_WEB_ASSETS or ~/.cache/posecast/web)")
    s.add_argument("--normalize", default="retarget", choices=["retarget", "same-camera", "off"],
                   help="as for capture (default retarget)")
    s.add_argument("--no-normalize", action="store_true", help="the same as --normalize off")
    s.add_argument("--max-pages", type=int, default=8, help="pages connected at once (default 8)")
    s.add_argument("--rate", type=float, default=90.0, help="messages per second per page (default 90)")
    s.add_argument("--burst", type=int, default=30, help="messages a page may send at once (default 30)")
    s.add_argument("--complexity", type=int, default=0, choices=[0, 1],
                   help="MediaPipe pose model in the page: 0 lite (default: 30 fps in wasm on a 2-core CPU), 1 full "
                        "(what capture uses; ~45 ms a frame there)")
    s.add_argument("--delegate", default="CPU", choices=["CPU", "GPU"],
                   help="where the page's pose landmarker runs: CPU (default: wasm, fast everywhere) or GPU (WebGL)")
    s.add_argument("--forecast", default="auto", choices=["auto", "none", "constant_velocity", "learned"],
                   help="send each page's pose forecast by the latency the page measures, as capture does "
                        "(default auto)")
    s.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server (default 5)")
    s.set_defaults(fn=_cmd_web)

    s = sub.add_parser("web-assets", help="download the MediaPipe files the web page runs (once, from the npm "
                                          "registry, checked against pinned sha512) and build its pose models")
    s.add_argument("--dir", default=None, help="where (default $POSECAST_WEB_ASSETS or ~/.cache/posecast/web)")
    s.set_defaults(fn=_cmd_web_assets)

    s = sub.add_parser("demo", help="the live pipeline on loopback with the bundled model")
    s.add_argument("--model", default=None, help="model to serve (default: the bundled lite model)")
    s.add_argument("--source", default="synthetic", help="synthetic[:SEED] (default), a camera index or a video")
    s.add_argument("--frames", type=int, default=300, help="frames to stream (default 300)")
    s.add_argument("--out", default="demo/out.mp4", help="input | output video (default demo/out.mp4)")
    s.add_argument("--backend", default=None, help="onnxruntime (default), torch, tensorrt, torch-tensorrt")
    s.add_argument("--headless", action="store_true", help="no window")
    s.add_argument("--json", action="store_true", help="print one JSON object (frames_sent, frames_received, "
                                                       "dropped, fps, latency_p50_ms, latency_p99_ms, output)")
    s.set_defaults(fn=_cmd_demo)

    s = sub.add_parser("bench", help="generator latency per preset x backend x size, and the live loopback stream")
    s.add_argument("--presets", default="lite,dance", help="comma-separated presets, '' for none (default lite,dance)")
    s.add_argument("--backends", default="onnxruntime,torch", help="comma-separated backends (default onnxruntime,torch)")
    s.add_argument("--sizes", default="128,256", help="comma-separated frame sides (default 128,256)")
    s.add_argument("--runs", type=int, default=50, help="timed runs per generator figure (default 50)")
    s.add_argument("--stream-preset", default="lite", help="preset of the stream figure (default lite; "
                   "a --stream-model streams its own)")
    s.add_argument("--stream-size", type=int, default=256, help="frame side of the stream figure (default 256; "
                   "a --stream-model streams its own)")
    s.add_argument("--stream-frames", type=int, default=300, help="frames streamed (default 300)")
    s.add_argument("--stream-clients", default="1", help="comma-separated client counts, '' for none (default 1)")
    s.add_argument("--stream-model", default=None, help="trained model for the stream (default: random "
                   "weights of --stream-preset at --stream-size)")
    s.add_argument("--stream-threads", type=int, default=None, help="server onnxruntime threads (default: all cores)")
    s.add_argument("--batch-sizes", default="1,2,4,8",
                   help="batched-engine throughput at these batch sizes, '' for none (default 1,2,4,8)")
    s.add_argument("--device", default="cpu", help="engine device of the batch figures: cpu (default) or cuda")
    s.add_argument("--train", action="store_true",
                   help="also time the real training loop (per preset, size, phase and precision: it/s and ms per "
                        "stage)")
    s.add_argument("--only-train", action="store_true", help="time only the training loop")
    s.add_argument("--forecast", action="store_true",
                   help="only the pose forecasters' display-time error and jitter at 50/100/150 ms ahead, on the "
                        "synthetic dancer's motion of --seed (models/forecast.py)")
    s.add_argument("--seed", type=int, default=7,
                   help="motion seed of the --forecast figures (default 7, the seed the bundled forecaster was chosen "
                   "on; it was never trained on 6-9 and 40-99)")
    s.add_argument("--forecaster-model", default=None, metavar="DIR",
                   help="--forecast: the learned forecaster in DIR (default: the bundled one)")
    s.add_argument("--stream", default=None, metavar="VIDEO|REC.npz",
                   help="--forecast on a recorded stream instead of synthetic motion: a video (MediaPipe in "
                        "tracking mode, split at shot cuts) or a landmark recording (capture --save-landmarks); "
                        "the stream itself, on its timestamps, is the truth")
    s.add_argument("--stream-kind", default="face", choices=["face", "dance"],
                   help="--stream: what MediaPipe tracks in a video (default face)")
    s.add_argument("--shots", default=None, metavar="LIST",
                   help="--stream: only these shots (0-based, ranges allowed: 1-3)")
    s.add_argument("--precisions", default="fp32,auto", help="training precisions to time (default fp32,auto)")
    s.add_argument("--train-iterations", type=int, default=5,
                   help="timed training iterations per figure, after a warm-up one (default 5)")
    s.add_argument("--train-device", default="cpu", help="training device of the figures (default cpu)")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.set_defaults(fn=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        # Expected failures (bad input files, bad options, no server) get one clear line, not a traceback;
        # POSECAST_DEBUG=1 shows the traceback.
        if os.environ.get("POSECAST_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"posecast {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
