"""A real small filesystem for disk-full tests: a tmpfs mounted on a test's directory.

Mounting needs root (or CAP_SYS_ADMIN). Where it is not permitted the test is skipped
with the reason, except under ``CI=true``, where a missing small disk would silently
drop the disk-full tests: there it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def mounted_tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """``path`` as a tmpfs of ``size_mb`` MiB for the block; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    result = (
        subprocess.run(
            [mount, "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mount
        else None
    )
    if result is None or result.returncode != 0:
        why = result.stderr.strip() if result is not None else "no mount command"
        message = f"cannot mount a {size_mb} MiB tmpfs for the disk-full tests: {why}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(directory: Path, *, leave_free: int, name: str = "filler.bin") -> Path:
    """Write a file in ``directory`` until its filesystem has ``leave_free`` bytes free
    (or none: the write then stops at the full disk, as any program's would)."""
    filler = directory / name
    free = shutil.disk_usage(directory).free
    size = max(0, free - leave_free)
    with filler.open("ab") as out:
        block = b"\0" * (1 << 16)
        while size > 0:
            try:
                written = out.write(block[: min(size, len(block))])
                out.flush()
            except OSError:
                break
            size -= written
    return filler
