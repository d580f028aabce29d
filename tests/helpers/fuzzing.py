"""Hypothesis profiles for the fuzz targets in tests/fuzz.

`make test` runs every target with the "ci" profile: a bounded number of examples, derandomized
so a run is repeatable (the same inputs every time; a failure reproduces).  `make fuzz` selects
the "fuzz" profile (PILEGATE_FUZZ=fuzz): many more examples, random, with hypothesis's example
database so what it finds is tried first next time.  A crash found either way is added to
tests/fuzz/corpus/<target>.txt as a regression case (one hex-encoded input per line, `#`
comments), which every run replays before the random inputs.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

CORPUS = Path(__file__).resolve().parents[1] / "fuzz" / "corpus"

settings.register_profile(
    "ci",
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=20000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PROFILE = os.environ.get("PILEGATE_FUZZ", "ci")
FUZZ = settings(settings.get_profile(PROFILE))


def corpus(target: str) -> list[bytes]:
    """The recorded inputs of one target (tests/fuzz/corpus/<target>.txt, hex per line)."""
    path = CORPUS / f"{target}.txt"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(bytes.fromhex(line))
    return out
