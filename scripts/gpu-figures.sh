#!/usr/bin/env bash
# The NVIDIA-GPU figures of docs/performance.md ("NVIDIA GPUs"), in one run (~6 min on an H200):
#   1. the GPU-marked tests (CUDA engines against the CPU; TensorRT where the tensorrt package is installed),
#   2. a 1-GPU DDP run (torchrun --nproc_per_node 1), resumed once,
#   3. `posecast bench --only-train` on CUDA: lite and dance at 256 and 512 px, fp32 and auto (bf16), both phases,
#   4. the generator's latency and batched throughput on CUDA (torch backend, fp32 and fp16 autocast; SKIP_INFER=1
#      leaves it out).
# Usage: OUT=folder scripts/gpu-figures.sh   (writes tests.log, ddp.log, train.jsonl, infer.jsonl there)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-figures}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
DEV=${DEV:-cuda}; SIZES=${SIZES:-256,512}; ITERS=${ITERS:-10}; DDP_ITERS=${DDP_ITERS:-100}   # (DEV=cpu SIZES=64 ITERS=1 DDP_ITERS=10: a dry run)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, numpy, cv2, onnxruntime as o, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__, 'cv2', cv2.__version__, 'ort', o.__version__, o.get_available_providers())"
$PY -c "import tensorrt" 2>/dev/null && echo "tensorrt installed" || echo "no tensorrt package here"

echo "== 1. GPU tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_batch.py tests/test_export.py 2>&1 | tee "$OUT/tests.log" | tail -15 || echo "== the GPU tests: exit $?"

echo "== 2. 1-GPU DDP run"
$PY -m posecast synth --out /tmp/gpu-ddp-data --frames 240 --size ${SIZES%%,*} --seed 1 --overwrite --quiet
rm -rf /tmp/gpu-ddp
run() { timeout 150 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m posecast train \
    --data /tmp/gpu-ddp-data --preset lite --size ${SIZES%%,*} --out /tmp/gpu-ddp --batch-size 4 --device $DEV --quiet \
    --checkpoint-every 100 "$@"; }
{ run --iterations $DDP_ITERS && run --iterations $((DDP_ITERS * 3 / 2)) --resume; echo "rc=$?"; } 2>&1 | tee "$OUT/ddp.log" | tail -12
$PY -c "import json; c=json.load(open('/tmp/gpu-ddp/config.json')); print(c['processes'], 'process(es),', c['precision'], c['train']['device'])" 2>&1 | tee -a "$OUT/ddp.log"
ls /tmp/gpu-ddp | tee -a "$OUT/ddp.log"

echo "== 3. training loop on CUDA"
timeout 240 $PY -m posecast bench --only-train --presets lite,dance --sizes $SIZES --precisions fp32,auto \
    --train-device $DEV --train-iterations $ITERS --json | tee "$OUT/train.jsonl" || echo "== the training bench: exit $?"

[ -n "${SKIP_INFER:-}" ] || {
echo "== 4. generator on CUDA"
DEV=$DEV SIZES=$SIZES timeout 120 $PY - <<'PY' | tee "$OUT/infer.jsonl" || echo "== the generator bench: exit $?"
import json, os, tempfile
import torch
from posecast.bench import bench_batch, random_checkpoint
from realtime.engine import TorchEngine
for half in (False, True):
    if half:   # fp16 autocast around the torch engine's calls (what a TensorRT fp16 engine would run)
        run = TorchEngine._run_tensors
        def _run_tensors(self, feeds, _run=run):
            with torch.autocast(os.environ["DEV"], dtype=torch.float16):
                return _run(self, feeds)
        TorchEngine._run_tensors = _run_tensors
        orig = TorchEngine._run
        def _run(self, feeds, _orig=orig):
            with torch.autocast(os.environ["DEV"], dtype=torch.float16):
                return _orig(self, feeds)
        TorchEngine._run = _run
    for preset in ("lite", "dance"):
        for size in map(int, os.environ["SIZES"].split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                for row in bench_batch(preset, "torch", size, (1, 8, 32), runs=30, device=os.environ["DEV"],
                                       model=random_checkpoint(preset, size, tmp)):
                    row["precision"] = "fp16-autocast" if half else "fp32"
                    print(json.dumps(row), flush=True)
PY
}

