"""The runtimes behind the seam on the real bundles: OpenVINO against onnxruntime, the runner
that spreads a lone pass over every core, and which runtime and precision the settings get."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.backends.onnx import runtimes
from app.backends.onnx.bundle import Bundle, load_bundle
from app.backends.onnx.model import OnnxModel
from app.backends.onnx.runtimes import Choice, choose, cpu_flags, native_bf16
from app.config import Backend, Settings
from app.core.vectors import encode_now, l2_normalize
from app.errors import StartupError
from app.loading import load_model

ROOT = Path(__file__).resolve().parents[2]
OPENVINO_FP32 = Choice("openvino", "fp32")


def test_openvino_fp32_gives_pytorchs_vectors(
    settings: Settings, reference: dict[str, Any]
) -> None:
    """The packed graph, as exported, on OpenVINO: the export's own 0.9999 gate to PyTorch."""
    model = OnnxModel.load(load_bundle(settings.model_dir), choice=OPENVINO_FP32)
    assert model.provider == "OpenVINO CPU fp32"
    vectors = encode_now(model, reference["sentences"])
    expected = l2_normalize(np.asarray(reference["embeddings"], dtype=np.float32))
    assert float((vectors * expected).sum(axis=1).min()) >= 0.99999


def test_openvino_serves_the_sparse_graph_as_onnxruntime_does() -> None:
    bundle = load_bundle(ROOT / "models" / "splade-tiny")
    texts = ["the capital of france", "a sparse vector over the vocabulary"]
    ours = OnnxModel.load(bundle, choice=OPENVINO_FP32)
    theirs = OnnxModel.load(bundle)
    rows = ours.tokenize(texts, truncate=True)
    assert np.allclose(ours.run(rows), theirs.run(rows), atol=1e-4)


def test_a_graph_openvino_cannot_run_is_refused_with_the_way_out() -> None:
    bundle = load_bundle(ROOT / "models" / "all-MiniLM-L6-v2-int8")
    with pytest.raises(StartupError, match=r"OpenVINO cannot run .*EMBED_BACKEND=onnxruntime"):
        OnnxModel.load(bundle, choice=OPENVINO_FP32)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_lone_pass_on_every_core_gives_the_same_vectors(
    settings: Settings, backend: Backend
) -> None:
    model = load_model(
        Settings(model_dir=settings.model_dir, backend=backend, precision="fp32"),
        settings.model_dir,
    )
    assert model.wide is not None or len(os.sched_getaffinity(0)) == 1
    texts = ["a lone sentence", "and a longer one, with a comma in it"]
    rows = model.tokenize(texts, truncate=True)
    assert np.allclose(model.run(rows, alone=True), model.run(rows), atol=1e-5)


def test_cpu_flags_are_read_from_proc_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert native_bf16({"avx512_bf16"}) and native_bf16({"amx_bf16"})
    assert not native_bf16({"avx2", "avx512f", "f16c"})
    assert cpu_flags(tmp_path / "absent") == set()


def gated(bundle: Bundle, tmp_path: Path, gate: dict[str, Any] | None) -> Bundle:
    """A copy of ``bundle`` whose manifest records ``gate`` as its bf16 check."""
    copy = tmp_path / bundle.id
    shutil.copytree(bundle.path, copy)
    manifest = json.loads((copy / "config.json").read_text())
    manifest.pop("bf16", None)
    if gate is not None:
        manifest["bf16"] = gate
    (copy / "config.json").write_text(json.dumps(manifest))
    return load_bundle(copy)


def test_the_settings_choose_a_runtime_and_precision(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = load_bundle(settings.model_dir)
    passed = gated(bundle, tmp_path / "passed", {"passed": True, "stsb_spearman": 0.8205})
    failed = gated(bundle, tmp_path / "failed", {"passed": False, "reason": "cosine 0.99"})
    unchecked = gated(bundle, tmp_path / "unchecked", None)
    int8 = load_bundle(ROOT / "models" / "all-MiniLM-L6-v2-int8")

    monkeypatch.setattr(runtimes, "native_bf16", lambda flags=None: True)
    assert choose("auto", "auto", passed) == ("openvino", "bf16")
    assert choose("openvino", "bf16", passed) == ("openvino", "bf16")
    assert choose("auto", "auto", failed) == ("onnxruntime", "fp32")  # the gate did not hold
    assert choose("auto", "auto", unchecked) == ("onnxruntime", "fp32")
    assert choose("openvino", "auto", failed) == ("openvino", "fp32")
    assert choose("onnxruntime", "auto", passed) == ("onnxruntime", "fp32")
    assert choose("auto", "fp32", passed) == ("onnxruntime", "fp32")  # parity tests pin fp32
    with pytest.raises(StartupError, match=r"bf16 check at export did not pass: cosine 0\.99"):
        choose("auto", "bf16", failed)
    with pytest.raises(StartupError, match="records no bf16 check"):
        choose("auto", "bf16", unchecked)
    with pytest.raises(StartupError, match="bf16 runs on openvino only"):
        choose("onnxruntime", "bf16", passed)
    with pytest.raises(StartupError, match="runs on the CPU only"):
        choose("auto", "bf16", passed, device="cuda")
    if "backends" in int8.manifest:  # bundles exported before it was recorded lack it
        assert choose("auto", "auto", int8) == ("onnxruntime", "fp32")
        with pytest.raises(StartupError, match=r"runs only on onnxruntime"):
            choose("openvino", "fp32", int8)

    monkeypatch.setattr(runtimes, "native_bf16", lambda flags=None: False)
    assert choose("auto", "auto", passed) == ("onnxruntime", "fp32")
    with pytest.raises(StartupError, match=r"none of avx512_bf16, amx_bf16.*emulated"):
        choose("auto", "bf16", passed)


@pytest.mark.skipif(not native_bf16(), reason="this CPU does not compute bf16 natively")
def test_bf16_where_the_cpu_has_it_stays_within_the_gate_of_fp32(settings: Settings) -> None:
    bundle = load_bundle(settings.model_dir)
    assert bundle.manifest["bf16"]["passed"], bundle.manifest["bf16"]
    texts = [
        line.split("\t")[5]
        for line in (ROOT.parent / "shared" / "data" / "stsb-test.tsv")
        .read_text(encoding="utf-8")
        .splitlines()[:200]
    ]
    bf16 = encode_now(OnnxModel.load(bundle, choice=Choice("openvino", "bf16")), texts)
    fp32 = encode_now(OnnxModel.load(bundle), texts)
    assert float((bf16 * fp32).sum(axis=1).min()) >= runtimes.BF16_GATE["worst_cosine_to_fp32"]
