"""Load site.toml, boards and meter profiles; validate with the core; compile to JSON.

Every problem is reported as a `Problem(file, key, message, line)` and printed by the CLI as
`FILE:KEY: message (line N)`.  Nothing here raises to the caller for bad input: a missing
file, a TOML syntax error or an invalid value all become problems.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilecore import config as core_config
from pilecore import profile as core_profile
from pilegate import paths


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.file}:{self.key}: {self.message}{where}"


class ConfigError(Exception):
    """Raised by `load_site_or_raise` with every problem found."""

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass
class Site:
    """A validated site: the compiled configuration, its canonical JSON and its hash."""

    path: Path
    config: dict[str, Any]
    json_bytes: bytes
    config_hash: str


MAX_NESTING = 32  # arrays/inline tables; a real site nests 3 deep, tomllib recurses per level


def read_toml(path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Parse a TOML file; every read, encoding or syntax error becomes a problem with a place.

    Syntax errors and nesting too deep are reported as `LINE:COLUMN`; bytes that are not UTF-8
    as `LINE:COLUMN` plus their byte offset, so an editor or `xxd` finds them.
    """
    name = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, [Problem(name, "(file)", "not found; check the path")]
    except OSError as exc:
        return None, [Problem(name, "(file)", f"cannot be read: {exc.strerror or exc}")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [_encoding_problem(name, raw, exc)]
    deep = _too_deep(text, MAX_NESTING)
    if deep is not None:
        line, col = _line_col(text, deep)
        msg = f"arrays or inline tables nested more than {MAX_NESTING} deep; a site file never needs that"
        return None, [Problem(name, f"{line}:{col}", msg)]
    try:
        return tomllib.loads(text), []
    except tomllib.TOMLDecodeError as exc:
        return None, [_syntax_problem(name, text, str(exc))]
    except RecursionError:  # belt and braces: _too_deep should have caught it
        return None, [Problem(name, "(file)", "TOML nested too deeply to read")]


def _syntax_problem(name: str, text: str, msg: str) -> Problem:
    """A tomllib message made into `FILE:LINE:COLUMN: TOML syntax error: ...`."""
    m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
    if m:
        base = msg[: m.start()].strip()
        return Problem(name, f"{m.group(1)}:{m.group(2)}", f"TOML syntax error: {base}")
    m = re.search(r"\(at end of document\)", msg)
    base = msg[: m.start()].strip() if m else msg
    line, col = _line_col(text, len(text))
    return Problem(name, f"{line}:{col}", f"TOML syntax error: {base} (at the end of the file)")


def _encoding_problem(name: str, raw: bytes, exc: UnicodeDecodeError) -> Problem:
    """Where the first byte that is not UTF-8 is: line, column (characters) and byte offset."""
    good = raw[: exc.start].decode("utf-8")
    line, col = _line_col(good, len(good))
    bad = raw[exc.start : exc.start + 1].hex()
    return Problem(
        name,
        f"{line}:{col}",
        f"not UTF-8: byte 0x{bad} at byte offset {exc.start} ({exc.reason}); "
        "save the file as UTF-8 (site files are UTF-8 text)",
    )


def _line_col(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of character `index` in `text`."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _too_deep(text: str, limit: int) -> int | None:
    """Index of the first `[` or `{` that opens a value nested deeper than `limit`, else None.

    A small scan that skips strings and comments; table headers (`[x]`, `[[x]]`) stay at
    depth 1-2 and so never reach the limit.  Malformed text is left for tomllib to report.
    """
    depth = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if ch in "\"'":
            i = _skip_string(text, i)
            continue
        if ch in "[{":
            depth += 1
            if depth > limit:
                return i
        elif ch in "]}" and depth:
            depth -= 1
        i += 1
    return None


def _skip_string(text: str, i: int) -> int:
    """Index just past the TOML string that starts at `i` (or the end of the line if open)."""
    q = text[i]
    if text.startswith(q * 3, i):
        j = text.find(q * 3, i + 3)
        return len(text) if j < 0 else j + 3
    j = i + 1
    while j < len(text) and text[j] not in (q, "\n"):
        j += 2 if (q == '"' and text[j] == "\\") else 1
    return j + 1


def load_boards(folder: Path | None = None) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """Load and validate every board file; invalid boards are reported and left out."""
    folder = folder or paths.boards_dir()
    boards: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    for path in sorted(folder.glob("*.toml")):
        data, errs = read_toml(path)
        problems += errs
        if data is None:
            continue
        board, errs2 = core_config.validate_board(data, path.stem)
        problems += [Problem(str(path), k, m) for k, m in errs2]
        if board is not None:
            boards[path.stem] = board
    return boards, problems


def _load_dir(folder: Path, validate: Any) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """Every *.toml in folder checked by `validate(data, name) -> problems`; bad ones left out."""
    found: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
        data, errs = read_toml(path)
        problems += errs
        if data is None:
            continue
        errs2 = validate(data, path.stem)
        problems += [Problem(str(path), k, m) for k, m in errs2]
        if not errs2:
            found[path.stem] = data
    return found, problems


def load_profiles(folder: Path | None = None) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """Load and validate every meter profile; invalid profiles are reported and left out."""
    return _load_dir(folder or paths.meter_profiles_dir(), core_profile.validate_profile)


def load_sensor_profiles(folder: Path | None = None) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """Load and validate every presence-sensor profile (profiles/sensors/*.toml)."""
    return _load_dir(folder or paths.sensor_profiles_dir(), core_profile.validate_sensor_profile)


def canonical_json(obj: Any) -> bytes:
    """The compiled-config encoding: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_site(path: Path | str, files: bool = False) -> tuple[Site | None, list[Problem]]:
    """Read, validate and compile a site file. Returns (site, []) or (None, problems).

    files: also check the files the site names (check_named_files), as `pilegate check` and
    `pilegate run` do on the Pi; off when compiling for an ESP32, whose files are on the device.
    """
    path = Path(path)
    data, problems = read_toml(path)
    if data is None:
        return None, problems
    boards, board_problems = load_boards()
    profiles, profile_problems = load_profiles()
    sensors, sensor_problems = load_sensor_profiles()
    profile_problems += sensor_problems
    compiled, errs = core_config.validate_site(data, boards, profiles, sensors)
    text = path.read_bytes().decode("utf-8")
    problems = [Problem(str(path), k, m, find_line(text, k)) for k, m in errs]
    if files:
        problems += check_named_files(data, path, text)
    if problems:
        # A broken board or profile file explains an "unknown board/profile" problem.
        return None, board_problems + profile_problems + problems
    assert compiled is not None
    blob = canonical_json(compiled)
    return Site(path, compiled, blob, hashlib.sha256(blob).hexdigest()), []


def load_site_or_raise(path: Path | str) -> Site:
    site, problems = load_site(path)
    if site is None:
        raise ConfigError(problems)
    return site


# ---------------------------------------------------------------- files the site names

# (table, key, what the file holds, private: must not be readable by group or others)
NAMED_FILES = (
    ("mqtt", "ca_file", "the broker's CA certificate (PEM)", False),
    ("mqtt", "cert_file", "the client certificate (PEM)", False),
    ("mqtt", "key_file", "the client certificate's private key", True),
    ("mqtt", "password_file", "the broker password", True),
    ("signing", "platform_key", "the platform's command public key (PEM)", False),
)


def named_files(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(key path, file path) of every file the site names, e.g. ("mqtt.ca_file", "/etc/...")."""
    out = []
    for table, key, _, _ in NAMED_FILES:
        section = data.get(table)
        value = section.get(key) if isinstance(section, dict) else None
        if isinstance(value, str) and value:
            out.append((f"{table}.{key}", value))
    return out


def check_named_files(data: dict[str, Any], site_path: Path, text: str = "") -> list[Problem]:
    """Every file the site names exists, is readable, is private if it holds a secret (no
    access for group or others: mode 0600 or 0400), and holds what it should (a CA bundle, a
    certificate and its key that belong together, a password, a P-256 public key).  Paths are
    opened as the gateway opens them: relative ones from the current directory."""
    problems: list[Problem] = []
    readable: dict[str, str] = {}

    def problem(keypath: str, message: str) -> None:
        problems.append(Problem(str(site_path), keypath, message, find_line(text, keypath)))

    for table, key, what, private in NAMED_FILES:
        keypath = f"{table}.{key}"
        value = dict(named_files(data)).get(keypath)
        if value is None:
            continue
        error = _file_problem(value, what, private)
        if error:
            problem(keypath, error)
        else:
            readable[keypath] = value
    for keypath, error in _content_problems(readable):
        problem(keypath, error)
    return problems


def _file_problem(name: str, what: str, private: bool) -> str | None:
    """Why the file `name` cannot serve as `what`, or None."""
    path = Path(name)
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{name}: not found; put {what} there, or correct the path"
    except OSError as exc:
        return f"{name}: cannot be reached ({exc.strerror}); check the path and the directories' permissions"
    if not stat.S_ISREG(st.st_mode):
        return f"{name}: not a regular file; name the file that holds {what}"
    mode = stat.S_IMODE(st.st_mode)
    if private and mode & 0o077:
        return (
            f"{name} has mode {mode:04o}: other users can read {what}; "
            f"it must be 0600 (owner only): run 'chmod 600 {name}'"
        )
    try:
        with open(path, "rb") as f:
            f.read(1)
    except PermissionError:
        return (
            f"{name}: cannot be read by user {_user()} (permission denied); the user that runs the "
            "gateway must be able to read it: check as that user, or fix the file's owner"
        )
    except OSError as exc:
        return f"{name}: cannot be read ({exc.strerror})"
    return None


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


def _content_problems(files: dict[str, str]) -> list[tuple[str, str]]:
    """Each readable file holds what its key promises."""
    out: list[tuple[str, str]] = []
    ca = files.get("mqtt.ca_file")
    if ca:
        try:
            ssl.create_default_context(cafile=ca)
        except (ssl.SSLError, ValueError) as exc:
            out.append(("mqtt.ca_file", f"{ca}: not a CA certificate in PEM ({exc}); give the broker's CA bundle"))
    cert, key = files.get("mqtt.cert_file"), files.get("mqtt.key_file")
    if cert and key:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.load_cert_chain(cert, key, password=lambda: b"")
        except (ssl.SSLError, ValueError) as exc:
            out.append(
                (
                    "mqtt.cert_file",
                    f"{cert} with key {key}: not a PEM certificate and its unencrypted private key ({exc}); "
                    "give the client certificate and the key it was issued for",
                )
            )
    pw = files.get("mqtt.password_file")
    if pw and not Path(pw).read_bytes().strip():
        out.append(("mqtt.password_file", f"{pw}: empty; write the broker password into it"))
    pk = files.get("signing.platform_key")
    if pk:
        from pilegate import keys

        try:
            keys.load_public_pem(pk)
        except (ValueError, keys.KeyFileError) as exc:
            out.append(("signing.platform_key", f"{pk}: not an ECDSA P-256 public key in PEM ({exc})"))
    return out


# ---------------------------------------------------------------- key path -> line number

_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$")
_KEYLINE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def find_line(text: str, keypath: str) -> int | None:
    """Best-effort line number of a key path such as "pile[P03].meter.address".

    Finds the table (the Nth [[pile]], or the one whose id/name matches), then the first key
    of the path inside it.  Returns None when the key is absent (e.g. a missing key).
    """
    m = re.match(r"^([A-Za-z0-9_]+)(?:\[([^\]]+)\])?(?:\.([A-Za-z0-9_]+))?", keypath)
    if not m:
        return None
    table, item, key = m.group(1), m.group(2), m.group(3)
    lines = text.splitlines()
    sections = _sections(lines, table)
    if item is None and not sections:
        return None
    if item is not None:
        sections = _pick_item(lines, sections, item)
    if not sections:
        return None
    start, end = sections[0]
    if key is None:
        return start + 1
    for n in range(start + 1, end):
        km = _KEYLINE.match(lines[n])
        if km and km.group(1) == key:
            return n + 1
    return start + 1


def _sections(lines: list[str], table: str) -> list[tuple[int, int]]:
    matches = [(i, _HEADER.match(line)) for i, line in enumerate(lines)]
    heads = [(i, h.group(1)) for i, h in matches if h]
    out = []
    for k, (i, name) in enumerate(heads):
        if name == table:
            end = heads[k + 1][0] if k + 1 < len(heads) else len(lines)
            out.append((i, end))
    return out


def _pick_item(lines: list[str], sections: list[tuple[int, int]], item: str) -> list[tuple[int, int]]:
    if item.startswith("#") and item[1:].isdigit():
        n = int(item[1:]) - 1
        return [sections[n]] if 0 <= n < len(sections) else []
    pat = re.compile(r"^\s*(id|name)\s*=\s*[\"']" + re.escape(item) + r"[\"']")
    for start, end in sections:
        if any(pat.match(lines[n]) for n in range(start, end)):
            return [(start, end)]
    return []
