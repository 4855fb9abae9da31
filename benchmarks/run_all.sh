#!/usr/bin/env bash
# Run every benchmark script in this directory (`make bench`). Each prints its own table of figures and
# ratios against baselines measured in the same run. Not part of the test suite.
#
# GF_TWIN=DIR reuses an existing twin for bench_build_cube.py (default: /tmp/gf-full-twin, generated there
# on first use, ~4 min); GF_BENCH_ARGS adds options to it (e.g. "--years 2 --seed-scenes 1" for a quick run).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python}"
status=0
for script in "$here"/bench_*.py; do
    echo "=== $(basename "$script")"
    case "$(basename "$script")" in
        bench_build_cube.py)
            # shellcheck disable=SC2086
            "$py" "$script" --twin "${GF_TWIN:-/tmp/gf-full-twin}" ${GF_BENCH_ARGS:-} || status=1 ;;
        *)
            "$py" "$script" || status=1 ;;
    esac
done
exit $status
