"""Long runs against a real server: ``make soak`` and ``make fuzz`` (``python -m posecast.stress soak|fuzz``).

* **soak**: a ``posecast serve`` process and N capture clients streaming the synthetic dancer at ``fps`` for
  ``seconds``; per client, the accounting ``sent == received + dropped + errors + lost`` (``lost`` must be 0),
  and the server's resident memory (RSS) sampled once a second: its growth from a fifth of the way in (model loaded,
  every client streaming) to the end.
* **fuzz**: an in-process server, a legitimate client streaming lock-step, and a separate process sending
  ``messages`` malformed messages (random bytes, truncations, bit flips, every field swapped for values of
  every wrong type, ext values, extra / missing fields, multi-frame and oversized messages) over several
  connections, some of which hold a session. Pass: the server never stops, counts zero internal errors, and
  every reply the legitimate client gets is the frame for its own seq. The same generator is first run
  through ``protocol.decode`` alone, which must raise nothing but ``ProtocolError``.

The suite runs short versions of both (tests/test_stress.py), asserting counts only. Figures are printed as
one JSON object; the exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from models.landmarks import POSE_LAYOUT
from realtime import protocol as P

K = POSE_LAYOUT.num_landmarks  # the synthetic dancer's pose layout (every stress model is a dance model)


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# -- soak -------------------------------------------------------------------------------------------------
def soak(*, clients: int = 4, fps: float = 30.0, seconds: float = 120.0, preset: str = "lite", size: int = 128,
         model: str | os.PathLike | None = None, backend: str = "onnxruntime", threads: int | None = None) -> dict:
    """N paced clients for ``seconds``; per-client accounting and the server's RSS growth (see the module doc)."""
    from clients.capture import CaptureClient
    from clients.sources import open_source

    from .bench import random_checkpoint
    from .process import server_process

    frames = max(1, int(round(fps * seconds)))
    with tempfile.TemporaryDirectory() as tmp:
        model = model or random_checkpoint(preset, size, Path(tmp) / "model")
        info: dict = {}
        results: list = [None] * clients
        failures: list[str] = []
        with server_process(model, backend, threads=threads, info=info) as address:
            def run(i: int) -> None:
                c = CaptureClient(address, timeout_s=30.0, retries=5, normalize=False, client_name=f"soak-{i}",
                                  log=lambda m: None)
                try:
                    c.connect()
                    src = open_source(f"synthetic:{i}", "dance", realtime=True, default_fps=fps)
                    results[i] = c.run(src, headless=True, max_frames=frames)
                except Exception as e:  # noqa: BLE001 - reported in the summary
                    failures.append(f"client {i}: {type(e).__name__}: {e}")
                finally:
                    c.close()

            workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
            t0 = time.monotonic()
            for w in workers:
                w.start()
            rss: list[tuple[float, int]] = []
            while any(w.is_alive() for w in workers):
                r = _rss_kib(info["pid"])
                if r is not None:
                    rss.append((time.monotonic() - t0, r))
                for w in workers:
                    w.join(timeout=1.0 / max(1, len(workers)))
            elapsed = time.monotonic() - t0
    rows = []
    for i, st in enumerate(results):
        if st is None:
            continue
        rows.append({"client": i, "sent": st.frames_sent, "received": st.frames_received, "dropped": st.dropped,
                     "errors": st.errors, "lost": st.lost, "reconnects": st.reconnects, "fps": round(st.fps, 2),
                     "latency_p50_ms": st.latency_p50_ms and round(st.latency_p50_ms, 1),
                     "balanced": st.frames_sent == st.frames_received + st.dropped + st.errors + st.lost})
    early = [r for t, r in rss if t >= 0.2 * elapsed] or [r for _, r in rss]
    out = {"what": "soak", "clients": clients, "fps": fps, "seconds": round(elapsed, 1), "frames_per_client": frames,
           "per_client": rows, "failures": failures,
           "rss_start_mib": round(early[0] / 1024, 1) if early else None,
           "rss_end_mib": round(rss[-1][1] / 1024, 1) if rss else None,
           "rss_max_mib": round(max(r for _, r in rss) / 1024, 1) if rss else None}
    out["rss_growth_mib"] = round(out["rss_end_mib"] - out["rss_start_mib"], 1) if rss else None
    out["ok"] = (not failures and len(rows) == clients
                 and all(r["balanced"] and r["lost"] == 0 and r["errors"] == 0 for r in rows))
    return out


# -- fuzz -------------------------------------------------------------------------------------------------
_WRONG = [True, False, None, -1, 0, 2 ** 63, 2 ** 64 - 1, -2 ** 63, 1.5, -0.0, math.nan, math.inf, -math.inf,
          "", "x" * 300, b"", b"\xff" * 64, [], {}, [1, 2, 3], [True, 3], {"a": 1}, {"a": [None, {"b": b""}]},
          msgpack.ExtType(1, b"x"), msgpack.ExtType(127, b""), msgpack.Timestamp(1, 5), [msgpack.ExtType(2, b"")],
          {"t": "hello"}, "hello", "landmarks", 3.0, 33, [33, 3], [0, 3], [1025, 3], [33, 3, 1], [-1, 3]]


