"""The settings-section base that the run configuration and every task's parameters share.

A section is a frozen dataclass whose fields are the ``<prefix>.<field>`` keys of the flat
run config. ``federation.config`` (the run's sections) and ``federation.tasks`` (each task's
``task.*`` parameters) both build on it, so neither has to import the other to parse.
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any, ClassVar

Scalar = bool | int | float | str


def shown(raw: object) -> str:
    """A run-config value in a message, cut short to keep the message one line."""
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


def _coerce(key: str, raw: object, kind: str, problems: list[str]) -> Any:
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        problems.append(f"{key}={shown(raw)} must be true or false")
    elif kind == "int":
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        problems.append(f"{key}={shown(raw)} must be a whole number")
    elif kind in ("float", "float | None"):
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
        problems.append(f"{key}={shown(raw)} must be a number")
    elif kind == "str":
        if isinstance(raw, str):
            return raw
        problems.append(f"{key}={shown(raw)} must be a string")
    else:  # pragma: no cover - a programming error in a settings class
        raise TypeError(f"unsupported settings field type {kind} for {key}")
    return None


class Section:
    """Parsing shared by every settings section: collect every problem, build once."""

    prefix: ClassVar[str]

    @classmethod
    def parse(cls, values: dict[str, object], problems: list[str]) -> Any:
        kwargs: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]  # cls is a dataclass subclass
            key = f"{cls.prefix}.{f.name}"
            if f.name in values:
                kwargs[f.name] = _coerce(key, values.pop(f.name), str(f.type), problems)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{key} is required and has no default; set it explicitly")
        for extra in sorted(values):
            names = [f.name for f in fields(cls)]  # type: ignore[arg-type]  # a dataclass
            allowed = ", ".join(f"{cls.prefix}.{n}" for n in names)  # cls is a dataclass subclass
            problems.append(
                f"{cls.prefix}.{extra} is not a known setting; allowed here: {allowed}"
            )
        required = [
            f.name
            for f in fields(cls)  # type: ignore[arg-type]  # cls is a dataclass subclass
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if any(v is None for v in kwargs.values()) or any(r not in kwargs for r in required):
            return None
        obj = cls(**kwargs)
        problems.extend(obj.check())
        return obj

    def check(self) -> list[str]:
        return []

    def to_flat(self) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {}
        for f in fields(self):  # type: ignore[arg-type]  # cls is a dataclass subclass
            value = getattr(self, f.name)
            if value is not None:
                out[f"{self.prefix}.{f.name}"] = value
        return out
