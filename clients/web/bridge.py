"""``posecast web``: a page that runs MediaPipe in the browser, and the bridge between it and a posecast server.

Why aiohttp and a WebSocket (not aiortc/WebRTC): the server already sends each frame as a JPEG, so a WebSocket
carries it to the page as it is (one binary message, no re-encoding), and the page draws it with
``createImageBitmap``. WebRTC would decode every JPEG on the bridge and encode it again as VP8/H.264 (on two cores,
~10 ms a frame and a second of encoder warm-up), for what it offers on lossy long-distance links (congestion
control, FEC), which a 256² JPEG stream of ~15 KB a frame does not need on a LAN. aiohttp is the established
asyncio HTTP server with WebSockets built in, and ZeroMQ has an asyncio API (``zmq.asyncio``), so one event loop
holds every page.

What the page does and never does: it asks for the webcam, runs MediaPipe (the Tasks API's pose landmarker for
dance models, the face mesh solution for face models; served from the local cache of :mod:`clients.web.assets`,
nothing fetched from the internet) and sends
**landmarks** up, never video. It shows input | output with its own fps, glass-to-glass latency and drops.

What the bridge does, per page (one WebSocket = one :class:`PageSession` = one server session):
- holds the ZeroMQ connection and, with CURVE, the keys (the page never sees them);
- treats the page as a peer: every message is size-limited (``max_message_bytes``), rate-limited (a token
  bucket; beyond it messages are dropped and counted), parsed and checked (:func:`parse_page_message`), then
  normalised as the capture client does (models/posenorm.py ``live_normalizer``) and validated by the protocol's
  own decoder before it goes to the server; a bad message is answered with an error and costs nothing else;
- numbers frames itself (the page's ids are echoed back, never used as protocol sequence numbers), stamps them
  with its own clock, keeps at most ``max_in_flight`` outstanding, and relays each reply's JPEG with its page id;
- keeps the session alive (pings when idle), says hello again when the server lost it.
At most ``max_pages`` pages at once; one page cannot reach another's session.

The page protocol (text JSON up, JSON or binary down) is in docs/web.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import struct
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import zmq
import zmq.asyncio

from models.landmarks import layout_of
from realtime import protocol as P
from realtime.limits import TokenBucket

STATIC = Path(__file__).parent / "static"
DEFAULT_WEB_PORT = 8080
PAGE_TYPES = ("landmarks", "stats")


class PageError(ValueError):
    """A page's message that cannot be used: answered with ``{"type": "error", "code": ..., "reason": ...}``."""

    def __init__(self, code: str, reason: str, page_id: int | None = None):
        super().__init__(reason)
        self.code, self.reason, self.page_id = code, reason, page_id


