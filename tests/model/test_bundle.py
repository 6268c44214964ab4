"""Start-up faults: each is a StartupError with one line saying what is wrong and what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.backends.onnx.bundle import load_bundle
from app.backends.onnx.model import OnnxModel
from app.backends.onnx.packing import PACKED_INPUTS
from app.config import Settings
from app.core.model import ModelKind
from app.errors import StartupError
from app.loading import load_models


@pytest.fixture
def bundle_copy(settings: Settings, tmp_path: Path) -> Path:
    """A copy of the real bundle whose model.onnx is a link, so tests can break the rest."""
    copy = tmp_path / "copy-model"
    copy.mkdir()
    for item in settings.model_dir.iterdir():
        if item.name == "model.onnx":
            (copy / item.name).symlink_to(item.resolve())
        else:
            shutil.copy(item, copy / item.name)
    return copy


def test_the_real_bundle_loads(settings: Settings) -> None:
    bundle = load_bundle(settings.model_dir)
    assert (bundle.id, bundle.dimension, bundle.pooling) == ("all-MiniLM-L6-v2", 384, "mean")
    assert bundle.max_seq_length == 256 and bundle.normalize
    # The packed graph (see scripts/packed_graph.py): tokens end to end, rows only in attention.
    assert bundle.manifest["layout"] == "packed"
    assert bundle.input_names == PACKED_INPUTS


def test_the_id_is_the_folder_name(bundle_copy: Path) -> None:
    assert load_bundle(bundle_copy).id == "copy-model"


def test_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="does not exist; build it with `make models`"):
        load_bundle(tmp_path / "nothing-here")


def test_missing_tokenizer(bundle_copy: Path) -> None:
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(StartupError, match=r"has no tokenizer\.json; re-export"):
        load_bundle(bundle_copy)


def test_corrupted_model_fails_the_checksum(bundle_copy: Path) -> None:
    (bundle_copy / "model.onnx").unlink()
    (bundle_copy / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(StartupError, match="does not match the sha256"):
        load_bundle(bundle_copy)


def test_unsupported_pooling_is_refused(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / "config.json").read_text())
    manifest["pooling"] = "weightedmean"
    (bundle_copy / "config.json").write_text(json.dumps(manifest))
    with pytest.raises(
        StartupError, match=r"pooling mode 'weightedmean'; this service supports mean, cls, max"
    ):
        load_bundle(bundle_copy)


def test_broken_manifest(bundle_copy: Path) -> None:
    (bundle_copy / "config.json").write_text("{not json")
    with pytest.raises(StartupError, match="is not valid JSON"):
        load_bundle(bundle_copy)


def test_unreadable_tokenizer(bundle_copy: Path) -> None:
    (bundle_copy / "tokenizer.json").write_text("{}")
    with pytest.raises(StartupError, match=r"cannot read .*tokenizer\.json"):
        OnnxModel.load(load_bundle(bundle_copy))


def test_a_manifest_without_a_kind_is_dense(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / "config.json").read_text())
    manifest.pop("kind", None)
    (bundle_copy / "config.json").write_text(json.dumps(manifest))
    assert load_bundle(bundle_copy).kind == ModelKind.DENSE


def test_the_export_writes_the_kind(settings: Settings) -> None:
    manifest = json.loads((settings.model_dir / "config.json").read_text())
    assert manifest.get("kind") == "dense", "a bundle from an older export: delete it and rebuild"


@pytest.mark.parametrize(
    ("kind", "pooling", "says"),
    [
        ("rerank", "mean", "uses pooling mode 'mean'"),
        ("sparse", "mean", "uses pooling mode 'mean'"),
        ("nope", "mean", "knows"),
    ],
)
def test_a_kind_this_version_does_not_serve_is_refused(
    bundle_copy: Path, kind: str, pooling: str, says: str
) -> None:
    manifest = json.loads((bundle_copy / "config.json").read_text())
    manifest |= {"kind": kind, "pooling": pooling}
    (bundle_copy / "config.json").write_text(json.dumps(manifest))
    with pytest.raises(StartupError, match=says):
        OnnxModel.load(load_bundle(bundle_copy))


def test_a_missing_bundle_among_several_stops_the_start(settings: Settings) -> None:
    listed = Settings(models=[str(settings.model_dir), "/nonexistent/bundle"])
    with pytest.raises(StartupError, match="does not exist"):
        load_models(listed)
