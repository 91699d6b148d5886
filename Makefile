# posecast — `make demo` and `make test` work on a fresh machine: each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU torch wheel: a local wheel folder when the machine has one, else PyTorch's CPU index.
TORCH_SRC ?= $(if $(wildcard /opt/wheels/torch-*.whl),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)
DEMO_DIR ?= demo

.PHONY: venv web-assets demo demo-train demo-face demo-forecast web test bench bench-web soak fuzz clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SRC) -c constraints.txt -e '.[test]'
	$(BIN)/posecast web-assets || echo "make venv: the MediaPipe JS files could not be fetched (no npm registry?); posecast web and its browser test need them: make web-assets"
	touch $@

# The MediaPipe JS files the web page runs (npm registry, pinned sha512; see clients/web/assets.py).
web-assets: venv
	$(BIN)/posecast web-assets

# The main job: the live pipeline on loopback with the bundled model (server + capture client).
demo: venv
	$(BIN)/posecast demo --out $(DEMO_DIR)/out.mp4

# The offline job on the synthetic dancer: data -> a few minutes of training -> eval video and figures.
demo-train: venv
	$(BIN)/posecast synth --out $(DEMO_DIR)/data --frames 240 --size 128 --seed 1 --overwrite
	$(BIN)/posecast synth --out $(DEMO_DIR)/heldout --frames 60 --size 128 --seed 7 --overwrite
	$(BIN)/posecast train --data $(DEMO_DIR)/data --preset lite --size 128 \
		--out $(DEMO_DIR)/run --iterations 100000 --time-limit $${DEMO_TRAIN_SECONDS:-180} --checkpoint-every 100
	$(BIN)/posecast eval $(DEMO_DIR)/run --data $(DEMO_DIR)/heldout --video $(DEMO_DIR)/eval.mp4

# The face pipeline without footage: the synthetic talking face -> ~4 min of face-lite training -> eval on a
# held-out motion -> streamed live through the server and the capture client (input | output in demo/face.mp4).
demo-face: venv
	$(BIN)/posecast synth --kind face --out $(DEMO_DIR)/face-data --frames 240 --size 128 --seed 1 --overwrite
	$(BIN)/posecast synth --kind face --out $(DEMO_DIR)/face-heldout --frames 60 --size 128 --seed 7 --overwrite
	$(BIN)/posecast train --data $(DEMO_DIR)/face-data --preset face-lite --size 128 \
		--out $(DEMO_DIR)/face-run --iterations 100000 --time-limit $${DEMO_TRAIN_SECONDS:-240} --checkpoint-every 100
	$(BIN)/posecast eval $(DEMO_DIR)/face-run --data $(DEMO_DIR)/face-heldout --video $(DEMO_DIR)/face-eval.mp4
	$(BIN)/posecast demo --model $(DEMO_DIR)/face-run --source synthetic:7 --frames 150 --headless \
		--out $(DEMO_DIR)/face.mp4

# What forecasting the pose does at 100 ms of latency: the pose now | output without | with the forecast.
demo-forecast: venv
	$(BIN)/posecast forecast-video --out $(DEMO_DIR)/forecast.mp4 --latency 100 --seed 8

# The browser client: serve the bundled model and open http://localhost:8080/ (Ctrl-C stops both).
web: venv
	$(BIN)/posecast serve models/default --threads 1 & SERVE=$$!; trap "kill $$SERVE" EXIT INT TERM; \
	$(BIN)/posecast web

test: venv
	$(BIN)/python -m pytest -q

# Speed figures (never asserted in tests): generator latency per preset x backend x size, live stream.
bench: venv
	$(BIN)/posecast bench

# The browser client: bridge + server alone, then Chromium + fake webcam + posecast web + serve (a JSON line each).
BENCH_WEB_ARGS ?= --seconds 30
bench-web: venv
	$(BIN)/python -m posecast.webbench $(BENCH_WEB_ARGS)

# Long runs against a real server (never part of `make test`, which runs short versions of both).
# soak: N clients at 30 fps for 120 s, per-client accounting and server RSS growth.
SOAK_ARGS ?= --clients 4 --fps 30 --seconds 120
soak: venv
	$(BIN)/python -m posecast.stress soak $(SOAK_ARGS)

# fuzz: >= 100,000 malformed messages while a legitimate client streams, then the attacks of posecast/attack.py
# (floods, idle and slowloris connections, pre-claimed routing ids, resets) with the figures the server must hold.
FUZZ_ARGS ?= --messages 100000
ATTACK_ARGS ?= --seconds 20
fuzz: venv
	$(BIN)/python -m posecast.stress fuzz $(FUZZ_ARGS)
	$(BIN)/python -m posecast.attack $(ATTACK_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
