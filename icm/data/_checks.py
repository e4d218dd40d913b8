"""Argument checks shared by the datasets and the DataModule: one-line errors naming the key."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_int(value: Any, key: str, minimum: int) -> int:
    """`value` as an int >= minimum, else a ValueError naming the config `key`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)
