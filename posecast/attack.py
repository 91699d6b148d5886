"""``make fuzz``'s attacks on a live server: ``python -m posecast.attack [CASE ...]``, one JSON line per case.

What a hostile peer once did to ``posecast serve`` (the server-must-not-die issue), replayed with the figures the
server must hold under it. Each case runs a ``posecast serve`` process (the bundled model, ONNX Runtime) and the
attackers as separate processes, all on this machine's cores together:

* ``flood``: 6 processes x 8 connections sending 1-byte junk at 120 messages/s each (the per-connection rate);
  15 of them say hello first and hold every session but one, the others never do. Meanwhile a capture client
  streams the synthetic dancer at 30 fps in the last session: its fps and glass-to-glass p50/p99 against a run
  without the flood, and the server's RSS growth. Targets: >= 25 fps, p99 <= 150 ms, RSS <= +100 MiB.
* ``bigflood``: the same with 60 KB of junk per message. Target: RSS <= +100 MiB, the stream as above.
* ``idle``: 2,000 TCP connections that never speak, held and re-opened in a loop: the time newcomers wait for
  their welcome. Target: <= 1 s.
* ``slowloris``: 300 connections that send a partial greeting or a partial message, re-opened when closed: the
  same target.
* ``preclaim``: connections claiming the routing ids libzmq would invent next (it aborted on that), then
  newcomers and a stream: the server must answer them all and stay up.
* ``reset``: 12 sessions stream while connections send 3,000 one-byte messages and reset, again and again (it
  aborted on that too): the server must stay up and the streams go on.
* ``restart``: the server is killed (SIGKILL) while a capture client streams and started again on the same
  address a second later (plus its start-up), once with the client's timeout longer than the outage and once
  shorter: the client's books (sent = received + dropped + errors + lost), its reconnects (one) and how long
  after the new server was up the first frame came back.

The ZMTP 3 helpers (``zmtp_greeting``, ``zmtp_frame``, ``zmtp_ready``) speak the wire protocol by hand, as a
peer that is not libzmq can; tests/test_attacks.py uses them too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from realtime import protocol as P

CASES = ("flood", "bigflood", "idle", "slowloris", "preclaim", "reset", "restart")
LIBZMQ_FIRST_ID = bytes.fromhex("006b8b4567")    # the routing id libzmq 4.3.5 invents first, in every process


# -- ZMTP 3 by hand (RFC 23/37) -----------------------------------------------------------------------------
def zmtp_greeting(mechanism: bytes = b"NULL") -> bytes:
    """The 64-byte greeting: signature, version 3.0, mechanism, as-server 0, filler."""
    return b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\0") + b"\0" + b"\0" * 31


def zmtp_frame(body: bytes, command: bool = False) -> bytes:
    flags = 0x04 if command else 0x00
    if len(body) > 255:
        return bytes([flags | 0x02]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def zmtp_ready(identity: bytes | None = None) -> bytes:
    """The NULL mechanism's READY command of a DEALER, claiming ``identity`` as its routing id when given."""
    body = b"\x05READY" + b"\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER"
    if identity is not None:
        body += b"\x08Identity" + len(identity).to_bytes(4, "big") + identity
    return zmtp_frame(body, command=True)


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit("/", 1)[1].rsplit(":", 1)
    return host, int(port)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- the attackers (each in its own process) ------------------------------------------------------------------
def _junk(address: str, connections: int, rate_hz: float, size: int, seconds: float, sessions: int) -> dict:
    """``connections`` DEALERs sending ``size``-byte junk at ``rate_hz`` each, never reading a reply; the first
    ``sessions`` of them say hello first."""
    ctx = zmq.Context()
    socks = []
    for i in range(connections):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.connect(address)
        if i < sessions:
            s.send(P.encode(P.Hello(client=f"junk-{i}")))
        socks.append(s)
    junk = b"\xc1" * size
    sent = full = 0
    t0 = time.monotonic()
    tick = 0.05
    owed = 0.0
    while (now := time.monotonic()) - t0 < seconds:
        owed += rate_hz * tick
        n, owed = int(owed), owed - int(owed)
        for s in socks:
            for _ in range(n):
                try:
                    s.send(junk, zmq.NOBLOCK)
                    sent += 1
                except zmq.Again:
                    full += 1
        time.sleep(max(0.0, tick - (time.monotonic() - now)))
    for s in socks:
        s.close(0)
    ctx.term()
    return {"sent": sent, "queue_full": full}


