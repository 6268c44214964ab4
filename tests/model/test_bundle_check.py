"""``python -m app.bundle check``: real bundles pass; each hostile or broken archive or folder is
refused with its code, naming the file or field, and nothing is left behind."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from app.bundle import check, write_archive
from app.errors import InvalidArchive, InvalidBundle

ROOT = Path(__file__).resolve().parents[2]
INT8 = ROOT / "models" / "all-MiniLM-L6-v2-int8"  # the small real bundle
REAL = ["all-MiniLM-L6-v2-int8", "splade-tiny", ".tiny/tiny-cross-encoder", ".tiny/tiny-bert"]


def member(zf: zipfile.ZipFile, name: str, data: bytes, mode: int = 0o100644) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def bundle_archive(path: Path, extra: Callable[[zipfile.ZipFile], None] | None = None) -> Path:
    """The int8 bundle as an archive, with ``extra`` members added."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("config.json", "model.onnx", "tokenizer.json"):
            zf.write(INT8 / name, name)
        if extra:
            extra(zf)
    return path


def edited(tmp_path: Path, edit: Callable[[dict[str, object], Path], object]) -> Path:
    """A copy of the int8 bundle folder with its manifest (and files) changed by ``edit``."""
    folder = tmp_path / "bundle"
    shutil.copytree(INT8, folder)
    manifest = json.loads((folder / "config.json").read_text())
    edit(manifest, folder)
    (folder / "config.json").write_text(json.dumps(manifest))
    return folder


def with_model(manifest: dict[str, object], folder: Path, model: bytes) -> None:
    (folder / "model.onnx").write_bytes(model)
    manifest["model_sha256"] = hashlib.sha256(model).hexdigest()


