#!/usr/bin/env bash
# Install wrk (the HTTP load tool benchmarks/load.py drives) from the distribution's packages, once.
# Idempotent: does nothing when `wrk` is already on PATH. Needs root (or sudo) for apt-get/dnf/brew as usual.
set -euo pipefail

if command -v wrk >/dev/null 2>&1; then
    echo "wrk already installed: $(command -v wrk)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get install -y wrk || { $SUDO apt-get update && $SUDO apt-get install -y wrk; }
elif command -v dnf >/dev/null 2>&1; then
    $SUDO dnf install -y wrk
elif command -v brew >/dev/null 2>&1; then
    brew install wrk
else
    echo "no apt-get, dnf or brew: install wrk (https://github.com/wg/wrk) by hand" >&2
    exit 1
fi
wrk --version 2>&1 | head -1 || true
