"""Large values beside the messages: arrays as bytes, blobs stored, fetched and deleted."""

import numpy as np
import pytest

from worker.payload import BLOBS, blob_key, fetch_inputs, from_bytes, store_outputs, to_bytes


def test_arrays_survive_the_trip_bit_for_bit():
    x = np.random.default_rng(0).normal(20, 2, (7, 9))
    x[3, 4] = np.nan
    back = from_bytes(to_bytes(x, "<f8"), "<f8", 9)
    assert back.shape == (7, 9)
    np.testing.assert_array_equal(back, x)  # NaN in the same place, every bit kept
    det = np.array([True, False, True])
    assert from_bytes(to_bytes(det, "u1"), "u1").astype(bool).tolist() == [True, False, True]


def test_a_float32_array_is_widened_and_a_bad_payload_is_refused():
    x = np.arange(18, dtype=np.float32).reshape(2, 9)
    assert from_bytes(to_bytes(x, "<f8"), "<f8", 9).dtype == np.float64
    with pytest.raises(ValueError):
        from_bytes(b"1234567", "<f8")  # not a whole number of float64
    with pytest.raises(ValueError):
        from_bytes(to_bytes(np.zeros(10), "<f8"), "<f8", 9)  # 10 values are not rows of 9


class FakeRedis:
    """The few pipeline commands the blob helpers use, over a dict (no server needed)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def pipeline(self, transaction: bool = False) -> "FakeRedis":
        self.ops: list = []
        return self

    def __enter__(self) -> "FakeRedis":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def get(self, k: str) -> None:
        self.ops.append(lambda: self.data.get(k))

    def delete(self, k: str) -> None:
        self.ops.append(lambda: self.data.pop(k, None) is not None)

    def set(self, k: str, v: bytes, ex: int) -> None:
        self.ops.append(lambda: self.data.__setitem__(k, v))

    def execute(self) -> list:
        return [op() for op in self.ops]


def test_blobs_go_out_and_come_back_once():
    r = FakeRedis()
    out = store_outputs(r, "t1", {"mags": b"\x00" * 16, "model": "balrog"})
    assert out == {"model": "balrog", BLOBS: {"mags": blob_key("t1", "mags")}}
    assert r.data[blob_key("t1", "mags")] == b"\x00" * 16
    reqs = [{"x_blob": blob_key("t1", "mags"), "seed": 1}, {"x_blob": "gone", "seed": 2}]
    fetch_inputs(r, reqs)
    assert reqs == [{"x": b"\x00" * 16, "seed": 1}, {"x": None, "seed": 2}]
    assert not r.data  # read once, then deleted
