"""The console's authorization boundary, command by command (docs/security.md), on both
interpreters: anonymous runs every read command of the command table and no privileged one;
a privileged command tried anonymously changes nothing, is refused and is audited."""

from test_console import RECORD, FakeBackend

from pilecore import console
from pilecore.console import Console

# What a backend may be asked by a read command (pure reads; mbread/scan queue bus reads only).
READS = (
    "status",
    "piles",
    "meter",
    "bays",
    "bay",
    "events",
    "mqtt",
    "bus",
    "log",
    "selftest",
    "keys",
    "mbread",
    "scan",
)
# What changes the gateway: never reached without a login.
CHANGES = ("set_setting", "interlock", "reboot", "factory_reset", "repl", "cancel")
# Arguments that make each command do its work (not a usage error).
ARGS = {
    "help": "set",
    "meter": "P01",
    "bay": "B01",
    "events": "3",
    "mbread": "rs485-1 1 3 0 2",
    "scan": "rs485-1 1-4",
    "log": "error",
    "echo": "on",
    "set": "telemetry.interval_s 7",
    "interlock": "P01 off",
}


class Recorder(FakeBackend):
    def repl(self):
        self._call("repl")


def test_the_command_table_says_who_may_run_each_command():
    who = dict([(c[0], c[1]) for c in console.commands()])
    privileged = sorted([name for name in who if who[name]])
    assert privileged == ["factory-reset", "interlock", "reboot", "repl", "set"], privileged


def test_anonymous_runs_every_read_command_and_no_privileged_one():
    for name, privileged, _usage, _summary in console.commands():
        b = Recorder()
        c = Console(b, auth_record=RECORD)
        line = ("%s %s" % (name, ARGS.get(name, ""))).strip()
        out = c.execute(line, 100)
        for now in (101, 102, 103):  # delayed actions (reboot, repl) would run here
            c.poll(now)
        changed = [m for m in b.calls if m in CHANGES]
        assert changed == [], (name, changed)
        asked = [m for m in b.calls if m not in ("audit",)]
        if privileged:
            assert "needs a technician login" in out, (name, out)
            assert [m for m in asked if m != "status"] == [], (name, asked)
            assert [(a["cmd"], a["who"], a["result"]) for a in b.audits] == [(name, "anonymous", "refused")], name
            assert c.prompt() == "pilegate> "  # no confirmation prompt was opened either
        else:
            assert not out.startswith("error:"), (name, out)
            assert all(m in READS for m in asked), (name, asked)
            assert [a for a in b.audits if a["cmd"] == name] == [] or name == "login", (name, b.audits)


def test_anonymous_reads_by_hand_only_with_read_functions():
    b = Recorder()
    c = Console(b, auth_record=RECORD)
    for fc in (5, 6, 15, 16, 0, 7):
        out = c.execute("mbread rs485-1 1 %d 0 1" % fc, 0)
        assert "fc (1-4: reads only)" in out, out
    assert "mbread" not in b.calls


def test_log_with_a_level_reads_and_set_log_level_needs_the_login():
    b = Recorder()
    c = Console(b, auth_record=RECORD)
    for level in console.LOG_LEVELS:
        c.execute("log " + level, 0)
    assert "set_setting" not in b.calls and b.audits == []
    assert "needs a technician login" in c.execute("set log.level debug", 0)
    assert b.audits[-1]["cmd"] == "set" and b.audits[-1]["result"] == "refused"


def test_the_login_state_is_importable_without_the_console():
    # The ESP32 imports the console only when it opens one; AuthState is needed at start.
    import sys

    saved = {}
    for name in [m for m in sys.modules if m.startswith("pilecore.console")]:
        saved[name] = sys.modules.pop(name)
    try:
        from pilecore.console_auth import AuthState

        assert AuthState(None).wait_s(0) == 0
        assert [m for m in sys.modules if m.startswith("pilecore.console")] == ["pilecore.console_auth"]
    finally:
        for name in saved:
            sys.modules[name] = saved[name]
