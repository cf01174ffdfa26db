"""Build the real nebula image set from Debian's `stellarium-data` photographs.

Which images are nebulae: each photograph in Stellarium's `nebulae/default/textures.json` is
matched to an object of Stellarium's own deep-sky catalogue (`catalog.dat`, a gzipped Qt
`QDataStream` of records carrying the object type), first by the catalogue designation in the
file name (`m42.png` → M 42, `n7293.png` → NGC 7293, `ic434.png`, `sh2-240.png`,
`barnard72.png`, `ldn1622.png`, …) or by an unambiguous proper name of Stellarium's
`names.dat` (`pleiades.png` → M 45) and, when the name carries neither,
by the catalogue object nearest to the image centre computed from its `worldCoords` corners
(the largest object within a quarter of the image's half-diagonal). Emission, HII, planetary,
supernova-remnant, dark and reflection nebulae are kept; galaxies, galaxy clusters and star
clusters are not ("cluster associated with nebulosity" is kept only when its morphological
type mentions emission/reflection nebulosity or an HII classification, so the Eagle is in and
the Pleiades are out).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

INSTALLED = Path("/usr/share/stellarium/nebulae/default")
SUBDIR = Path("usr/share/stellarium/nebulae/default")

# Stellarium's Nebula::NebulaType codes (catalog format 3.x) grouped into what we keep.
NEBULA_GROUPS: dict[int, str] = {
    10: "emission",  # generic nebula
    14: "emission",  # bipolar nebula
    15: "emission",  # emission nebula
    17: "emission",  # HII region
    19: "emission",  # interstellar matter
    20: "emission",  # emission object
    11: "planetary",
    26: "planetary",  # possible planetary nebula
    27: "planetary",  # protoplanetary nebula
    18: "supernova_remnant",
    32: "supernova_remnant",  # supernova remnant candidate
    12: "dark",
    23: "dark",  # molecular cloud
    13: "reflection",
}
CLUSTER_WITH_NEBULOSITY = 16
_HII_CLASS = re.compile(r"\d+,\s*\d+,\s*\d+")  # Sharpless form, structure, brightness

# file-name prefix → catalogue field holding that designation number
_NAME_RE = re.compile(r"^(m|ngc|n|ic|sh2-|barnard|ldn|lbn|rcw|vdb|u|p)(\d+)", re.IGNORECASE)
_PREFIX_FIELD = {
    "m": "M",
    "n": "NGC",
    "ngc": "NGC",
    "ic": "IC",
    "sh2-": "Sh2",
    "barnard": "B",
    "ldn": "LDN",
    "lbn": "LBN",
    "rcw": "RCW",
    "vdb": "VdB",
    "u": "UGC",
    "p": "PGC",
}
_NAMES_LINE = re.compile(r'^(\w+)\s+(\d+)\s+_\("([^"]+)"\)')
_NAMES_PREFIX = {
    "M": "M",
    "NGC": "NGC",
    "IC": "IC",
    "SH2": "Sh2",
    "B": "B",
    "VDB": "VdB",
    "RCW": "RCW",
    "LDN": "LDN",
    "LBN": "LBN",
}
_UINT_IDS = ("NGC", "IC", "M", "C", "B", "Sh2", "VdB", "RCW", "LDN", "LBN", "Cr", "Mel", "PGC")


class NebulaDataError(ValueError):
    """The stellarium-data source is missing or not in the expected layout."""


@dataclass(frozen=True)
class DSO:
    """One deep-sky object of Stellarium's catalogue (only what the selection needs)."""

    ra: float  # radians, J2000
    dec: float
    type: int  # Nebula::NebulaType code
    morph: str  # morphological type string, e.g. "EN+RN; 3, 2, 3"
    size: float  # major axis, degrees
    ids: dict[str, int]


