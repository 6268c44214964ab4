"""The model repository: uploaded bundles by name and version, in one folder that several
replicas may share (a ReadWriteMany volume).

Its layout (``EMBED_REPOSITORY``)::

    <name>/<version>/     a checked bundle and its record.json; never changed once there
    <name>/.lock          held (flock) while a version of the name is claimed or removed
    .incoming/<random>    uploads being received, extracted and checked; gone whether they
                          pass or not
    state.json            what is deployed and the default; replaced whole, atomically
    .lock                 held while state.json is read, changed and replaced

An upload is extracted and checked (``app.bundle``) under ``.incoming`` on the same volume,
then, complete, renamed to ``<name>/<n>``: n is one more than the highest version there, claimed
under the name's lock, and the rename cannot land on a folder that exists, so two replicas never
publish the same number. Content identical to a version already there (every file's sha256) is
that version, not a copy. A refused, failed or interrupted upload leaves nothing but an
``.incoming`` folder, which is removed at once or, after a crash, by the next start-up.

Bundles that the settings serve (``EMBED_MODELS``) are listed too, as version 1 of source
``static``; their names cannot be registered and their files are never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.backends.onnx.bundle import MANIFEST, MODEL_FILE, sha256_of
from app.bundle import BUNDLE_FILES, MAX_BYTES, check_folder, extract
from app.errors import (
    ModelDeployed,
    ModelExists,
    ModelNotFound,
    ValidationFailed,
    VersionNotFound,
)

NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
RECORD = "record.json"
STATE = "state.json"
INCOMING = ".incoming"
STALE_INCOMING_S = 3600  # an upload folder untouched this long was left by a crash


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a model, as the repository keeps it."""

    name: str
    version: int
    kind: str
    dimension: int
    variant: str
    size_bytes: int  # all its files
    sha256: str  # of model.onnx
    created: str  # RFC 3339
    description: str
    source: str  # "uploaded", or "static" for a bundle the settings serve
    digest: str  # of every file's name and sha256: identical uploads are one version
    path: Path = field(compare=False)

    def public(self) -> dict[str, Any]:
        """The fields an answer about this version shows."""
        record = asdict(self)
        del record["digest"], record["path"]
        return record


@dataclass(frozen=True, slots=True)
class State:
    """What is deployed and the default model; shared by replicas. ``deployed`` holds a version
    per uploaded name; a bundle the settings serve is deployed unless ``undeployed`` names it."""

    deployed: dict[str, int] = field(default_factory=dict)
    default: str | None = None
    undeployed: tuple[str, ...] = ()


