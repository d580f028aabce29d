"""Fuzz: the site configuration loader, from the TOML an installer edits and from the compiled
JSON an ESP32 loads (pilegate.siteconfig, pilecore.config).

Whatever the file holds, the loader answers with a site or with problems, never raises; a
problem found while reading the file always has a place (LINE:COLUMN, issue 9 #5: about 8% of
random mutations of examples/site.toml were reported only as `FILE:(file):`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fuzzing import FUZZ, corpus
from hypothesis import example, given
from hypothesis import strategies as st

from pilecore import config
from pilegate import siteconfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "examples" / "site.toml").read_bytes()
PLACE = re.compile(r"^\d+:\d+$")


def _mutate(data: st.DataObject) -> bytes:
    raw = bytearray(EXAMPLE)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == "flip" and raw:
            raw[i] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            raw[i:i] = data.draw(st.sampled_from([b"[", b"]", b"{", b'"', b"'", b"=", b"\n", b"nan", b"\xff", b"#"]))
        elif kind == "delete":
            del raw[i : i + data.draw(st.integers(1, 40))]
        else:
            del raw[i:]
    return bytes(raw)


_KNOWN: dict = {}


def _known() -> dict:
    """Boards and profiles, read once (load_site reads them for every file)."""
    if not _KNOWN:
        _KNOWN["boards"] = siteconfig.load_boards()[0]
        _KNOWN["profiles"] = siteconfig.load_profiles()[0]
        _KNOWN["sensors"] = siteconfig.load_sensor_profiles()[0]
    return _KNOWN


def _load(tmp_path: Path, raw: bytes) -> list[siteconfig.Problem]:
    """What load_site does with a file: read it (problems with a place), then validate it."""
    path = tmp_path / "site.toml"
    path.write_bytes(raw)
    data, problems = siteconfig.read_toml(path)
    if data is None:
        assert problems
        return problems
    k = _known()
    compiled, errs = config.validate_site(data, k["boards"], k["profiles"], k["sensors"])
    assert (compiled is None) == bool(errs)
    return [siteconfig.Problem(str(path), key, msg) for key, msg in errs]


@FUZZ
@given(data=st.data())
@example(data=None)
def test_any_mutation_of_the_example_is_a_site_or_problems_with_a_place(tmp_path_factory, data):
    raw = EXAMPLE + b'\nfoo = "abc' if data is None else _mutate(data)  # the example: unterminated at EOF
    problems = _load(tmp_path_factory.mktemp("m"), raw)
    for p in problems:
        if p.file.endswith("site.toml"):
            assert p.key != "(file)", str(p)
            if "TOML" in p.message or "UTF-8" in p.message or "nested" in p.message:
                assert PLACE.match(p.key), str(p)


@pytest.mark.parametrize("raw", corpus("site_toml"), ids=lambda b: b.hex()[:24])
def test_corpus_of_site_files(tmp_path, raw):
    for p in _load(tmp_path, raw):
        assert p.key != "(file)", str(p)


_COMPILED: dict = {}


def _compiled() -> dict:
    if not _COMPILED:
        site, problems = siteconfig.load_site(ROOT / "examples" / "site.toml")
        assert site is not None, problems
        _COMPILED.update(json.loads(site.json_bytes))
    return json.loads(json.dumps(_COMPILED))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@FUZZ
@given(data=st.data())
def test_the_compiled_json_with_any_value_replaced_is_validated_not_crashed(data):
    cfg = _compiled()
    boards = {cfg["board_def"]["id"]: cfg.pop("board_def")}  # checked on their own (validate_board)
    profiles = cfg.pop("profiles")
    sensors = cfg.pop("sensor_profiles", {})
    for _ in range(data.draw(st.integers(1, 3))):
        node = cfg
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            k = data.draw(st.sampled_from(keys))
            if isinstance(node[k], (dict, list)) and node[k] and data.draw(st.booleans()):
                node = node[k]
                continue
            node[k] = data.draw(JSON_VALUES)
            break
    cfg.pop("version", None)
    compiled, problems = config.validate_site(cfg, boards, profiles, sensors)
    assert (compiled is None) == bool(problems)
    for key, msg in problems:
        assert isinstance(key, str) and isinstance(msg, str) and msg


@FUZZ
@given(data=st.data())
def test_a_board_file_with_any_value_replaced_is_validated_not_crashed(data):
    board = json.loads(json.dumps(_compiled()["board_def"]))
    k = data.draw(st.sampled_from(sorted(board)))
    board[k] = data.draw(JSON_VALUES)
    out, problems = config.validate_board(board, board.get("id") if isinstance(board.get("id"), str) else "b")
    assert (out is None) == bool(problems)


def test_json_nested_deep_is_a_problem_not_a_crash():
    cfg = _compiled()
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    cfg["tariff"] = deep
    cfg["metering"] = {"idle_power_w": deep}
    compiled, problems = config.validate_site(cfg, {cfg["board_def"]["id"]: cfg["board_def"]}, cfg["profiles"])
    assert compiled is None and problems