@dataclasses.dataclass(frozen=True)
class BridgeConfig:
    server: str = "tcp://127.0.0.1:5555"
    server_key: str | None = None        # the server's public key file (CURVE); with key
    key: str | None = None               # the bridge's secret key file
    normalize: str = "retarget"
    max_pages: int = 8                   # pages connected at once (more are refused with a message)
    max_message_bytes: int = 64 * 1024   # a larger WebSocket message closes the page's socket (a face is ~20 KB)
    rate_hz: float = 90.0                # messages per second per page (token bucket) ...
    rate_burst: int = 30                 # ... of this depth; messages beyond it are dropped and counted
    max_in_flight: int = 8               # frames outstanding per page; landmarks beyond it are dropped (counted)
    timeout_s: float = 5.0               # no welcome / no reply with frames outstanding for this long: server lost
    complexity: int = 0                  # MediaPipe pose model in the page: 0 lite (real time on a CPU), 1 full
    delegate: str = "CPU"                # where the page's pose landmarker runs: CPU (wasm) or GPU (WebGL)
    warmup_frames: int = 30
    forecast: str = "auto"               # forecast each page's pose by its measured latency (models/forecast.py)

    def __post_init__(self):
        if (self.server_key is None) != (self.key is None):
            raise ValueError("CURVE needs both the server's public key (--server-key) and the bridge's secret key "
                             "(--key)")
        for name in ("max_pages", "max_message_bytes", "rate_burst", "max_in_flight"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("rate_hz", "timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.complexity not in (0, 1):
            raise ValueError(f"complexity must be 0 (lite) or 1 (full), got {self.complexity}")
        if self.forecast not in ("auto", "none", "constant_velocity", "learned"):
            raise ValueError(f"forecast must be auto, none, constant_velocity or learned, got {self.forecast!r}")
        if self.delegate not in ("CPU", "GPU"):
            raise ValueError(f"delegate must be CPU or GPU, got {self.delegate!r}")


def _int_in(d: dict, key: str, lo: int, hi: int, page_id=None) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise PageError(P.ErrorCode.BAD_MESSAGE, f"'{key}' must be an integer in [{lo}, {hi}], got {_show(v)}",
                        page_id)
    return v


def _show(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def parse_page_message(text, accepted: tuple[int, ...]) -> tuple[str, dict]:
    """``(type, fields)`` of one message from a page, checked; raises :class:`PageError` naming what is wrong.

    ``landmarks``: ``id`` (the page's frame id, 0..2**53), ``w``/``h`` (the video's size, 1..16384), ``points``:
    null (nothing detected) or a flat list of K*3 finite numbers (K in ``accepted``; x, y in the video's
    normalised coordinates, third visibility or z), ``ms``: optional MediaPipe time of the frame; ``t``: optional
    capture time on the page's clock in ms (0..1e12), ``lead_ms``: optional, how far ahead to forecast (0..1000,
    the page's measured glass-to-glass latency).
    ``stats``: the page's own figures (a dict of numbers), kept for the bridge's /stats."""
    if not isinstance(text, str):
        raise PageError(P.ErrorCode.BAD_MESSAGE, "messages from the page are JSON text, got binary")
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise PageError(P.ErrorCode.BAD_MESSAGE, f"not JSON: {_show(str(e))}") from None
    if not isinstance(d, dict):
        raise PageError(P.ErrorCode.BAD_MESSAGE, f"a message is a JSON object, got {type(d).__name__}")
    kind = d.get("type")
    if kind not in PAGE_TYPES:
        raise PageError(P.ErrorCode.BAD_MESSAGE, f"unknown message type {_show(kind)}: expected one of "
                                                  f"{', '.join(PAGE_TYPES)}")
    if kind == "stats":
        figures = {k: float(v) for k, v in d.items()
                   if isinstance(k, str) and len(k) <= 32 and isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v)}
        if len(figures) > 32:
            raise PageError(P.ErrorCode.BAD_MESSAGE, f"stats: at most 32 figures, got {len(figures)}")
        return kind, figures
    page_id = _int_in(d, "id", 0, 2 ** 53)
    w, h = _int_in(d, "w", 1, 16384, page_id), _int_in(d, "h", 1, 16384, page_id)
    ms = d.get("ms")
    if ms is not None and (isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 <= ms < 1e5):
        raise PageError(P.ErrorCode.BAD_MESSAGE, f"'ms' must be a number in [0, 1e5) or absent, got {_show(ms)}",
                        page_id)
    t = d.get("t")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < 1e12):
        raise PageError(P.ErrorCode.BAD_MESSAGE, f"'t' must be a number in [0, 1e12) or absent, got {_show(t)}",
                        page_id)
    lead = d.get("lead_ms")
    if lead is not None and (isinstance(lead, bool) or not isinstance(lead, (int, float))
                             or not 0 <= lead <= P.MAX_LEAD_MS):
        raise PageError(P.ErrorCode.BAD_MESSAGE, f"'lead_ms' must be a number in [0, {P.MAX_LEAD_MS:g}] or absent, "
                                                 f"got {_show(lead)}", page_id)
    pts = d.get("points")
    if pts is None:
        lm = None
    else:
        if not isinstance(pts, list) or len(pts) % 3 or len(pts) // 3 not in accepted:
            n = len(pts) if isinstance(pts, list) else type(pts).__name__
            raise PageError(P.ErrorCode.BAD_MESSAGE, f"'points' must be null or a flat list of K*3 numbers with K in "
                                                     f"{list(accepted)}, got {n}", page_id)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pts):
            raise PageError(P.ErrorCode.BAD_MESSAGE, "'points' must hold numbers only", page_id)
        lm = np.asarray(pts, np.float64).reshape(-1, 3)
        if not np.isfinite(lm).all() or np.abs(lm).max() > 100:
            raise PageError(P.ErrorCode.BAD_LANDMARKS, "'points' must be finite and within [-100, 100]", page_id)
        lm = lm.astype(np.float32)
    return kind, {"id": page_id, "w": w, "h": h, "points": lm, "ms": ms, "t": t, "lead_ms": float(lead or 0.0)}


