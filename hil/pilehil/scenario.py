"""HIL scenarios as data: scenarios/*.toml (format: docs/hil.md).

A scenario names a site file, a start time, a timeline in site time (vehicles and actions) and
the expectations the platform side must observe.  `load(path)` returns a `Scenario` or raises
`ScenarioError` listing every problem with its key, so a test engineer can write scenarios
without reading Python.  Times are "HH:MM:SS" (or whole seconds) from the scenario's start.
"""

from __future__ import annotations

import copy
import datetime as dt
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ACTIONS: dict[str, tuple[set[str], set[str]]] = {
    # action: (required keys, optional keys) besides "t" and "do"
    "meter.swap": ({"pile", "serial"}, {"energy_wh"}),
    "meter.reset": ({"pile"}, set()),
    "meter.silent": ({"pile"}, {"on"}),
    "meter.freeze": ({"pile"}, {"on"}),
    "wiring.swap": ({"piles"}, set()),
    "sensor.freeze": ({"bay"}, {"on"}),
    "sensor.flap": ({"bay", "every_s", "until"}, set()),
    "sensor.release": ({"bay"}, set()),
    "cable.cut": ({"bus"}, {"on"}),
    "main.unmetered": ({"w"}, set()),
    "broker.down": (set(), set()),
    "broker.up": (set(), set()),
    "dut.kill": (set(), {"restart_after_s"}),
    "dut.power_cut": (set(), {"restart_after_s"}),
    "disk.fill": (set(), set()),
    "disk.free": (set(), set()),
    "command": ({"id", "name"}, {"args", "key", "age_s", "tamper"}),
    "console": ({"name", "send"}, {"login"}),
    "plate": ({"bay", "plate", "colour"}, set()),
}
REAL_BOARD = ("full", "shorten", "skip")
EXPECT_KINDS = ("event", "no_event", "occupancy", "billing", "ack", "telemetry", "console", "chain")


class ScenarioError(ValueError):
    """A scenario file that cannot be used; `problems` lists (key, message)."""

    def __init__(self, path: Path, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(f"{k}: {m}" for k, m in problems))