class Repository:
    """The repository folder, and the bundles the settings serve beside it."""

    def __init__(self, root: Path, static: dict[str, Path] | None = None) -> None:
        self.root = root
        self.static = dict(static or {})
        (root / INCOMING).mkdir(parents=True, exist_ok=True)
        self._clear_stale_uploads()

    def register(
        self, archive: Path, name: str, description: str = "", max_bytes: int = MAX_BYTES
    ) -> tuple[Version, bool]:
        """Check the bundle archive and store it as the next version of ``name``; the version,
        and whether it is new (``False``: identical content was there already)."""
        check_name(name)
        if name in self.static:
            raise ModelExists(
                f"{name!r} is a bundle the settings serve (EMBED_MODELS); register under "
                "another name"
            )
        upload = self.root / INCOMING / uuid.uuid4().hex
        try:
            bundle = upload / "bundle"
            extract(archive, bundle, max_bytes)
            manifest = check_folder(bundle)
            digest = content_digest(bundle)
            folder = self.root / name
            folder.mkdir(exist_ok=True)
            with _locked(folder):
                for existing in self._uploaded(name):
                    if existing.digest == digest:
                        return existing, False
                number = max((v.version for v in self._uploaded(name)), default=0) + 1
                record = _record(name, number, manifest, bundle, description, digest)
                _write_json(bundle / RECORD, record)
                while True:  # the lock keeps replicas in turn; the rename settles any race
                    try:
                        bundle.rename(folder / str(number))
                        break
                    except OSError:  # that number exists: another replica took it
                        number += 1
                        record["version"] = number
                        _write_json(bundle / RECORD, record)
            return self.get(name, number), True
        finally:
            shutil.rmtree(upload, ignore_errors=True)

    def get(self, name: str, version: int) -> Version:
        """One version; ``ModelNotFound`` or ``VersionNotFound`` naming what there is."""
        for found in self.versions(name):
            if found.version == version:
                return found
        raise VersionNotFound(
            f"{name} has no version {version}; it has "
            + ", ".join(str(v.version) for v in self.versions(name))
        )

    def versions(self, name: str) -> list[Version]:
        """Every version of ``name``, oldest first; ``ModelNotFound`` when there is none."""
        if name in self.static:
            return [_static(name, self.static[name])]
        found = self._uploaded(name) if NAME.fullmatch(name) else []
        if not found:
            raise ModelNotFound(f"the repository has no model {name!r}")
        return found

    def all(self) -> list[Version]:
        """Every version of every model, static ones first, then by name and version."""
        names = sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME.fullmatch(p.name))
        uploaded = [v for name in names for v in self._uploaded(name)]
        return [_static(name, path) for name, path in self.static.items()] + uploaded

    def delete(self, name: str, version: int | None = None) -> list[Version]:
        """Remove one version, or every version of ``name``; refused for a static bundle or a
        deployed version. The versions removed."""
        if name in self.static:
            raise ModelDeployed(f"{name} is a bundle the settings serve; it cannot be deleted")
        doomed = [self.get(name, version)] if version is not None else self.versions(name)
        deployed = self.state().deployed.get(name)
        if deployed is not None and any(v.version == deployed for v in doomed):
            raise ModelDeployed(f"{name}@{deployed} is deployed; undeploy it before deleting it")
        with _locked(self.root / name):
            for gone in doomed:
                trash = self.root / INCOMING / f"deleted-{uuid.uuid4().hex}"
                gone.path.rename(trash)  # out of sight at once, removed after
                shutil.rmtree(trash, ignore_errors=True)
            if version is None or not self._uploaded(name):
                (self.root / name / ".lock").unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    (self.root / name).rmdir()
        return doomed

    def state(self) -> State:
        """The shared state; empty before anything was deployed."""
        try:
            raw = json.loads((self.root / STATE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return State()
        return State(
            deployed={str(k): int(v) for k, v in raw.get("deployed", {}).items()},
            default=raw.get("default"),
            undeployed=tuple(raw.get("undeployed", ())),
        )

    def save_state(self, state: State) -> None:
        """Replace the shared state whole: replicas read the old file or the new, never a mix."""
        _write_json(self.root / STATE, asdict(state))

    def update_state(self, change: Callable[[State], State]) -> State:
        """Read, change and replace the shared state under its lock, so that two replicas
        changing it at once both count; the new state."""
        with _locked(self.root):
            state = change(self.state())
            self.save_state(state)
            return state

    def upload_path(self) -> Path:
        """A fresh file under ``.incoming`` for an upload to stream into; the caller removes it."""
        return self.root / INCOMING / f"upload-{uuid.uuid4().hex}.zip"

    def _uploaded(self, name: str) -> list[Version]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            if path.name.isdigit() and (path / RECORD).is_file():
                record = json.loads((path / RECORD).read_text(encoding="utf-8"))
                found.append(Version(**record, path=path))
        return sorted(found, key=lambda v: v.version)

    def _clear_stale_uploads(self) -> None:
        now = time.time()
        for upload in (self.root / INCOMING).iterdir():
            with contextlib.suppress(OSError):
                if now - upload.stat().st_mtime > STALE_INCOMING_S:
                    if upload.is_dir():
                        shutil.rmtree(upload, ignore_errors=True)
                    else:
                        upload.unlink()


def check_name(name: str) -> None:
    """``name`` may name a model: 1 to 64 of ``A-Za-z0-9._-``, not starting with a dot."""
    if not NAME.fullmatch(name):
        error = ValidationFailed(
            f"model name {name[:80]!r}: 1 to 64 of A-Za-z0-9._- expected, not starting with a dot"
        )
        error.param = "name"
        raise error


def content_digest(folder: Path) -> str:
    """One sha256 over every bundle file's name and sha256."""
    digest = hashlib.sha256()
    for name in BUNDLE_FILES:
        if (folder / name).is_file():
            digest.update(f"{name}\0{sha256_of(folder / name)}\n".encode())
    return digest.hexdigest()


def _record(
    name: str,
    number: int,
    manifest: dict[str, Any],
    bundle: Path,
    description: str,
    digest: str,
    source: str = "uploaded",
) -> dict[str, Any]:
    return {
        "name": name,
        "version": number,
        "kind": manifest.get("kind", "dense"),
        "dimension": manifest["dimension"],
        "variant": manifest.get("variant", "fp32"),
        "size_bytes": sum(p.stat().st_size for p in bundle.iterdir() if p.name in BUNDLE_FILES),
        "sha256": manifest["model_sha256"],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "description": description,
        "source": source,
        "digest": digest,
    }


def _static(name: str, path: Path) -> Version:
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    created = datetime.fromtimestamp((path / MODEL_FILE).stat().st_mtime, UTC)
    record = _record(name, 1, manifest, path, "", "", source="static")
    record["created"] = created.isoformat(timespec="seconds")
    record["sha256"] = manifest.get("model_sha256") or sha256_of(path / MODEL_FILE)
    return Version(**record, path=path)


def _write_json(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` atomically: a file beside it, synced, renamed over it."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with partial.open("w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    partial.replace(path)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock file (flock: across processes, and replicas on one volume)."""
    with (folder / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
