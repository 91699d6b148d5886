"""The browser front: ``posecast web`` (a page that runs MediaPipe in the browser and a bridge to a posecast
server), and the MediaPipe JS files it serves (:mod:`clients.web.assets`)."""
