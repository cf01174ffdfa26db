import binascii

import numpy as np
import pytest

from worker.payload import pack, unpack


def test_arrays_survive_the_trip_bit_for_bit():
    x = np.random.default_rng(0).normal(20, 2, (7, 9))
    x[3, 4] = np.nan
    back = unpack(pack(x, "<f8"), "<f8", 9)
    assert back.shape == (7, 9)
    np.testing.assert_array_equal(back, x)  # NaN in the same place, every bit kept
    det = np.array([True, False, True])
    assert unpack(pack(det, "u1"), "u1").astype(bool).tolist() == [True, False, True]


def test_a_float32_array_is_widened_and_a_bad_payload_is_refused():
    x = np.arange(18, dtype=np.float32).reshape(2, 9)
    assert unpack(pack(x, "<f8"), "<f8", 9).dtype == np.float64
    with pytest.raises(binascii.Error):
        unpack("not base64!", "<f8")
    with pytest.raises(ValueError):
        unpack(pack(np.zeros(10), "<f8"), "<f8", 9)  # 10 values are not rows of 9
