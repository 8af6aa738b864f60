"""Checks of user settings that raise before any training starts."""

import math
from numbers import Real


def check_finite(name: str, value: float) -> None:
    """Raise ``ValueError`` if ``value`` is not a finite real number."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def check_range(
    name: str,
    value: float,
    minimum: float | None = None,
    *,
    exclusive: bool = False,
    integer: bool = False,
) -> None:
    """Raise ``ValueError`` naming ``name``, ``value`` and the allowed range.

    Args:
        name: the setting as the user types it, e.g. ``"data.flip_rate"``.
        value: the value to check.
        minimum: the lower bound, or ``None`` for no bound.
        exclusive: whether ``value`` must be strictly greater than ``minimum``.
        integer: whether ``value`` must be an integer.
    """
    if integer:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    else:
        check_finite(name, value)
    if minimum is None:
        return
    if exclusive and not value > minimum:
        raise ValueError(f"{name} must be > {minimum}, got {value}")
    if not exclusive and not value >= minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
