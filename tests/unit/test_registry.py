"""Which bundles a server serves, the default one, and the cores their passes share."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.engine.engine import EmbeddingEngine, available_cores, thread_plan
from app.engine.registry import ModelRegistry, bundle_paths
from app.errors import ModelNotFound, StartupError
from tests.unit.test_batcher import LIMITS


def fake_bundle(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_which_bundles_are_served(tmp_path: Path) -> None:
    a, b = fake_bundle(tmp_path / "b-model"), fake_bundle(tmp_path / "a-model")
    (tmp_path / "not-a-bundle").mkdir()
    assert bundle_paths(Settings(models_dir=tmp_path)) == [b, a]  # sorted, bundles only
    listed = Settings(models=["b-model", str(b)], models_dir=tmp_path)
    assert bundle_paths(listed) == [a, b]  # in the order given; bare names from models_dir
    assert bundle_paths(Settings(model_dir=a)) == [a]
    with pytest.raises(StartupError, match="holds no model bundle"):
        bundle_paths(Settings(models_dir=tmp_path / "not-a-bundle"))
    with pytest.raises(StartupError, match="is not a folder"):
        bundle_paths(Settings(models_dir=tmp_path / "missing"))


def test_default_and_lookup(engine: EmbeddingEngine) -> None:
    models = ModelRegistry([engine])
    assert models.default_id == "all-MiniLM-L6-v2"
    assert models.get(None) is engine and models.get("all-MiniLM-L6-v2") is engine
    with pytest.raises(ModelNotFound, match="served: all-MiniLM-L6-v2"):
        models.get("other")
    with pytest.raises(StartupError, match="EMBED_DEFAULT_MODEL=other is not served"):
        ModelRegistry([engine], default="other")
    with pytest.raises(StartupError, match="two bundles have the id"):
        ModelRegistry([engine, engine])


def test_a_missing_bundle_among_several_stops_the_start(settings: Settings) -> None:
    listed = Settings(models=[str(settings.model_dir), "/nonexistent/bundle"])
    with pytest.raises(StartupError, match="does not exist"):
        ModelRegistry.from_settings(listed)


def overlapping_passes(
    engine: EmbeddingEngine, cores: list[threading.Semaphore], monkeypatch: Any
) -> int:
    """Run two engines on the session's encoder, busy at once; count passes that overlapped."""
    spans: list[tuple[float, float]] = []
    forward = engine.encoder.forward

    def timed(encodings: Sequence[Any]) -> Any:
        started = time.perf_counter()
        time.sleep(0.02)
        result = forward(encodings)
        spans.append((started, time.perf_counter()))
        return result

    monkeypatch.setattr(engine.encoder, "forward", timed)
    pair = [EmbeddingEngine(engine.encoder, LIMITS, cores=lock) for lock in cores]

    async def busy() -> None:
        await asyncio.gather(*(e.embed([f"sentence {i}"]) for i in range(6) for e in pair))

    try:
        asyncio.run(busy())
    finally:
        for e in pair:
            e.close()
    spans.sort()
    return sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1])


def test_models_served_together_take_turns_on_the_cores(
    engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = threading.Semaphore(1)
    assert overlapping_passes(engine, [shared, shared], monkeypatch) == 0
    # The control: with a semaphore each, the two models' passes do run at once.
    apart = [threading.Semaphore(1), threading.Semaphore(1)]
    assert overlapping_passes(engine, apart, monkeypatch) > 0


def test_the_thread_plan_fills_the_cores_without_oversubscribing_them() -> None:
    cores = available_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert thread_plan(Settings())[:2] == (cores, 1)  # one pass per core, one thread each
    assert thread_plan(Settings(inference_workers=1))[:2] == (1, cores)  # one pass on every core
    told = thread_plan(Settings(inference_workers=1, intra_op_threads=3))
    assert told[:2] == (1, 3)


def test_a_pass_costs_more_fixed_time_the_more_threads_run_it() -> None:
    # The planner weighs a pass's fixed cost against padding: a one-thread pass costs little
    # beyond its tokens, so it gets small passes of rows of one length.
    one = thread_plan(Settings(inference_workers=1, intra_op_threads=1)).pass_overhead_tokens
    two = thread_plan(Settings(inference_workers=1, intra_op_threads=2)).pass_overhead_tokens
    assert 0 < one < two
    assert thread_plan(Settings(pass_overhead_tokens=20)).pass_overhead_tokens == 20  # as told
