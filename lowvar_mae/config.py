"""What every run configuration shares: a JSON round trip and a name derived from its fields."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields


class RunConfig:
    """Mixin for the frozen dataclass configs saved with runs (``config.json``).

    ``NOT_IN_NAME`` lists fields that do not change the result (compilation, batch size
    of evaluation passes, ...) and are left out of the run name's hash.
    """

    NOT_IN_NAME: tuple[str, ...] = ()

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
        key = {k: v for k, v in self.to_dict().items() if k not in self.NOT_IN_NAME} | extra
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
