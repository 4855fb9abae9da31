#!/usr/bin/env bash
# The whole pipeline on the offline twin: make a small twin, serve it with a real STAC API, search it,
# build the NDSI cube with Dask, compute Farneback velocities and draw the flow figure.
# Outputs land in demo-out/ (DEMO_DIR). Needs `glacierflow` on PATH (make demo sets it up).
set -euo pipefail
DEMO_DIR=${DEMO_DIR:-demo-out}
SIZE=${DEMO_SIZE:-small}
mkdir -p "$DEMO_DIR"
TWIN="$DEMO_DIR/twin-$SIZE"
URL_FILE="$DEMO_DIR/stac-url.txt"
rm -f "$URL_FILE"

if [ ! -f "$TWIN/twin.json" ]; then
  echo "== 1. twin make: synthetic Landsat-8 C2-L2 world with ground truth ($SIZE)"
  glacierflow twin make "$TWIN" --glacier parvati --size "$SIZE" --overwrite
else
  echo "== 1. twin: reusing $TWIN"
fi
BBOX=$(python -c "import json,sys; print(' '.join(str(v) for v in json.load(open(sys.argv[1]))['bbox']))" "$TWIN/twin.json")
START=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['start'])" "$TWIN/twin.json")
END=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['end'])" "$TWIN/twin.json")

echo "== 2. twin serve: rustac STAC API + COGs over HTTP on 127.0.0.1"
glacierflow twin serve "$TWIN" --url-file "$URL_FILE" > "$DEMO_DIR/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -s "$URL_FILE" ] && break; kill -0 $SERVER 2>/dev/null || { cat "$DEMO_DIR/serve.log"; exit 1; }; sleep 0.1; done
URL=$(cat "$URL_FILE")
echo "   STAC API at $URL"

echo "== 3. search: Landsat-8, cloud cover <= 20 %"
# shellcheck disable=SC2086
glacierflow search --bbox $BBOX --start "$START" --end "$END" --catalog "$URL" | sed -n "1,8p"
echo "   ..."

echo "== 4. build-cube: gap-fill, NDSI, ECC alignment, 3-monthly means -> Zarr (local Dask cluster)"
# shellcheck disable=SC2086
glacierflow build-cube --bbox $BBOX --start "$START" --end "$END" --catalog "$URL" \
  --period 3MS --out "$DEMO_DIR/cube.zarr" --overwrite --cluster local:2

echo "== 5. flow: Farneback velocity between same-season periods one year apart"
glacierflow flow "$DEMO_DIR/cube.zarr" --out "$DEMO_DIR/velocity.zarr" --pairs annual --overwrite

echo "== 6. plot flow"
glacierflow plot flow "$DEMO_DIR/velocity.zarr" --out "$DEMO_DIR/flow.png"

echo "== 7. open the stores lazily"
python - "$DEMO_DIR" <<'PY'
import sys
import xarray as xr
d = sys.argv[1]
cube = xr.open_zarr(f"{d}/cube.zarr", decode_coords="all", consolidated=False)
vel = xr.open_zarr(f"{d}/velocity.zarr", decode_coords="all", consolidated=False)
print(cube)
print("velocity pairs:", vel.sizes["time"], "| median speed (m/yr):",
      float(vel["speed"].load().median(skipna=True)))
PY
echo "demo done: outputs in $DEMO_DIR/ (cube.zarr, velocity.zarr, flow.png)"
