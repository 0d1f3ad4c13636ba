#!/usr/bin/env bash
# On the GPU host, from the repository root, after the parts were copied to /tmp/stage: unpack onnxruntime-gpu and
# the artifacts, install bentoml's wheels into their own directory (used by the server process only), and run
# benchmarks.bench_gpu. Results go to $OUT (or benchmarks/results/) as bench_gpu.json and bench_gpu.png.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUTDIR=${OUT:-benchmarks/results}
bash .gpu/run/unpack.sh
SITE=/tmp/site PL=/tmp/pl BSITE=/tmp/bsite
rm -rf "$BSITE" && python3 -m pip install -q --no-index --no-deps --no-compile --target "$BSITE" .gpu/whl/*.whl
export PYTHONPATH="$SITE:$PWD/src:$PWD" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
# The host pipeline's own ceiling on this machine's CPU (null-compute graph, 1 to 16 cores; no GPU involved).
if [ -z "${SKIP_PIPELINE:-}" ]; then
python3 -c "from pathlib import Path; from benchmarks.bench_gpu import unstage_artifacts as u; \
u(Path('$PL/art'), Path('/tmp/bench-gpu/artifacts'))"
PYTHONUNBUFFERED=1 timeout 150 python3 -m benchmarks.bench_pipeline --artifact /tmp/bench-gpu/artifacts/fp32 \
  --cores 1,2,4,8,16 --seconds 2 --out "$OUTDIR/bench_pipeline_gpu_host.json" || echo "bench_pipeline failed: $?"
fi
PYTHONUNBUFFERED=1 timeout "${BENCH_TIMEOUT:-420}" python3 -m benchmarks.bench_gpu --staged "$PL/art" --st-model "$PL/st" \
  --server-pythonpath "$BSITE:$SITE:$PWD/src:$PWD" --out "$OUTDIR/bench_gpu.json" "$@"
