"""The examples of docs/console.md are what the console prints.

The examples show an ESP32 gateway as tests/core/test_console.py's FakeBackend describes it;
the anonymous read commands among them are run and compared line by line, so the contract and
the code cannot drift apart.  Lines the docs shorten with "..." are compared up to the dots."""

import os

from test_console import FakeBackend

from pilecore.console import Console

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "console.md")  # tests/gateway/..
CHECKED = ("status", "piles", "meter", "bays", "bay", "events", "bus", "log", "selftest", "keys", "whoami", "help")


def examples():
    """[(command line, [expected lines])] of the Examples section, in order."""
    with open(DOC) as f:
        text = f.read()
    section = text.split("### Examples", 1)[1].split("\n### ", 1)[0]
    out = []
    for line in section.split("\n"):
        if not line.startswith("    "):
            continue
        line = line[4:]
        if line.startswith("pilegate> "):
            out.append((line[10:], []))
        elif line.startswith("pilegate# "):
            out.append(("#", []))  # a technician's command: not one of the anonymous examples
        elif out:
            out[-1][1].append(line)
    return out


def test_the_anonymous_examples_are_what_the_console_prints():
    checked = 0
    for cmd, expected in examples():
        if cmd == "#" or cmd.split()[0] not in CHECKED or (cmd.startswith("help") and cmd != "help set"):
            continue
        c = Console(FakeBackend(), echo=True, origin="serial /dev/serial0")
        got = [ln for ln in c.execute(cmd, 0).split("\n") if ln]
        expected = [ln for ln in expected if ln.strip()]
        assert len(got) == len(expected), (cmd, got, expected)
        for g, e in zip(got, expected, strict=True):
            if "..." in e:
                assert g.startswith(e.split("...")[0]), (cmd, g, e)
            else:
                assert g == e, (cmd, g, e)
        checked += 1
    assert checked >= 15, checked
