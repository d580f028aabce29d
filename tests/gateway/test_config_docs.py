"""docs/config.md documents every key of the schema with the schema's default."""

from __future__ import annotations

import re
from pathlib import Path

from pilecore import schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
ROW = re.compile(r"^\| `([a-z_0-9]+)` \|([^|]+)\|([^|]*)\|")


def doc_tables() -> dict[str, dict[str, str]]:
    """{section: {key: default column}} from the reference tables."""
    tables: dict[str, dict[str, str]] = {}
    current = root = None
    for line in DOC.read_text().splitlines():
        head = re.match(r"^### `\[\[?([a-z_]+)\]\]?`", line)
        inline = re.match(r"^`([a-z_]+)` \((?:array of )?inline tables?\)", line)
        if head:
            current = root = head.group(1)
        elif inline and root:
            current = root + "." + inline.group(1)
        elif current and (m := ROW.match(line)):
            tables.setdefault(current, {})[m.group(1)] = m.group(3).strip()
    return tables


def render_default(spec) -> str:
    _kind, required, default, _ = spec
    if required:
        return "required"
    if default is None:
        return ""
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    if isinstance(default, str):
        return f'`"{default}"`'
    if isinstance(default, list):
        return "`[" + ", ".join(map(str, default)) + "]`"
    return f"`{default}`"


def test_every_schema_key_is_documented_with_its_default():
    docs = doc_tables()
    site = schema.site_schema()
    sections = {name: spec[3] for name, spec in site.items() if spec[0] != "any"}
    sections["pile.meter"] = site["pile"][3]["meter"][3]
    sections["bay.presence"] = site["bay"][3]["presence"][3]
    sections["bay.plug"] = site["bay"][3]["plug"][3]
    for section, fields in sections.items():
        assert section in docs, f"docs/config.md has no table for [{section}]"
        assert set(docs[section]) == set(fields), (section, set(docs[section]) ^ set(fields))
        for key, spec in fields.items():
            assert docs[section][key] == render_default(spec), (section, key)
