// posecast web page: the webcam -> MediaPipe (in this page) -> landmarks over a WebSocket -> the bridge ->
// a posecast server; the frames come back as JPEG and are drawn beside the input. Never sends video.
// The page's own figures are in window.posecast.stats() (read by the browser test and `make bench-web`).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  kind: null, welcome: null, ready: false,
  sent: 0, detected: 0, answered: 0, dropped: 0, unmatched: 0, errors: 0, busy: 0, lastError: null,
  g2g: [], shown: [], firstShown: 0, mediapipe: [], inference: [], rtt: [], pending: new Map(), nextId: 0, lastSentAt: 0,
  sentAt: new Map(),
};
function percentile(xs, q) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

function stats() {
  const now = performance.now();
  const recent = state.shown.filter((t) => now - t <= 2000).length;   // frames drawn in the last 2 s
  const span = state.shown.length ? Math.min(2000, now - state.firstShown) / 1000 : 0;
  return {
    kind: state.kind, ready: state.ready,
    fps: span > 0.2 ? recent / span : 0,
    latency_p50_ms: percentile(state.g2g, 0.5), latency_p99_ms: percentile(state.g2g, 0.99),
    // camera frame -> landmarks on the page (for the worker: the frame's way there and back included), and
    // MediaPipe's own time in the worker (null for the face mesh, which runs here: mediapipe_ms is its time)
    mediapipe_ms: percentile(state.mediapipe, 0.5), inference_ms: percentile(state.inference, 0.5),
    sent: state.sent, detected: state.detected, answered: state.answered, dropped: state.dropped, unmatched: state.unmatched,
    errors: state.errors, busy: state.busy, outstanding: state.pending.size,
    // of the frames whose fate is known (answered, or skipped by the server, or refused): not those in flight
    answered_fraction: state.answered + state.dropped ? state.answered / (state.answered + state.dropped) : 0,
    last_error: state.lastError,
  };
}
function resetFigures() {             // start measuring now (the bench drops the warm-up this way)
  state.g2g = []; state.mediapipe = []; state.inference = []; state.shown = [];
  state.sent = state.detected = state.answered = state.dropped = state.unmatched = state.errors = state.busy = 0;
}
window.posecast = { stats, state, resetFigures };

function keep(xs, x, n = 300) { xs.push(x); if (xs.length > n) xs.shift(); }
function fmt(x, d = 0) { return x === null ? "-" : x.toFixed(d); }

function showStatus() {
  const s = stats();
  $("status").textContent =
    `fps ${fmt(s.fps, 1)}   glass-to-glass p50 ${fmt(s.latency_p50_ms)} ms  p99 ${fmt(s.latency_p99_ms)} ms   ` +
    `MediaPipe ${fmt(s.mediapipe_ms)} ms\n` +
    `sent ${s.sent}  answered ${s.answered}  dropped ${s.dropped}  errors ${s.errors}`;
}

function loadScript(src) {
  return new Promise((ok, fail) => {
    const el = document.createElement("script");
    el.src = src; el.onload = ok;
    el.onerror = () => fail(new Error(`could not load ${src} (did the bridge start with its MediaPipe files?)`));
    document.head.appendChild(el);
  });
}

function drawInput(video, points, kind) {
  const c = $("input"), g = c.getContext("2d");
  const w = video.videoWidth, h = video.videoHeight;
  const s = Math.min(w, h);                                // the centred square of the camera image
  const ox = (w - s) / 2, oy = (h - s) / 2;
  g.drawImage(video, ox, oy, s, s, 0, 0, c.width, c.height);
  if (!points) return;
  g.fillStyle = kind === "dance" ? "#3f3" : "#3cf";
  const r = kind === "dance" ? 3 : 1;
  for (const p of points) {
    if (kind === "dance" && p.visibility !== undefined && p.visibility < 0.5) continue;
    g.fillRect((p.x * w - ox) / s * c.width - r / 2, (p.y * h - oy) / s * c.height - r / 2, r, r);
  }
}

