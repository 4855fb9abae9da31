#!/usr/bin/env bash
# The whole pipeline on the offline twin (`glacierflow demo`): make and serve an 8-year small twin, build the
# NDSI cube with Dask, Farneback velocities, train one model briefly, evaluate it with both baselines,
# forecast the held-out last year for the whole scene, fine-tune on an aletsch twin (zero-shot vs fine-tuned
# next to both baselines), and draw every figure; each stage prints its wall and CPU seconds.
# Outputs land in demo-out/ (DEMO_DIR); a second run reuses them (DEMO_FRESH=1 starts over).
# Needs `glacierflow` on PATH (make demo sets it up). DEMO_SIZE=tiny for a quicker look.
set -euo pipefail
DEMO_DIR=${DEMO_DIR:-demo-out}
SIZE=${DEMO_SIZE:-small}
ARGS=(--workdir "$DEMO_DIR" --size "$SIZE")
if [ "${DEMO_FRESH:-0}" = "1" ]; then ARGS+=(--fresh); fi
exec glacierflow demo "${ARGS[@]}"
