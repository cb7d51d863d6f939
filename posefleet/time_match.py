"""How a group's cameras are matched by time (one rule for the viewer's ``GET /v1/groups/{g}`` and for court fusion):
the group's time is the oldest of the cameras' newest results (every camera has reached it), and each camera gives
its result nearest to it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

E = TypeVar("E")


def match_by_time(histories: Mapping[str, Sequence[E]], when: Callable[[E], float]) -> tuple[float, dict[str, E]]:
    """The group's time and each camera's entry nearest to it; ``histories``: each camera's entries, oldest
    first, none empty; ``when``: an entry's time (its capture timestamp where given)."""
    reference = min(when(h[-1]) for h in histories.values())
    return reference, {stream: min(h, key=lambda e: abs(when(e) - reference)) for stream, h in histories.items()}