def outside_data(manifest: dict[str, object], folder: Path) -> None:
    """A graph whose one weight lives in ../weights.bin, outside the bundle."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    weight.data_location = TensorProto.EXTERNAL
    del weight.float_data[:]
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../weights.bin"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["last_hidden_state"])],
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [None, 384])],
        [weight],
    )
    with_model(manifest, folder, helper.make_model(graph).SerializeToString())


ARCHIVES: dict[str, tuple[Callable[[zipfile.ZipFile], None], str]] = {
    "zip-slip": (lambda zf: member(zf, "../evil.py", b"x"), "a path with '..'"),
    "absolute path": (lambda zf: member(zf, "/etc/cron.d/x", b"x"), "an absolute path"),
    "symbolic link": (
        lambda zf: member(zf, "reference.json", b"/etc/passwd", stat.S_IFLNK | 0o777),
        "a symbolic link",
    ),
    "zip bomb": (lambda zf: member(zf, "reference.json", b"\0" * 5_000_000), "a zip bomb"),
    "another file": (lambda zf: member(zf, "run.sh", b"#!/bin/sh"), "run.sh: not a bundle file"),
    "a file twice": (lambda zf: member(zf, "x/config.json", b"{}"), "not a bundle file"),
}


@pytest.mark.parametrize("case", ARCHIVES)
def test_a_hostile_archive_is_refused_before_anything_is_extracted(
    case: str, tmp_path: Path
) -> None:
    extra, message = ARCHIVES[case]
    archive = bundle_archive(tmp_path / "upload.zip", extra)
    before = set(Path("/tmp").iterdir())
    with pytest.raises(InvalidArchive, match=message) as caught:
        check(archive)
    assert caught.value.code == "invalid_archive"
    assert not [p for p in set(Path("/tmp").iterdir()) - before if p.name.startswith("bundle-")]
    assert not (tmp_path / "evil.py").exists()


def test_an_archive_over_the_upload_limit_is_refused(tmp_path: Path) -> None:
    archive = bundle_archive(tmp_path / "upload.zip")
    with pytest.raises(InvalidArchive, match=r"more than 1000000 bytes uncompressed"):
        check(archive, max_bytes=1_000_000)


def test_a_truncated_archive_is_not_a_zip(tmp_path: Path) -> None:
    whole = bundle_archive(tmp_path / "whole.zip").read_bytes()
    (tmp_path / "cut.zip").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidArchive, match="not a zip archive"):
        check(tmp_path / "cut.zip")


BUNDLES: dict[str, tuple[Callable[[dict[str, object], Path], object], str]] = {
    "corrupt ONNX file": (
        lambda m, f: with_model(m, f, b"\x08\x07garbage" * 100),
        "model.onnx: not an ONNX model",
    ),
    "a wrong dimension": (
        lambda m, f: m.update(dimension=768),
        "'dimension' 768, the graph's output 'last_hidden_state' is 384 wide",
    ),
    "inputs the graph does not have": (
        lambda m, f: m.update(inputs=["input_ids", "attention_mask", "pixel_values"]),
        "'inputs' .*pixel_values.*the graph declares",
    ),
    "external data outside the bundle": (
        outside_data,
        "keeps its data in '../weights.bin'; external data must be in model.onnx.data",
    ),
    "a sha256 that does not match": (
        lambda m, f: m.update(model_sha256="0" * 64),
        "model.onnx: sha256 .* the manifest's model_sha256 is 0000",
    ),
    "a field of the wrong type": (lambda m, f: m.update(normalize="yes"), "'normalize' must be"),
    "no dimension": (lambda m, f: m.pop("dimension"), "config.json: no 'dimension'"),
    "an unknown pooling": (lambda m, f: m.update(pooling="attention"), "pooling mode 'attention'"),
    "an unknown kind": (lambda m, f: m.update(kind="vision"), "of kind 'vision'"),
}


@pytest.mark.parametrize("case", BUNDLES)
def test_a_broken_bundle_is_refused_naming_what_is_wrong(case: str, tmp_path: Path) -> None:
    edit, message = BUNDLES[case]
    folder = edited(tmp_path, edit)
    with pytest.raises(InvalidBundle, match=message) as caught:
        check(folder)
    assert caught.value.code == "invalid_bundle"


def test_a_broken_bundle_in_an_archive_is_refused_alike(tmp_path: Path) -> None:
    edit, message = BUNDLES["a wrong dimension"]
    archive = write_archive(edited(tmp_path, edit), tmp_path / "b.zip")
    with pytest.raises(InvalidBundle, match=message):
        check(archive)


@pytest.mark.parametrize(
    "name", ["all-MiniLM-L6-v2-int8", "splade-tiny", ".tiny/tiny-cross-encoder"]
)
def test_real_bundles_pass(name: str) -> None:
    assert check(ROOT / "models" / name)["dimension"] > 0


def test_the_exports_archive_holds_the_bundles_files_and_passes(tmp_path: Path) -> None:
    archive = write_archive(INT8, tmp_path / "all-MiniLM-L6-v2-int8.zip")
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == sorted(p.name for p in INT8.iterdir() if p.is_file())
    assert check(archive) == check(INT8)


def test_an_archive_with_one_top_folder_is_accepted(tmp_path: Path) -> None:
    archive = tmp_path / "nested.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in INT8.iterdir():
            zf.write(path, f"all-MiniLM-L6-v2-int8/{path.name}")
    assert check(archive)["variant"] == "int8"


def test_reference_vectors_that_the_model_does_not_give_are_refused(tmp_path: Path) -> None:
    def swap(manifest: dict[str, object], folder: Path) -> None:
        reference = json.loads((folder / "reference.json").read_text())
        reference["embeddings"] = reference["embeddings"][::-1]
        (folder / "reference.json").write_text(json.dumps(reference))

    with pytest.raises(InvalidBundle, match=r"reference.json: worst cosine"):
        check(edited(tmp_path, swap))


def test_the_command_line_says_ok_or_what_is_wrong(tmp_path: Path) -> None:
    def run(path: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "app.bundle", "check", str(path)]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    ok = run(INT8)
    assert ok.returncode == 0 and "ok: dense, dimension 384, int8" in ok.stdout
    bad = run(bundle_archive(tmp_path / "bad.zip", ARCHIVES["zip-slip"][0]))
    assert bad.returncode == 1 and "invalid_archive: ../evil.py: a path with '..'" in bad.stdout
    assert run(tmp_path / "absent").returncode == 1


def test_onnx_is_only_read_never_run_for_the_external_data_check(tmp_path: Path) -> None:
    """The check refuses external data before onnxruntime would open ../weights.bin."""
    folder = edited(tmp_path, outside_data)
    assert onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.initializer
    (tmp_path / "weights.bin").write_bytes(b"\0\0\x80?")  # present, and still refused
    with pytest.raises(InvalidBundle, match=r"external data must be in model\.onnx\.data"):
        check(folder)
