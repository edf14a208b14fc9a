#!/usr/bin/env bash
# Sets up everything edgefleet needs on a fresh Debian/Ubuntu machine with Python 3.11:
# the mosquitto broker (apt-get, only where missing), for the tests also chromium, faketime
# and PostgreSQL, and a virtualenv at .venv holding the project with all its extras. Safe to
# run again: it only does what is missing.
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

# What only the test suite needs (`make test` sets EDGEFLEET_TEST_SERVICES=1; `make demo`
# does not): chromium for the console's browser test and a local PostgreSQL.
TEST_SERVICES=${EDGEFLEET_TEST_SERVICES:-0}

# The console's browser test (tests/e2e/test_console.py) drives Debian's chromium
# headless through Playwright; Playwright's own browser download is never used.
# EDGEFLEET_CHROMIUM names another binary; EDGEFLEET_SKIP_CHROMIUM=1 leaves it out.
if [ "$TEST_SERVICES" = 1 ] && [ "${EDGEFLEET_SKIP_CHROMIUM:-0}" != 1 ] \
    && [ ! -x "${EDGEFLEET_CHROMIUM:-/usr/bin/chromium}" ]; then
    echo "setup: installing chromium (for the console's browser test)"
    apt_install chromium
fi

# libfaketime sets one agent process's clock back in the time-floor attack test.
if [ "$TEST_SERVICES" = 1 ] && ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then
    echo "setup: installing faketime (for the clock attack test)"
    apt_install faketime
fi

# nginx serves the exported static tree as an HTTP mirror in the mirror tests
# (tests/integration/agent/test_mirrors.py: range requests, a transfer cut mid-body).
if [ "$TEST_SERVICES" = 1 ] && ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "setup: installing nginx-light (for the HTTP mirror tests)"
    apt_install nginx-light
fi

# PostgreSQL for the multi-replica tests: a local cluster with a `test` database that
# trusts 127.0.0.1 (tests create and drop their own databases in it). Skip: NO_POSTGRES=1.
# Note: this adds a trust line for 127.0.0.1 to pg_hba.conf — meant for CI and test boxes.
if [ "$TEST_SERVICES" = 1 ] && [ "${NO_POSTGRES:-0}" != 1 ]; then
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        echo "setup: installing postgresql"
        apt_install postgresql
    fi
    pg_ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
    if command -v pg_lsclusters >/dev/null && ! pg_lsclusters -h | grep -q "^$pg_ver main"; then
        as_root pg_createcluster "$pg_ver" main
    fi
    hba=/etc/postgresql/$pg_ver/main/pg_hba.conf
    if [ -f "$hba" ] && ! as_root grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
        as_root sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
        pg_reload=1
    fi
    if ! pg_lsclusters -h | grep -q "^$pg_ver main .* online"; then
        as_root pg_ctlcluster --skip-systemctl-redirect "$pg_ver" main start
    elif [ "${pg_reload:-0}" = 1 ]; then
        as_root pg_ctlcluster --skip-systemctl-redirect "$pg_ver" main reload
    fi
    if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
        as_root su postgres -c "createdb -h 127.0.0.1 test" || true
    fi
    psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null \
        || { echo "setup: PostgreSQL test database unreachable on 127.0.0.1" >&2; exit 1; }
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

extras=agent-onnx,control-plane,dev,corpus
# The suite also runs the real-drift benchmark's quick mode: river, statsmodels and
# NannyML (~1.3 GB with xgboost, lightgbm, pyarrow; its census extract is in its wheel).
[ "$TEST_SERVICES" = 1 ] && extras="$extras,bench-drift"
stamp="$VENV/.edgefleet-installed-${extras//,/-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing edgefleet and its extras ($extras) into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[$extras]"
    touch "$stamp"
fi
# The gate runs tflite-runtime 2.14 candidates in that runtime's own small virtualenv
# (numpy < 2), and ONNX→TFLite conversion runs onnx2tf on tensorflow-cpu in another
# (~1 min, 2.4 GB; EDGEFLEET_SKIP_ONNX2TF=1 leaves it out), both inside this one:
# edgefleet/converters/worker_envs.py. Only does what is missing.
"$VENV/bin/python" -m edgefleet.converters.worker_envs install
echo "setup: ready ($("$VENV/bin/python" --version), $(command -v mosquitto || echo /usr/sbin/mosquitto))"
