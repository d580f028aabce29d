"""The ESP32 gateway (firmware/pilefw's App) on the MicroPython WebAssembly VM, as a device under test.

`MpyApp` launches tests/mpy/app_harness.mjs under Node and drives it: the App's UARTs and
console are bridged to endpoints (``pty:/dev/pts/N`` of the meter simulator or a console pty,
or ``tcp:host:port``), its MQTT client (umqtt.simple) connects to the broker named in the
compiled site, and the main loop runs one pass at a time under the driver's control::

    with MpyApp(tmp_path) as dut:
        dut.start(config_json, uarts={2: "pty:/dev/pts/7"}, console="pty:/dev/pts/9",
                  files={"/data/console.pin": b"pbkdf2-sha256$..."})
        dut.step(50)                                  # 50 passes of App.step()
        dut.run_until("_gw.chain.seq >= 5", 2000)     # passes until a Python condition holds
        dut.value("_gw.keys.pem")                     # any JSON-able Python expression
        dut.advance(30_000)                           # the VM's clock jumps 30 s ahead
        figures = dut.step(100, mem=True)["mem"]      # live set measured between passes

In the VM: ``_gw`` is the App, ``_hw`` its `hw` (tests/mpy/vmhw.py: ``_hw.pins``, ``_hw.dog``,
``_hw.net_ok``, ``_hw.resets``).  The App's flash (``/data``, its root) is a host directory,
`data_dir` (default ``workdir/data``), mounted into the VM: what the App writes is in that
directory as soon as its write() returns, a full host file system is the board's OSError(28)
(ENOSPC) in the VM, and the directory outlives the Node process (a SIGKILL is a power cut: a
new `MpyApp` over the same `data_dir` boots on the same flash).  Everything else (/lib,
/config.json, `files` outside /data) is in the VM's memory.  `code="mpy"` loads the firmware
compiled with mpy-cross (as on a board), `code="py"` the sources.  Needs Node.js and the
MicroPython runtime (`make setup`).
"""

from __future__ import annotations

import base64
import json
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "mpy" / "app_harness.mjs"
UMQTT = ROOT / "build" / "deps" / "umqtt" / "umqtt"


class HarnessError(RuntimeError):
    """The harness or the Python code in the VM failed; the message has the VM's traceback."""


