"""The artifact repository: versioned directories with a sha256 manifest.

Layout::

    <artifact_root>/
      CURRENT                 # name of the version served by default
      <version>/
        manifest.json         # version, config, files {relpath: {sha256, bytes}}, eval
        tables/... sids/... models/<model>/1/model.onnx ...

Artifacts are versioned as one unit; services open one version, verify each
file they load against the manifest and refuse a mismatch.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from services.common.errors import ArtifactIntegrityError, NotFoundError

MANIFEST_NAME = "manifest.json"
CURRENT_NAME = "CURRENT"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(slots=True)
class Manifest:
    """What one artifact version contains and how it was made."""

    version: str
    created_at: str
    config: dict[str, Any] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "version": self.version,
                "created_at": self.created_at,
                "config": self.config,
                "files": {k: {"sha256": v.sha256, "bytes": v.bytes} for k, v in self.files.items()},
                "eval": self.eval,
            },
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY,
        )

    @classmethod
    def from_json(cls, raw: bytes, source: str = MANIFEST_NAME) -> Manifest:
        try:
            data = orjson.loads(raw)
            files = {
                str(k): FileEntry(sha256=str(v["sha256"]), bytes=int(v["bytes"]))
                for k, v in data["files"].items()
            }
            return cls(
                version=str(data["version"]),
                created_at=str(data.get("created_at", "")),
                config=dict(data.get("config", {})),
                files=files,
                eval=dict(data.get("eval", {})),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactIntegrityError(f"{source}: not a valid manifest ({exc})") from exc


def write_manifest(
    version_dir: Path,
    version: str,
    config: dict[str, Any],
    eval_results: dict[str, Any] | None = None,
) -> Manifest:
    """Hash every file under ``version_dir`` and write its ``manifest.json``."""
    files: dict[str, FileEntry] = {}
    for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(version_dir).as_posix()
        if rel == MANIFEST_NAME:
            continue
        files[rel] = FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)
    manifest = Manifest(
        version=version,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        config=config,
        files=files,
        eval=eval_results or {},
    )
    tmp = version_dir / (MANIFEST_NAME + ".tmp")
    tmp.write_bytes(manifest.to_json())
    os.replace(tmp, version_dir / MANIFEST_NAME)
    return manifest


def set_current(root: Path, version: str) -> None:
    """Point ``CURRENT`` at ``version`` atomically."""
    tmp = root / (CURRENT_NAME + ".tmp")
    tmp.write_text(version + "\n")
    os.replace(tmp, root / CURRENT_NAME)


class ArtifactSet:
    """One opened, manifest-checked artifact version.

    ``path(rel)`` verifies the file's sha256 the first time it is asked for and
    raises :class:`ArtifactIntegrityError` on any mismatch or missing file.
    """

    def __init__(self, version_dir: Path) -> None:
        manifest_path = version_dir / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ArtifactIntegrityError(f"{version_dir}: no {MANIFEST_NAME}")
        raw = manifest_path.read_bytes()
        self.root = version_dir
        self.manifest = Manifest.from_json(raw, str(manifest_path))
        self.manifest_sha256 = hashlib.sha256(raw).hexdigest()
        if self.manifest.version != version_dir.name:
            raise ArtifactIntegrityError(
                f"{manifest_path}: manifest version {self.manifest.version!r} "
                f"does not match directory {version_dir.name!r}"
            )
        self._verified: set[str] = set()

    @property
    def version(self) -> str:
        return self.manifest.version

    def path(self, rel: str) -> Path:
        """Absolute path of a manifest-listed file, verified against its sha256."""
        entry = self.manifest.files.get(rel)
        if entry is None:
            raise ArtifactIntegrityError(
                f"artifact {self.version}: {rel!r} is not listed in the manifest"
            )
        full = self.root / rel
        if rel not in self._verified:
            if not full.is_file():
                raise ArtifactIntegrityError(f"artifact {self.version}: {rel!r} is missing")
            actual = sha256_file(full)
            if actual != entry.sha256:
                raise ArtifactIntegrityError(
                    f"artifact {self.version}: {rel!r} sha256 mismatch "
                    f"(manifest {entry.sha256[:12]}…, file {actual[:12]}…); refusing to load it"
                )
            self._verified.add(rel)
        return full

    def read_bytes(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def read_json(self, rel: str) -> Any:
        return orjson.loads(self.read_bytes(rel))

    def verify(self, rels: Iterable[str] | None = None) -> None:
        """Verify the given files (all listed files when ``rels`` is None)."""
        for rel in self.manifest.files if rels is None else rels:
            self.path(rel)

    def has(self, rel: str) -> bool:
        return rel in self.manifest.files


class ArtifactRepository:
    """A directory of artifact versions with a ``CURRENT`` pointer."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST_NAME).is_file())

    def current(self) -> str:
        pointer = self.root / CURRENT_NAME
        if pointer.is_file():
            return pointer.read_text().strip()
        versions = self.versions()
        if not versions:
            raise NotFoundError(
                f"no artifact version under {self.root} (build one with `make artifacts`)"
            )
        return versions[-1]

    def open(self, version: str | None = None) -> ArtifactSet:
        """Open ``version`` (the CURRENT one when None or empty)."""
        name = version or self.current()
        if "/" in name or name.startswith("."):
            raise NotFoundError(f"invalid artifact version {name!r}")
        version_dir = self.root / name
        if not version_dir.is_dir():
            raise NotFoundError(f"artifact version {name!r} not found under {self.root}")
        return ArtifactSet(version_dir)
