"""Small helpers shared by the library's modules."""

import math
import numbers


def check_choice(name: str, value, choices: tuple) -> None:
    """Raise a `ValueError` naming the option unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {choices}.")


def check_positive(name: str, value) -> None:
    """Raise a `ValueError` naming the option unless `value` is a finite positive real number (NaN and inf fail)."""
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite positive number, got {value!r}.")


def check_fraction(name: str, value) -> None:
    """Raise a `ValueError` naming the option unless `value` is a real number in [0, 1] (NaN fails)."""
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value <= 1):
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")
