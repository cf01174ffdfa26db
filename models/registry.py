"""Model versions on disk and which one is active; plain files, no torch at import time.

Layout under `<home>/registry/<name>/`:
    versions/<version>/model.pt     inference-only checkpoint (EMA weights, config, scalers)
    versions/<version>/meta.json    {"version", "created", "job_id", "metrics", "source", "note"?}
    active.json                     {"version": ...}

Every JSON write is atomic (temp file + rename), so readers never see half a file; the
worker notices a new active version by re-reading `active.json` and swaps models then.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.atomic import atomic_write

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_WEIGHTS_DIR = Path(__file__).parent / "weights"


class RegistryError(LookupError):
    """Unknown model or version, or a malformed name."""


class VersionInUse(RegistryError):
    """The version is the active one: activate another before deleting it."""


MAX_NOTE_CHARS = 500


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path  # the model.pt file
    meta: dict[str, Any]


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that a concurrent reader sees the old file or the new one, never a mix."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


class Registry:
    """Versions of each named model (`nebula`, `nebula-dcgan`, `balrog`) and the active one."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- reading ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir())

    def versions(self, name: str) -> list[ModelVersion]:
        vdir = self.root / name / "versions"
        if not vdir.is_dir():
            return []
        out = [self._read(name, p.name) for p in vdir.iterdir() if (p / "meta.json").is_file()]
        return sorted(out, key=lambda v: (v.meta.get("created", 0), v.version))

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """A version of `name`; the active one when `version` is None."""
        self._check_name(name, "model name")
        if version is None:
            version = self.active_version(name)
            if version is None:
                raise RegistryError(f"model {name!r} has no active version")
        self._check_name(version, "version")
        if not (self.root / name / "versions" / version / "meta.json").is_file():
            raise RegistryError(f"model {name!r} has no version {version!r}")
        return self._read(name, version)

    def active_version(self, name: str) -> str | None:
        path = self.root / name / "active.json"
        try:
            return json.loads(path.read_text())["version"]
        except (FileNotFoundError, KeyError, json.JSONDecodeError):
            return None

    def describe(self) -> dict[str, Any]:
        """Everything, as plain JSON: names, versions with their metrics, the active one."""
        return {
            name: {
                "active": self.active_version(name),
                "versions": [
                    {"version": v.version, **{k: x for k, x in v.meta.items() if k != "version"}}
                    for v in self.versions(name)
                ],
            }
            for name in self.names()
        }

    # -- writing ---------------------------------------------------------------------------
    def register(
        self,
        name: str,
        version: str,
        model_file: str | Path,
        *,
        metrics: dict[str, Any] | None = None,
        job_id: str | None = None,
        source: str = "training",
    ) -> ModelVersion:
        """Copy an inference-only checkpoint in as `name@version` (idempotent for one job)."""
        self._check_name(name, "model name")
        self._check_name(version, "version")
        vdir = self.root / name / "versions" / version
        meta_path = vdir / "meta.json"
        if meta_path.is_file():
            existing = json.loads(meta_path.read_text())
            if job_id is not None and existing.get("job_id") == job_id:
                return self._read(name, version)
            raise RegistryError(f"model {name!r} already has a version {version!r}")
        vdir.mkdir(parents=True, exist_ok=True)
        with open(model_file, "rb") as src, atomic_write(vdir / "model.pt", "wb") as dst:
            shutil.copyfileobj(src, dst)
        meta = {
            "version": version,
            "created": time.time(),
            "job_id": job_id,
            "metrics": metrics or {},
            "source": source,
        }
        write_json_atomic(meta_path, meta)  # written last: a version exists once meta exists
        return self._read(name, version)

    def activate(self, name: str, version: str) -> ModelVersion:
        mv = self.get(name, version)
        write_json_atomic(self.root / name / "active.json", {"version": version})
        return mv

    def set_note(self, name: str, version: str, note: str) -> ModelVersion:
        """Attach a free-text note (a tag, what the version is for); "" removes it."""
        if len(note) > MAX_NOTE_CHARS:
            raise ValueError(f"a note has at most {MAX_NOTE_CHARS} characters, got {len(note)}")
        mv = self.get(name, version)
        meta = {k: v for k, v in mv.meta.items() if k != "note"}
        if note.strip():
            meta["note"] = note.strip()
        write_json_atomic(self.root / name / "versions" / version / "meta.json", meta)
        return self._read(name, version)

    def delete(self, name: str, version: str) -> None:
        """Remove a version and its weights; the active one is refused (`VersionInUse`)."""
        self.get(name, version)  # RegistryError when unknown
        if self.active_version(name) == version:
            raise VersionInUse(
                f"{name}@{version} is the active version; activate another one first"
            )
        vdir = self.root / name / "versions" / version
        # meta.json first: from then on the version no longer exists for any reader
        (vdir / "meta.json").unlink()
        shutil.rmtree(vdir, ignore_errors=True)

    def ensure_defaults(self, weights_dir: Path = DEFAULT_WEIGHTS_DIR) -> list[str]:
        """Register each shipped `<name>.pt` as `<name>@default`, active if nothing else is."""
        added = []
        for path in sorted(weights_dir.glob("*.pt")):
            name = path.stem
            meta_file = path.with_suffix(".json")
            info = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
            if not (self.root / name / "versions" / "default" / "meta.json").is_file():
                self.register(name, "default", path, metrics=info.get("metrics"), source="shipped")
                added.append(name)
            if self.active_version(name) is None:
                self.activate(name, "default")
        return added

    # -- helpers ---------------------------------------------------------------------------
    def _read(self, name: str, version: str) -> ModelVersion:
        vdir = self.root / name / "versions" / version
        return ModelVersion(
            name, version, vdir / "model.pt", json.loads((vdir / "meta.json").read_text())
        )

    @staticmethod
    def _check_name(value: str, what: str) -> None:
        if not VERSION_RE.match(value):
            raise RegistryError(
                f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' (max 64)"
            )