def _valid(rng: np.random.Generator) -> dict:
    """A random valid client message, as the map it packs."""
    kind = rng.integers(0, 6)
    if kind == 0:
        return {"t": "hello", "version": 2, "client": "fuzz"}
    if kind == 1:
        return {"t": "ping", "ts": float(rng.random())}
    if kind == 2:
        return {"t": "reset"}
    lm = rng.uniform(0.2, 0.8, (K, 3)).astype("<f4")
    return {"t": "landmarks", "seq": int(rng.integers(0, 1 << 20)), "capture_ts": float(rng.random()),
            "shape": [K, 3], "data": lm.tobytes()}


def malformed(rng: np.random.Generator) -> list[bytes]:
    """One malformed (now and then accidentally valid) client message, as its ZeroMQ frames."""
    how = rng.integers(0, 12)
    base = _valid(rng)
    raw = msgpack.packb(base, use_bin_type=True)
    if how == 0:
        return [rng.bytes(int(rng.integers(0, 200)))]
    if how == 1:
        return [raw[:int(rng.integers(0, len(raw)))]]
    if how == 2:
        b = bytearray(raw)
        for _ in range(int(rng.integers(1, 6))):
            b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
        return [bytes(b)]
    if how == 3:
        return [raw + rng.bytes(int(rng.integers(1, 16)))]
    if how in (4, 5, 6):
        key = list(base)[int(rng.integers(0, len(base)))]
        d = dict(base, **{key: _WRONG[int(rng.integers(0, len(_WRONG)))]})
        return [msgpack.packb(d, use_bin_type=True, strict_types=False)]
    if how == 7:
        return [msgpack.packb(dict(base, **{f"x{rng.integers(0, 9)}": 1}), use_bin_type=True)]
    if how == 8:
        keys = list(base)
        del base[keys[int(rng.integers(0, len(keys)))]]
        return [msgpack.packb(base, use_bin_type=True)]
    if how == 9:
        return [raw, raw] if rng.random() < 0.5 else [raw, b""]
    if how == 10:  # deep nesting, long arrays, big maps
        n = int(rng.integers(0, 3))
        v = [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]] if n == 0 else (list(range(5000)) if n == 1 else
                                                                  {str(i): i for i in range(100)})
        return [msgpack.packb(dict(base, shape=v), use_bin_type=True)]
    lm = rng.normal(0, 200, (int(rng.integers(1, 40)), 3)).astype("<f4")   # landmarks of the wrong K / values
    if rng.random() < 0.3:
        lm[int(rng.integers(0, len(lm)))] = [np.inf, np.nan, -np.inf]
    return [msgpack.packb({"t": "landmarks", "seq": int(rng.integers(0, 100)), "capture_ts": 0.0,
                           "shape": [len(lm), 3], "data": lm.tobytes()[:int(rng.integers(0, lm.nbytes + 1))]},
                          use_bin_type=True)]


def decode_fuzz(messages: int, seed: int = 0) -> dict:
    """``protocol.decode`` on every generated message: only ProtocolError may come out."""
    rng = np.random.default_rng(seed)
    other: dict[str, int] = {}
    rejected = 0
    for _ in range(messages):
        frames = malformed(rng)
        try:
            P.decode(frames[0])
        except P.ProtocolError:
            rejected += 1
        except Exception as e:  # noqa: BLE001 - what we are looking for
            other[type(e).__name__] = other.get(type(e).__name__, 0) + 1
    return {"decoded": messages, "rejected": rejected, "other_exceptions": other}


