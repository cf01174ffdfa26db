"""The data-path check shared by the API (at the door) and the worker (on what Redis says)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.jobs import check_data_path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "cat.parquet").write_bytes(b"x")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "escape").symlink_to("/etc")
    return tmp_path


def test_datasets_inside_the_root(root: Path) -> None:
    assert check_data_path("cat.parquet", root, "file") == root / "cat.parquet"
    assert check_data_path(str(root / "images"), root, "dir") == root / "images"


@pytest.mark.parametrize(
    ("data", "want", "message"),
    [
        ("cat\x00.parquet", "file", "NUL"),
        ("a" * 256, "file", "255 bytes"),
        ("é" * 128, "file", "255 bytes"),  # 256 bytes in UTF-8
        (".", "dir", "not the root"),
        ("images/..", "dir", "not the root"),
        ("../x", "file", "outside"),
        ("/etc/passwd", "file", "outside"),
        ("escape/passwd", "file", "outside"),  # a symlink out of the root
        ("nope.parquet", "file", "not found"),
        ("images", "file", "catalog file"),
        ("cat.parquet", "dir", "folder of images"),
        ("loop", "file", "cannot be read"),
    ],
)
def test_refusals(root: Path, data: str, want: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_data_path(data, root, want)
