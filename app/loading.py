"""From settings to served models: find the bundles, load each on its backend, and wrap each in
an engine, all sharing one budget of cores.

This is the one module that joins the core to a backend; ``python -m app`` and the app's
lifespan call ``load_models``.
"""

from __future__ import annotations

import threading
from pathlib import Path

from app.backends.onnx.bundle import EXPORT_HINT, MANIFEST, load_bundle
from app.backends.onnx.model import OnnxModel
from app.backends.onnx.runtimes import choose
from app.backends.onnx.session import runs_on_gpu
from app.config import Settings
from app.core.engine import Batching, Engine, Limits
from app.core.registry import ModelRegistry
from app.core.threads import ThreadPlan, thread_plan
from app.errors import StartupError


def bundle_paths(settings: Settings) -> list[Path]:
    """The bundle folders to serve: ``EMBED_MODELS`` if set (a bare name is looked up in
    ``EMBED_MODELS_DIR``, else ``models/``), else every bundle under ``EMBED_MODELS_DIR``, else
    ``EMBED_MODEL_DIR`` alone."""
    if settings.models:
        base = settings.models_dir or Path("models")
        paths = []
        for entry in settings.models:
            path = Path(entry)
            if not path.exists() and len(path.parts) == 1:
                path = base / entry
            paths.append(path)
        return paths
    if settings.models_dir is not None:
        if not settings.models_dir.is_dir():
            raise StartupError(f"EMBED_MODELS_DIR={settings.models_dir} is not a folder")
        found = sorted(p for p in settings.models_dir.iterdir() if (p / MANIFEST).is_file())
        if not found:
            raise StartupError(
                f"EMBED_MODELS_DIR={settings.models_dir} holds no model bundle; {EXPORT_HINT}"
            )
        return found
    return [settings.model_dir]


def settings_plan(settings: Settings) -> ThreadPlan:
    """The thread layout for the settings on this machine and device."""
    return thread_plan(settings, on_gpu=runs_on_gpu(settings.device))


def static_bundles(settings: Settings) -> dict[str, Path]:
    """The bundles the settings serve, by model id (their folder's name)."""
    return {path.name: path for path in bundle_paths(settings)}


def load_model(
    settings: Settings, path: Path, plan: ThreadPlan | None = None, *, model_id: str | None = None
) -> OnnxModel:
    """The bundle in ``path`` on its backend, served as ``model_id`` (else the folder's name);
    ``StartupError`` says what is wrong."""
    plan = plan or settings_plan(settings)
    bundle = load_bundle(path, model_id=model_id)
    choice = choose(settings.backend, settings.precision, bundle, device=settings.device)
    return OnnxModel.load(
        bundle,
        device=settings.device,
        intra_op_threads=plan.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        max_sparse_pass_tokens=settings.max_sparse_pass_tokens,
        choice=choice,
        workers=plan.workers,
        lone_threads=plan.lone_threads,
    )


def load_engine(
    settings: Settings,
    path: Path | None = None,
    *,
    cores: threading.Semaphore | None = None,
    model_id: str | None = None,
) -> Engine:
    """An engine serving the bundle in ``path`` (``EMBED_MODEL_DIR`` if none) as ``model_id``
    with the settings' limits. Engines given one ``cores`` semaphore take turns on the cores."""
    plan = settings_plan(settings)
    model = load_model(settings, path or settings.model_dir, plan, model_id=model_id)
    batching = Batching.from_settings(settings, plan)
    return Engine(
        model,
        Limits.from_settings(settings),
        batching,
        cores=cores,
        default_prompt_name=settings.default_prompt_name,
    )


def load_models(settings: Settings) -> ModelRegistry:
    """Every bundle the settings name, sharing one semaphore with a permit per worker."""
    cores = threading.Semaphore(settings_plan(settings).workers)
    engines: list[Engine] = []
    try:
        for path in bundle_paths(settings):
            engines.append(load_engine(settings, path, cores=cores))
        return ModelRegistry(engines, settings.default_model, cores=cores)
    except BaseException:
        for engine in engines:
            engine.close()
        raise