def seconds(value: Any) -> int:
    """'HH:MM:SS', 'MM:SS' or whole seconds (>= 0) -> int seconds; '-HH:MM:SS' is before the
    start (the rig's lead time, when the gateway boots); ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative")
        return value
    if isinstance(value, str):
        sign = -1 if value.startswith("-") else 1
        parts = value.lstrip("-").split(":")
        if 1 <= len(parts) <= 3 and all(p.isdigit() for p in parts):
            total = 0
            for p in parts:
                total = total * 60 + int(p)
            return sign * total
    raise ValueError(
        f"{value!r} is not a time: write 'HH:MM:SS' from the scenario start ('-HH:MM:SS' before it), or seconds"
    )


def hms(s: float) -> str:
    s = int(s)
    sign = "-" if s < 0 else ""
    s = abs(s)
    return f"{sign}{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class VehiclePlan:
    bay: str
    kind: str
    arrive: int
    leave: int
    plug: int | None = None
    unplug: int | None = None
    charge: tuple[int, int] | None = None
    power_w: int = 7000
    plate: str = ""
    colour: str = "unknown"


@dataclass
class Action:
    t: int
    do: str
    args: dict[str, Any]


@dataclass
class Scenario:
    path: Path
    id: str
    title: str
    description: str
    site: Path
    start: int  # Unix seconds of 00:00:00
    duration: int
    speed: float
    settle: int
    real_board: str
    real_board_note: str
    data_fs_kb: int | None
    real_board_until: int | None = None  # "shorten": a real board's timeline ends here
    smoke: bool = False
    vehicles: list[VehiclePlan] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    expect: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    xfail: dict[str, str] = field(default_factory=dict)  # dut kind ("*" = all) -> defect

    def at(self, rel: int) -> int:
        return self.start + rel


def _time(problems: list[tuple[str, str]], key: str, value: Any) -> int:
    try:
        return seconds(value)
    except ValueError as exc:
        problems.append((key, str(exc)))
        return 0


def _vehicle(problems: list[tuple[str, str]], i: int, v: dict[str, Any]) -> VehiclePlan | None:
    key = f"vehicle[{i}]"
    allowed = {"bay", "kind", "arrive", "leave", "plug", "unplug", "charge", "power_kw", "plate", "colour"}
    for k in sorted(set(v) - allowed):
        problems.append((f"{key}.{k}", f"unknown key (allowed: {', '.join(sorted(allowed))})"))
    for k in ("bay", "arrive", "leave"):
        if k not in v:
            problems.append((f"{key}.{k}", "missing"))
    if problems and any(p[0].startswith(key) for p in problems):
        return None
    kind = v.get("kind", "ev")
    if kind not in ("ev", "fuel"):
        problems.append((f"{key}.kind", f"is {kind!r}; use 'ev' or 'fuel'"))
    charge = None
    if "charge" in v:
        c = v["charge"]
        if not (isinstance(c, list) and len(c) == 2):
            problems.append((f"{key}.charge", "must be [start, end]"))
        else:
            charge = (_time(problems, f"{key}.charge[0]", c[0]), _time(problems, f"{key}.charge[1]", c[1]))
    plan = VehiclePlan(
        bay=str(v["bay"]),
        kind=kind,
        arrive=_time(problems, f"{key}.arrive", v["arrive"]),
        leave=_time(problems, f"{key}.leave", v["leave"]),
        plug=_time(problems, f"{key}.plug", v["plug"]) if "plug" in v else None,
        unplug=_time(problems, f"{key}.unplug", v["unplug"]) if "unplug" in v else None,
        charge=charge,
        power_w=int(float(v.get("power_kw", 7.0)) * 1000),
        plate=str(v.get("plate", "")),
        colour=str(v.get("colour", "unknown")),
    )
    order = [plan.arrive, plan.plug, charge and charge[0], charge and charge[1], plan.unplug, plan.leave]
    seq = [x for x in order if x is not None]
    if seq != sorted(seq):
        problems.append((key, "times must be in order: arrive <= plug <= charge start < charge end <= unplug <= leave"))
    return plan


def _action(problems: list[tuple[str, str]], i: int, a: dict[str, Any]) -> Action | None:
    key = f"at[{i}]"
    do = a.get("do")
    if do not in ACTIONS:
        problems.append((f"{key}.do", f"is {do!r}; one of {', '.join(sorted(ACTIONS))}"))
        return None
    if "t" not in a:
        problems.append((f"{key}.t", "missing"))
        return None
    req, opt = ACTIONS[do]
    args = {k: val for k, val in a.items() if k not in ("t", "do")}
    for k in sorted(req - set(args)):
        problems.append((f"{key}.{k}", f"missing (needed by {do})"))
    for k in sorted(set(args) - req - opt):
        problems.append((f"{key}.{k}", f"unknown key for {do} (allowed: {', '.join(sorted(req | opt)) or 'none'})"))
    for k in ("until",):
        if k in args:
            args[k] = _time(problems, f"{key}.{k}", args[k])
    return Action(_time(problems, f"{key}.t", a["t"]), do, args)


def load(path: Path | str) -> Scenario:
    """Read and check one scenario file; ScenarioError lists every problem."""
    path = Path(path)
    problems: list[tuple[str, str]] = []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(path, [("(file)", f"cannot be read: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(path, [("(file)", f"not valid TOML: {exc}")]) from None
    allowed_top = {"scenario", "vehicle", "at", "expect", "xfail"}
    for k in sorted(set(data) - allowed_top):
        problems.append((k, f"unknown table (allowed: {', '.join(sorted(allowed_top))})"))
    sc = data.get("scenario")
    if not isinstance(sc, dict):
        raise ScenarioError(path, [("scenario", "missing: every scenario starts with a [scenario] table")])
    known = {"id", "title", "description", "site", "start", "duration", "speed", "settle", "real_board"}
    known |= {"real_board_note", "real_board_until", "data_fs_kb", "smoke"}
    for k in sorted(set(sc) - known):
        problems.append((f"scenario.{k}", f"unknown key (allowed: {', '.join(sorted(known))})"))
    missing = [k for k in ("title", "site", "start", "duration") if k not in sc]
    if missing:
        raise ScenarioError(path, problems + [(f"scenario.{k}", "missing") for k in missing])
    site = (path.parent / sc["site"]).resolve()
    if not site.is_file():
        problems.append(("scenario.site", f"{site} does not exist (the path is relative to the scenario file)"))
    try:
        start_dt = dt.datetime.fromisoformat(str(sc["start"]))
        if start_dt.tzinfo is None:
            raise ValueError("no UTC offset")
        start = int(start_dt.timestamp())
    except ValueError as exc:
        problems.append(("scenario.start", f"{sc['start']!r}: {exc}; write e.g. 2026-06-01T08:00:00+08:00"))
        start = 0
    real = sc.get("real_board", "full")
    if real not in REAL_BOARD:
        problems.append(("scenario.real_board", f"is {real!r}; one of {', '.join(REAL_BOARD)}"))
    speed = sc.get("speed", 60)
    if not isinstance(speed, int | float) or isinstance(speed, bool) or not 1 <= speed <= 1000:
        problems.append(("scenario.speed", "must be a number of site seconds per real second, 1-1000"))
        speed = 60
    scen = Scenario(
        path=path,
        id=str(sc.get("id", path.stem)),
        title=str(sc["title"]),
        description=str(sc.get("description", "")).strip(),
        site=site,
        start=start,
        duration=_time(problems, "scenario.duration", sc["duration"]),
        speed=float(speed),
        settle=_time(problems, "scenario.settle", sc.get("settle", 600)),
        real_board=real,
        real_board_note=str(sc.get("real_board_note", "")),
        data_fs_kb=sc.get("data_fs_kb"),
        smoke=bool(sc.get("smoke", False)),
        real_board_until=_time(problems, "scenario.real_board_until", sc["real_board_until"])
        if "real_board_until" in sc
        else None,
    )
    for i, v in enumerate(data.get("vehicle", [])):
        plan = _vehicle(problems, i, v)
        if plan is not None:
            scen.vehicles.append(plan)
    for i, a in enumerate(data.get("at", [])):
        act = _action(problems, i, a)
        if act is not None:
            scen.actions.append(act)
    scen.actions.sort(key=lambda a: a.t)
    expect = data.get("expect", {})
    for k in sorted(set(expect) - set(EXPECT_KINDS)):
        problems.append((f"expect.{k}", f"unknown expectation (allowed: {', '.join(EXPECT_KINDS)})"))
    for k in EXPECT_KINDS:
        items = expect.get(k, [])
        if isinstance(items, dict):
            items = [items]
        scen.expect[k] = [dict(x) for x in items]
    for kind in ("event", "no_event"):
        for i, e in enumerate(scen.expect[kind]):
            if "type" not in e:
                problems.append((f"expect.{kind}[{i}].type", "missing"))
    for i, e in enumerate(scen.expect["console"]):
        if "name" not in e:
            problems.append((f"expect.console[{i}].name", "missing: the name of a console action"))
    _check_shortening(problems, scen)
    xf = data.get("xfail", {})
    if not isinstance(xf, dict) or not all(isinstance(v, str) for v in xf.values()):
        problems.append(("xfail", 'must map a DUT kind (or "*") to the defect that makes it fail'))
    else:
        scen.xfail = dict(xf)
    if problems:
        raise ScenarioError(path, problems)
    return scen


def _check_shortening(problems: list[tuple[str, str]], sc: Scenario) -> None:
    """`real_board = "shorten"` needs `real_board_until` (and only then): a cut inside the
    timeline that no vehicle visit straddles, so the shortened run is a whole scenario."""
    for kind, items in sc.expect.items():
        for i, e in enumerate(items):
            if "real_board" in e and not isinstance(e["real_board"], bool):
                problems.append((f"expect.{kind}[{i}].real_board", "must be true or false"))
    cut = sc.real_board_until
    if sc.real_board != "shorten":
        if cut is not None:
            problems.append(("scenario.real_board_until", 'only with real_board = "shorten"'))
        return
    if cut is None or sc.duration is None:
        if sc.duration is None:
            return
        problems.append(("scenario.real_board_until", 'missing: real_board = "shorten" says where a real board stops'))
        return
    if not 0 < cut < sc.duration:
        problems.append(
            ("scenario.real_board_until", f"must be inside the timeline (00:00:00 < t < {hms(sc.duration)})")
        )
    for i, v in enumerate(sc.vehicles):
        if v.arrive < cut < v.leave:
            problems.append(
                (
                    f"vehicle[{i}]",
                    f"is in bay {v.bay} at real_board_until ({hms(cut)}): cut before it arrives or after it leaves",
                )
            )


def for_real_board(sc: Scenario) -> Scenario:
    """The scenario as a real board (real time) runs it (docs/hil.md): a "shorten" scenario ends
    at `real_board_until` (the vehicles that arrive later and the actions due later are left out)
    and is judged without the expectations marked `real_board = false`; any other scenario is
    returned unchanged."""
    cut = sc.real_board_until
    if sc.real_board != "shorten" or cut is None:
        return sc
    expect = {k: [copy.deepcopy(e) for e in v if e.get("real_board", True)] for k, v in sc.expect.items()}
    return replace(
        sc,
        duration=cut,
        vehicles=[v for v in sc.vehicles if v.arrive < cut],
        actions=[a for a in sc.actions if a.t < cut],
        expect=expect,
    )


def load_all(folder: Path | str) -> list[Scenario]:
    return [load(p) for p in sorted(Path(folder).glob("*.toml"))]