def frame_message(page_id: int, msg: P.Frame, dropped: int) -> bytes:
    """A reply for the page: a 4-byte big-endian header length, the header (JSON), the JPEG."""
    head = json.dumps({"id": page_id, "seq": msg.seq, "dropped": dropped, "lead_ms": msg.lead_ms,
                       "timings": {k: round(float(v), 2) for k, v in (msg.timings or {}).items()}}).encode()
    return struct.pack(">I", len(head)) + head + msg.jpeg


def parse_frame_message(data: bytes) -> tuple[dict, bytes]:
    """(header, JPEG) of a :func:`frame_message` (what the page's onFrame reads)."""
    n = struct.unpack(">I", data[:4])[0]
    return json.loads(data[4:4 + n]), data[4 + n:]


@dataclasses.dataclass
class BridgeCounters:
    pages_opened: int = 0
    pages_refused: int = 0
    messages: int = 0
    bad_messages: int = 0
    rate_limited: int = 0
    busy_dropped: int = 0
    frames_sent: int = 0
    frames_relayed: int = 0
    server_errors: int = 0


class PageSession:
    """One page's server session: hello/welcome, landmarks in, frames out (see the module docstring)."""

    def __init__(self, cfg: BridgeConfig, ctx: zmq.asyncio.Context, counters: BridgeCounters,
                 send_text: Callable, send_bytes: Callable, log: Callable[[str], None]):
        self.cfg, self.ctx, self.counters = cfg, ctx, counters
        self.send_text, self.send_bytes, self.log = send_text, send_bytes, log
        self.sock: zmq.asyncio.Socket | None = None
        self.welcome: P.Welcome | None = None
        self.seq = 0
        self.pending: OrderedDict[int, tuple[int, float]] = OrderedDict()   # seq -> (page id, sent monotonic)
        self.last_send = time.monotonic()
        self.normalizer = None
        self.aspect: float | None = None
        self.bucket = TokenBucket(cfg.rate_hz, cfg.rate_burst, time.monotonic())
        self.limited_since_report = 0
        self.page_stats: dict = {}
        self.rehello = False
        self.rehello_at = 0.0
        self.forecaster = None               # made with the normaliser (it needs the kind and the aspect)

    # -- the server side ------------------------------------------------------------------------------
    def _open(self) -> None:
        from clients.capture import open_dealer

        self.sock = open_dealer(self.ctx, self.cfg.server, self.cfg.server_key, self.cfg.key)

    async def _send(self, msg) -> None:
        version = self.welcome.version if self.welcome is not None else P.PROTOCOL_VERSION
        await self.sock.send(P.encode(msg, version))
        self.last_send = time.monotonic()

    def _hello(self) -> P.Hello:
        return P.Hello(client="posecast-web", versions=list(P.SUPPORTED_VERSIONS))

    async def connect(self) -> P.Welcome:
        """Say hello and wait ``timeout_s`` for the Welcome; ConnectionError with the reason otherwise."""
        self._open()
        await self._send(self._hello())
        deadline = time.monotonic() + self.cfg.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not await self.sock.poll(int(left * 1000) + 1):
                break
            try:
                msg = P.decode(await self.sock.recv())
            except P.ProtocolError:
                continue
            if isinstance(msg, P.Welcome):
                self.welcome = msg
                return msg
            if isinstance(msg, P.Error):
                raise ConnectionError(f"the posecast server at {self.cfg.server} refused the session: "
                                      f"{msg.code}: {msg.reason}")
        raise ConnectionError(f"no posecast server answered at {self.cfg.server} within {self.cfg.timeout_s:g} s")

    def close(self) -> None:
        if self.sock is not None and not self.sock.closed:
            try:
                self.sock.send(P.encode(P.Bye(), self.welcome.version if self.welcome else P.PROTOCOL_VERSION),
                               zmq.NOBLOCK)
            except zmq.ZMQError:
                pass   # the queue is full or the socket is gone: the server frees the session on idle anyway
            self.sock.close(linger=0)
            self.sock = None

    def welcome_for_page(self) -> dict:
        w = self.welcome
        return {"type": "welcome", "kind": w.kind, "num_landmarks": w.num_landmarks, "size": w.size, "fps": w.fps,
                "model": w.model, "backend": w.backend, "version": w.version, "complexity": self.cfg.complexity,
                "delegate": self.cfg.delegate,
                "max_in_flight": self.cfg.max_in_flight}

    async def pump_server(self) -> None:
        """Relay the server's replies to the page until the socket closes; raises ConnectionError when the
        server stops answering."""
        while True:
            if not await self.sock.poll(int(self.welcome.heartbeat_s / 2 * 1000)):
                now = time.monotonic()
                waiting = [t for _, t in self.pending.values()] + ([self.rehello_at] if self.rehello else [])
                if waiting and now - min(waiting) > self.cfg.timeout_s:
                    raise ConnectionError(f"no reply from the posecast server at {self.cfg.server} for "
                                          f"{self.cfg.timeout_s:g} s")
                if now - self.last_send > self.welcome.heartbeat_s / 2:
                    await self._send(P.Ping(ts=time.time()))
                continue
            raw = await self.sock.recv()
            try:
                msg = P.decode(raw, self.welcome.version)
            except P.ProtocolError as e:
                self.counters.server_errors += 1
                await self.send_text({"type": "error", "code": "bad_reply", "reason": f"malformed reply: {e.reason}"})
                continue
            await self._on_reply(msg)
            if time.monotonic() - self.last_send > self.welcome.heartbeat_s / 2:
                await self._send(P.Ping(ts=time.time()))

    async def _on_reply(self, msg) -> None:
        if isinstance(msg, P.Frame):
            got = self.pending.pop(msg.seq, None)
            dropped = 0
            while self.pending and next(iter(self.pending)) < msg.seq:   # older ones the server skipped
                self.pending.popitem(last=False)
                dropped += 1
            if got is None:
                return      # not ours any more (a session before a hello again)
            self.counters.frames_relayed += 1
            await self.send_bytes(frame_message(got[0], msg, dropped))
        elif isinstance(msg, P.Error):
            self.counters.server_errors += 1
            if msg.code == P.ErrorCode.NO_SESSION and not self.rehello:
                self.pending.clear()
                self.rehello, self.rehello_at = True, time.monotonic()
                self.log("the server lost a page's session; saying hello again")
                await self._send(self._hello())
            page_id = self.pending.pop(msg.seq, (None,))[0] if msg.seq is not None else None
            await self.send_text({"type": "error", "code": msg.code, "reason": msg.reason, "id": page_id})
        elif isinstance(msg, P.Welcome) and self.rehello:
            self.rehello = False
            if (msg.kind, msg.num_landmarks) != (self.welcome.kind, self.welcome.num_landmarks):
                raise ConnectionError("the server came back with a different model")
            self.welcome = msg

    # -- the page side --------------------------------------------------------------------------------
    async def on_page(self, data) -> None:
        """One WebSocket message from the page."""
        self.counters.messages += 1
        if not self.bucket.take(time.monotonic()):
            self.counters.rate_limited += 1
            self.limited_since_report += 1
            if self.limited_since_report == 1 or self.limited_since_report % 100 == 0:
                await self.send_text({"type": "error", "code": "rate_limited",
                                      "reason": f"more than {self.cfg.rate_hz:g} messages/s (burst "
                                                f"{self.cfg.rate_burst}): dropped {self.limited_since_report}"})
            return
        self.limited_since_report = 0
        try:
            kind, d = parse_page_message(data, layout_of(self.welcome.kind).accepted)
            if kind == "stats":
                self.page_stats = d
                return
            await self._landmarks(d)
        except PageError as e:
            self.counters.bad_messages += 1
            await self.send_text({"type": "error", "code": e.code, "reason": e.reason, "id": e.page_id})

    async def _landmarks(self, d: dict) -> None:
        if self.rehello:
            return
        if len(self.pending) >= self.cfg.max_in_flight:
            self.counters.busy_dropped += 1
            await self.send_text({"type": "error", "code": "busy", "id": d["id"],
                                  "reason": f"{self.cfg.max_in_flight} frames outstanding: frame not sent"})
            return
        aspect = d["w"] / d["h"]
        if self.normalizer is None or aspect != self.aspect:
            from models.forecast import for_frame, make_forecaster
            from models.posenorm import live_normalizer
            w = self.welcome
            self.aspect = aspect
            self.normalizer, how = live_normalizer(w.kind, w.subject_stats, self.cfg.normalize, aspect=aspect,
                                                   warmup=self.cfg.warmup_frames, fps=w.fps)
            self.forecaster = for_frame(make_forecaster(self.cfg.forecast, w.kind), aspect)   # square units
        shown, lead = d["points"], 0.0
        if shown is not None and d["t"] is not None and self.forecaster.name != "none":
            # the pose one page latency ahead (the capture client's forecast; the page measures its own latency)
            self.forecaster.update(d["t"] / 1e3, shown)
            lead = d["lead_ms"]
            shown = self.forecaster.predict(lead / 1e3)
        lm = self.normalizer(shown)
        msg = P.Landmarks.from_array(self.seq, time.time(), lm, self.welcome.num_landmarks, lead)
        raw = P.encode(msg, self.welcome.version)
        try:
            P.decode(raw, self.welcome.version)          # the server's own check, before it goes out
        except P.ProtocolError as e:
            raise PageError(e.code, e.reason, d["id"]) from None
        await self.sock.send(raw)
        self.last_send = time.monotonic()
        self.pending[self.seq] = (d["id"], time.monotonic())
        self.seq += 1
        self.counters.frames_sent += 1


