#!/usr/bin/env bash
# Sets up everything edgefleet needs on a fresh Debian/Ubuntu machine with Python 3.11:
# the mosquitto broker (apt-get, only where missing) and a virtualenv at .venv holding
# the project with all its extras. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1; fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    echo "setup: installing mosquitto"
    apt_install mosquitto
fi

if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "setup: edgefleet needs Python >= 3.11 as '$PYTHON'" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        apt_install python3-venv
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
fi

stamp="$VENV/.edgefleet-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing edgefleet and its extras into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[agent-onnx,control-plane,dev]'
    touch "$stamp"
fi
echo "setup: ready ($("$VENV/bin/python" --version), $(command -v mosquitto || echo /usr/sbin/mosquitto))"
