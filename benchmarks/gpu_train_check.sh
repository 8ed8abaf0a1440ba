#!/usr/bin/env bash
# GPU check of `plugformer train`: a few bf16 steps on CUDA with NCCL, for a session with a GPU.
#
#   bash benchmarks/gpu_train_check.sh            # uses every visible GPU (1 is enough)
#   PYTHON=python3 bash benchmarks/gpu_train_check.sh
#
# What it checks, in about two minutes on one GPU:
#   1. one process on cuda:0, bf16 autocast, with checkpoints;
#   2. torchrun on all visible GPUs (NCCL; a group of one on a single GPU) with ddp and fsdp:
#      the loss curves agree with run 1 (bf16: to 2e-2, reduction orders differ);
#   3. an fsdp run killed after step 15 and resumed from its step-10 checkpoint repeats the
#      uninterrupted fsdp curve;
#   4. the fsdp run's model.safetensors loads on the CPU with plugformer.load and scores what
#      the run reported (to bf16 tolerance: the run evaluated under autocast);
#   5. --compile runs and follows run 1.
# Prints tokens/s per run from each summary.json; exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then
    echo "gpu_train_check: no CUDA device visible" >&2
    exit 1
fi
OUT=$(mktemp -d)
SPEC="gpt_tiny(layers=4, d_model=256, heads=8)"
TASK="mqar(pairs=16, eval_size=256)"
COMMON=(--task "$TASK" --steps 20 --batch 64 --lr 3e-3 --precision bf16 --no-progress)
RUN=("$PY" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m plugformer.train "$SPEC")
echo "gpu_train_check: $GPUS GPU(s), runs in $OUT"

"$PY" -m plugformer.train "$SPEC" "${COMMON[@]}" --checkpoint-every 10 --out "$OUT/one"
for strategy in ddp fsdp; do
    "${RUN[@]}" "${COMMON[@]}" --strategy "$strategy" --checkpoint-every 10 --out "$OUT/$strategy"
done
PLUGFORMER_TRAIN_STOP_AFTER=15 "${RUN[@]}" "${COMMON[@]}" --strategy fsdp --checkpoint-every 10 \
    --out "$OUT/resumed" && { echo "gpu_train_check: the killed run did not stop" >&2; exit 1; }
"${RUN[@]}" "${COMMON[@]}" --strategy fsdp --checkpoint-every 10 --out "$OUT/resumed" --resume
"$PY" -m plugformer.train "$SPEC" "${COMMON[@]}" --compile --out "$OUT/compiled"

"$PY" - "$OUT" "$TASK" <<'EOF'
import json, sys
from pathlib import Path

import plugformer
from plugformer.compare import make_task
from plugformer.train import evaluate

out, task = Path(sys.argv[1]), sys.argv[2]
def losses(name):
    return [json.loads(line)["loss"] for line in (out / name / "metrics.jsonl").read_text().splitlines()]
def close(a, b, tol):
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) <= tol

one = losses("one")
failures = []
for name, reference, tol in (("ddp", one, 2e-2), ("fsdp", one, 2e-2), ("compiled", one, 2e-2),
                             ("resumed", losses("fsdp"), 1e-3)):
    if not close(losses(name), reference, tol):
        failures.append(f"{name}: {losses(name)} vs {reference}")
summary = json.loads((out / "fsdp" / "summary.json").read_text())
model = plugformer.load(out / "fsdp" / "model.safetensors")
(score,) = evaluate(model, make_task(task))
reported = summary["evals"][0]["accuracy"]
if abs(score.accuracy - reported) > 2e-2:
    failures.append(f"fsdp model on CPU scores {score.accuracy:.4f}, the run reported {reported:.4f}")
for name in ("one", "ddp", "fsdp", "resumed", "compiled"):
    s = json.loads((out / name / "summary.json").read_text())
    print(f"{name:>9}: world {s['world']}  {s['tokens_per_s']:>12,.0f} tokens/s  final loss {s['final_loss']:.4f}")
if failures:
    sys.exit("gpu_train_check FAILED:\n  " + "\n  ".join(failures))
print("gpu_train_check: all checks passed")
EOF
