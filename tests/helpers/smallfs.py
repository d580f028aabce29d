"""A real small file system for storage-fault tests: a tmpfs of a few MiB mounted by the test.

Mounting needs root (CI runs as root); elsewhere the tests that need it are skipped with that
reason.  `fill()` takes the free space away the way a runaway log would; `free()` gives it back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

NOT_ROOT = "mounting a tmpfs needs root (CI runs as root); run as root to test a full disk"


class SmallFs:
    """A mounted tmpfs at `path` of `size_kb` KiB."""

    def __init__(self, path: Path, size_kb: int) -> None:
        self.path = path
        self.size_kb = size_kb
        self.filler = path / "filler.bin"

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> int:
        """Write a filler file until only `leave` bytes are free (or nothing is); its size."""
        chunk = bytes(4096)
        with open(self.filler, "ab") as f:
            while self.free_bytes() > leave:
                try:
                    f.write(chunk)
                    f.flush()
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        return self.filler.stat().st_size

    def free(self) -> None:
        """Give the filler's space back."""
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()


@contextlib.contextmanager
def small_fs(where: Path, size_kb: int) -> Iterator[SmallFs]:
    """Mount a tmpfs of `size_kb` KiB at `where` (created), unmount it afterwards."""
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {where} as root: {done.stderr.strip()}")
    try:
        yield SmallFs(where, size_kb)
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
