"""The model repository on real bundle archives: versions, identical uploads, refusals that
leave nothing behind, two processes registering at once, deleting, and the shared state."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import pytest

from app.bundle import write_archive
from app.errors import (
    InvalidArchive,
    ModelDeployed,
    ModelExists,
    ModelNotFound,
    ValidationFailed,
    VersionNotFound,
)
from app.repository import INCOMING, Repository, State
from tests.model.test_bundle_check import ARCHIVES, INT8, bundle_archive

ROOT = Path(__file__).resolve().parents[2]
SPLADE = ROOT / "models" / "splade-tiny"


def described(tmp_path: Path, text: str) -> Path:
    """The int8 bundle with ``text`` in its manifest (other content, same model), archived."""
    folder = tmp_path / f"src-{text}"
    shutil.copytree(INT8, folder)
    manifest = json.loads((folder / "config.json").read_text())
    manifest["note"] = text
    (folder / "config.json").write_text(json.dumps(manifest))
    return write_archive(folder, tmp_path / f"{text}.zip")


def left_behind(root: Path) -> list[Path]:
    """What the repository holds besides its versions, lock files and state."""
    return [p for p in (root / INCOMING).iterdir()]


def test_each_registration_of_new_content_is_the_next_version(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    int8 = write_archive(INT8, tmp_path / "int8.zip")
    first, created = repo.register(int8, "minilm", "the int8 bundle")
    assert created and first.version == 1 and first.source == "uploaded"
    assert first.public() == {
        "name": "minilm",
        "version": 1,
        "kind": "dense",
        "dimension": 384,
        "variant": "int8",
        "size_bytes": sum(p.stat().st_size for p in INT8.iterdir()),
        "sha256": json.loads((INT8 / "config.json").read_text())["model_sha256"],
        "created": first.created,
        "description": "the int8 bundle",
        "source": "uploaded",
    }
    assert sorted(p.name for p in first.path.iterdir()) == sorted(
        [*(p.name for p in INT8.iterdir()), "record.json"]
    )
    again, created = repo.register(int8, "minilm", "the same again")
    assert not created and again == first  # identical content is that version, not a copy
    sparse, created = repo.register(write_archive(SPLADE, tmp_path / "s.zip"), "minilm")
    assert created and sparse.version == 2 and sparse.kind == "sparse"
    assert [v.version for v in repo.versions("minilm")] == [1, 2]
    assert repo.get("minilm", 2) == sparse
    assert left_behind(repo.root) == []


@pytest.mark.parametrize("case", ["zip-slip", "symbolic link", "zip bomb"])
def test_a_refused_upload_leaves_nothing(tmp_path: Path, case: str) -> None:
    repo = Repository(tmp_path / "repo")
    archive = bundle_archive(tmp_path / "bad.zip", ARCHIVES[case][0])
    with pytest.raises(InvalidArchive):
        repo.register(archive, "minilm")
    assert left_behind(repo.root) == [] and not (repo.root / "minilm" / "1").exists()
    with pytest.raises(ModelNotFound):
        repo.versions("minilm")


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../up", "x" * 65, "naïve", "a b"])
def test_a_bad_name_is_refused(tmp_path: Path, name: str) -> None:
    repo = Repository(tmp_path / "repo")
    with pytest.raises(ValidationFailed, match=r"1 to 64 of A-Za-z0-9\._-") as caught:
        repo.register(tmp_path / "never-read.zip", name)
    assert caught.value.param == "name"


def test_static_bundles_are_listed_and_kept(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", static={"all-MiniLM-L6-v2-int8": INT8})
    (static,) = repo.all()
    assert (static.name, static.version, static.source) == ("all-MiniLM-L6-v2-int8", 1, "static")
    with pytest.raises(ModelExists, match="settings serve"):
        repo.register(write_archive(INT8, tmp_path / "i.zip"), "all-MiniLM-L6-v2-int8")
    with pytest.raises(ModelDeployed):
        repo.delete("all-MiniLM-L6-v2-int8")
    assert (INT8 / "model.onnx").is_file()


def test_delete_refuses_a_deployed_version_and_removes_the_rest(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    for text in ("one", "two", "three"):
        repo.register(described(tmp_path, text), "minilm")
    repo.save_state(State(deployed={"minilm": 2}, default="minilm"))
    assert Repository(tmp_path / "repo").state() == State({"minilm": 2}, "minilm")
    with pytest.raises(ModelDeployed, match="minilm@2 is deployed"):
        repo.delete("minilm", 2)
    with pytest.raises(ModelDeployed):
        repo.delete("minilm")
    assert [v.version for v in repo.delete("minilm", 3)] == [3]
    with pytest.raises(VersionNotFound, match="minilm has no version 3; it has 1, 2"):
        repo.get("minilm", 3)
    repo.save_state(State())
    assert [v.version for v in repo.delete("minilm")] == [1, 2]
    assert not (repo.root / "minilm").exists() and left_behind(repo.root) == []
    with pytest.raises(ModelNotFound):
        repo.delete("minilm")


def _register(root: str, archive: str, start: multiprocessing.synchronize.Barrier) -> int:
    repo = Repository(Path(root))
    start.wait()
    return repo.register(Path(archive), "minilm")[0].version


def test_two_processes_registering_at_once_get_two_versions(tmp_path: Path) -> None:
    archives = [str(described(tmp_path, text)) for text in ("left", "right")]
    context = multiprocessing.get_context("spawn")
    start = context.Manager().Barrier(2)
    with context.Pool(2) as pool:
        versions = pool.starmap(_register, [(str(tmp_path / "repo"), a, start) for a in archives])
    assert sorted(versions) == [1, 2]
    assert [v.version for v in Repository(tmp_path / "repo").versions("minilm")] == [1, 2]
