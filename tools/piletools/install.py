"""`pilegate install` / `pilegate uninstall`: the Raspberry Pi gateway as a hardened systemd service.

What install does (each step printed, docs/install.md shows the output):

1. the system user `pilegate` (no login, no home of its own), in the `dialout` group for the
   RS-485 adapter and `gpio` for relays and inputs;
2. directories: /etc/pilegate (0750 root:pilegate) holding the site file (0640), the data
   directory from the site (`[gateway] data_dir`, 0700 pilegate) for the key, outbox and state;
3. a udev rule giving each USB-RS-485 adapter a stable name, /dev/pilegate-<bus>, and the
   installed site file's bus ports pointing at those names;
4. the unit /etc/systemd/system/pilegate.service: `Type=notify` with `WatchdogSec=` (the
   gateway pings from its main loop, pilegate.sdnotify), hardening (`ProtectSystem=strict`,
   `NoNewPrivileges`, `ReadWritePaths=` the data directory only, devices by group and a closed
   device policy);
5. `pilegate provision` (device key; with --console-pin a technician PIN, shown once);
6. systemctl daemon-reload, udev reload, enable --now.

`--root DIR` installs into a directory instead of `/` (packaging, tests): files and modes are
made there and the commands that need a real system (useradd, chown, systemctl, udevadm) are
listed instead of run.  uninstall undoes it and keeps the data directory unless `--purge`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USER = "pilegate"
SERVICE = "pilegate.service"
UNIT_PATH = Path("etc/systemd/system") / SERVICE
UDEV_PATH = Path("etc/udev/rules.d/60-pilegate-rs485.rules")
ETC = Path("etc/pilegate")
WATCHDOG_S = 30

Runner = Callable[[list[str]], int]


class InstallError(Exception):
    """The installation cannot go on; the message says what and what to do."""


@dataclass
class Adapter:
    bus: str
    vendor: str
    product: str
    serial: str = ""

    @property
    def link(self) -> str:
        return f"pilegate-{self.bus}"


def parse_adapter(text: str, buses: list[str]) -> Adapter:
    """[BUS=]VID:PID[:SERIAL] (hex ids as `lsusb` prints them)."""
    bus, eq, ids = text.partition("=")
    if not eq:
        if len(buses) != 1:
            raise InstallError(f"--adapter {text}: the site has buses {', '.join(buses)}; write BUS=VID:PID")
        bus, ids = buses[0], text
    if bus not in buses:
        raise InstallError(f"--adapter {text}: no serial bus {bus!r} in the site (serial buses: {', '.join(buses)})")
    parts = ids.split(":")
    if len(parts) not in (2, 3) or not all(len(x) == 4 and _is_hex(x) for x in parts[:2]):
        raise InstallError(f"--adapter {text}: write the USB ids as lsusb shows them, e.g. 1a86:7523[:SERIAL]")
    return Adapter(bus, parts[0].lower(), parts[1].lower(), parts[2] if len(parts) == 3 else "")


def _is_hex(s: str) -> bool:
    try:
        int(s, 16)
    except ValueError:
        return False
    return True


def usb_ids(port: str, sys_root: Path = Path("/sys")) -> tuple[str, str, str] | None:
    """(vendor, product, serial) of the USB device behind a tty such as /dev/ttyUSB0, from sysfs."""
    name = Path(os.path.realpath(port)).name
    dev = sys_root / "class" / "tty" / name / "device"
    try:
        node = dev.resolve()
    except OSError:
        return None
    for d in [node, *node.parents]:
        vid, pid = d / "idVendor", d / "idProduct"
        if vid.exists() and pid.exists():
            serial = (d / "serial").read_text().strip() if (d / "serial").exists() else ""
            return vid.read_text().strip(), pid.read_text().strip(), serial
    return None


def udev_rules(adapters: list[Adapter]) -> str:
    lines = [
        "# pilegate: stable names for the RS-485 adapters (pilegate install; docs/install.md)",
        "# The gateway opens /dev/pilegate-<bus>, whichever ttyUSB number the kernel gives.",
    ]
    for a in adapters:
        serial = f', ATTRS{{serial}}=="{a.serial}"' if a.serial else ""
        lines.append(
            f'SUBSYSTEM=="tty", ATTRS{{idVendor}}=="{a.vendor}", ATTRS{{idProduct}}=="{a.product}"{serial}, '
            f'SYMLINK+="{a.link}", GROUP="dialout", MODE="0660"'
        )
    return "\n".join(lines) + "\n"


def unit_text(exe: str, site_file: str, data_dir: str, gw: dict[str, Any], watchdog_s: int = WATCHDOG_S) -> str:
    """The systemd unit; `systemd-analyze verify` accepts it (tests)."""
    return f"""# pilegate gateway service, written by `pilegate install` (docs/install.md)