def _fuzz_worker(address: str, messages: int, connections: int, seed: int) -> None:
    """The sending side of ``fuzz`` (its own process): prints how many messages it sent."""
    rng = np.random.default_rng(seed)
    ctx = zmq.Context()
    socks = []
    for i in range(connections):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 100)
        s.setsockopt(zmq.SNDTIMEO, 10_000)
        s.connect(address)
        if i % 2 == 0:  # half of them hold a session, so landmarks, reset and bye reach session code
            s.send(msgpack.packb({"t": "hello", "client": f"fuzz-{i}"}))
        socks.append(s)
    big = ctx.socket(zmq.DEALER)   # oversized messages: ZeroMQ drops this connection each time
    big.setsockopt(zmq.LINGER, 0)
    big.connect(address)
    sent = 0
    for n in range(messages):
        if n % 5000 == 4999:
            try:
                big.send(b"\x00" * (P.MAX_MESSAGE_BYTES + 1), zmq.NOBLOCK)
            except zmq.Again:
                pass
        s = socks[n % connections]
        try:   # blocks while the server is behind (SNDTIMEO bounds it): the fuzzer goes at the server's pace
            s.send_multipart(malformed(rng))
            sent += 1
        except zmq.Again:
            pass
        while True:  # read what came back, so our own queues never fill
            try:
                s.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
    for s in socks:  # a last ping each: its pong means the server has read everything this connection sent
        s.send(msgpack.packb({"t": "ping", "ts": -1.0}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if s.poll(1000) and s.recv() == P.encode(P.Pong(ts=-1.0)):
                break
    print(sent, flush=True)
    for s in socks + [big]:
        s.close(0)
    ctx.term()


def fuzz(*, messages: int = 100_000, connections: int = 8, seed: int = 0, engine=None, size: int = 64) -> dict:
    """See the module docstring. The server's budgets are opened wide (no rate, no session-less allowance), so
    every message is decoded as fast as the fuzzer can send it."""
    from realtime.server import Server

    decode = decode_fuzz(min(messages, 20_000), seed + 1)
    tmp = None
    if engine is None:
        from realtime.engine import open_engine

        from .bench import random_checkpoint

        tmp = tempfile.TemporaryDirectory()
        engine = open_engine(random_checkpoint("lite", size, tmp.name), "onnxruntime")
    srv = Server(engine, "tcp://127.0.0.1:0", stats_interval_s=0, rate_hz=1e9, rate_burst=10_000, bytes_per_s=1e12,
                 bytes_burst=1 << 30, sessionless_frames=1 << 40, sessionless_bytes=1 << 50, sessionless_rate_hz=1e9,
                 sessionless_max_message_bytes=P.MAX_MESSAGE_BYTES, max_clients=64, sessions_per_key=64)
    thread = srv.start()
    legit = {"frames": 0, "wrong": []}
    stop = threading.Event()

    def stream() -> None:
        rng = np.random.default_rng(seed + 2)
        with zmq.Context() as ctx:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(srv.endpoint)
            s.send(P.encode(P.Hello(client="legit")))
            if not s.poll(30_000) or not isinstance(P.decode(s.recv()), P.Welcome):
                legit["wrong"].append("no welcome")
                return
            seq = 0
            while not stop.is_set():
                lm = rng.uniform(0.2, 0.8, (K, 3)).astype(np.float32)
                s.send(P.encode(P.Landmarks.from_array(seq, time.time(), lm, K)))
                if not s.poll(30_000):
                    legit["wrong"].append(f"no reply to seq {seq}")
                    return
                m = P.decode(s.recv())
                if isinstance(m, P.Frame) and m.seq == seq:
                    legit["frames"] += 1
                else:
                    legit["wrong"].append(repr(m)[:200])
                seq += 1
            s.close(0)

    t0 = time.monotonic()
    client = threading.Thread(target=stream, daemon=True)
    client.start()
    worker = subprocess.run([sys.executable, "-m", "posecast.stress", "_fuzz-worker", srv.endpoint, str(messages),
                             str(connections), str(seed)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    stop.set()
    client.join(timeout=60)
    seen, deadline = -1, time.monotonic() + 60
    while srv.stats()["messages"] != seen and time.monotonic() < deadline:   # read what is still queued
        seen = srv.stats()["messages"]
        time.sleep(0.5)
    elapsed = time.monotonic() - t0
    alive = thread.is_alive() and srv.running
    srv.close()
    st = srv.stats()
    if tmp is not None:
        tmp.cleanup()
    sent = int(worker.stdout.strip() or 0) if worker.returncode == 0 else 0
    out = {"what": "fuzz", "sent": sent, "seconds": round(elapsed, 1), "server_messages": st["messages"],
           "server_errors": st["errors"], "internal_errors": st["internal_errors"],
           "server_alive": alive, "legit_frames": legit["frames"], "legit_wrong": legit["wrong"][:5],
           "decode": decode, "server": st, "worker_rc": worker.returncode, "worker_stderr": worker.stderr.strip()[-500:]}
    out["ok"] = (alive and worker.returncode == 0 and sent == messages and st["messages"] >= sent
                 and st["internal_errors"] == 0
                 and not legit["wrong"] and legit["frames"] > 0 and not decode["other_exceptions"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posecast.stress", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("soak", help="N clients at FPS for SECONDS against a posecast serve process")
    s.add_argument("--clients", type=int, default=4)
    s.add_argument("--fps", type=float, default=30.0)
    s.add_argument("--seconds", type=float, default=120.0)
    s.add_argument("--size", type=int, default=128, help="frame side of the random-weight lite model")
    s.add_argument("--model", default=None, help="a trained model instead of random weights")
    s.add_argument("--threads", type=int, default=None, help="server onnxruntime threads")
    f = sub.add_parser("fuzz", help="malformed messages while a legitimate client streams")
    f.add_argument("--messages", type=int, default=100_000)
    f.add_argument("--connections", type=int, default=8)
    f.add_argument("--seed", type=int, default=0)
    w = sub.add_parser("_fuzz-worker")
    for a in ("address", "messages", "connections", "seed"):
        w.add_argument(a)
    args = p.parse_args(argv)
    if args.cmd == "_fuzz-worker":
        _fuzz_worker(args.address, int(args.messages), int(args.connections), int(args.seed))
        return 0
    if args.cmd == "soak":
        res = soak(clients=args.clients, fps=args.fps, seconds=args.seconds, size=args.size, model=args.model,
                   threads=args.threads)
    else:
        res = fuzz(messages=args.messages, connections=args.connections, seed=args.seed)
    print(json.dumps(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
