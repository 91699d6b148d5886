# posecast — `make demo` and `make test` work on a fresh machine: each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU torch wheel: a local wheel folder when the machine has one, else PyTorch's CPU index.
TORCH_SRC ?= $(if $(wildcard /opt/wheels/torch-*.whl),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)
DEMO_DIR ?= demo

.PHONY: venv demo test test-fast bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SRC) -c constraints.txt -e '.[test]'
	touch $@

# The main job on the built-in synthetic dancer (see README).
demo: venv
	$(VENV)/bin/posecast synth --out $(DEMO_DIR)/data --frames 240 --size 128 --seed 1 --overwrite
	$(VENV)/bin/posecast synth --out $(DEMO_DIR)/heldout --frames 60 --size 128 --seed 7 --overwrite
	$(VENV)/bin/posecast train --data $(DEMO_DIR)/data --preset dance --size 128 --out $(DEMO_DIR)/run \
		--iterations 100000 --time-limit $${DEMO_TRAIN_SECONDS:-180} --checkpoint-every 100
	$(VENV)/bin/posecast eval $(DEMO_DIR)/run --data $(DEMO_DIR)/heldout --video $(DEMO_DIR)/out.mp4

test: venv
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
