"""`make firmware`: compile everything under firmware/ with mpy-cross into build/firmware/.

Every module is compiled (so anything MicroPython's compiler rejects fails the build), the
per-module .mpy sizes and the total are printed, and the exit status is non-zero on any error.
boot.py and main.py are also copied as source: MicroPython only runs those two from .py files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "firmware"
OUT = ROOT / "build" / "firmware"
ENTRY_POINTS = ("boot.py", "main.py")
MANIFEST = "manifest.py"


def mpy_cross() -> str:
    exe = Path(sys.executable).with_name("mpy-cross")
    if exe.exists():
        return str(exe)
    found = shutil.which("mpy-cross")
    if not found:
        raise SystemExit("make firmware: mpy-cross not found; run 'make setup'")
    return found


def compile_all(src: Path = SRC, out: Path = OUT) -> tuple[list[tuple[str, int]], list[str]]:
    """Compile every .py under src; return ([(module, size)], [error messages])."""
    exe = mpy_cross()
    sizes: list[tuple[str, int]] = []
    errors: list[str] = []
    if out.exists():
        shutil.rmtree(out)
    for py in sorted(src.rglob("*.py")):
        if "__pycache__" in py.parts:
            continue
        rel = py.relative_to(src)
        if rel == Path(MANIFEST):  # the frozen build's manifest, read by MicroPython's make
            continue
        target = out / rel.with_suffix(".mpy")
        target.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([exe, "-s", str(rel), "-o", str(target), str(py)], capture_output=True, text=True)
        if proc.returncode != 0:
            errors.append(f"{rel}: {proc.stderr.strip() or proc.stdout.strip()}")
            continue
        sizes.append((str(rel.with_suffix(".mpy")), target.stat().st_size))
        if rel.name in ENTRY_POINTS and rel.parent == Path("."):
            shutil.copy2(py, out / rel)
    return sizes, errors


def main() -> int:
    sizes, errors = compile_all()
    for err in errors:
        print(f"mpy-cross rejected {err}", file=sys.stderr)
    width = max((len(n) for n, _ in sizes), default=10)
    for name, size in sizes:
        print(f"  {name:<{width}}  {size:>7,} bytes")
    total = sum(s for _, s in sizes)
    print(f"  {'total':<{width}}  {total:>7,} bytes in {len(sizes)} modules -> {OUT.relative_to(ROOT)}/")
    if errors:
        print(f"make firmware: {len(errors)} module(s) failed to compile", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