_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".task": "application/octet-stream", ".wasm": "application/wasm", ".data": "application/octet-stream",
          ".binarypb": "application/octet-stream", ".tflite": "application/octet-stream", ".html": "text/html",
          ".css": "text/css", ".json": "application/json"}


class Bridge:
    """The aiohttp application: the page (``/``), its script and style (``/static/``), the MediaPipe files
    (``/assets/tasks/...``, ``/assets/pose/...``, ``/assets/face/...``: clients/web/assets.py), one WebSocket per page (``/ws``) and the bridge's counters
    (``/stats``, JSON)."""

    def __init__(self, cfg: BridgeConfig, assets_root: Path, log: Callable[[str], None] = print):
        from clients.capture import server_address

        self.cfg = dataclasses.replace(cfg, server=server_address(cfg.server))
        if cfg.key is not None:   # fail now, in one line, on an unreadable key file
            from realtime.security import load_public, load_secret
            load_secret(cfg.key)
            load_public(cfg.server_key)
        self.assets = Path(assets_root)
        self.log = log
        self.pages: set[PageSession] = set()
        self.counters = BridgeCounters()
        self.ctx = zmq.asyncio.Context()

    def app(self):
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/assets/{kind}/{name}", self._asset)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/stats", self._stats)
        app.router.add_get("/favicon.ico", self._no_content)
        app.on_shutdown.append(self._shutdown)
        return app

    # -- files ------------------------------------------------------------------------------------------
    @staticmethod
    def _file(folder: Path, name: str):
        from aiohttp import web

        path = folder / name
        if "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound(text=f"no such file: {name}")
        return web.FileResponse(path, headers={"Content-Type": _TYPES.get(path.suffix, "application/octet-stream"),
                                               "Cache-Control": "no-cache"})

    async def _no_content(self, request):
        from aiohttp import web

        return web.Response(status=204)

    async def _index(self, request):
        return self._file(STATIC, "index.html")

    async def _static(self, request):
        return self._file(STATIC, request.match_info["name"])

    async def _asset(self, request):
        from aiohttp import web

        from clients.web.assets import SERVED, served_dir

        name = request.match_info["kind"]
        if name not in SERVED:
            raise web.HTTPNotFound(text=f"no assets {name!r}")
        return self._file(served_dir(name, self.assets), request.match_info["name"])

    async def _stats(self, request):
        from aiohttp import web

        pages = [dict(p.page_stats, outstanding=len(p.pending)) for p in self.pages]
        return web.json_response({"pages": len(self.pages), "counters": dataclasses.asdict(self.counters),
                                  "page_stats": pages})

    # -- pages ------------------------------------------------------------------------------------------
    async def _ws(self, request):
        from aiohttp import WSMsgType, web

        origin = request.headers.get("Origin")
        if origin is not None:
            from urllib.parse import urlsplit
            if urlsplit(origin).netloc != request.host:   # another site's page must not drive this bridge
                self.counters.pages_refused += 1
                raise web.HTTPForbidden(text=f"WebSocket from another origin ({origin}) refused")
        ws = web.WebSocketResponse(max_msg_size=self.cfg.max_message_bytes, heartbeat=20.0)
        await ws.prepare(request)
        if len(self.pages) >= self.cfg.max_pages:
            self.counters.pages_refused += 1
            await ws.send_json({"type": "error", "code": P.ErrorCode.SERVER_BUSY,
                                "reason": f"this bridge already serves {self.cfg.max_pages} pages"})
            await ws.close()
            return ws

        async def send_text(d: dict) -> None:
            if not ws.closed:
                await ws.send_str(json.dumps(d))

        async def send_bytes(b: bytes) -> None:
            if not ws.closed:
                await ws.send_bytes(b)

        page = PageSession(self.cfg, self.ctx, self.counters, send_text, send_bytes, self.log)
        self.pages.add(page)
        self.counters.pages_opened += 1
        pump = None
        try:
            try:
                await page.connect()
            except ConnectionError as e:
                await send_text({"type": "error", "code": "server_unreachable", "reason": str(e)})
                return ws
            await send_text(page.welcome_for_page())
            pump = asyncio.create_task(page.pump_server())
            reader = asyncio.create_task(self._read_page(ws, page, WSMsgType))
            done, _ = await asyncio.wait({pump, reader}, return_when=asyncio.FIRST_COMPLETED)
            if pump in done and pump.exception() is not None:
                err = pump.exception()
                await send_text({"type": "error", "code": "server_lost", "reason": str(err)})
                if not isinstance(err, ConnectionError):
                    self.log(f"a page's relay failed: {err!r}")
            reader.cancel()
        finally:
            if pump is not None:
                pump.cancel()
            page.close()
            self.pages.discard(page)
            if not ws.closed:
                await ws.close()
        return ws

    async def _read_page(self, ws, page: PageSession, WSMsgType) -> None:
        async for m in ws:
            if m.type == WSMsgType.TEXT:
                await page.on_page(m.data)
            elif m.type == WSMsgType.BINARY:
                await page.on_page(bytes(m.data))
            else:   # ERROR (e.g. a message over max_message_bytes): aiohttp closes the socket
                break

    async def _shutdown(self, app) -> None:
        for page in list(self.pages):     # say bye for every page (frees their server sessions at once)
            page.close()
        self.ctx.destroy(linger=0)


