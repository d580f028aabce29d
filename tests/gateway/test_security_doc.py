"""docs/security.md points at tests and doc sections: every one of them must exist, and every
one of the 13 provisions of ETSI EN 303 645 must be there with a test or a doc section."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "docs" / "security.md").read_text()


def test_every_test_the_page_names_exists():
    refs = re.findall(r"(tests/[\w/]+\.py)::(\w+)", TEXT)
    assert len(refs) > 30
    for path, name in refs:
        src = (ROOT / path).read_text()
        assert re.search(rf"^def {name}\(", src, re.M), f"{path}::{name} named in docs/security.md does not exist"


def test_every_doc_the_page_names_exists():
    for doc in set(re.findall(r"docs/[\w-]+\.md|README\.md", TEXT)):
        assert (ROOT / doc).exists(), doc


def test_all_13_provisions_are_mapped():
    for n in range(1, 14):
        m = re.search(rf"^### 5\.{n} ([^\n]+)\n(.*?)(?=^### |^## )", TEXT, re.M | re.S)
        assert m, f"provision 5.{n} is missing"
        body = m.group(2)
        assert "**pilegate**" in body and "**Shown by**" in body and "**Operator**" in body, n
