"""pytest plugin of the HIL rig: options in the style of pytest-embedded, one test per scenario
and DUT, an HTML report per run (docs/hil.md).

    pytest tests/hil/test_scenarios.py --dut=pi --dut=mpy              # CI: simulated DUTs
    pytest tests/hil/test_scenarios.py --dut=serial:/dev/ttyUSB0 --bus=/dev/ttyUSB1 --rig=bench.toml
    pytest ... --broker=mqtt://10.0.0.5:1883                           # an existing broker

Without --dut, only the scenarios marked `smoke = true` run on `pi` (the fast subset of
`make test`); `--hil-all` runs every scenario.  Pages go to --hil-report (build/hil/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("pilegate-hil", "pilegate HIL rig (docs/hil.md)")
    g.addoption(
        "--dut",
        action="append",
        default=[],
        help="device under test: pi | mpy | esp32-cpython | serial:<console port> (repeatable)",
    )
    g.addoption("--bus", default=None, help="serial DUT: the USB-RS485 adapter wired to the board's RS-485 port")
    g.addoption("--broker", default=None, help="use this MQTT broker (mqtt://host:port) instead of a private one")
    g.addoption("--rig", default=None, help="serial DUT: the bench file (power driver, flash command)")
    g.addoption("--scenarios", default=str(ROOT / "scenarios"), help="folder of scenario files")
    g.addoption("--hil-report", default=str(ROOT / "build" / "hil"), help="where the HTML report goes")
    g.addoption("--hil-all", action="store_true", help="every scenario even without --dut (default: smoke only)")


def _save_row(config: pytest.Config, row: dict[str, Any]) -> None:
    """One JSON file per scenario and DUT, so xdist workers and the controller build one index:
    the latest result of each scenario on each DUT."""
    import json

    folder = Path(config.getoption("--hil-report")) / "rows"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{row['scenario']}--{row['dut']}.json").write_text(json.dumps(row))


def _cases(config: pytest.Config) -> list[Any]:
    import tomllib

    from pilehil.scenario import ScenarioError, load

    folder = Path(config.getoption("--scenarios"))
    duts = list(config.getoption("--dut"))
    smoke_only = not duts and not config.getoption("--hil-all")
    duts = duts or ["pi"]
    out = []
    for path in sorted(folder.glob("*.toml")):
        try:
            sc: Any = load(path)
        except ScenarioError as exc:
            sc = exc  # a broken scenario file is a failing test, not a collection error
        if smoke_only:
            try:
                smoke = tomllib.loads(path.read_text()).get("scenario", {}).get("smoke", False)
            except (OSError, tomllib.TOMLDecodeError):
                smoke = True
            if not smoke:
                continue
        for d in duts:
            out.append(pytest.param(sc, d, id=f"{path.stem}[{d.split(':')[0]}]"))
    # longest site time first, so that parallel workers (make hil: -n 2) finish together instead
    # of one of them starting an hour-long scenario last; a broken file (no duration) goes first
    out.sort(key=lambda p: -getattr(p.values[0], "duration", 1 << 30))
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hil_scenario" in metafunc.fixturenames and "hil_dut" in metafunc.fixturenames:
        metafunc.parametrize(("hil_scenario", "hil_dut"), _cases(metafunc.config))


@pytest.fixture
def hil_run(request: pytest.FixtureRequest, hil_scenario: Any, hil_dut: str) -> Any:
    """Run the scenario on the DUT; returns (run, checks, page path).  Fails with the failed
    checks and the page to read; xfail when the scenario names a defect for this DUT."""
    from pilehil.scenario import ScenarioError
    from piletools.rig import expect, report, runner
    from piletools.rig.duts import DutError, DutUnavailable, make_dut

    cfg = request.config
    out = Path(cfg.getoption("--hil-report"))
    if isinstance(hil_scenario, ScenarioError):
        pytest.fail(str(hil_scenario), pytrace=False)
    sc = hil_scenario
    try:
        dut = make_dut(
            hil_dut, cfg.getoption("--bus"), Path(cfg.getoption("--rig")) if cfg.getoption("--rig") else None
        )
    except DutError as exc:
        pytest.fail(str(exc), pytrace=False)
    kind = dut.kind
    defect = sc.xfail.get(kind) or sc.xfail.get("*")
    if defect:
        request.node.add_marker(pytest.mark.xfail(reason=defect, strict=False))
    row: dict[str, Any] = {"scenario": sc.id, "title": sc.title, "dut": kind, "status": "SKIPPED", "wall_s": 0}
    try:
        run = runner.run(sc, dut, out / "runs" / kind / sc.id, cfg.getoption("--broker"))
    except (runner.SkipScenario, DutUnavailable) as exc:
        row["failed"] = [str(exc)]
        _save_row(cfg, row)
        pytest.skip(str(exc))
    except DutError as exc:
        row.update(status="FAIL", failed=[str(exc)])
        _save_row(cfg, row)
        pytest.fail(str(exc), pytrace=False)
    checks = expect.judge(run)
    page = report.write_page(out, run, checks, defect)
    failed = [c for c in checks if not c.ok]
    row.update(
        status=("XFAIL" if failed else "XPASS") if defect else ("FAIL" if failed else "PASS"),
        wall_s=run.wall_s,
        page=page.name,
        failed=[f"{c.kind}: {c.name}" for c in failed],
    )
    _save_row(cfg, row)
    request.node.user_properties.append(("report", str(page)))
    return run, checks, page


def pytest_sessionfinish(session: pytest.Session) -> None:
    import json

    if hasattr(session.config, "workerinput"):
        return
    out = Path(session.config.getoption("--hil-report"))
    rows = [json.loads(f.read_text()) for f in sorted((out / "rows").glob("*.json"))] if (out / "rows").is_dir() else []
    if rows:
        from piletools.rig import report

        report.write_index(out, rows)
