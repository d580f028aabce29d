#!/bin/sh
# make setup: everything pilegate needs on a fresh Debian / Raspberry Pi OS machine.
#   1. system packages (mosquitto for tests and the demo; Node.js to run MicroPython's
#      official WebAssembly build) with apt-get, only when missing;
#   2. a virtual environment in .venv with the exact pins of requirements.lock;
#   3. the MicroPython WebAssembly runtime from npm, as locked in package-lock.json.
# Safe to run again: each step skips what is already in place.
set -eu
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

need_pkgs=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_pkgs="$need_pkgs mosquitto"
command -v node >/dev/null 2>&1 || need_pkgs="$need_pkgs nodejs"
command -v npm >/dev/null 2>&1 || need_pkgs="$need_pkgs npm"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs="$need_pkgs python3-venv"
if [ -n "$need_pkgs" ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    say "installing system packages with apt-get:$need_pkgs"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need_pkgs
    # Debian starts a system-wide broker on port 1883; tests start their own on free ports,
    # so the system one is left as the distribution configured it.
else
    say "system packages present (mosquitto, node, npm, python3-venv)"
fi

if [ ! -x .venv/bin/python ]; then
    say "creating virtual environment .venv"
    python3 -m venv .venv
fi
say "installing pinned Python packages (requirements.lock, requirements-dev.lock; sha256 checked)"
.venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes \
    -r requirements.lock -r requirements-dev.lock
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .

say "fetching micropython-umqtt.simple 1.3.4 (pinned sha256) into build/deps/umqtt/ for the ESP32 MQTT tests"
.venv/bin/python - <<'EOF'
import hashlib, io, pathlib, tarfile, urllib.request
url = ("https://files.pythonhosted.org/packages/bd/cf/697e3418b2f44222b3e848078b1e33ee76aedca9b6c2430ca1b1aec1ce1d/"
       "micropython-umqtt.simple-1.3.4.tar.gz")
sha256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
dst = pathlib.Path("build/deps/umqtt/umqtt/simple.py")
stamp = dst.parent.parent / "sdist.sha256"
if not (dst.exists() and stamp.exists() and stamp.read_text().strip() == sha256):
    data = urllib.request.urlopen(url, timeout=60).read()
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise SystemExit(f"setup: umqtt.simple sdist sha256 {got} != pinned {sha256}; refusing it")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        src = tar.extractfile("micropython-umqtt.simple-1.3.4/umqtt/simple.py").read()
    dst.parent.mkdir(parents=True, exist_ok=True)
    (dst.parent / "__init__.py").write_bytes(b"")
    dst.write_bytes(src)
    stamp.write_text(sha256 + "\n")
EOF

say "installing the MicroPython WebAssembly runtime (npm ci)"
npm ci --no-audit --no-fund --loglevel=error

say "done. Next: make test"