[Unit]
Description=pilegate EV charging-pile gateway {gw["id"]} (site {gw["site"]})
Documentation=https://github.com/pilegate/pilegate/blob/main/docs/install.md
After=network-online.target time-sync.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exe} run {site_file}
User={USER}
Group={USER}
# RS-485 adapters (dialout) and the board's relays and inputs (gpio), by group
SupplementaryGroups=dialout gpio
WatchdogSec={watchdog_s}
Restart=on-failure
RestartSec=5
TimeoutStopSec=20
RuntimeDirectory=pilegate
RuntimeDirectoryMode=0750
UMask=0077

# Hardening: the gateway writes only its data directory
ProtectSystem=strict
ReadWritePaths={data_dir}
ProtectHome=true
PrivateTmp=true
PrivateMounts=true
NoNewPrivileges=true
CapabilityBoundingSet=
AmbientCapabilities=
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectKernelLogs=true
ProtectControlGroups=true
ProtectClock=true
ProtectHostname=true
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=true
RestrictRealtime=true
RestrictSUIDSGID=true
LockPersonality=true
RemoveIPC=true
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
DevicePolicy=closed
DeviceAllow=char-ttyUSB rw
DeviceAllow=char-ttyACM rw
DeviceAllow=char-ttyAMA rw
DeviceAllow=char-ttyS rw
DeviceAllow=char-gpiochip rw

