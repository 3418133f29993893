"""Signature comparison of our Flax layers with Flax's: every parameter Flax's layer takes, our
layer takes by the same name (so a new Flax argument fails a test rather than a user)."""

import inspect
from types import MappingProxyType

import numpy as np

_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _plain(value):
    """Whether a default is a plain value worth comparing (not a function or sentinel)."""
    return value is None or isinstance(value, bool | int | float | str | MappingProxyType | type)


def missing_or_different(ours, theirs, own_defaults=()) -> list[str]:
    """What `ours` lacks of `theirs`: a parameter it does not take by keyword, one Flax takes
    positionally at another position among the leading ones both share, or a plain default that
    differs (unless named in `own_defaults`). Empty when `ours` is a drop-in."""
    mine = inspect.signature(ours).parameters
    problems = []
    positional = [n for n, p in mine.items() if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD]
    for i, (name, p) in enumerate(inspect.signature(theirs).parameters.items()):
        if name not in mine or mine[name].kind not in _KEYWORD:
            problems.append(f"{name}: not accepted by keyword")
            continue
        mp = mine[name]
        if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD and mp.kind == p.kind:
            if i < len(positional) and positional[i] != name and p.default is p.empty:
                problems.append(f"{name}: position {i} holds {positional[i]!r}")
        if name in own_defaults or not (_plain(p.default) and _plain(mp.default)):
            continue
        if p.default is not mp.default and not np.array_equal(p.default, mp.default):
            problems.append(f"{name}: default {mp.default!r}, Flax's {p.default!r}")
    return problems
