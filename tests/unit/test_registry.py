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
from app.core.engine import Engine
from app.core.registry import ModelRegistry
from app.core.threads import available_cores, thread_plan
from app.errors import ModelNotFound, StartupError
from app.loading import bundle_paths
from tests.fakes import FakeModel


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


def test_default_and_lookup() -> None:
    first, second = Engine(FakeModel(name="first")), Engine(FakeModel(name="second"))
    models = ModelRegistry([first, second])
    assert models.default_id == "first" and len(models) == 2
    assert models.get(None) is first and models.get("second") is second
    assert ModelRegistry([first, second], default="second").default is second
    with pytest.raises(ModelNotFound, match="served: first, second"):
        models.get("other")
    with pytest.raises(StartupError, match="EMBED_DEFAULT_MODEL=other is not served"):
        ModelRegistry([first], default="other")
    with pytest.raises(StartupError, match="two bundles have the id"):
        ModelRegistry([first, first])
    models.close()


def test_versions_swap_in_one_step_and_name_at_version_names_the_deployed_one() -> None:
    first, other = Engine(FakeModel(name="first")), Engine(FakeModel(name="other"))
    models = ModelRegistry([first, other])
    assert models.get("first@1") is first and models.version_of("first") == 1
    newer = Engine(FakeModel(name="first"))
    assert models.put(newer, 3) is first  # the old one is the caller's to close
    assert models.get("first") is newer and models.get("first@3") is newer
    with pytest.raises(ModelNotFound, match=r"'first@1' is not deployed.*is first@3"):
        models.get("first@1")
    with pytest.raises(ModelNotFound, match="not served here"):
        models.get("nobody@1")
    with pytest.raises(ValueError, match="default"):
        models.remove("first")
    assert models.remove("other") is other and "other" not in models
    with pytest.raises(ModelNotFound, match="not deployed here"):
        models.set_default("other")
    for engine in (first, other, newer):
        engine.close()


def test_a_swapped_out_engine_drains_before_it_is_closed() -> None:
    """``drained`` returns only once every request inside the engine is done."""
    model = FakeModel(name="slow")
    model.delay = 0.2
    engine = Engine(model)

    async def swap_while_busy() -> tuple[bool, bool]:
        request = asyncio.ensure_future(engine.embed(["in flight"]))
        await asyncio.sleep(0.05)  # inside the engine, its pass running
        drained = asyncio.ensure_future(engine.drained())
        await asyncio.sleep(0.05)
        early = drained.done()
        await request
        await asyncio.wait_for(drained, 1)
        return early, request.done()

    early, finished = asyncio.run(swap_while_busy())
    engine.close()
    assert not early and finished


def overlapping_passes(cores: list[threading.Semaphore]) -> int:
    """Run two engines, busy at once, each with one of ``cores``; count passes that overlapped."""
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def timed(model: FakeModel) -> Any:
        run_pass = model.run

        def run(rows: Sequence[Any], *, alone: bool = False) -> Any:
            started = time.perf_counter()
            time.sleep(0.02)
            result = run_pass(rows)
            with lock:
                spans.append((started, time.perf_counter()))
            return result

        return run

    pair = []
    for index, semaphore in enumerate(cores):
        model = FakeModel(name=f"model-{index}")
        model.run = timed(model)  # type: ignore[method-assign]
        pair.append(Engine(model, cores=semaphore))

    async def busy() -> None:
        await asyncio.gather(*(e.embed([f"sentence {i}"]) for i in range(6) for e in pair))

    try:
        asyncio.run(busy())
    finally:
        for e in pair:
            e.close()
    spans.sort()
    return sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1])


def test_models_served_together_take_turns_on_the_cores() -> None:
    shared = threading.Semaphore(1)
    assert overlapping_passes([shared, shared]) == 0
    # The control: with a semaphore each, the two models' passes do run at once.
    apart = [threading.Semaphore(1), threading.Semaphore(1)]
    assert overlapping_passes(apart) > 0


def test_the_thread_plan_fills_the_cores_without_oversubscribing_them() -> None:
    cores = available_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert thread_plan(Settings(), on_gpu=False)[:2] == (
        cores,
        1,
    )  # one pass per core, one thread each
    assert thread_plan(Settings(inference_workers=1), on_gpu=False)[:2] == (
        1,
        cores,
    )  # one pass on every core
    told = thread_plan(Settings(inference_workers=1, intra_op_threads=3), on_gpu=False)
    assert told[:2] == (1, 3)


def test_a_pass_costs_more_fixed_time_the_more_threads_run_it() -> None:
    # The planner weighs a pass's fixed cost against padding: a one-thread pass costs little
    # beyond its tokens, so it gets small passes of rows of one length.
    one = thread_plan(Settings(inference_workers=1, intra_op_threads=1), on_gpu=False)
    two = thread_plan(Settings(inference_workers=1, intra_op_threads=2), on_gpu=False)
    assert 0 < one.pass_overhead_tokens < two.pass_overhead_tokens
    told = thread_plan(Settings(pass_overhead_tokens=20), on_gpu=False)
    assert told.pass_overhead_tokens == 20  # as told
    assert thread_plan(Settings(), on_gpu=True)[:2] == (1, available_cores())  # one feeds a GPU
