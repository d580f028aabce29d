#!/bin/sh
# The MicroPython half of `make test`: runs tests/core on the official WebAssembly build.
# Without Node.js the run is skipped with a reason, except in CI (CI=1), where it must run.
set -eu
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null 2>&1; then
    if [ "${CI:-}" ]; then
        echo "test-mpy: Node.js is missing, and CI must run the MicroPython tests" >&2
        exit 1
    fi
    echo "MicroPython: SKIPPED (Node.js not found; run 'make setup' to install it)"
    exit 0
fi
if [ ! -d node_modules/@micropython/micropython-webassembly-pyscript ]; then
    echo "test-mpy: the MicroPython runtime is not installed; run 'make setup' (npm ci)" >&2
    exit 1
fi
exec node tests/mpy/run.mjs "$@"