def _idle(address: str, connections: int, seconds: float, reopen: bool) -> dict:
    """``connections`` TCP connections that never speak; with ``reopen``, closed and re-opened in a loop."""
    host, port = _host_port(address)
    held: list[socket.socket] = []
    opened = failed = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if len(held) >= connections:
            if not reopen:
                time.sleep(0.05)
                continue
            held.pop(0).close()
        try:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((host, port))
            held.append(s)
            opened += 1
        except OSError:
            failed += 1
            time.sleep(0.01)
    for s in held:
        s.close()
    return {"opened": opened, "failed": failed}


def _slowloris(address: str, connections: int, seconds: float) -> dict:
    """Connections that send a partial greeting, a cut frame header or a cut message, and stall; re-opened when
    the server closes them."""
    host, port = _host_port(address)
    partial = [zmtp_greeting()[:5], zmtp_greeting() + zmtp_ready() + b"\x02",
               zmtp_greeting() + zmtp_ready() + b"\x00\xc8" + b"x" * 10]
    held: dict[int, socket.socket] = {}
    opened = closed_by_server = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        for i in range(connections):
            s = held.get(i)
            if s is not None:
                try:
                    if s.recv(4096, socket.MSG_DONTWAIT) == b"":
                        raise ConnectionResetError
                    continue
                except BlockingIOError:
                    continue
                except OSError:
                    s.close()
                    closed_by_server += 1
            try:
                s = socket.create_connection((host, port), timeout=2)
                s.sendall(partial[opened % 3])
                held[i] = s
                opened += 1
            except OSError:
                held.pop(i, None)
        time.sleep(0.1)
    for s in held.values():
        s.close()
    return {"opened": opened, "closed_by_server": closed_by_server}


def reset_round(ctx: zmq.Context, address: str, hello: bool, settle_s: float = 0.2) -> None:
    """One round of the reset attack: 3,000 one-byte messages, then close with LINGER 0 (as the issue found it:
    pyzmq, a session or not); then the same by hand, ending in a TCP reset with thousands of frames unread."""
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.SNDHWM, 0)
    d.connect(address)
    if hello:
        d.send(P.encode(P.Hello(client="reset")))
    for _ in range(3000):
        d.send(b"x")
    time.sleep(settle_s)
    d.close(0)
    junk = zmtp_greeting() + zmtp_ready() + zmtp_frame(P.encode(P.Hello(client="reset"))) + zmtp_frame(b"x") * 3000
    with contextlib.suppress(OSError):
        raw = socket.create_connection(_host_port(address), timeout=2)
        raw.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            raw.send(junk)
        time.sleep(settle_s)
        _reset(raw)


def _resets(address: str, seconds: float) -> dict:
    """:func:`reset_round`, again and again."""
    ctx = zmq.Context()
    rounds = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        reset_round(ctx, address, hello=bool(rounds % 2))
        rounds += 1
    ctx.term()
    return {"rounds": rounds}


def _attacker(kind: str, address: str, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "posecast.attack", "_attacker", kind, address, json.dumps(kw)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])


def _collect(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        out.append(json.loads(stdout) if p.returncode == 0 and stdout.strip() else
                   {"rc": p.returncode, "stderr": stderr.strip()[-300:]})
    return out


# -- what the server's users see ---------------------------------------------------------------------------------
def _stream(address: str, seconds: float, fps: float = 30.0) -> dict:
    """A capture client streaming the synthetic dancer for ``seconds``: fps, latency, books."""
    from clients.capture import CaptureClient
    from clients.sources import open_source

    c = CaptureClient(address, timeout_s=5.0, retries=5, normalize="off", log=lambda m: None,
                      client_name="attack-stream")
    try:
        c.connect()
        st = c.run(open_source("synthetic:0", "dance", realtime=True, default_fps=fps), headless=True,
                   max_frames=int(round(fps * seconds)))
    finally:
        c.close()
    return {"fps": round(st.fps, 2), "latency_p50_ms": st.latency_p50_ms and round(st.latency_p50_ms, 1),
            "latency_p99_ms": st.latency_p99_ms and round(st.latency_p99_ms, 1), "sent": st.frames_sent,
            "received": st.frames_received, "dropped": st.dropped, "errors": st.errors, "lost": st.lost,
            "balanced": st.frames_sent == st.frames_received + st.dropped + st.errors + st.lost}


def _welcomes(address: str, n: int, pause_s: float = 0.2) -> dict:
    """``n`` newcomers, one after another: ms from connect to welcome (None: no welcome within 10 s)."""
    times: list[float | None] = []
    with zmq.Context() as ctx:
        for i in range(n):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            t = time.perf_counter()
            s.connect(address)
            s.send(P.encode(P.Hello(client=f"newcomer-{i}")))
            ms = None
            deadline = t + 10.0
            while (left := deadline - time.perf_counter()) > 0 and s.poll(int(left * 1000) + 1):
                if isinstance(P.decode(s.recv()), P.Welcome):
                    ms = (time.perf_counter() - t) * 1e3
                    break
            times.append(ms)
            s.send(P.encode(P.Bye()))
            s.close(0)
            time.sleep(pause_s)
    got = [t for t in times if t is not None]
    return {"newcomers": n, "welcomed": len(got), "welcome_p50_ms": round(float(np.median(got)), 1) if got else None,
            "welcome_max_ms": round(max(got), 1) if got else None}


class _Rss:
    """The server's resident memory, sampled twice a second in a thread."""

    def __init__(self, pid: int):
        from posecast.stress import _rss_kib

        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pid, _rss_kib), daemon=True)
        self._thread.start()

    def _run(self, pid, rss_kib) -> None:
        while not self._stop.wait(0.5):
            r = rss_kib(pid)
            if r is not None:
                self.samples.append(r)

    def now_mib(self) -> float | None:
        return round(self.samples[-1] / 1024, 1) if self.samples else None

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        return round(max(self.samples) / 1024, 1) if self.samples else None