[Install]
WantedBy=multi-user.target
"""


@dataclass
class Installer:
    """Does the steps; with `root` set it writes under that directory and lists commands."""

    root: Path
    run: Runner | None  # None: list the commands instead of running them
    out: Any = None  # None: sys.stdout at the time of printing
    commands: list[list[str]] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def path(self, p: str | Path) -> Path:
        return self.root / str(p).lstrip("/")

    def cmd(self, argv: list[str], check: bool = True) -> None:
        self.commands.append(argv)
        if self.run is None:
            self.say(f"  (would run) {' '.join(argv)}")
            return
        code = self.run(argv)
        if code != 0 and check:
            raise InstallError(f"{' '.join(argv)} failed with exit status {code}")

    def mkdir(self, p: str | Path, mode: int, owner: str) -> None:
        d = self.path(p)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, mode)
        self.cmd(["chown", owner, str(p)])
        self.say(f"  {p}/  {mode:04o} {owner}")

    def write(self, p: str | Path, text: str | bytes, mode: int, owner: str = "root:root") -> None:
        f = self.path(p)
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f.name + ".tmp")
        if isinstance(text, str):
            text = text.encode()
        tmp.write_bytes(text)
        os.chmod(tmp, mode)
        os.replace(tmp, f)
        if owner != "root:root":
            self.cmd(["chown", owner, str(p)])
        self.say(f"  {p}  {mode:04o} {owner}")

    def remove(self, p: str | Path) -> None:
        f = self.path(p)
        if f.is_dir() and not f.is_symlink():
            shutil.rmtree(f)
            self.say(f"  removed {p}/")
        elif f.exists() or f.is_symlink():
            f.unlink()
            self.say(f"  removed {p}")


def _serial_buses(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for b in cfg["bus"] if not str(b["port"]).startswith(("tcp://", "rtu+tcp://"))]


def install(
    site_path: Path,
    inst: Installer,
    exe: str,
    adapters: list[str],
    console_pin: bool = False,
    start: bool = True,
    sys_root: Path = Path("/sys"),
) -> int:
    import tomlkit

    from pilegate import cli, siteconfig

    site, problems = siteconfig.load_site(site_path)
    if site is None:
        for p in problems:
            print(p, file=sys.stderr)
        raise InstallError(f"{site_path}: {len(problems)} problem(s); run 'pilegate check {site_path}' first")
    cfg = site.config
    gw = cfg["gateway"]
    data_dir = str(gw["data_dir"])
    serial = _serial_buses(cfg)
    found = [parse_adapter(a, [b["name"] for b in serial]) for a in adapters]
    for b in serial:  # adapters not named: from sysfs, when the port exists now
        if any(a.bus == b["name"] for a in found):
            continue
        ids = usb_ids(b["port"], sys_root)
        if ids:
            found.append(Adapter(b["name"], *ids))
        else:
            inst.say(
                f"note: bus {b['name']}: {b['port']} is not a USB adapter plugged in now: no stable name "
                "(plug it in, or give --adapter BUS=VID:PID as lsusb shows)"
            )

    inst.say(f"1. system user {USER}")
    inst.cmd(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", data_dir,
         "--shell", "/usr/sbin/nologin", USER],
        check=False,
    )  # fmt: skip
    inst.cmd(["groupadd", "--system", "-f", "gpio"])
    inst.cmd(["usermod", "-aG", "dialout,gpio", USER])

    inst.say("2. directories and the site file")
    inst.mkdir(ETC, 0o750, f"root:{USER}")
    inst.mkdir(data_dir, 0o700, f"{USER}:{USER}")
    doc = tomlkit.parse(site_path.read_text(encoding="utf-8"))
    for a in found:
        for b in doc.get("bus", []):
            if b.get("name") == a.bus:
                b["port"] = f"/dev/{a.link}"
    installed_site = f"/{ETC}/site.toml"
    inst.write(installed_site, tomlkit.dumps(doc), 0o640, f"root:{USER}")

    inst.say("3. udev rule: stable names for the RS-485 adapters")
    if found:
        inst.write(f"/{UDEV_PATH}", udev_rules(found), 0o644)
        for a in found:
            inst.say(f"  bus {a.bus}: USB {a.vendor}:{a.product} -> /dev/{a.link}")
    else:
        inst.say("  none (no USB RS-485 bus)")

    inst.say("4. systemd unit")
    inst.write(f"/{UNIT_PATH}", unit_text(exe, installed_site, data_dir, gw), 0o644)

    inst.say("5. provision: device key" + (" and technician PIN" if console_pin else ""))
    argv = ["provision", str(site_path), "--data-dir", str(inst.path(data_dir))]
    if console_pin:
        argv.append("--console-pin")
    code = cli.main(argv)
    if code != 0:
        raise InstallError(f"pilegate provision failed (exit {code})")
    inst.cmd(["chown", "-R", f"{USER}:{USER}", data_dir])

    inst.say("6. start")
    inst.cmd(["systemctl", "daemon-reload"])
    if found:
        inst.cmd(["udevadm", "control", "--reload-rules"])
        inst.cmd(["udevadm", "trigger", "--subsystem-match=tty"])
    inst.cmd(["systemctl", "enable", "--now" if start else "--quiet", SERVICE])
    inst.say(
        f"installed: gateway {gw['id']} runs as {SERVICE}; 'systemctl status pilegate' and "
        "'journalctl -u pilegate -f' show it; 'pilegate console' attaches to it"
    )
    return 0


def uninstall(inst: Installer, data_dir: str, purge: bool) -> int:
    inst.say("1. stop and disable the service")
    inst.cmd(["systemctl", "disable", "--now", SERVICE], check=False)
    inst.say("2. remove the unit, the udev rule and the configuration")
    inst.remove(f"/{UNIT_PATH}")
    inst.remove(f"/{UDEV_PATH}")
    inst.remove(f"/{ETC}")
    inst.cmd(["systemctl", "daemon-reload"])
    inst.cmd(["udevadm", "control", "--reload-rules"], check=False)
    if purge:
        inst.say(f"3. purge: the data directory {data_dir} (device key, outbox, state) and the user")
        inst.remove(data_dir)
        inst.cmd(["userdel", USER], check=False)
    else:
        inst.say(
            f"3. kept {data_dir} (device key, outbox with unsent messages, state) and the user {USER}; "
            "'pilegate uninstall --purge' removes them"
        )
    return 0


def _runner(argv: list[str]) -> int:
    return subprocess.run(argv, check=False).returncode


def _installer(args: Any) -> Installer | None:
    if args.root is not None:
        return Installer(Path(args.root), None)
    if os.geteuid() != 0:
        print(
            f"pilegate {args.command}: run as root (sudo), or give --root DIR to write into a folder", file=sys.stderr
        )
        return None
    return Installer(Path("/"), _runner)


def default_exe() -> str:
    exe = Path(sys.executable).with_name("pilegate")
    return str(exe if exe.exists() else (shutil.which("pilegate") or exe))


def main_install(args: Any) -> int:
    inst = _installer(args)
    if inst is None:
        return 2
    try:
        return install(Path(args.site), inst, args.exe or default_exe(), args.adapter or [], args.console_pin,
                       not args.no_start)  # fmt: skip
    except InstallError as exc:
        print(f"pilegate install: {exc}", file=sys.stderr)
        return 2


def main_uninstall(args: Any) -> int:
    inst = _installer(args)
    if inst is None:
        return 2
    data_dir = args.data_dir
    if data_dir is None:
        site = inst.path(f"/{ETC}/site.toml")
        try:
            import tomllib

            data_dir = tomllib.loads(site.read_text()).get("gateway", {}).get("data_dir", "/var/lib/pilegate")
        except (OSError, ValueError):
            data_dir = "/var/lib/pilegate"
    return uninstall(inst, str(data_dir), args.purge)
