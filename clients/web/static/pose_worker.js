// The dance page's pose landmarker, off the page's thread: the page posts each camera frame (an ImageBitmap,
// transferred) and gets the landmarks back, so replies from the server are drawn while MediaPipe runs.
// Messages in: {type: "init", model, delegate} then {type: "frame", bitmap, t}; out: {type: "ready"},
// {type: "landmarks", t, ms (the landmarker's own time), points|null} or {type: "error", message}.
let landmarker = null;

self.onmessage = async (ev) => {
  const msg = ev.data;
  try {
    if (msg.type === "init") {
      const vision = await import("/assets/tasks/vision_bundle.mjs");
      const fileset = await vision.FilesetResolver.forVisionTasks("/assets/tasks", true);   // ES module wasm: a module worker has no importScripts
      landmarker = await vision.PoseLandmarker.createFromOptions(fileset, {
        baseOptions: { modelAssetPath: `/assets/pose/pose_landmarker_${msg.model}.task`, delegate: msg.delegate },
        runningMode: "VIDEO", numPoses: 1, minPoseDetectionConfidence: 0.5, minPosePresenceConfidence: 0.5,
        minTrackingConfidence: 0.5 });
      self.postMessage({ type: "ready" });
    } else if (msg.type === "frame") {
      const t0 = performance.now();
      const r = landmarker.detectForVideo(msg.bitmap, msg.t);
      const ms = performance.now() - t0;           // MediaPipe's own time, without the frame's way here and back
      msg.bitmap.close();
      const p = r.landmarks && r.landmarks.length ? r.landmarks[0] : null;
      self.postMessage({ type: "landmarks", t: msg.t, ms,
                         points: p && p.map((q) => ({ x: q.x, y: q.y, z: q.z, visibility: q.visibility })) });
    }
  } catch (e) {
    self.postMessage({ type: "error", message: String(e && e.message ? e.message : e) });
  }
};