def available() -> str | None:
    """None when the harness can run here, else why not (for pytest.skip)."""
    if shutil.which("node") is None:
        return "Node.js is not installed (make setup)"
    if not (ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript").is_dir():
        return "the MicroPython runtime is not installed (make setup: npm ci)"
    if not (UMQTT / "simple.py").exists():
        return "umqtt.simple is missing from build/deps (make setup)"
    return None


def build_lib(dest: Path, code: str = "mpy") -> Path:
    """The VM's /lib: pilecore, pilefw and umqtt, as sources ("py") or compiled ("mpy").

    Kept when dest already holds this build of these sources (a stamp of every source file's
    path, size and mtime): compiling takes seconds, and a restart (the rig's power cut) must
    boot as quickly as a board does."""
    if code not in ("py", "mpy"):
        raise ValueError(f"code must be 'py' or 'mpy', not {code!r}")
    fw = ROOT / "firmware"
    pkgs = (("pilecore", fw / "pilecore"), ("pilefw", fw / "pilefw"), ("umqtt", UMQTT))
    stamp = dest / ".build-stamp"
    want = _sources_stamp(code, [src for _, src in pkgs])
    if stamp.exists() and stamp.read_text() == want:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for pkg, src in pkgs:
        shutil.rmtree(dest / pkg, ignore_errors=True)
        if code == "mpy":
            _compile_tree(src, dest / pkg)
        else:
            shutil.copytree(src, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    stamp.write_text(want)
    return dest


def _sources_stamp(code: str, trees: list[Path]) -> str:
    rows = [code]
    for tree in trees:
        for py in sorted(tree.rglob("*.py")):
            if "__pycache__" not in py.parts:
                st = py.stat()
                rows.append(f"{py} {st.st_size} {st.st_mtime_ns}")
    return "\n".join(rows) + "\n"


def _compile_tree(src: Path, out: Path) -> None:
    """Every .py under src compiled with mpy-cross (as `make firmware` does) into out."""
    exe = Path(sys.executable).with_name("mpy-cross")
    cross = str(exe) if exe.exists() else shutil.which("mpy-cross")
    if not cross:
        raise HarnessError("mpy-cross not found (make setup)")
    for py in sorted(src.rglob("*.py")):
        if "__pycache__" in py.parts:
            continue
        rel = py.relative_to(src)
        target = out / rel.with_suffix(".mpy")
        target.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([cross, "-s", str(rel), "-o", str(target), str(py)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise HarnessError(f"mpy-cross rejected {py}: {proc.stderr.strip()}")


class MpyApp:
    """See the module docstring.  Always `close()` (or use `with`): it ends the Node process."""

    def __init__(
        self,
        workdir: Path | None = None,
        code: str = "mpy",
        timeout_s: float = 600.0,
        data_dir: Path | None = None,
    ) -> None:
        why = available()
        if why:
            raise HarnessError(why)
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="pilegate-mpy-")
        self.workdir = Path(workdir) if workdir else Path(self._tmp.name)  # type: ignore[union-attr]
        self.data_dir = Path(data_dir) if data_dir else self.workdir / "data"
        self.code = code
        self.timeout_s = timeout_s
        self._seq = 0
        self.proc = subprocess.Popen(
            ["node", str(HARNESS)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            bufsize=1,
        )
        self.version = ""

    # ------------------------------------------------------------ protocol

    def _call(self, op: str, **kw: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._seq += 1
        self.proc.stdin.write(json.dumps({"id": self._seq, "op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], self.timeout_s)[0]:
            self.proc.kill()
            raise HarnessError(f"the harness did not answer {op} within {self.timeout_s} s")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=5)
            raise HarnessError(f"the harness exited ({code}) during {op}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise HarnessError(f"{op}: {answer['error']}\n{answer.get('stdout', '')}")
        return answer["result"]

    # ------------------------------------------------------------ driving

    def load(
        self,
        uarts: dict[int, str] | None = None,
        console: str | None = None,
        files: dict[str, bytes] | None = None,
        root: str = "/data",
    ) -> None:
        """Load the VM with the firmware in /lib, mount `data_dir` at `root` (the flash),
        bridge the streams (board UART id -> endpoint; the console's endpoint), write `files`
        ({vm path: bytes}; under `root` they land in `data_dir`) and make `_hw`."""
        uarts = uarts or {}
        lib = build_lib(self.workdir / "lib", self.code)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        streams = {f"uart{n}": ep for n, ep in uarts.items()}
        if console:
            streams["console"] = console
        result = self._call(
            "init",
            lib=str(lib),
            files={p: base64.b64encode(b).decode() for p, b in (files or {}).items()},
            streams=streams,
            data={"mount": root, "dir": str(self.data_dir)},
        )
        self.version = result["version"]
        ids = ", ".join(f"{n}: 'uart{n}'" for n in uarts)
        self.exec(
            "import os\n"
            f"try:\n    os.mkdir({root!r})\nexcept OSError:\n    pass\n"
            "import vmhw\n"
            f"_hw = vmhw.VmHw({root!r}, {{{ids}}}, {'console' if console else None!r})\n"
        )

    def start(
        self,
        config_json: bytes,
        uarts: dict[int, str],
        console: str | None = None,
        files: dict[str, bytes] | None = None,
        root: str = "/data",
    ) -> dict[str, Any]:
        """`load` with the compiled site as /config.json, then `boot`."""
        self.load(uarts, console, {"/config.json": config_json, **(files or {})}, root)
        return self.boot()

    def boot(self) -> dict[str, Any]:
        """Build a (new) App over the same flash, as a reset would."""
        return self.exec(
            "from pilefw import app as _app\n"
            "_cfg, _hash = _app.load_config_file('/config.json')\n"
            "_gw = None\n"
            "_gw = _app.App(_cfg, _hw, _hash)\n"
            "_h = _gw\n"
            "_r = json.dumps({'epoch': _gw.epoch, 'seq': _gw.chain.seq, 'kid': _gw.keys.kid, "
            "'pem': _gw.keys.pem})\n"
        )

    def exec(self, code: str) -> Any:
        """Run Python in the VM; returns json.loads of what the code left in `_r` (or None)."""
        return self._call("exec", code=code)["value"]

    def value(self, expr: str) -> Any:
        """A JSON-able Python expression evaluated in the VM."""
        return self.exec(f"_r = json.dumps({expr})")

    def step(self, n: int = 1, mem: bool = False, until: str | None = None, idle_ms: int = 0) -> dict[str, Any]:
        """n passes of the main loop (fewer if the Python expression `until` turned true).
        Returns {"passes", "did", "until", "mem"}; with mem, memory is measured around every
        pass (see `mem`); with idle_ms, a pass that did nothing is followed by a nap of that
        many ms, as `App.run` naps on a board."""
        return self._call("step", n=n, mem=mem, until=until or "", idle_ms=idle_ms)

    def run_until(self, until: str, max_passes: int, mem: bool = False, what: str = "") -> dict[str, Any]:
        """Passes until the Python expression `until` is true; AssertionError after max_passes."""
        r = self.step(max_passes, mem=mem, until=until)
        if not r["until"]:
            raise AssertionError(f"{what or until}: not reached in {max_passes} main-loop passes")
        return r

    def advance(self, ms: int) -> None:
        """Move the VM's clock (ticks_ms and time) forward."""
        self._call("advance", ms=ms)

    def mem(self) -> dict[str, Any]:
        """Memory figures over the measured passes, bytes: live (after the last pass),
        peak_live (largest live set after any pass, after a full collection), max_block (largest
        single heap block seen, live or garbage), max_pass_alloc (most bytes one pass allocated),
        heap_total (the VM heap's size), passes; peak_modules, the modules loaded at the peak."""
        return self._call("mem")

    def measure(self) -> dict[str, int]:
        """The live set now (after a full collection) and the largest block on the heap."""
        return self._call("measure")

    def reset_mem(self) -> None:
        self._call("reset_mem")

    def power_cut(self) -> None:
        """SIGKILL the Node process (no handler runs, nothing is flushed or closed): what is in
        `data_dir` stays, as a board's flash does.  `close()` afterwards still cleans up."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._call("exit")
                self.proc.wait(timeout=5)
            except (HarnessError, OSError, ValueError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> MpyApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