// The landmark detector for the model's kind: detect(video, t) -> the landmarks ({x, y, z, visibility}) or null.
// Dance: MediaPipe's Tasks API pose landmarker (wasm on the CPU by default: ~10x faster than the legacy pose
// solution's WebGL path without a GPU; clients/web/assets.py), in a worker (pose_worker.js). Face: the legacy face
// mesh solution (478 points with the irises, as the capture client's), on the page's thread (it needs the DOM).
async function makeDetector(welcome) {
  if (welcome.kind === "dance") {       // in a worker: the page's thread stays free to draw replies
    const worker = new Worker("/static/pose_worker.js", { type: "module" });
    let waiting = null;
    worker.onmessage = (ev) => { const w = waiting; waiting = null; if (w) w(ev.data); };
    const ask = (msg, transfer) => new Promise((ok) => { waiting = ok; worker.postMessage(msg, transfer || []); });
    const ready = await ask({ type: "init", model: welcome.complexity ? "full" : "lite", delegate: welcome.delegate });
    if (ready.type !== "ready") throw new Error(`MediaPipe did not start: ${ready.message}`);
    return { detect: async (video, t) => {
      const bitmap = await createImageBitmap(video);
      const r = await ask({ type: "frame", bitmap, t }, [bitmap]);
      if (r.type === "error") throw new Error(`MediaPipe: ${r.message}`);
      keep(state.inference, r.ms, 100);
      return r.points;
    } };
  }
  if (welcome.kind === "face") {
    await loadScript("/assets/face/face_mesh.js");
    const fm = new FaceMesh({ locateFile: (f) => `/assets/face/${f}` });
    fm.setOptions({ maxNumFaces: 1, refineLandmarks: true, minDetectionConfidence: 0.5, minTrackingConfidence: 0.5 });
    let last = null;
    fm.onResults((r) => { last = (r.multiFaceLandmarks && r.multiFaceLandmarks[0]) || null; });
    await fm.initialize();
    return { onPageThread: true, detect: async (video) => { await fm.send({ image: video }); return last; } };
  }
  throw new Error(`this page cannot run a ${welcome.kind} model`);
}

let ws = null, detector = null, video = null;

function sendLandmarks(lms, capturedAt) {
  const kind = state.kind;
  const ms = performance.now() - capturedAt;
  keep(state.mediapipe, ms, 100);
  let flat = null;
  if (lms) {
    flat = [];
    for (const p of lms) flat.push(p.x, p.y, kind === "dance" ? (p.visibility ?? 1) : p.z);
  }
  drawInput(video, lms, kind);
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  const id = state.nextId++;
  state.pending.set(id, capturedAt);
  state.lastSentAt = performance.now();
  state.sentAt.set(id, state.lastSentAt);
  state.sent++;
  if (lms) state.detected++;
  // t and lead_ms let the bridge forecast the pose one glass-to-glass latency ahead (its --forecast)
  const lead = Math.min(300, percentile(state.g2g.slice(-30), 0.5) ?? 0);
  ws.send(JSON.stringify({ type: "landmarks", id, w: video.videoWidth, h: video.videoHeight, points: flat,
                           ms: Math.round(ms * 10) / 10, t: capturedAt, lead_ms: Math.round(lead) }));
}

async function onFrame(buf) {
  const view = new DataView(buf);
  const n = view.getUint32(0);
  const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const t0 = state.pending.get(head.id);
  if (t0 === undefined) { state.unmatched++; return; }
  state.pending.delete(head.id);
  for (const [id] of state.pending) {          // older frames are not coming: the server kept the newest
    if (id >= head.id) break;
    state.pending.delete(id); state.sentAt.delete(id); state.dropped++;
  }
  const sentAt = state.sentAt.get(head.id);
  state.sentAt.delete(head.id);
  const bmp = await createImageBitmap(new Blob([new Uint8Array(buf, 4 + n)], { type: "image/jpeg" }));
  const c = $("output");
  c.getContext("2d").drawImage(bmp, 0, 0, c.width, c.height);
  bmp.close();
  const now = performance.now();
  state.answered++;
  keep(state.g2g, now - t0);
  keep(state.rtt, now - sentAt, 30);
  if (!state.shown.length) state.firstShown = now;
  keep(state.shown, now, 120);
  if (replied) { replied(); replied = null; }
}

