"""Live side of posecast: compiled generator engines, the ZeroMQ server and its wire protocol."""
