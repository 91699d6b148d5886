"""The browser client driven end to end: a real Chromium (Playwright) whose fake webcam plays the synthetic
dancer, the page of ``posecast web``, a real ``posecast serve``. Used by the browser test (tests/test_browser.py)
and by ``make bench-web`` (``python -m posecast.webbench``), which prints two JSON lines: ``what: web-bridge``
(the bridge and server alone: a WebSocket client sends the synthetic dancer's landmarks at 30 fps, no browser, no
MediaPipe) and ``what: web`` (the page in Chromium: ``fps``, ``latency_p99_ms``, ``answered_fraction``,
``mediapipe_ms`` and the rest of the page's own figures).

Chromium: ``$POSECAST_CHROMIUM``, else ``chromium`` / ``chromium-browser`` / ``google-chrome`` on the PATH (Debian:
``apt-get install chromium``; Playwright's own browser download is not used).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np


def browser_executable() -> str | None:
    env = os.environ.get("POSECAST_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def write_y4m(path: str | os.PathLike, frames, size: int, fps: int = 30) -> Path:
    """RGB uint8 (size, size, 3) frames to a y4m file (4:2:0), the format of Chromium's fake webcam."""
    path = Path(path)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{size} H{size} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


def dancer_y4m(path: str | os.PathLike, *, frames: int = 90, size: int = 256, seed: int = 3,
               appearance: int = 0, fps: int = 30) -> Path:
    """The synthetic dancer (motion ``seed``, look ``appearance``) as a y4m file: Chromium's fake webcam plays it
    in a loop (``--use-file-for-fake-video-capture``)."""
    from models.motion import DanceMotion
    from trainer.synth import DancerRenderer

    motion, renderer = DanceMotion(seed=seed, fps=fps), DancerRenderer(size, appearance)

    def rendered():
        prev = None
        for i in range(frames):
            pose = motion.pose(i)
            yield renderer.render(pose, prev).frame
            prev = pose

    return write_y4m(path, rendered(), size, fps)


def video_y4m(video: str | os.PathLike, path: str | os.PathLike, *, start: int = 0, frames: int = 60,
              size: int = 256, fps: int = 30) -> Path:
    """``frames`` frames of ``video`` from ``start``, the centred square scaled to ``size``, as a y4m file."""
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    out = []
    while len(out) < frames:
        ok, bgr = cap.read()
        if not ok:
            break
        h, w = bgr.shape[:2]
        s = min(h, w)
        sq = bgr[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(cv2.cvtColor(cv2.resize(sq, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
    cap.release()
    if not out:
        raise ValueError(f"no frames read from {video} at {start}")
    return write_y4m(path, out, size, fps)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, proc.args[:3]))} exited with {proc.returncode} before {url} "
                               f"answered")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s:g} s")


def drive_page(url: str, y4m: str | os.PathLike, *, seconds: float, ready_timeout_s: float = 120.0,
               screenshot: str | os.PathLike | None = None, executable: str | None = None,
               extra_args: tuple[str, ...] = ()) -> dict:
    """Open ``url`` in headless Chromium with ``y4m`` as the webcam, wait until the page's MediaPipe is ready and
    its first frame came back, let it warm up, then stream ``seconds`` and return the page's own figures over them
    (``window.posecast.stats()``; ``fps``: frames drawn per second over the window, ``fps_2s`` the page's own over its
    last 2 s) plus ``console_errors``; ``screenshot``: a PNG of the page at the end."""
    from playwright.sync_api import sync_playwright

    exe = executable or browser_executable()
    if exe is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium, or set POSECAST_CHROMIUM)")
    args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={Path(y4m).resolve()}", "--enable-unsafe-swiftshader",
            "--no-sandbox", *extra_args]
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=args)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            deadline = time.monotonic() + ready_timeout_s
            while True:
                s = page.evaluate("window.posecast && window.posecast.stats()")
                if s and s["answered"] > 0:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the page did not show a frame within {ready_timeout_s:g} s: "
                                       f"{s and s.get('last_error')} {errors[-3:]}")
                time.sleep(0.5)
            time.sleep(min(3.0, seconds / 4))              # warm-up (first frames, caches), then measure
            page.evaluate("window.posecast.resetFigures()")
            t0 = time.monotonic()
            time.sleep(seconds)
            stats = page.evaluate("window.posecast.stats()")
            stats["fps_2s"] = stats["fps"]                                 # the page's own, over its last 2 s
            stats["fps"] = stats["answered"] / (time.monotonic() - t0)     # frames drawn over the whole window
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
            stats["console_errors"] = errors
            return stats
        finally:
            browser.close()


