#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. Extra arguments go to pytest.
# As root on Debian it also starts the local two-node Slurm cluster (slurm/cluster.sh) for the
# tests marked `slurm`, and stops it afterwards if it was not running before.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=disabled  # never touch the network from tests
.venv/bin/python -m ruff check launcher recipes tests benchmarks
if [ "$(id -u)" = 0 ] && command -v slurmctld >/dev/null; then
  export SLURM_CONF="${LAUNCHER_SLURM_DIR:-/tmp/launcher-slurm}/slurm.conf"
  if ! sinfo -h >/dev/null 2>&1; then
    trap 'bash slurm/cluster.sh down' EXIT
  fi
  bash slurm/cluster.sh up
  export LAUNCHER_REQUIRE_SLURM=1  # the slurm tests fail instead of skipping if the cluster is gone
fi
# Two pytest-xdist workers: most tests wait on processes they start (torchrun, sleeps in kill tests,
# Slurm's scheduler), so two at a time keep both cores busy. A file's tests stay in one worker (the
# Slurm cluster's run one after another; tests/conftest.py puts them first). `-n 0`: one at a time.
.venv/bin/python -m pytest -n 2 --dist loadfile "$@"