# --------------------------------------------------------------------------------------------
# Stellarium's catalogue
def read_catalog(path: Path) -> list[DSO]:
    """Parse `catalog.dat` (gzip + Qt QDataStream, big-endian, reals stored as doubles)."""
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise NebulaDataError(f"{path} is not a gzipped Stellarium catalogue: {exc}") from exc
    pos = 0

    def u32() -> int:
        nonlocal pos
        (v,) = struct.unpack_from(">I", data, pos)
        pos += 4
        return v

    def f64() -> float:
        nonlocal pos
        (v,) = struct.unpack_from(">d", data, pos)
        pos += 8
        return v

    def qstring() -> str:
        nonlocal pos
        n = u32()
        if n == 0xFFFFFFFF:  # a null QString
            return ""
        s = data[pos : pos + n].decode("utf-16-be")
        pos += n
        return s

    try:
        version = qstring()
        qstring()  # edition
        if not version.startswith("3."):
            raise NebulaDataError(f"{path}: unsupported catalogue version {version!r}")
        out: list[DSO] = []
        while pos < len(data):
            u32()  # running number
            ra, dec = f64(), f64()
            f64(), f64()  # B and V magnitudes
            otype = u32()
            morph = qstring()
            major = f64()
            f64()  # minor axis
            u32()  # orientation angle
            for _ in range(6):  # redshift, parallax, distance and their errors
                f64()
            ids = {name: u32() for name in _UINT_IDS}
            ids["UGC"] = u32()
            qstring()  # Ced
            u32(), u32()  # Arp, VV
            for _ in range(7):  # PK, PNG, SNRG, ACO, HCG, ESO, vdBH
                qstring()
            for _ in range(5):  # DWB, Tr, St, Ru, vdB-Ha
                u32()
            out.append(DSO(ra, dec, otype, morph, major, {k: v for k, v in ids.items() if v}))
    except struct.error as exc:
        raise NebulaDataError(f"{path}: truncated catalogue at byte {pos}") from exc
    return out


def nebula_group(obj: DSO) -> str | None:
    """`emission`/`planetary`/`supernova_remnant`/`dark`/`reflection`, or None (not kept)."""
    if obj.type == CLUSTER_WITH_NEBULOSITY:
        nebulous = "EN" in obj.morph or "RN" in obj.morph or _HII_CLASS.search(obj.morph)
        return "emission" if nebulous else None
    return NEBULA_GROUPS.get(obj.type)


# --------------------------------------------------------------------------------------------
# textures.json (not strict JSON: trailing commas, numbers like `-.97`, "Short" and "short")
def read_textures(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r",(\s*[}\]])", r"\1", text)
    text = re.sub(r"(?<=[\s\[,:])(-?)\.(\d)", r"\g<1>0.\2", text)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NebulaDataError(f"{path} could not be parsed: {exc}") from exc
    return list(doc.get("subTiles", []))


def _centre_and_radius(world: Any) -> tuple[float, float, float]:
    """Centre (ra, dec in radians) and half-diagonal (radians) of the first polygon."""
    corners = [(math.radians(ra), math.radians(dec)) for ra, dec in world[0]]
    vecs = [(math.cos(d) * math.cos(r), math.cos(d) * math.sin(r), math.sin(d)) for r, d in corners]
    x, y, z = (sum(v[i] for v in vecs) for i in range(3))
    norm = math.sqrt(x * x + y * y + z * z)
    x, y, z = x / norm, y / norm, z / norm
    radius = max(math.acos(max(-1.0, min(1.0, x * a + y * b + z * c))) for a, b, c in vecs)
    return math.atan2(y, x) % (2 * math.pi), math.asin(z), radius


