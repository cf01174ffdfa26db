"""Image folders (PNG/JPEG/FITS), augmentation, DiffAugment and the nebula set builder."""

from __future__ import annotations

import gzip
import json
import logging
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from training.image import nebulae
from training.image.augment import diff_augment
from training.image.images import (
    EmptyDatasetError,
    ImageFolder,
    is_heldout,
    load_image,
    stretch_array,
)


def _png(path, size=(40, 30), color=(200, 50, 20)):
    Image.new("RGB", size, color).save(path)


def test_png_resize_center_crop_normalize(tmp_path):
    # a 60×30 image: left half black, right half white → resize to 16×32, crop the middle 16
    arr = np.zeros((30, 60, 3), np.uint8)
    arr[:, 30:] = 255
    Image.fromarray(arr).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", 16)
    assert x.shape == (3, 16, 16)
    assert x.min() >= -1 and x.max() <= 1
    assert x[:, :, 0].mean() == pytest.approx(-1, abs=0.05)  # crop's left edge is black
    assert x[:, :, -1].mean() == pytest.approx(1, abs=0.05)


def test_transparent_png_is_composited_on_black(tmp_path):
    Image.new("RGBA", (20, 20), (255, 255, 255, 0)).save(tmp_path / "t.png")
    assert load_image(tmp_path / "t.png", 8).max() == pytest.approx(-1)


def test_fits_with_stretch(tmp_path):
    from astropy.io import fits

    rng = np.random.default_rng(0)
    data = rng.exponential(1.0, (32, 32)).astype(np.float32)
    data[10, 10] = 1e6  # a hot pixel must not set the scale
    fits.PrimaryHDU(data).writeto(tmp_path / "img.fits")
    lin = load_image(tmp_path / "img.fits", 16, stretch="none")
    ash = load_image(tmp_path / "img.fits", 16, stretch="asinh")
    lg = load_image(tmp_path / "img.fits", 16, stretch="log")
    assert lin.shape == ash.shape == (3, 16, 16)
    assert torch.equal(ash[0], ash[1])  # mono repeated into RGB
    # asinh and log lift the faint end: brighter mean than the linear mapping
    assert ash.mean() > lin.mean() + 0.2 and lg.mean() > lin.mean() + 0.2
    ds = ImageFolder(tmp_path, 16, split="all", stretch="log")
    assert len(ds) == 1


def test_stretch_is_monotonic_and_bounded():
    x = np.linspace(0, 100, 1000).reshape(10, 100)
    for s in ("none", "log", "asinh"):
        y = stretch_array(x, s).ravel()
        assert y.min() >= 0 and y.max() <= 1 and np.all(np.diff(y) >= 0)


def test_corrupt_files_are_skipped_and_counted(tmp_path, caplog):
    for i in range(3):
        _png(tmp_path / f"ok{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 10)
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    with caplog.at_level(logging.WARNING):
        ds = ImageFolder(tmp_path, 8, split="all")
    assert len(ds) == 3
    assert ds.skipped_count == 2 and sorted(ds.skipped) == ["broken.png", "cut.jpg"]
    assert "broken.png" in caplog.text


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(EmptyDatasetError, match=str(tmp_path)):
        ImageFolder(tmp_path, 8)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="1 unreadable files skipped"):
        ImageFolder(tmp_path, 8, split="all")
    with pytest.raises(FileNotFoundError):
        ImageFolder(tmp_path / "missing", 8)


def test_heldout_split_is_deterministic_and_disjoint(tmp_path):
    names = [f"img{i:03d}.png" for i in range(40)]
    for n in names:
        _png(tmp_path / n, size=(8, 8))
    train = ImageFolder(tmp_path, 8, split="train", heldout_fraction=0.25)
    held = ImageFolder(tmp_path, 8, split="heldout", heldout_fraction=0.25)
    train_names = {p.name for p in train.files}
    held_names = {p.name for p in held.files}
    assert train_names.isdisjoint(held_names) and train_names | held_names == set(names)
    assert held_names == {n for n in names if is_heldout(n, 0.25)}
    assert 3 <= len(held_names) <= 20


def test_augmented_batches_are_random_views_and_reproducible(tmp_path):
    arr = np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    ds = ImageFolder(tmp_path, 32, split="all", augment=True)
    assert ds.data.shape[-1] == 36  # decoded with a margin for random crops
    idx = torch.zeros(8, dtype=torch.long)
    a = ds.batch(idx, torch.Generator().manual_seed(0))
    b = ds.batch(idx, torch.Generator().manual_seed(0))
    assert a.shape == (8, 3, 32, 32) and torch.equal(a, b)
    assert len({tuple(v.flatten()[:50].tolist()) for v in a}) > 1  # different views
    assert ds.center().shape == (1, 3, 32, 32)


def test_diff_augment_is_differentiable_and_seeded():
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    y1 = diff_augment(x, generator=torch.Generator().manual_seed(3))
    y2 = diff_augment(x, generator=torch.Generator().manual_seed(3))
    assert y1.shape == x.shape and torch.equal(y1, y2)
    assert not torch.equal(y1, x)
    y1.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # cutout zeroes a square of half the side in each image
    cut = diff_augment(torch.ones(2, 3, 16, 16), ("cutout",), torch.Generator().manual_seed(0))
    zeros = (cut == 0).all(1).flatten(1).sum(1)
    assert (zeros >= 16).all() and (zeros <= 64).all()
    with pytest.raises(ValueError, match="unknown DiffAugment op"):
        diff_augment(x, ("blur",))


