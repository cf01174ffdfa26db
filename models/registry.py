"""Model versions on disk and which one is active; plain files, no torch at import time.

Layout under `<home>/registry/<name>/`:
    versions/<version>/model.pt     inference-only checkpoint (EMA weights, config, scalers)
    versions/<version>/meta.json    {"version", "created", "job_id", "metrics", "source",
                                     "kind", "preset"?, "note"?}
    active.json                     {"version": ...}

A model name is what a user calls (`nebula`, `balrog`, or any name a training job was
given); the network kind (`cflow`, `cwgan-gp`, ...) is an attribute of each version, so one
name may hold versions of several kinds of one family, and activating any of them changes
what calls to that name answer. Versions registered before the kind was recorded (under
their preset's name, e.g. `balrog-flow`) get theirs from that name.

Every JSON write is atomic (temp file + rename), so readers never see half a file; the
worker notices a new active version by re-reading `active.json` and swaps models then.
A file damaged from outside (truncated by a full disk, edited by hand) is reported as
`RegistryDamaged` for that model or version alone: listings skip and name it, every other
model keeps working.
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
from models.kinds import EMULATOR, IMAGE, Family, family_of

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_WEIGHTS_DIR = Path(__file__).parent / "weights"


class RegistryError(LookupError):
    """Unknown model or version, or a malformed name."""


class RegistryDamaged(RegistryError):
    """A registry file exists but cannot be read (the message names no server path)."""


class VersionInUse(RegistryError):
    """The version is the active one: activate another before deleting it."""


class FamilyMismatch(RegistryError):
    """A version of one family (images, emulator) under a name that serves the other."""


MAX_NOTE_CHARS = 500

# what a training job trains into when it names no model, and what the serving routes answer
# without one: one name per family, so that activating a trained version changes the answer
DEFAULT_MODEL: dict[Family, str] = {IMAGE: "nebula", EMULATOR: "balrog"}

# versions registered before `kind` was recorded were registered under their preset's name
LEGACY_KINDS = {
    "nebula": "wgan-gp-128",
    "nebula-cpu": "wgan-gp-128",
    "nebula-dcgan": "dcgan-64",
    "balrog": "cwgan-gp",
    "balrog-flow": "cflow",
}


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path  # the model.pt file
    meta: dict[str, Any]

    @property
    def kind(self) -> str | None:
        """The network kind (`models.kinds`), or None for an unknown legacy version."""
        if self.meta.get("kind"):
            return str(self.meta["kind"])
        if self.meta.get("source") == "shipped":
            sidecar = DEFAULT_WEIGHTS_DIR / f"{self.name}.json"
            if sidecar.is_file():
                kind = json.loads(sidecar.read_text()).get("kind")
                if kind:
                    return str(kind)
        return LEGACY_KINDS.get(str(self.meta.get("preset") or self.name))

    @property
    def family(self) -> Family | None:
        kind = self.kind
        try:
            return family_of(kind) if kind else None
        except ValueError:
            return None


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
        """The readable versions of `name`, oldest first (damaged ones: `damaged`)."""
        return self._scan(name)[0]

    def _scan(self, name: str) -> tuple[list[ModelVersion], list[str]]:
        vdir = self.root / name / "versions"
        if not vdir.is_dir():
            return [], []
        out, bad = [], []
        for p in sorted(vdir.iterdir()):
            if not (p / "meta.json").is_file():
                continue
            try:
                out.append(self._read(name, p.name))
            except RegistryDamaged:
                bad.append(p.name)
        return sorted(out, key=lambda v: (v.meta.get("created", 0), v.version)), bad

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

    def resolve(self, ref: str) -> ModelVersion:
        """The version a reference `NAME[@VERSION]` names (the active one without a version),
        with the shipped models registered first, as a fresh home needs."""
        self.ensure_defaults()
        name, _, version = ref.partition("@")
        return self.get(name, version or None)

    def active_version(self, name: str) -> str | None:
        """The active version; None when none was activated, RegistryDamaged when the
        pointer exists but cannot be read."""
        path = self.root / name / "active.json"
        try:
            version = json.loads(path.read_text())["version"]
        except FileNotFoundError:
            return None
        except (OSError, KeyError, TypeError, ValueError) as exc:  # ValueError: bad JSON/UTF-8
            raise RegistryDamaged(
                f"model {name!r}: its active-version pointer (active.json) is damaged; "
                "activate a version again"
            ) from exc
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise RegistryDamaged(f"model {name!r}: active.json names no valid version")
        return version

    def family(self, name: str) -> Family | None:
        """What `name` serves (`image` or `emulator`): its versions' family; for a name with
        no version yet, the family it is the default of, or its preset's (None otherwise)."""
        for v in reversed(self.versions(name)):
            if v.family is not None:
                return v.family
        for fam, default in DEFAULT_MODEL.items():
            if name == default:
                return fam
        return family_of(LEGACY_KINDS[name]) if name in LEGACY_KINDS else None

    def describe(self) -> dict[str, Any]:
        """Everything, as plain JSON: names with their family, versions with their kind and
        metrics, the active one, and `damaged`: the model's files that cannot be read
        (skipped, never an error)."""
        out = {}
        for name in self.names():
            good, bad = self._scan(name)
            try:
                active = self.active_version(name)
            except RegistryDamaged:
                active, bad = None, ["active.json", *bad]
            else:
                bad = [f"versions/{v}/meta.json" for v in bad]
            out[name] = {
                "active": active,
                "family": next((v.family for v in reversed(good) if v.family), None),
                "versions": [
                    {
                        "version": v.version,
                        **{k: x for k, x in v.meta.items() if k != "version"},
                        "kind": v.kind,
                        "family": v.family,
                    }
                    for v in good
                ],
                "damaged": bad,
            }
        return out

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
        kind: str | None = None,
        preset: str | None = None,
    ) -> ModelVersion:
        """Copy an inference-only checkpoint in as `name@version` (idempotent for one job).

        A name serves one family: a version of the other family is refused.
        """
        self._check_name(name, "model name")
        self._check_name(version, "version")
        if kind is not None:
            self.check_family(name, family_of(kind))
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
        if kind is not None:
            meta["kind"] = kind
        if preset is not None:
            meta["preset"] = preset
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
                self.register(
                    name,
                    "default",
                    path,
                    metrics=info.get("metrics"),
                    source="shipped",
                    kind=info.get("kind"),
                    preset=info.get("preset"),
                )
                added.append(name)
            if self.active_version(name) is None:
                self.activate(name, "default")
        return added

    def check_family(self, name: str, want: Family) -> None:
        """Refuse `name` for a model of family `want` when it already serves the other one."""
        have = self.family(name)
        if have is not None and have != want:
            what = {IMAGE: "an image generator", EMULATOR: "an emulator"}
            raise FamilyMismatch(
                f"model {name!r} is {what[have]}; {what[want]} cannot be added to it "
                f"(pick another name, e.g. {DEFAULT_MODEL[want]!r})"
            )

    # -- helpers ---------------------------------------------------------------------------
    def _read(self, name: str, version: str) -> ModelVersion:
        vdir = self.root / name / "versions" / version
        try:
            meta = json.loads((vdir / "meta.json").read_text())
        except FileNotFoundError:
            raise RegistryError(f"model {name!r} has no version {version!r}") from None
        except (OSError, ValueError) as exc:  # ValueError: truncated JSON, bad UTF-8
            raise RegistryDamaged(
                f"{name}@{version} is damaged: its meta.json cannot be read"
            ) from exc
        if not isinstance(meta, dict):
            raise RegistryDamaged(f"{name}@{version} is damaged: its meta.json is not an object")
        return ModelVersion(name, version, vdir / "model.pt", meta)

    @staticmethod
    def _check_name(value: str, what: str) -> None:
        if not VERSION_RE.match(value):
            raise RegistryError(
                f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' (max 64)"
            )
