#!/usr/bin/env bash
# Build glacierflow's wheel from a clean export of the committed tree (`git archive HEAD`), never from the working
# directory: a stale build/ tree or an untracked module cannot leak into it. Usage: scripts/build-wheel.sh [OUT_DIR]
# (default dist/). Prints the wheel's path. Needs git and a Python with pip (PYTHON, default python3).
set -euo pipefail
PYTHON=${PYTHON:-python3}
OUT=${1:-dist}
REF=${GLACIERFLOW_REF:-HEAD}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
git archive --format=tar "$REF" | tar -x -C "$SRC"
# Offline-friendly: reuse this Python's setuptools when it is new enough (>= 77, for `license = "MIT"`); otherwise
# pip builds in an isolated environment (fetching setuptools), instead of failing noisily first.
if "$PYTHON" -c 'import sys, setuptools; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null; then
  "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$OUT" "$SRC" >&2
else
  "$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$OUT" "$SRC" >&2
fi
ls -t "$OUT"/glacierflow-*.whl | head -1
