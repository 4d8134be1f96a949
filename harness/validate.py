"""Configuration checks shared by the model families: a bad value (from `--set`, a task config or a
direct call) is one `UserError` line naming the family, the key and what it expects, raised when the
backbone is constructed, so a zero-layer or negative-width model is never built and stored as ok.

Values arrive from JSON (`--set n_layers=2.0` is a float, `--set prenorm=no` a string), so integer
sizes must be real ints (not bools or floats) and flags real bools.
"""

from __future__ import annotations

import math

from harness.errors import UserError


def invalid(family: str, key: str, value, expected: str) -> UserError:
    """The one-line error of every family: `<family> config: KEY=VALUE is invalid; expected ...`."""
    return UserError(f"{family} config: {key}={value!r} is invalid; expected {expected}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_config(family: str, config: dict, *, positive=(), nonnegative=(), positive_number=(),
                 probability=(), flags=(), choices=None, optional=()) -> None:
    """Raise `invalid(...)` for the first key of `config` outside its kind.

    positive: integers >= 1; nonnegative: integers >= 0; positive_number: finite reals > 0;
    probability: reals in [0, 1); flags: True/False; choices: {key: allowed values};
    optional: keys for which None is also accepted (e.g. "None = one per channel").
    """
    kinds = [
        (positive, lambda v: _is_int(v) and v >= 1, "a positive integer"),
        (nonnegative, lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
        (positive_number, lambda v: _is_real(v) and v > 0, "a positive, finite number"),
        (probability, lambda v: _is_real(v) and 0 <= v < 1, "a probability in [0, 1)"),
        (flags, lambda v: isinstance(v, bool), "true or false"),
    ]
    for keys, ok, expected in kinds:
        for key in keys:
            value = config[key]
            if value is None and key in optional:
                continue
            if not ok(value):
                raise invalid(family, key, value, expected + (" or None" if key in optional else ""))
    for key, allowed in (choices or {}).items():
        value = config[key]
        # exact type match too: True == 1 and 1.0 == 1 would otherwise pass for a choice of 0/1
        if not any(value == option and type(value) is type(option) for option in allowed):
            raise invalid(family, key, config[key], " | ".join(str(option) for option in allowed))