# --------------------------------------------------------------------------------------------
# the nebula set builder on a small synthetic Stellarium source
def _qstring(s: str) -> bytes:
    raw = s.encode("utf-16-be")
    return struct.pack(">I", len(raw)) + raw


def _record(nb, ra_deg, dec_deg, otype, morph="", size=0.1, **ids) -> bytes:
    import math

    out = struct.pack(">I", nb)
    out += struct.pack(">4d", math.radians(ra_deg), math.radians(dec_deg), 99.0, 5.0)
    out += struct.pack(">I", otype) + _qstring(morph)
    out += struct.pack(">2dI6d", size, size, 0, 0, 0, 0, 0, 0, 0)
    names = ("NGC", "IC", "M", "C", "B", "Sh2", "VdB", "RCW", "LDN", "LBN", "Cr", "Mel", "PGC")
    out += struct.pack(">13I", *(ids.get(n, 0) for n in names))
    out += struct.pack(">I", ids.get("UGC", 0)) + _qstring("") + struct.pack(">2I", 0, 0)
    out += b"".join(_qstring("") for _ in range(7)) + struct.pack(">5I", 0, 0, 0, 0, 0)
    return out


def _source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    records = [
        _record(1, 83.8, -5.4, 17, "EN+RN; 3, 2, 3", 1.0, M=42, NGC=1976),  # Orion: HII
        _record(2, 10.7, 41.3, 0, "SA(s)b", 3.0, M=31, NGC=224),  # Andromeda: galaxy
        _record(3, 56.8, 24.1, 16, "I3rn", 1.8, M=45),  # Pleiades: cluster, no nebula
        _record(4, 274.7, -13.8, 16, "II3mn; 3, 3, 3", 0.5, M=16, NGC=6611),  # Eagle: kept
        _record(5, 283.4, 33.0, 11, "", 0.02, M=57, NGC=6720),  # Ring: planetary
        _record(6, 300.0, 20.0, 12, "", 0.5, B=999),  # dark nebula found by position
    ]
    payload = _qstring("3.16") + _qstring("standard") + b"".join(records)
    (src / "catalog.dat").write_bytes(gzip.compress(payload))
    (src / "names.dat").write_text(
        '# names\nM    45    _("Pleiades") # WK\nNGC  4194  _("Medusa")\n'
        'SH2  274   _("Medusa")\nM    42    _("Great Orion Nebula")\n'
    )
    tiles = []
    for name, (ra, dec) in {
        "m42.png": (83.8, -5.4),
        "m31.png": (10.7, 41.3),
        "m45.png": (56.8, 24.1),
        "n6611.png": (274.7, -13.8),
        "m57dumont.png": (283.4, 33.0),
        "darkthing.png": (300.0, 20.0),
        "nowhere.png": (150.0, -60.0),
        "pleiades.png": (120.0, 60.0),  # found by its proper name in names.dat, not by position
    }.items():
        _png(src / name, size=(16, 16))
        d = 0.2
        corners = [[ra + d, dec - d], [ra - d, dec - d], [ra - d, dec + d], [ra + d, dec + d]]
        tile = json.dumps(
            {
                "imageCredits": {"Short": "Someone", "infoUrl": f"https://example.org/{name}"},
                "imageUrl": name,
                "worldCoords": [corners],
            }
        )
        # Stellarium's own quirks: a number with a leading dot and trailing commas
        tiles.append(tile[:-1] + ', "minResolution": .1,}')
    text = '{"shortName": "Nebulae", "subTiles": [\n' + ",\n".join(tiles) + ",\n],}"
    (src / "textures.json").write_text(text)
    return src


def test_nebula_selection_by_catalogue_type(tmp_path):
    src = _source(tmp_path)
    summary = nebulae._select_and_copy(src, tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [
        "ATTRIBUTION.md",
        "darkthing.png",
        "m42.png",
        "m57dumont.png",
        "n6611.png",
    ]
    assert summary["by_type"] == {"dark": 1, "emission": 2, "planetary": 1}
    assert summary["total"] == 4 and summary["skipped"] == 4
    assert summary["skipped_by_reason"] == {"not_a_nebula": 3, "unmatched": 1}
    attribution = (tmp_path / "out" / "ATTRIBUTION.md").read_text()
    assert "| m42.png | emission | Someone | https://example.org/m42.png |" in attribution
    # a rebuild replaces the folder and leaves no staging folder behind
    nebulae._select_and_copy(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_proper_names_must_be_unambiguous(tmp_path):
    src = _source(tmp_path)
    names = nebulae.read_names(src / "names.dat")
    assert names["pleiades"] == ("M", 45)
    assert names["greatorionnebula"] == ("M", 42)
    assert "medusa" not in names  # a galaxy and a nebula share it: no guessing
    assert nebulae.read_names(tmp_path / "missing.dat") == {}


def test_bad_sources_are_clear_errors(tmp_path):
    (tmp_path / "catalog.dat").write_bytes(b"not gzip")
    with pytest.raises(nebulae.NebulaDataError, match="not a gzipped"):
        nebulae.read_catalog(tmp_path / "catalog.dat")
    with pytest.raises(nebulae.NebulaDataError, match="not found"):
        nebulae.build_nebula_dataset(tmp_path / "out", deb=str(tmp_path / "missing.deb"))
