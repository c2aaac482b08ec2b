"""What every run configuration shares: a JSON round trip and a name derived from its fields."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import ClassVar

_NUMBER = "a number"


class RunConfig:
    """Mixin for the frozen dataclass configs saved with runs (``config.json``).

    ``NOT_IN_NAME`` lists fields that do not change the result (compilation, batch size
    of evaluation passes, ...) and are left out of the run name's hash.
    """

    NOT_IN_NAME: tuple[str, ...] = ()
    # Fields added after runs were named: left out of the hash while they hold this default,
    # so the run names (and records) made before they existed stay valid.
    ADDED_LATER: ClassVar[Mapping[str, object]] = {}

    def check_types(self) -> None:
        """Raise ValueError naming the first field whose value is not of its annotated type
        (int, float, bool, str, tuple[float, float], each optionally "| None"). bool is not
        an int here, and floats must be finite."""
        for f in fields(self):
            value = getattr(self, f.name)
            kind = str(f.type).replace(" ", "")
            optional = kind.endswith("|None")
            kind = kind.removesuffix("|None")
            if value is None and optional:
                continue
            ok = _is(kind, value)
            if ok is None:
                continue  # an annotation this check does not know
            if not ok:
                want = {"int": "an integer", "float": _NUMBER, "bool": "True or False", "str": "a string",
                        "tuple[float,float]": "a pair of numbers"}[kind]
                raise ValueError(f"{f.name} must be {want}{' or None' if optional else ''}, got {value!r}")
            if kind == "tuple[float,float]" and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))

    def check_range(self, name: str, low: float | None = None, high: float | None = None, *,
                    low_open: bool = False, high_open: bool = False) -> None:
        """Raise ValueError unless every number in field ``name`` lies in the range."""
        value = getattr(self, name)
        for v in value if isinstance(value, (tuple, list)) else [value]:
            if v is None:
                continue
            bad = (low is not None and (v < low or (low_open and v == low))) or \
                  (high is not None and (v > high or (high_open and v == high)))
            if bad:
                lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
                hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
                where = f"in {lo}, {hi}" if lo and hi else (f">= {low:g}" if lo and not low_open else
                                                             f"> {low:g}" if lo else f"<= {high:g}")
                raise ValueError(f"{name} must be {where}, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        """Inverse of ``to_dict``; ``run_name`` is ignored, unknown keys raise ValueError."""
        values = {k: v for k, v in values.items() if k != "run_name"}
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def digest(self, **extra) -> str:
        """8 hex digits of a hash of every field in the name (plus ``extra``)."""
        key = {k: v for k, v in self.to_dict().items() if k not in self.NOT_IN_NAME
               and not (k in self.ADDED_LATER and v == self.ADDED_LATER[k])} | extra
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]


def _is(kind: str, value) -> bool | None:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str)
    if kind == "tuple[float,float]":
        return isinstance(value, (tuple, list)) and len(value) == 2 and all(_is("float", v) for v in value)
    return None
