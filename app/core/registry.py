"""The models one server serves: which engines, and which one answers by default.

Every model has its own queue and workers. Their forward passes take turns under one semaphore
with a permit per worker (``app.loading`` makes it), so two busy models never run more passes at
once than one would.
"""

from __future__ import annotations

from collections.abc import Iterator

from app.core.engine import Engine
from app.errors import ModelNotFound, StartupError, cut


class ModelRegistry:
    """The served models by id and the default one."""

    def __init__(self, engines: list[Engine], default: str | None = None) -> None:
        if not engines:
            raise StartupError("no model to serve")
        self._engines: dict[str, Engine] = {}
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

    @property
    def served(self) -> str:
        return ", ".join(self._engines)

    @property
    def default(self) -> Engine:
        return self._engines[self.default_id]

    def get(self, model: str | None) -> Engine:
        """The engine for ``model``; the default for ``None``; ``ModelNotFound`` otherwise."""
        if model is None:
            return self._engines[self.default_id]
        engine = self._engines.get(model)
        if engine is None:
            raise ModelNotFound(
                f"the model {cut(model)!r} is not served here; served: {self.served}"
            )
        return engine

    def __iter__(self) -> Iterator[Engine]:
        return iter(self._engines.values())

    def __len__(self) -> int:
        return len(self._engines)

    def warm_up(self) -> None:
        for engine in self:
            engine.warm_up()

    def close(self) -> None:
        for engine in self:
            engine.close()
