"""The dependency direction is tools -> gateway -> core and hil -> core (docs/architecture.md).

Checked two ways: statically, every first-party import in every module (lazy ones inside
functions included) goes only where its layer may go; and at run time, building the `pilegate`
command and loading the gateway runtime pulls in none of the platform's tools or the rig.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "pilecore": ROOT / "firmware" / "pilecore",
    "pilefw": ROOT / "firmware" / "pilefw",
    "pilegate": ROOT / "gateway" / "pilegate",
    "pilehil": ROOT / "hil" / "pilehil",
    "piletools": ROOT / "tools" / "piletools",
}
# What each layer may import besides itself.
ALLOWED = {
    "pilecore": set(),
    "pilefw": {"pilecore"},
    "pilegate": {"pilecore"},
    "pilehil": {"pilecore"},
    "piletools": {"pilecore", "pilefw", "pilegate", "pilehil"},
}


def first_party_imports(path: Path) -> set[tuple[str, int]]:
    """(top-level first-party package, line) of every import statement in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.add((top, node.lineno))
    return found


def test_every_import_goes_down_the_layers():
    wrong = []
    for pkg, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            for target, line in first_party_imports(path):
                if target != pkg and target not in ALLOWED[pkg]:
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {pkg} imports {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_checker_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from piletools import verify\n")
    assert first_party_imports(bad) == {("piletools", 2)}


def test_running_a_gateway_loads_no_tool_and_no_simulator():
    code = (
        "import sys\n"
        "from pilegate import cli, runtime\n"
        "parser, handlers = cli.build_parser()\n"
        "assert {'run', 'check', 'read', 'keys', 'provision'} <= set(handlers), sorted(handlers)\n"
        "heavy = sorted(m for m in sys.modules if m.startswith('pilehil')\n"
        "               or (m.startswith('piletools') and m != 'piletools.commands' and m != 'piletools'))\n"
        "print(' '.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"pilegate run would load: {out.stdout.strip()}"


def test_tool_commands_are_found_through_the_entry_point_group():
    from pilegate import cli

    _, handlers = cli.build_parser()
    assert {"sim", "verify", "console", "bench", "demo"} <= set(handlers)
