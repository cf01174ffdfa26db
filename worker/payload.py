"""How arrays travel through the broker: little-endian bytes in base64, not JSON lists.

A 10,000-row catalog as nested lists costs about 90 ms to encode and decode through Celery's
JSON serializer; as base64 it costs about 10 ms and half the bytes.
"""

from __future__ import annotations

import base64

import numpy as np

DEADLINE = "deadline"  # task kwarg: epoch seconds after which nobody waits for the answer
DROPPED_PREFIX = "cosmogan:inference:dropped:"  # + task id: the client went away


def pack(a: np.ndarray, dtype: str) -> str:
    """`a` as `dtype` (e.g. "<f8"), C order, base64 text."""
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode("ascii")


def unpack(text: str, dtype: str, columns: int | None = None) -> np.ndarray:
    """The array `pack` made; reshaped to (-1, columns) when `columns` is given."""
    a = np.frombuffer(base64.b64decode(text, validate=True), dtype=dtype)
    return a if columns is None else a.reshape(-1, columns)