@contextlib.contextmanager
def live_stack(model: str | None = None, *, backend: str = "onnxruntime", assets: str | None = None,
               log_dir: str | os.PathLike | None = None, bridge_args: tuple[str, ...] = ()):
    """``posecast serve`` (``model``, default the bundled one) and ``posecast web`` on free loopback ports, as
    subprocesses; yields the page's URL. Their output goes to ``log_dir`` (serve.log, web.log) when given."""
    from posecast.demo import DEFAULT_MODEL

    zport, hport = free_port(), free_port()
    exe = [sys.executable, "-m", "posecast"]
    logs = Path(log_dir) if log_dir is not None else None
    procs: list[subprocess.Popen] = []
    files = []

    def start(name: str, argv: list[str]) -> subprocess.Popen:
        out = subprocess.DEVNULL
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)
            out = open(logs / f"{name}.log", "w")
            files.append(out)
        p = subprocess.Popen(exe + argv, stdout=out, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        serve = start("serve", ["serve", str(model or DEFAULT_MODEL), "--bind", f"tcp://127.0.0.1:{zport}",
                                "--backend", backend, "--threads", "1", "--max-batch", "1", "--stats-interval", "5"])
        web = start("web", ["web", "--server", f"tcp://127.0.0.1:{zport}", "--port", str(hport),
                            "--timeout", "60", *(["--assets", assets] if assets else []), *bridge_args])
        url = f"http://127.0.0.1:{hport}/"
        wait_http(url, 60, web)
        if serve.poll() is not None:
            raise RuntimeError(f"posecast serve exited with {serve.returncode}")
        yield url
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in files:
            f.close()


WARMUP_IDS = 2 ** 40


def drive_bridge(url: str, *, seconds: float, fps: float = 30.0, seed: int = 3) -> dict:
    """The bridge and server alone, without a browser: a WebSocket client plays a page that sends the synthetic
    dancer's landmarks at ``fps`` (no MediaPipe), for ``seconds`` after a 2 s warm-up; returns frames answered per
    second and the reply latency (send -> JPEG decoded) p50/p99 over the window."""
    import asyncio

    from aiohttp import ClientSession, WSMsgType

    from clients.web.bridge import parse_frame_message
    from realtime.codec import decode_jpeg

    from models.motion import DanceMotion

    motion = DanceMotion(seed=seed, fps=fps)
    ws_url = url.replace("http://", "ws://").rstrip("/") + "/ws"

    async def go() -> dict:
        sent: dict[int, float] = {}
        lat: list[float] = []
        measured = 0
        answered = dropped = errors = 0
        async with ClientSession() as cs, cs.ws_connect(ws_url, max_msg_size=0) as ws:
            welcome = await ws.receive_json(timeout=60)
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"no welcome from the bridge: {welcome}")

            async def reader():
                nonlocal answered, dropped, errors
                async for m in ws:
                    if m.type == WSMsgType.BINARY:
                        head, jpeg = parse_frame_message(m.data)
                        if decode_jpeg(jpeg) is None:
                            errors += 1
                        t = sent.pop(head["id"], None)
                        if t is not None and head["id"] < WARMUP_IDS:
                            lat.append((time.perf_counter() - t) * 1e3)
                            answered += 1
                            dropped += head["dropped"]
                    elif m.type == WSMsgType.TEXT:
                        errors += 1

            task = asyncio.create_task(reader())
            start = time.perf_counter()
            measure_from, i = start + 2.0, 0
            while (now := time.perf_counter()) < measure_from + seconds:
                page_id = i if now >= measure_from else WARMUP_IDS + i      # warm-up replies are not counted
                measured += page_id < WARMUP_IDS
                sent[page_id] = time.perf_counter()
                pts = motion.landmarks(i)[:, :3]
                await ws.send_str(json.dumps({"type": "landmarks", "id": page_id, "w": 640, "h": 640,
                                              "points": [float(v) for v in pts.ravel()]}))
                i += 1
                await asyncio.sleep(max(0.0, start + i / fps - time.perf_counter()))
            await asyncio.sleep(1.0)
            task.cancel()
        return {"fps": answered / seconds, "latency_p50_ms": float(np.percentile(lat, 50)) if lat else None,
                "latency_p99_ms": float(np.percentile(lat, 99)) if lat else None, "sent": measured,
                "answered": answered, "answered_fraction": answered / max(1, measured),
                "dropped": dropped, "errors": errors}

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m posecast.webbench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="served model (default: the bundled one)")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured streaming time (default 30)")
    ap.add_argument("--complexity", type=int, default=0, choices=[0, 1],
                    help="MediaPipe pose model in the page (default 0: lite, as posecast web)")
    ap.add_argument("--out", default="runs/bench-web", help="folder for the y4m, logs and screenshot")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    y4m = dancer_y4m(out / "dancer.y4m")
    with live_stack(args.model, log_dir=out, bridge_args=("--complexity", str(args.complexity))) as url:
        s = drive_page(url, y4m, seconds=args.seconds, screenshot=out / "page.png")
    with live_stack(args.model, log_dir=out / "bridge-only") as url:
        b = drive_bridge(url, seconds=args.seconds)
    print(json.dumps({"what": "web-bridge", "seconds": args.seconds, "sent_fps": 30.0, **b}))
    row = {"what": "web", "complexity": args.complexity, "seconds": args.seconds,
           **{k: s[k] for k in ("fps", "latency_p50_ms", "latency_p99_ms", "answered_fraction", "mediapipe_ms",
                                 "inference_ms")},
           "sent": s["sent"], "answered": s["answered"], "dropped": s["dropped"],
           "unmatched": s["unmatched"], "errors": s["errors"], "screenshot": str(out / "page.png")}
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
