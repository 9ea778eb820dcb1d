#!/usr/bin/env bash
# Set up (if needed) and train the main job: ResNet-18 on scikit-learn's digits, on the CPU.
# No download needed. Extra arguments go to `launch` (e.g. train.epochs=3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/launch recipe=resnet_finetune --device cpu "$@"
