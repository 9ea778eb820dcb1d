#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=disabled  # never touch the network from tests
.venv/bin/python -m ruff check launcher recipes tests benchmarks
exec .venv/bin/python -m pytest "$@"
