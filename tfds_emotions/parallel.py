"""An order-keeping parallel map with a bounded number of tasks in flight."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def ordered_map(fn: Callable[[Any], Any], tasks: Iterable[Any], pool=None, window: int = 8) -> Iterator[Any]:
    """Yields fn(task) for each task, in task order, running at most `window` tasks at once.

    `multiprocessing.Pool.imap` would do the ordering, but its feeder thread drains `tasks` as fast as it
    can; tasks that carry video bytes (parquet shards) would then pile up in memory. With `pool=None` the
    map runs in this process, which keeps single-worker builds and debugging simple.
    """
    if pool is None:
        yield from map(fn, tasks)
        return
    pending: collections.deque = collections.deque()
    for task in tasks:
        pending.append(pool.apply_async(fn, (task,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()