# -- the cases ---------------------------------------------------------------------------------------------------
def _serve(model, address: str, threads: int | None) -> subprocess.Popen:
    """``posecast serve`` on ``address``, returned once it serves (its stderr is drained in a thread)."""
    cmd = [sys.executable, "-m", "posecast", "serve", str(model), "--bind", address, "--backend", "onnxruntime",
           "--stats-interval", "3600", *(["--threads", str(threads)] if threads else [])]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    while "serving" not in (line := proc.stderr.readline()):
        if not line:
            raise RuntimeError(f"posecast serve exited with {proc.wait()}")
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc


def _restart(model, seconds: float, threads: int | None, client_timeout_s: float, outage_s: float = 1.0) -> dict:
    """A capture client streams; the server is killed, and started again on the same address ``outage_s`` later
    (plus its start-up)."""
    from clients.capture import CaptureClient
    from clients.sources import open_source

    with zmq.Context() as ctx:   # a free port: bind, read it, release it
        probe = ctx.socket(zmq.ROUTER)
        address = f"tcp://127.0.0.1:{probe.bind_to_random_port('tcp://127.0.0.1')}"
        probe.close(0)
    first = _serve(model, address, threads)
    frames_at: list[float] = []
    result: dict = {}

    class Stamping(CaptureClient):          # notes when each frame comes back
        def replies(self):
            for m in super().replies():
                if isinstance(m, P.Frame):
                    frames_at.append(time.monotonic())
                yield m

    def stream():
        c = Stamping(address, timeout_s=client_timeout_s, retries=5, normalize="off", log=lambda m: None)
        c.connect()
        src = open_source("synthetic:0", "dance", realtime=True, default_fps=30.0)
        try:
            st = c.run(src, headless=True, max_frames=int(30 * seconds))
            result.update(sent=st.frames_sent, received=st.frames_received, dropped=st.dropped, errors=st.errors,
                          lost=st.lost, reconnects=st.reconnects)
        finally:
            c.close()

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    time.sleep(min(3.0, seconds / 3))
    first.kill()
    first.wait()
    killed = time.monotonic()
    time.sleep(outage_s)
    second = _serve(model, address, threads)
    up = time.monotonic()
    t.join(seconds + 60)
    second.terminate()
    second.wait(20)
    back = [x for x in frames_at if x > up]
    out = dict(result, client_timeout_s=client_timeout_s, outage_s=round(up - killed, 2),
               resumed_after_ms=round((back[0] - up) * 1e3, 1) if back else None)
    out["balanced"] = bool(result) and result["sent"] == (result["received"] + result["dropped"] + result["errors"]
                                                          + result["lost"])
    return out


