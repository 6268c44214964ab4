"""The models one server serves: which bundles, which one answers by default, and the one
budget of cores they share.

Every model has its own onnxruntime session, queue and workers. Their forward passes take turns
under one semaphore with a permit per worker (by default one per core), so two busy models never
run more passes at once than one would: each model sized to all the cores would otherwise put
twice as many threads as cores on the machine.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from app.config import Settings
from app.engine.bundle import EXPORT_HINT, MANIFEST
from app.engine.engine import EmbeddingEngine, thread_plan
from app.errors import ModelNotFound, StartupError


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


class ModelRegistry:
    """The served models by id (each bundle's folder name) and the default one."""

    def __init__(self, engines: list[EmbeddingEngine], default: str | None = None) -> None:
        if not engines:
            raise StartupError("no model to serve")
        self._engines: dict[str, EmbeddingEngine] = {}
        for engine in engines:
            if engine.model_id in self._engines:
                raise StartupError(
                    f"two bundles have the id {engine.model_id!r} (the folder name); rename one"
                )
            self._engines[engine.model_id] = engine
        self.default_id = default or engines[0].model_id
        if self.default_id not in self._engines:
            raise StartupError(
                f"EMBED_DEFAULT_MODEL={self.default_id} is not served; served: {self.served}"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """Load every bundle the settings name, sharing one semaphore on the cores."""
        cores = threading.Semaphore(thread_plan(settings).workers)
        engines: list[EmbeddingEngine] = []
        try:
            for path in bundle_paths(settings):
                engines.append(EmbeddingEngine.from_settings(settings, path, cores=cores))
            return cls(engines, settings.default_model)
        except BaseException:
            for engine in engines:
                engine.close()
            raise

    @property
    def served(self) -> str:
        return ", ".join(self._engines)

    @property
    def default(self) -> EmbeddingEngine:
        return self._engines[self.default_id]

    def get(self, model: str | None) -> EmbeddingEngine:
        """The engine for ``model``; the default for ``None``; ``ModelNotFound`` otherwise."""
        if model is None:
            return self._engines[self.default_id]
        engine = self._engines.get(model)
        if engine is None:
            raise ModelNotFound(f"the model {model!r} is not served here; served: {self.served}")
        return engine

    def __iter__(self) -> Iterator[EmbeddingEngine]:
        return iter(self._engines.values())

    def __len__(self) -> int:
        return len(self._engines)

    def warm_up(self) -> None:
        for engine in self:
            engine.warm_up()

    def close(self) -> None:
        for engine in self:
            engine.close()
