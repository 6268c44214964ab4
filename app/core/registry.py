"""The models one server serves: which engines, which version of each, and which one answers by
default.

Every model has its own queue and workers. Their forward passes take turns under one semaphore
with a permit per worker (``app.loading`` makes it), so two busy models never run more passes at
once than one would.

The set changes at run time (``app.lifecycle``): a name's engine is swapped for another version,
added or taken away. Those changes, and every look-up, happen on the event loop, and a route
enters its engine's coroutine in the same step as it looks the engine up, so the engine it got
counts the request from the start (``Engine.drained`` waits for them) even if it is swapped out
a moment later.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from app.core.engine import Engine
from app.errors import ModelNotFound, StartupError, cut

SEPARATOR = "@"
"""``"model": "<name>@<version>"`` names one version explicitly."""


class ModelRegistry:
    """The served models by name, the version of each, and the default one."""

    def __init__(
        self,
        engines: list[Engine],
        default: str | None = None,
        *,
        cores: threading.Semaphore | None = None,
    ) -> None:
        if not engines:
            raise StartupError("no model to serve")
        self._engines: dict[str, Engine] = {}
        self._versions: dict[str, int] = {}
        for engine in engines:
            if engine.model_id in self._engines:
                raise StartupError(
                    f"two bundles have the id {engine.model_id!r} (the folder name); rename one"
                )
            self._engines[engine.model_id] = engine
            self._versions[engine.model_id] = 1
        # The semaphore the engines share: engines deployed later take turns on it too.
        self.cores = cores
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
        """The engine for ``model`` (a name, or ``name@version``); the default for ``None``;
        ``ModelNotFound`` otherwise, saying what is served."""
        if model is None:
            return self._engines[self.default_id]
        engine = self._engines.get(model)
        if engine is not None:
            return engine
        name, _, version = model.rpartition(SEPARATOR)
        engine = self._engines.get(name) if name else None
        if engine is None:
            raise ModelNotFound(
                f"the model {cut(model)!r} is not served here; served: {self.served}"
            )
        if version != str(self._versions[name]):
            raise ModelNotFound(
                f"{cut(model)!r} is not deployed; the deployed version of {name} is "
                f"{name}{SEPARATOR}{self._versions[name]}"
            )
        return engine

    def version_of(self, name: str) -> int | None:
        """The deployed version of ``name``, or ``None`` when it is not served."""
        return self._versions.get(name)

    def put(self, engine: Engine, version: int) -> Engine | None:
        """Serve ``engine`` as ``version`` of its name from now on; the engine it replaces,
        which still finishes the requests it holds."""
        name = engine.model_id
        replaced = self._engines.get(name)
        self._engines[name] = engine
        self._versions[name] = version
        return replaced

    def remove(self, name: str) -> Engine:
        """Stop serving ``name`` (never the default); its engine, to be closed once drained."""
        if name == self.default_id:
            raise ValueError(f"{name} is the default model")
        del self._versions[name]
        return self._engines.pop(name)

    def set_default(self, name: str) -> None:
        if name not in self._engines:
            raise ModelNotFound(
                f"the model {cut(name)!r} is not deployed here; deployed: {self.served}"
            )
        self.default_id = name

    def __iter__(self) -> Iterator[Engine]:
        return iter(list(self._engines.values()))

    def __len__(self) -> int:
        return len(self._engines)

    def __contains__(self, name: object) -> bool:
        return name in self._engines

    def warm_up(self) -> None:
        for engine in self:
            engine.warm_up()

    def close(self) -> None:
        for engine in self:
            engine.close()
