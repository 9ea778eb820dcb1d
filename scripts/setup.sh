#!/usr/bin/env bash
# Idempotent set-up of a fresh machine (Debian/Ubuntu or any Linux with Python >= 3.10):
# creates .venv in the repository root and installs the project with its pinned dependencies.
# Re-running is cheap: nothing is reinstalled unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: $PYTHON is missing or older than 3.11; install Python 3.11+ (Debian: apt-get install python3 python3-venv)" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv || {
    echo "error: could not create .venv; on Debian install python3-venv (apt-get install python3-venv)" >&2
    exit 2
  }
fi
# System packages (Debian, as root): ffmpeg for torchaudio.load (YESNO), espeak-ng to make spoken test
# data, and Slurm + munge for the local test cluster (slurm/cluster.sh). Skipped when all are present.
APT_PACKAGES="ffmpeg espeak-ng slurmctld slurmd slurm-client munge"
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=""
  for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
  done
  if [ -n "$missing" ]; then
    echo "setup: apt-get install$missing" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
elif ! command -v ffmpeg >/dev/null; then
  echo "setup: note: not root or no apt-get; install ffmpeg (audio), espeak-ng and slurm yourself if you need them" >&2
fi
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing into .venv (first time: a few minutes, ~5 GB)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# Cached bytecode of the project's own modules, as an installed (non-editable) package has: every
# `launch` would otherwise compile them again where Python may not write its cache (for example
# with PYTHONDONTWRITEBYTECODE=1), ~0.05 s of each start. Up-to-date files are skipped.
.venv/bin/python -m compileall -q launcher recipes >/dev/null
