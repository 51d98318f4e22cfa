"""One model's cache of compressed UNets: least recently used first out, bounded in bytes, shared by engines.

A model's Compare engine and sweep engine hold their UNets here together, so one byte budget bounds both (an SD
1.5 UNet is 3.4 GB in fp32: four of them next to the baseline do not fit a 16 GB Space). Each engine puts its
entries in its own pool with its own count limit: the sweeps' pool keeps one UNet, so a sweep of 20 settings
replaces its own entry instead of flushing the settings a person is flipping between, though it may still evict
them when it needs their bytes.

Room is made before a build (`reserve`, with the estimate from budget.py), so the process holds at most the
budget plus the UNet being built; `put` then records the measured size. An evicted UNet is freed once no running
request holds it.

Example:
    >>> cache = UNetCache(max_bytes=2 * 2**30)
    >>> compare = Engine(pipe, "sd-1.5", cache_size=None, cache=cache)
    >>> sweeps = Engine(pipe, "sd-1.5", cache_size=1, cache=cache, pool="sweep")
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from .build import CompressedUNet


@dataclass
class _Slot:
    entry: CompressedUNet
    pool: str
    nbytes: int


class UNetCache:
    """Compressed UNets by key, LRU, at most `max_bytes` in total (None: no byte bound).

    Args:
        max_bytes (`int`, *optional*): the byte budget; None keeps any number of bytes.
    """

    def __init__(self, max_bytes: int | None = None):
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 0):
            raise ValueError(f"max_bytes must be None or an integer >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()
        self._reserved: dict[str, int] = {}  # pool -> bytes of the UNet it is building
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------------------- reading

    @property
    def used_bytes(self) -> int:
        """Measured bytes of the UNets held, plus the estimates of those being built."""
        with self._lock:
            return sum(s.nbytes for s in self._slots.values()) + sum(self._reserved.values())

    def keys(self, pool: str | None = None) -> list:
        """Keys held (of one pool, or all), least recently used first."""
        with self._lock:
            return [k for k, s in self._slots.items() if pool is None or s.pool == pool]

    def entries(self, pool: str | None = None) -> list[CompressedUNet]:
        """The entries held (of one pool, or all), least recently used first."""
        with self._lock:
            return [s.entry for s in self._slots.values() if pool is None or s.pool == pool]

    def get(self, key: Hashable, pool: str) -> CompressedUNet | None:
        """The entry for `key` (now the most recently used, and `pool`'s), or None."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                return None
            self._slots.move_to_end(key)
            slot.pool = pool
            return slot.entry

    # ------------------------------------------------------------------------------------------ changing

    def _evict_(self, nbytes: int, pool: str, pool_size: int | None, keep: Hashable = None) -> None:
        if pool_size is not None:
            mine = [k for k in self.keys(pool) if k != keep]  # the new entry takes one of the pool's places
            for k in mine[: max(0, len(mine) - max(0, pool_size - 1))]:
                del self._slots[k]
        if self.max_bytes is None:
            return
        for k in [k for k in self._slots if k != keep]:
            if self.used_bytes + nbytes <= self.max_bytes:
                break
            del self._slots[k]

    def reserve(self, nbytes: int, pool: str, pool_size: int | None) -> None:
        """Make room for a UNet of about `nbytes` that `pool` is about to build: evict the pool's oldest entries
        over its count limit, then the least recently used entries until the budget holds it. The bytes stay
        reserved until the pool's `put`; an engine builds one UNet at a time (its lock), so a pool's earlier
        reservation, if any, was a build that failed and is replaced."""
        with self._lock:
            self._reserved.pop(pool, None)
            self._evict_(nbytes, pool, pool_size)
            self._reserved[pool] = nbytes

    def release(self, pool: str) -> None:
        """Forget `pool`'s reservation (a build that failed)."""
        with self._lock:
            self._reserved.pop(pool, None)

    def put(self, key: Hashable, entry: CompressedUNet, pool: str, pool_size: int | None) -> bool:
        """Keep `entry` (its measured bytes count) and evict others to stay within the limits.

        Returns:
            `bool`: False when it is not kept (a pool of size 0, or larger than the whole budget).
        """
        with self._lock:
            self._reserved.pop(pool, None)
            nbytes = entry.cost.bytes
            if pool_size == 0 or (self.max_bytes is not None and nbytes > self.max_bytes):
                return False
            self._slots[key] = _Slot(entry, pool, nbytes)
            self._slots.move_to_end(key)
            self._evict_(0, pool, pool_size, keep=key)
            return True

    def clear(self, pool: str | None = None) -> None:
        """Drop every entry (of one pool, or all)."""
        with self._lock:
            for k in self.keys(pool):
                del self._slots[k]
