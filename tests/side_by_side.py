"""Independent subprocess work, two at a time: most of a CLI test's time is Python and torch
starting up, which the 2 cores CI runs on do twice over side by side."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def two_at_a_time(work: Callable[[Item], Result], items: Iterable[Item]) -> list[Result]:
    """`[work(item) for item in items]`, two items at once (threads that each wait on their
    own subprocess), results in the items' order. Not for in-process training: signal
    handlers and torch's thread count belong to the main thread."""
    with ThreadPoolExecutor(max_workers=2) as pair:
        return list(pair.map(work, items))