function onText(msg) {
  if (msg.type === "welcome") {
    state.welcome = msg;
    $("model").textContent = `${msg.kind} model ${msg.model} (${msg.size}², ${msg.backend}) via the bridge`;
    if (!state.kind) start(msg).catch(fail);
  } else if (msg.type === "error") {
    state.errors++; state.lastError = `${msg.code}: ${msg.reason}`;
    if (msg.code === "busy") state.busy++;
    if (msg.id !== null && msg.id !== undefined && state.pending.delete(msg.id)) {
      state.sentAt.delete(msg.id); state.dropped++;
    }
    if (replied) { replied(); replied = null; }
    $("error").textContent = state.lastError;
  }
}

async function start(welcome) {
  $("status").textContent = `loading MediaPipe (${welcome.kind})…`;
  detector = await makeDetector(welcome);
  state.kind = welcome.kind;
  state.ready = true;
  loop();
}

function nextVideoFrame() {
  if (video.requestVideoFrameCallback) return new Promise((ok) => video.requestVideoFrameCallback(() => ok()));
  return new Promise((ok) => requestAnimationFrame(() => ok()));
}

let replied = null;                 // resolves when a reply (frame or error) comes back
function waitReply(ms) {
  return new Promise((ok) => { const t = setTimeout(ok, ms); replied = () => { clearTimeout(t); ok(); }; });
}

async function loop() {
  let frame = nextVideoFrame();
  for (;;) {
    // A detector on the page's thread (the face mesh) holds it while it runs, so a reply that arrives meanwhile
    // waits for the whole run before it is drawn. When the outstanding reply is due before the next run would
    // end (its usual round trip is shorter than MediaPipe's time), wait for it first; over a long round trip
    // nothing waits. (The pose landmarker runs in a worker: nothing to wait for.)
    const mp = percentile(state.mediapipe.slice(-10), 0.5), rtt = percentile(state.rtt.slice(-30), 0.5);
    // (Round trips are measured when drawn; the first ones are waited for, so they are not inflated by a run.)
    if (detector.onPageThread && state.pending.size && mp !== null) {
      const due = rtt === null ? 250 : state.lastSentAt + rtt - performance.now();
      if (due > 0 && (rtt === null || due < mp)) await waitReply(due + 15);
    }
    await frame;
    frame = nextVideoFrame();      // asked now, so a frame shown while MediaPipe runs is taken at once after it
    const limit = state.welcome ? state.welcome.max_in_flight : 8;
    if (!ws || ws.readyState !== WebSocket.OPEN || state.pending.size >= limit) continue;
    const capturedAt = performance.now();
    sendLandmarks(await detector.detect(video, capturedAt), capturedAt);
  }
}

function connect() {
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onText(JSON.parse(ev.data)) : onFrame(ev.data).catch(fail));
  ws.onclose = () => {
    state.pending.clear(); state.sentAt.clear();
    $("error").textContent = (state.lastError ? state.lastError + "\n" : "") + "bridge disconnected; retrying in 2 s";
    setTimeout(connect, 2000);
  };
}

function fail(e) {
  state.lastError = String(e && e.message ? e.message : e);
  $("error").textContent = state.lastError;
}

async function main() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("this page has no camera access: browsers allow it on https:// pages and http://localhost " +
                    "only (see docs/web.md: --cert/--tls-key or a TLS reverse proxy)");
  }
  video = $("video");
  video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  await video.play();
  connect();
  setInterval(() => {
    showStatus();
    if (ws && ws.readyState === WebSocket.OPEN && state.ready) {
      const s = stats(), figures = {};
      for (const k of ["fps", "latency_p50_ms", "latency_p99_ms", "mediapipe_ms", "answered_fraction", "sent",
                       "answered", "dropped"]) if (typeof s[k] === "number") figures[k] = s[k];
      ws.send(JSON.stringify({ type: "stats", ...figures }));
    }
  }, 1000);
}

main().catch(fail);