def _separation(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    c = math.sin(dec1) * math.sin(dec2) + math.cos(dec1) * math.cos(dec2) * math.cos(ra1 - ra2)
    return math.acos(max(-1.0, min(1.0, c)))


def read_names(path: Path) -> dict[str, tuple[str, int]]:
    """Proper names of `names.dat` (`M 45 _("Pleiades")`) → catalogue key, unambiguous only."""
    if not path.is_file():
        return {}
    found: dict[str, set[tuple[str, int]]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _NAMES_LINE.match(line)
        if not m or m.group(1).upper() not in _NAMES_PREFIX:
            continue
        key = (_NAMES_PREFIX[m.group(1).upper()], int(m.group(2)))
        found.setdefault(_norm(m.group(3)), set()).add(key)
    return {name: next(iter(keys)) for name, keys in found.items() if len(keys) == 1}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def match_object(
    image: str,
    world: Any,
    catalog: list[DSO],
    index: dict[tuple[str, int], DSO],
    names: dict[str, tuple[str, int]] | None = None,
) -> DSO | None:
    """The object an image shows: by designation or proper name in the file name, else by
    position."""
    m = _NAME_RE.match(image)
    if m:
        key = (_PREFIX_FIELD[m.group(1).lower()], int(m.group(2)))
        if key in index:
            return index[key]
    named = (names or {}).get(_norm(image.rsplit(".", 1)[0]))
    if named in index:
        return index[named]
    try:
        ra, dec, radius = _centre_and_radius(world)
    except (TypeError, ValueError, IndexError, ZeroDivisionError):  # absent or malformed
        return None
    near = [o for o in catalog if _separation(ra, dec, o.ra, o.dec) < radius / 4]
    return max(near, key=lambda o: o.size, default=None)


# --------------------------------------------------------------------------------------------
# the source folder: installed package, a given .deb, or `apt-get download`
def _extract_deb(deb: Path, into: Path) -> Path:
    if not deb.is_file():
        raise NebulaDataError(f"--deb file not found: {deb}")
    log.info("unpacking %s", deb.name)
    try:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True, capture_output=True)
    except FileNotFoundError as exc:
        raise NebulaDataError("dpkg-deb is needed to unpack a .deb and was not found") from exc
    except subprocess.CalledProcessError as exc:
        msg = exc.stderr.decode(errors="replace").strip()
        raise NebulaDataError(f"could not unpack {deb}: {msg}") from exc
    src = into / SUBDIR
    if not (src / "textures.json").is_file():
        raise NebulaDataError(f"{deb} holds no {SUBDIR}/textures.json; is it stellarium-data?")
    return src


def _download_deb(into: Path) -> Path:
    log.info("downloading stellarium-data with apt-get (about 250 MB; its progress follows)")
    try:
        # apt-get's own progress goes to the terminal; its errors are kept for the message
        subprocess.run(
            ["apt-get", "download", "stellarium-data"], cwd=into, check=True, stderr=subprocess.PIPE
        )
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise NebulaDataError(
            "stellarium-data is not installed and `apt-get download stellarium-data` failed "
            f"({detail.decode(errors='replace').strip() or exc}); pass --deb FILE"
        ) from exc
    debs = sorted(into.glob("stellarium-data_*.deb"))
    if not debs:
        raise NebulaDataError("`apt-get download stellarium-data` produced no .deb")
    return debs[-1]


# --------------------------------------------------------------------------------------------
def build_nebula_dataset(out: Path, deb: str | None = None) -> dict[str, Any]:
    """Copy the nebula photographs into `out` with an ATTRIBUTION.md; return a summary."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="stellarium-") as tmp:
        if deb is None and (INSTALLED / "textures.json").is_file():
            src, source = INSTALLED, str(INSTALLED)
        elif deb is not None:
            src, source = _extract_deb(Path(deb), Path(tmp)), str(deb)
        else:
            fetched = _download_deb(Path(tmp))
            src, source = _extract_deb(fetched, Path(tmp) / "x"), fetched.name
        return _select_and_copy(src, out, source)


def _select_and_copy(src: Path, out: Path, source: str | None = None) -> dict[str, Any]:
    source = source or str(src)
    catalog = read_catalog(src / "catalog.dat")
    index: dict[tuple[str, int], DSO] = {}
    for obj in catalog:
        for name, number in obj.ids.items():
            index.setdefault((name, number), obj)
    tiles = read_textures(src / "textures.json")
    names = read_names(src / "names.dat")

    # write into a sibling temp folder, then swap it in: never a half-built dataset
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    counts: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    rows: list[str] = []
    seen: set[str] = set()
    try:
        # a bar on a terminal (tqdm stays quiet when stderr is not one)
        for tile in tqdm(tiles, desc="nebula images", unit="image", disable=None):
            image = tile.get("imageUrl")
            if not image or image in seen:
                continue
            seen.add(image)
            if not (src / image).is_file():
                skipped["missing_file"] += 1
                continue
            obj = match_object(image, tile.get("worldCoords"), catalog, index, names)
            group = nebula_group(obj) if obj else None
            if group is None:
                skipped["unmatched" if obj is None else "not_a_nebula"] += 1
                continue
            shutil.copy2(src / image, staging / image)
            counts[group] += 1
            credits = {k.lower(): v for k, v in (tile.get("imageCredits") or {}).items()}
            author = credits.get("short", "unknown")
            url = credits.get("infourl", "")
            rows.append(f"| {image} | {group} | {author} | {url} |")
        (staging / "ATTRIBUTION.md").write_text(_attribution(rows), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    total = sum(counts.values())
    log.info("wrote %d nebula images to %s", total, out)
    return {
        "out": str(out),
        "source": source,
        "by_type": dict(sorted(counts.items())),
        "total": total,
        "skipped": sum(skipped.values()),
        "skipped_by_reason": dict(sorted(skipped.items())),
    }


def _attribution(rows: list[str]) -> str:
    return (
        "# Nebula photographs: attribution\n\n"
        "These images come from Stellarium's default deep-sky image set as packaged by Debian "
        "(`stellarium-data`, files under `/usr/share/stellarium/nebulae/default/`). Credits and "
        "source links are those of Stellarium's `textures.json`. Stellarium is distributed "
        "under the GNU GPL v2 or later; the individual photographs remain the work of their "
        "authors and are used under the terms their authors gave Stellarium (see each info "
        "URL and Debian's `/usr/share/doc/stellarium-data/copyright`). They are for training "
        "and evaluation here and are not redistributed with this project.\n\n"
        "| file | type | credit | info |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
