"""From factory keyword arguments to a family's config dataclass, and back to the registry's
`defaults` dict: each family writes its defaults once, on its dataclass's fields."""

from __future__ import annotations

import dataclasses

from harness.errors import UserError


def config_from_kwargs(cls, family: str, kwargs: dict):
    """`cls(**kwargs)`; an unknown key is a one-line UserError naming the known keys, not a TypeError."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise UserError(f"{family} config: unknown key(s) {', '.join(unknown)}; "
                        f"known keys: {', '.join(sorted(known))}")
    return cls(**kwargs)


def registry_defaults(config, exclude=()) -> dict:
    """The config's fields as the registry's `defaults` dict (field order), without `exclude`."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in exclude}
