"""Run one call per item, each on its own thread, and wait for all of them.

Used to reach members (or groups) at once: one frozen member then costs the
command timeout once, not once per member after it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def in_parallel(fn: Callable[[T], object], items: Iterable[T]) -> None:
    """``fn(item)`` for every item, concurrently; returns when all have returned.

    Daemon threads: a call stuck in a member must not keep the process alive
    (the member's own timeout bounds how long ``fn`` waits).  ``fn`` handles
    its own errors; one raised here only ends its thread.
    """
    threads = [threading.Thread(target=fn, args=(item,), daemon=True) for item in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


__all__ = ["in_parallel"]