def serve_web(cfg: BridgeConfig, *, host: str = "127.0.0.1", port: int = DEFAULT_WEB_PORT,
              cert: str | None = None, key_file: str | None = None, assets_root: Path | None = None,
              log: Callable[[str], None] = print) -> None:
    """Run the bridge until Ctrl-C. HTTPS with ``cert``/``key_file`` (browsers give the webcam only to
    https:// pages and to http://localhost)."""
    from aiohttp import web

    from clients.web.assets import require

    root = require(assets_root)
    if (cert is None) != (key_file is None):
        raise ValueError("HTTPS needs both --cert and --tls-key")
    ssl_ctx = None
    if cert is not None:
        import ssl
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(cert, key_file)
    bridge = Bridge(cfg, root, log)
    scheme = "https" if ssl_ctx else "http"
    log(f"posecast web: open {scheme}://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}/ "
        f"(pages -> {bridge.cfg.server}; at most {cfg.max_pages} at once)")
    if ssl_ctx is None and host not in ("127.0.0.1", "localhost", "::1"):
        log("note: browsers give the webcam only to https:// pages and http://localhost; from another machine "
            "use --cert/--tls-key or a TLS reverse proxy (docs/web.md)")
    from models.forecast import one_blas_thread

    with one_blas_thread():      # the forecasters' small products beside a server: BLAS threads would only spin
        web.run_app(bridge.app(), host=host, port=port, ssl_context=ssl_ctx, print=None)