def run_case(case: str, *, seconds: float = 20.0, model=None, threads: int | None = None) -> dict:
    """One attack against a fresh ``posecast serve``; see the module docstring for the cases and targets."""
    from posecast.demo import DEFAULT_MODEL
    from posecast.process import server_process

    if case not in CASES:
        raise ValueError(f"unknown attack {case!r}: one of {', '.join(CASES)}")
    if case == "restart":   # the server back before the client's timeout (same connection), and after it
        runs = [_restart(model or DEFAULT_MODEL, seconds, threads, t) for t in (15.0, 2.0)]
        return {"what": "attack", "case": case, "seconds": seconds, "runs": runs,
                "ok": all(r["balanced"] and r.get("reconnects") == 1 and r["resumed_after_ms"] is not None
                          for r in runs)}
    info: dict = {}
    out: dict = {"what": "attack", "case": case, "seconds": seconds}
    with server_process(model or DEFAULT_MODEL, "onnxruntime", threads=threads, info=info) as address:
        _welcomes(address, 1, 0.0)                      # the server is up and warm
        rss = _Rss(info["pid"])
        if case in ("flood", "bigflood"):
            out["baseline"] = _stream(address, seconds / 2)
            out["rss_before_mib"] = rss.now_mib()
            size = 60_000 if case == "bigflood" else 1
            procs = [_attacker("junk", address, connections=8, rate_hz=120.0, size=size, seconds=seconds + 4,
                               sessions=(8, 7)[i] if i < 2 else 0) for i in range(6)]
            time.sleep(2.0)                              # the flood is on before the stream starts
            out["under_attack"] = _stream(address, seconds)
            out["attackers"] = _collect(procs)
            out["rss_max_mib"] = rss.stop()
            out["rss_growth_mib"] = round(out["rss_max_mib"] - out["rss_before_mib"], 1)
            s = out["under_attack"]
            out["ok"] = (s["balanced"] and s["fps"] >= 25 and (s["latency_p99_ms"] or 1e9) <= 150
                         and out["rss_growth_mib"] <= 100)
        elif case in ("idle", "slowloris"):
            if case == "idle":
                procs = [_attacker("idle", address, connections=2000, seconds=seconds, reopen=False),
                         _attacker("idle", address, connections=500, seconds=seconds, reopen=True)]
            else:
                procs = [_attacker("slowloris", address, connections=300, seconds=seconds)]
            time.sleep(2.0)
            out["newcomers"] = _welcomes(address, max(5, int(seconds / 2)), 0.5)
            out["attackers"] = _collect(procs)
            rss.stop()
            w = out["newcomers"]
            out["ok"] = w["welcomed"] == w["newcomers"] and w["welcome_max_ms"] <= 1000
        elif case == "preclaim":
            with zmq.Context() as ctx:
                claimers = []
                first = int.from_bytes(LIBZMQ_FIRST_ID[1:], "big")
                for k in range(64):
                    s = ctx.socket(zmq.DEALER)
                    s.setsockopt(zmq.LINGER, 0)
                    s.setsockopt(zmq.ROUTING_ID, b"\0" + ((first + k) % 2**32).to_bytes(4, "big"))
                    s.connect(address)
                    s.send(P.encode(P.Ping(ts=float(k))))
                    claimers.append(s)
                pongs = sum(bool(s.poll(5000)) and isinstance(P.decode(s.recv()), P.Pong) for s in claimers)
                out["claimers_answered"] = pongs
                out["newcomers"] = _welcomes(address, 5, 0.1)
                out["stream"] = _stream(address, min(seconds, 5.0))
                for s in claimers:
                    s.close(0)
            rss.stop()
            out["ok"] = pongs == 64 and out["newcomers"]["welcomed"] == 5 and out["stream"]["balanced"]
        else:  # reset
            procs = [_attacker("resets", address, seconds=seconds)]
            streams: list[dict] = []
            workers = [threading.Thread(target=lambda: streams.append(_stream(address, seconds, fps=10.0)))
                       for _ in range(12)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            out["attackers"] = _collect(procs)
            out["streams"] = {"n": len(streams), "min_fps": min((s["fps"] for s in streams), default=0.0),
                              "balanced": all(s["balanced"] for s in streams)}
            rss.stop()
            out["ok"] = len(streams) == 12 and out["streams"]["balanced"] and out["streams"]["min_fps"] > 0
        out["server_alive"] = True                       # server_process raises if it died on the way
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posecast.attack", description=__doc__.split("\n\n")[0])
    p.add_argument("cases", nargs="*", default=list(CASES), help=f"which attacks (default all: {' '.join(CASES)})")
    p.add_argument("--seconds", type=float, default=20.0, help="how long each attack lasts (default 20)")
    p.add_argument("--model", default=None, help="the model to serve (default: the bundled one)")
    p.add_argument("--threads", type=int, default=None, help="server onnxruntime threads")
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["_attacker"]:
        kind, address, kw = argv[1], argv[2], json.loads(argv[3])
        fn = {"junk": _junk, "idle": _idle, "slowloris": _slowloris, "resets": _resets}[kind]
        print(json.dumps(fn(address, **kw)))
        return 0
    args = p.parse_args(argv)
    ok = True
    for case in args.cases:
        try:
            res = run_case(case, seconds=args.seconds, model=args.model, threads=args.threads)
        except Exception as e:  # noqa: BLE001 - a dead server is a result, reported as one
            res = {"what": "attack", "case": case, "ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
        print(json.dumps(res), flush=True)
        ok = ok and res["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
