#!/usr/bin/env bash
# The GPU checks of the transfer-learning engine (issue 3) and the Horovod path (issue 5), in one
# run on a host with one CUDA GPU and matrec importable from PY:
#
#   PY=.venv/bin/python OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# 1. builds Horovod with NCCL in the background (scripts/build_horovod.sh; HOROVOD_SDIST for an
#    offline host), while
# 2. engine_throughput.py --device cuda runs resnet50 (ARCHITECTURE.md's anchor model) with the
#    engine's step alone and through a one-rank torch.distributed collective;
# 3. a real fine-tune on the bundled texture dataset runs on the GPU (channels_last + bf16), then
# 4. once Horovod is built, the same benchmark through a one-rank Horovod collective.
# Figures go to $OUT/*.json. Knobs: MODEL (resnet50), ROUNDS (4), STEPS (25), COLLECTIVES
# ("none torch": those measured while Horovod builds), FINETUNE (1: run step 3).
# An offline host needs Horovod's sdist (HOROVOD_SDIST) and its build requirement cffi.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
OUT="${OUT:-$ROOT/.cache/gpu-check}"
MODEL="${MODEL:-resnet50}"
BENCH_ARGS=(--device cuda --model "$MODEL" --rounds "${ROUNDS:-4}" --steps "${STEPS:-25}")
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.cuda.get_device_name(0))' \
    || exit 1

HOROVOD_BUILD_JOBS="${HOROVOD_BUILD_JOBS:-$(($(nproc) - 2))}" \
    bash "$ROOT/scripts/build_horovod.sh" "$PY" >"$OUT/horovod_build.txt" 2>&1 &
build_pid=$!

for collective in ${COLLECTIVES:-none torch}; do
    echo "== engine vs hand loop, $MODEL, collective $collective"
    "$PY" "$ROOT/benchmarks/engine_throughput.py" "${BENCH_ARGS[@]}" --collective "$collective" \
        --json "$OUT/engine_$collective.json"
done

if [ "${FINETUNE:-1}" = 1 ]; then
echo "== fine-tune on the bundled dataset, on the GPU"
"$PY" - "$OUT" <<'EOF'
import json, sys, tempfile, time
from pathlib import Path

from matrec.agent.training.finetune import run_finetune
from matrec.common.specs import FinetuneConfig
from matrec.sdk.demo_dataset import make_demo_dataset

out = Path(sys.argv[1])
work = Path(tempfile.mkdtemp())
make_demo_dataset(work / "data")
log: list[str] = []


class Reporter:
    def metrics(self, step, values):
        pass

    def checkpoint(self, path, epoch, step):
        log.append(f"checkpoint epoch {epoch} step {step}")

    def log(self, text):
        log.append(text)


figures = {}
for model_type in ("cnn", "hybrid"):
    config = FinetuneConfig(
        dataset_path=str(work / "data"), model="resnet18", model_type=model_type,
        epochs=5, batch_size=64, image_size=128, device="cuda", seed=0,
    )
    started = time.perf_counter()
    result = run_finetune(config, work / f"run-{model_type}", Reporter())
    seconds = time.perf_counter() - started
    figures[model_type] = {"val_accuracy": result.val_accuracy, "seconds": seconds,
                           "steps": result.steps, "macro_f1": result.evaluation.get("macro_f1")}
    print(f"{model_type}: val accuracy {result.val_accuracy:.3f}, {seconds:.1f} s, "
          f"{result.steps} steps, checkpoint {(work / f'run-{model_type}/checkpoints/last.pt').is_file()}")
print("\n".join(line for line in log if "device" in line.lower() or "cuda" in line.lower())[:2000])
(out / "finetune_cuda.json").write_text(json.dumps(figures, indent=2) + "\n")
EOF
fi

echo "== waiting for the Horovod build"
wait "$build_pid"
tail -n 5 "$OUT/horovod_build.txt"
if "$PY" -c 'import horovod.torch' 2>/dev/null; then
    echo "== engine vs hand loop, $MODEL, collective horovod"
    "$PY" "$ROOT/benchmarks/engine_throughput.py" "${BENCH_ARGS[@]}" --collective horovod \
        --json "$OUT/engine_horovod.json"
else
    echo "Horovod did not build: see $OUT/horovod_build.txt and horovod-build.log"
    cp "$ROOT/.cache/horovod-build.log" "$OUT/" 2>/dev/null
fi
