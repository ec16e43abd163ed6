"""How a task's unit of privacy reads after "epsilon ... per": a task states its unit as
"one advert record in one agency's training export"; a report says "per advert record in
one agency's training export"."""

from __future__ import annotations


def per_unit(unit: str) -> str:
    """``"per "`` and the unit without its leading "one "."""
    return "per " + unit.removeprefix("one ")
