"""Models registered, deployed, swapped, undeployed and deleted while the server runs.

``Lifecycle`` joins three things: the repository's files and shared state (``app.repository``),
this server's registry of engines (``app.core.registry``) and the loading of a bundle
(``app.loading``). Every change runs on the event loop; loading, warming and closing a model run
in threads, so every route keeps answering meanwhile.

A deploy loads and warms the version first, then records it in the shared state, then swaps it
into the registry in one step: requests that had the old engine finish on it, later ones get
the new one, and the old engine is closed once its last request is done. A load that fails
changes nothing. Replicas on one repository follow the shared state (``follow``): each looks at
it every ``EMBED_REPOSITORY_POLL_S`` and deploys, swaps, undeploys and sets the default until it
serves what the state says; a start-up does the same before the server listens.

Every action is counted (``embed_model_actions``) and logged once, naming the admin key by its
position in ``EMBED_ADMIN_KEYS``, never the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from app.backends.onnx.model import trim_heap
from app.config import Settings
from app.core.engine import Engine
from app.core.registry import SEPARATOR, ModelRegistry
from app.errors import (
    DeployFailed,
    DeployInProgress,
    ModelDeployed,
    ModelIsDefault,
    ServiceError,
    StartupError,
    cut,
)
from app.loading import load_engine
from app.metrics import MODEL_ACTIONS, MODELS_DEPLOYED
from app.repository import Repository, State, Version

log = logging.getLogger("app.models")
PAGE = os.sysconf("SC_PAGE_SIZE")
FOLLOWER = "the shared state"  # who acted, when a replica follows the state


def rss_bytes() -> int:
    """This process's resident memory now."""
    return int(Path("/proc/self/statm").read_text(encoding="ascii").split()[1]) * PAGE


