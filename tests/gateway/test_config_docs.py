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
    current = None
    for line in DOC.read_text().splitlines():
        head = re.match(r"^### `\[\[?([a-z_]+)\]\]?`", line)
        inline = re.match(r"^`([a-z_]+)` \(inline table\):", line)
        if head:
            current = head.group(1)
        elif inline and current:
            current = current + "." + inline.group(1)
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
    return f"`{default}`"


def test_every_schema_key_is_documented_with_its_default():
    docs = doc_tables()
    sections = {name: spec[3] for name, spec in schema.site_schema().items()}
    sections["pile.meter"] = schema.site_schema()["pile"][3]["meter"][3]
    for section, fields in sections.items():
        assert section in docs, f"docs/config.md has no table for [{section}]"
        assert set(docs[section]) == set(fields), (section, set(docs[section]) ^ set(fields))
        for key, spec in fields.items():
            assert docs[section][key] == render_default(spec), (section, key)
