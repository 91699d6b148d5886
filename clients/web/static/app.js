// posecast web page: the webcam -> MediaPipe (in this page) -> landmarks over a WebSocket -> the bridge ->
// a posecast server; the frames come back as JPEG and are drawn beside the input. Never sends video.
// The page's own figures are in window.posecast.stats() (read by the browser test and `make bench-web`).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  kind: null, welcome: null, ready: false,
  sent: 0, answered: 0, dropped: 0, unmatched: 0, errors: 0, busy: 0, lastError: null,
  g2g: [], shown: [], firstShown: 0, mediapipe: [], pending: new Map(), nextId: 0,
};
const SOLUTIONS = {
  dance: { script: "pose.js", make: (locate) => new Pose({ locateFile: locate }) },
  face: { script: "face_mesh.js", make: (locate) => new FaceMesh({ locateFile: locate }) },
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
    mediapipe_ms: percentile(state.mediapipe, 0.5),
    sent: state.sent, answered: state.answered, dropped: state.dropped, unmatched: state.unmatched,
    errors: state.errors, busy: state.busy, outstanding: state.pending.size,
    // of the frames whose fate is known (answered, or skipped by the server, or refused): not those in flight
    answered_fraction: state.answered + state.dropped ? state.answered / (state.answered + state.dropped) : 0,
    last_error: state.lastError,
  };
}
function resetFigures() {             // start measuring now (the bench drops the warm-up this way)
  state.g2g = []; state.mediapipe = []; state.shown = [];
  state.sent = state.answered = state.dropped = state.unmatched = state.errors = state.busy = 0;
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

function drawInput(image, points, kind) {
  const c = $("input"), g = c.getContext("2d");
  const s = Math.min(image.width, image.height);          // the centred square of the camera image
  const ox = (image.width - s) / 2, oy = (image.height - s) / 2;
  g.drawImage(image, ox, oy, s, s, 0, 0, c.width, c.height);
  if (!points) return;
  g.fillStyle = kind === "dance" ? "#3f3" : "#3cf";
  const r = kind === "dance" ? 3 : 1;
  for (const p of points) {
    if (kind === "dance" && p.visibility !== undefined && p.visibility < 0.5) continue;
    g.fillRect((p.x * image.width - ox) / s * c.width - r / 2, (p.y * image.height - oy) / s * c.height - r / 2, r, r);
  }
}

let ws = null, solution = null, capturedAt = 0, video = null;

function onResults(results) {
  const kind = state.kind;
  const ms = performance.now() - capturedAt;
  keep(state.mediapipe, ms, 100);
  const lms = kind === "dance" ? results.poseLandmarks
    : (results.multiFaceLandmarks && results.multiFaceLandmarks[0]);
  let flat = null;
  if (lms) {
    flat = [];
    for (const p of lms) flat.push(p.x, p.y, kind === "dance" ? (p.visibility ?? 1) : p.z);
  }
  drawInput(results.image, lms, kind);
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  const id = state.nextId++;
  state.pending.set(id, capturedAt);
  state.sent++;
  ws.send(JSON.stringify({ type: "landmarks", id, w: video.videoWidth, h: video.videoHeight, points: flat,
                           ms: Math.round(ms * 10) / 10 }));
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
    state.pending.delete(id); state.dropped++;
  }
  const bmp = await createImageBitmap(new Blob([new Uint8Array(buf, 4 + n)], { type: "image/jpeg" }));
  const c = $("output");
  c.getContext("2d").drawImage(bmp, 0, 0, c.width, c.height);
  bmp.close();
  const now = performance.now();
  state.answered++;
  keep(state.g2g, now - t0);
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
    if (msg.id !== null && msg.id !== undefined && state.pending.delete(msg.id)) state.dropped++;
    if (replied) { replied(); replied = null; }
    $("error").textContent = state.lastError;
  }
}

async function start(welcome) {
  const sol = SOLUTIONS[welcome.kind];
  if (!sol) throw new Error(`this page cannot run a ${welcome.kind} model`);
  $("status").textContent = `loading MediaPipe (${welcome.kind})…`;
  await loadScript(`/assets/${welcome.kind}/${sol.script}`);
  solution = sol.make((f) => `/assets/${welcome.kind}/${f}`);
  if (welcome.kind === "dance") {
    solution.setOptions({ modelComplexity: welcome.complexity, smoothLandmarks: true, enableSegmentation: false,
                          minDetectionConfidence: 0.5, minTrackingConfidence: 0.5 });
  } else {
    solution.setOptions({ maxNumFaces: 1, refineLandmarks: true, minDetectionConfidence: 0.5,
                          minTrackingConfidence: 0.5 });
  }
  solution.onResults(onResults);
  await solution.initialize();
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
  for (;;) {
    // MediaPipe holds this page's only thread while it runs: a reply that arrives meanwhile waits for it. When
    // MediaPipe is slower than the camera (no GPU: Chromium's software WebGL), wait for the reply first (at most
    // 250 ms), which halves the glass-to-glass latency for a few % of frame rate; with a fast MediaPipe the
    // reply is handled between camera frames anyway.
    if (state.pending.size && percentile(state.mediapipe.slice(-10), 0.5) > 33) await waitReply(250);
    await nextVideoFrame();
    const limit = state.welcome ? state.welcome.max_in_flight : 8;
    if (!ws || ws.readyState !== WebSocket.OPEN || state.pending.size >= limit) continue;
    capturedAt = performance.now();
    await solution.send({ image: video });
  }
}

function connect() {
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onText(JSON.parse(ev.data)) : onFrame(ev.data).catch(fail));
  ws.onclose = () => {
    state.pending.clear();
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