class Lifecycle:
    """Deploys, swaps and undeploys repository versions on this server, and keeps the
    repository's shared state and this server's registry in step."""

    def __init__(self, settings: Settings, models: ModelRegistry, repository: Repository) -> None:
        self.settings = settings
        self.models = models
        self.repository = repository
        self._busy: set[str] = set()  # names being deployed or undeployed here now
        self._loading: dict[str, int] = {}  # name: the version being loaded
        self._failed: dict[tuple[str, int], str] = {}  # why a version did not load here
        self._rss_added: dict[tuple[str, int], int] = {}  # what loading it added to RSS
        self._given_up: set[tuple[str, int]] = set()  # not retried until the state changes
        self._seen: State | None = None
        self._closing: set[asyncio.Task[None]] = set()

    # --- answers -----------------------------------------------------------------------------

    def record(self, version: Version, state: str | None = None) -> dict[str, Any]:
        """The one record every answer about a version is: the repository's fields, and its
        state on this server (``registered``, ``loading``, ``deployed``, ``failed``)."""
        key = (version.name, version.version)
        reason = self._failed.get(key)
        if state is None:
            if self.models.version_of(version.name) == version.version:
                state = "deployed"
            elif self._loading.get(version.name) == version.version:
                state = "loading"
            elif reason is not None:
                state = "failed"
            else:
                state = "registered"
        public = version.public()
        return {
            "name": public.pop("name"),
            "version": public.pop("version"),
            "state": state,
            "reason": reason if state == "failed" else None,
            **public,
            "rss_added_bytes": self._rss_added.get(key),
        }

    async def records(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every version of every model, or of ``name`` (``ModelNotFound`` when it has none)."""
        if name is None:
            versions = await asyncio.to_thread(self.repository.all)
        else:
            versions = await asyncio.to_thread(self.repository.versions, name)
        return [self.record(version) for version in versions]

    # --- actions -----------------------------------------------------------------------------

    async def register(
        self, archive: Path, name: str, description: str
    ) -> tuple[dict[str, Any], bool]:
        """Check the uploaded archive and store it as the next version of ``name``; its record,
        and whether it is new (identical content gets the version it already has). The caller
        counts and logs it as an ``action``, the upload included."""
        version, created = await asyncio.to_thread(
            self.repository.register, archive, name, description, self.settings.max_upload_bytes
        )
        return self.record(version), created

    async def deploy(self, name: str, number: int, who: str) -> dict[str, Any]:
        """Serve version ``number`` as ``name`` from now on (a 200 no-op when it is served)."""
        subject = f"{name}{SEPARATOR}{number}"
        with self.action("deploy", subject, who) as done:
            version = await asyncio.to_thread(self.repository.get, name, number)
            if self.models.version_of(name) == number:
                done(f"{subject} (deployed already)")
            else:
                await self._deploy(version, share=True)
            return self.record(version)

    async def deploy_latest(self, name: str, who: str) -> dict[str, Any]:
        """Deploy the highest registered version of ``name`` (Triton's ``load``)."""
        versions = await asyncio.to_thread(self.repository.versions, name)
        return await self.deploy(name, versions[-1].version, who)

    async def undeploy_any(self, name: str, who: str) -> dict[str, Any] | None:
        """Undeploy whichever version of ``name`` is deployed (Triton's ``unload``)."""
        number = self.models.version_of(name)
        if number is None:
            await asyncio.to_thread(self.repository.versions, name)  # ModelNotFound if unknown
            return None
        return await self.undeploy(name, number, who)

    async def undeploy(self, name: str, number: int, who: str) -> dict[str, Any]:
        """Stop serving version ``number`` of ``name`` and give its memory back once its last
        request is done (a 200 no-op when it is not served)."""
        subject = f"{name}{SEPARATOR}{number}"
        with self.action("undeploy", subject, who) as done:
            version = await asyncio.to_thread(self.repository.get, name, number)
            if self.models.version_of(name) != number:
                done(f"{subject} (not deployed)")
                return self.record(version)
            if name == self.models.default_id:
                raise ModelIsDefault(
                    f"{name} is the default model; make another model the default first "
                    "(PUT /admin/default-model)"
                )
            self._claim(name)
            try:
                await asyncio.to_thread(self.repository.update_state, _without(name, self.static))
                self._undeploy(name)
            finally:
                self._busy.discard(name)
            return self.record(version)

    async def delete(self, name: str, number: int | None, who: str) -> list[dict[str, Any]]:
        """Remove one version's files, or every version's; refused while one is served."""
        subject = name if number is None else f"{name}{SEPARATOR}{number}"
        with self.action("delete", subject, who):
            served = self.models.version_of(name)
            if name not in self.static and served is not None and number in (None, served):
                raise ModelDeployed(
                    f"{name}{SEPARATOR}{served} is deployed; undeploy it before deleting it"
                )
            if name in self._busy:
                raise DeployInProgress(f"{name} is being deployed or undeployed; try again")
            removed = await asyncio.to_thread(self.repository.delete, name, number)
            for version in removed:
                self._forget((version.name, version.version))
            return [self.record(version, "deleted") for version in removed]

    async def set_default(self, model: str, who: str) -> str:
        """Make the deployed model ``model`` (a name, or ``name@version`` of the deployed
        version) what a request without ``model`` gets, here and on every replica."""
        with self.action("set_default", model, who):
            name = self.models.get(model).model_id  # ModelNotFound unless deployed here
            await asyncio.to_thread(
                self.repository.update_state, lambda s: dataclasses.replace(s, default=name)
            )
            self.models.set_default(name)
            return name

    # --- following the shared state ----------------------------------------------------------

    async def follow(self) -> None:
        """Converge on the shared state every ``EMBED_REPOSITORY_POLL_S``, until cancelled."""
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            try:
                await self.converge()
            except Exception:  # the next look may do better; the server keeps serving
                log.exception("could not follow the repository's state")

    async def converge(self) -> None:
        """Deploy, swap, undeploy and set the default until this server serves what the shared
        state says. A version that fails to load here is not tried again until the state
        changes."""
        state = await asyncio.to_thread(self.repository.state)
        if state != self._seen:
            self._seen, self._given_up = state, set()
        wanted = self._wanted(state)
        for name, number in wanted.items():
            if self.models.version_of(name) == number or name in self._busy:
                continue
            if (name, number) in self._given_up:
                continue
            subject = f"{name}{SEPARATOR}{number}"
            with (
                contextlib.suppress(ServiceError),  # counted and logged by the action
                self.action("converge_deploy", subject, FOLLOWER),
            ):
                try:
                    version = await asyncio.to_thread(self.repository.get, name, number)
                    await self._deploy(version, share=False)
                except ServiceError:
                    self._given_up.add((name, number))
                    raise
        default = state.default
        if default is not None and default in self.models and default != self.models.default_id:
            self.models.set_default(default)
            log.info("default model %s (%s)", state.default, FOLLOWER)
        for engine in self.models:
            name = engine.model_id
            if name in wanted or name in self._busy or name == self.models.default_id:
                continue
            with self.action("converge_undeploy", name, FOLLOWER):
                self._undeploy(name)

    async def close(self) -> None:
        """Wait until the engines taken out of service are closed."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # --- the steps ---------------------------------------------------------------------------

    @property
    def static(self) -> dict[str, Path]:
        return self.repository.static

    def _wanted(self, state: State) -> dict[str, int]:
        """What the state says this server should serve: a version per name."""
        wanted = {name: 1 for name in self.static if name not in state.undeployed}
        wanted.update({k: v for k, v in state.deployed.items() if k not in self.static})
        return wanted

    def _claim(self, name: str) -> None:
        if name in self._busy:
            raise DeployInProgress(
                f"{name} is being deployed or undeployed on this server already; try again "
                "once that is done"
            )
        self._busy.add(name)

    async def _deploy(self, version: Version, *, share: bool) -> None:
        """Load and warm ``version`` off the event loop; then, with ``share``, record it in the
        shared state; then swap it in. A failure leaves everything as it was."""
        name, key = version.name, (version.name, version.version)
        self._claim(name)
        self._failed.pop(key, None)
        self._loading[name] = version.version
        try:
            try:
                engine, added = await asyncio.to_thread(self._load, version)
            except (StartupError, ServiceError, OSError, RuntimeError, ValueError) as exc:
                reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                self._failed[key] = reason
                served = self.models.version_of(name)
                still = f"; {name}{SEPARATOR}{served} stays deployed" if served else ""
                raise DeployFailed(
                    f"{name}{SEPARATOR}{version.version} did not load: {reason}{still}"
                ) from None
            if share:
                try:
                    await asyncio.to_thread(
                        self.repository.update_state, _with(name, version.version, self.static)
                    )
                except BaseException:
                    self._retire(engine)
                    raise
            self._rss_added[key] = added
            served = self.models.version_of(name)
            replaced = self.models.put(engine, version.version)
            if replaced is not None:
                MODELS_DEPLOYED.remove(name, str(served))
                self._retire(replaced)
            MODELS_DEPLOYED.labels(name, str(version.version)).set(1)
        finally:
            self._loading.pop(name, None)
            self._busy.discard(name)

    def _load(self, version: Version) -> tuple[Engine, int]:
        """The version on an engine, warmed up, and what it added to resident memory."""
        before = rss_bytes()
        engine = load_engine(
            self.settings, version.path, cores=self.models.cores, model_id=version.name
        )
        try:
            engine.warm_up()
        except BaseException:
            engine.close()
            raise
        return engine, max(0, rss_bytes() - before)

    def _undeploy(self, name: str) -> None:
        number = self.models.version_of(name)
        self._retire(self.models.remove(name))
        MODELS_DEPLOYED.remove(name, str(number))

    def _retire(self, engine: Engine) -> None:
        """Close ``engine`` once the requests it holds are done, in the background."""
        task = asyncio.get_running_loop().create_task(_close_when_drained(engine))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _forget(self, key: tuple[str, int]) -> None:
        self._failed.pop(key, None)
        self._rss_added.pop(key, None)

    @contextlib.contextmanager
    def action(self, action: str, subject: str, who: str) -> Iterator[Callable[[str], None]]:
        """Count and log one action: ``ok``, ``refused`` (a 4xx) or ``failed``. What it yields
        takes a better subject for the log line, once known."""
        said: list[str] = []
        try:
            yield said.append
        except ServiceError as exc:
            outcome = "failed" if exc.status >= 500 or isinstance(exc, DeployFailed) else "refused"
            MODEL_ACTIONS.labels(action, outcome).inc()
            log.warning("%s %s by %s: %s (%s)", action, cut(subject), who, outcome, exc.message)
            raise
        except Exception:
            MODEL_ACTIONS.labels(action, "failed").inc()
            log.exception("%s %s by %s failed", action, cut(subject), who)
            raise
        MODEL_ACTIONS.labels(action, "ok").inc()
        log.info("%s %s by %s", action, said[-1] if said else subject, who)


async def _close_when_drained(engine: Engine) -> None:
    await engine.drained()
    await asyncio.to_thread(_close, engine)


def _close(engine: Engine) -> None:
    """Close the engine and hand what it held back to the system at once."""
    engine.close()
    gc.collect()  # an engine's runners may sit in reference cycles
    trim_heap()


def _with(name: str, number: int, static: dict[str, Path]) -> Callable[[State], State]:
    """The change to the shared state that deploys version ``number`` of ``name``."""

    def change(state: State) -> State:
        if name in static:
            return dataclasses.replace(
                state, undeployed=tuple(n for n in state.undeployed if n != name)
            )
        return dataclasses.replace(state, deployed={**state.deployed, name: number})

    return change


def _without(name: str, static: dict[str, Path]) -> Callable[[State], State]:
    """The change to the shared state that undeploys ``name``."""

    def change(state: State) -> State:
        if name in static:
            return dataclasses.replace(state, undeployed=(*state.undeployed, name))
        deployed = {k: v for k, v in state.deployed.items() if k != name}
        return dataclasses.replace(state, deployed=deployed)

    return change
