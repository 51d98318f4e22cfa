"""Data-parallel sweeps: which process draws which images, and how their numbers come back together.

Launch a sweep on several processes with an existing launcher (flags before the module, the sweep's after it):

    torchrun --nproc_per_node 2 -m compression.sweep --prompts 400 --out runs/x
    accelerate launch --multi_gpu --num_processes 2 -m compression.sweep --prompts 400 --out runs/x

The unit of work is a *shard*: one batch of `batch_size` consecutive images of one setting. The shards are the
same slices whatever the number of processes, because batching changes float results in the last bits
(`Engine.generate_batch`): a batch's composition must not depend on how many processes share the work. Shard b
goes to process b % world_size; each image keeps its own CPU generator (seed * 100_003 + i), so every image is
bit-identical to the one-process run (same hardware, same thread count). Per-image scores and features come
back with `accelerate.utils.gather_object` and are put in shard order, so every aggregate (bootstrap seeded as
before) equals the one-process value. Each setting's aggregates and latency are then computed by one process
(settings dealt round-robin, so that no process waits while another bootstraps); process 0 writes the files.

A finished shard is written to disk at once (`ShardStore`): a run killed part-way recomputes only the shards
that are not on disk, with any number of processes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

# How long a process waits at a gather for the others. Process 0 alone computes aggregates (an FD bootstrap on
# 2048-d features at 30k images takes tens of minutes on a CPU) while the rest wait: torch's 30-minute default
# would end a healthy sweep.
COLLECTIVE_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class World:
    """This process's place among the sweep's processes.

    Args:
        rank (`int`, defaults to 0): this process's index.
        size (`int`, defaults to 1): how many processes share the sweep.
        state (`accelerate.PartialState`, *optional*): the initialised state where `size` > 1.
    """

    rank: int = 0
    size: int = 1
    state: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shards(self, n_shards: int) -> list[int]:
        """The shard indices this process draws: b % size == rank (uneven counts are fine)."""
        return list(range(self.rank, n_shards, self.size))

    def gather(self, items: list) -> list:
        """Every process's `items`, concatenated in rank order, on every process.

        `gather_object` flattens one level: pass lists (a dict would come back as its keys).
        """
        if self.size == 1:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def share(self, make: Callable[[], object]):
        """Process 0's value of `make()` on every process (the others do not call it): one decision, taken once."""
        if self.size == 1:
            return make()
        return self.gather([make() if self.is_main else None])[0]

    def barrier(self) -> None:
        if self.size > 1:
            self.state.wait_for_everyone()


def current_world() -> World:
    """The world this process was launched into: one process, or the launcher's processes through accelerate.

    `PartialState(cpu=True)` is what makes a CPU machine distributed: without it every process would get
    DistributedType.NO and run the whole sweep on its own, silently. So the world size accelerate reports is
    checked against the WORLD_SIZE that torchrun / accelerate launch set.

    Raises:
        RuntimeError: accelerate's world size differs from WORLD_SIZE (the message names the commands that work).
    """
    expected = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if expected <= 1:
        return World()
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=COLLECTIVE_TIMEOUT)
    if state.num_processes != expected:
        raise RuntimeError(
            f"the launcher asked for {expected} processes but accelerate sees {state.num_processes} "
            f"({state.distributed_type}); launch with `torchrun --nproc_per_node N -m compression.sweep ...` or "
            "`accelerate launch --multi_gpu --num_processes N -m compression.sweep ...` (on a CPU machine "
            "`accelerate launch --cpu` starts one process)"
        )
    return World(state.process_index, state.num_processes, state)


def check_shared_folder(world: World, folder: Path) -> None:
    """Every process must see the same output folder (one machine, or a filesystem all nodes mount): the
    baseline cache and the shards are written by each process and read by the others.

    Raises:
        RuntimeError: a process does not see the file process 0 wrote.
    """
    if world.size == 1:
        return
    token = world.share(lambda: f".world-{uuid.uuid4().hex}")
    if world.is_main:
        (folder / token).write_text("ok\n")
    world.barrier()
    seen = world.gather([(folder / token).is_file()])
    world.barrier()
    if world.is_main:
        (folder / token).unlink()
    if not all(seen):
        missing = [r for r, ok in enumerate(seen) if not ok]
        raise RuntimeError(f"processes {missing} do not see {folder}: put --out on a filesystem every node mounts")


class ShardStore:
    """Finished shards of one cell on disk: `<folder>/<b>.npz`, each a dict of arrays, written atomically.

    Args:
        folder (`Path`, *optional*): where the shards go; None keeps nothing (a sweep without an out_dir).
    """

    def __init__(self, folder: Path | None):
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def _path(self, b: int) -> Path:
        return self.folder / f"{b:06d}.npz"

    def load(self, b: int) -> dict[str, np.ndarray] | None:
        if self.folder is None or not self._path(b).is_file():
            return None
        with np.load(self._path(b)) as data:
            return {k: data[k] for k in data.files}

    def save(self, b: int, arrays: dict[str, np.ndarray]) -> None:
        if self.folder is None:
            return
        tmp = self.folder / f"{b:06d}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self._path(b))  # atomic: a killed process never leaves half a shard behind

    def remove(self) -> None:
        """Drop the shards once their cell is written (features of 30k images are hundreds of MB)."""
        if self.folder is None or not self.folder.is_dir():
            return
        for p in self.folder.glob("*.npz"):
            p.unlink()
        self.folder.rmdir()


def run_shards(
    world: World,
    n_shards: int,
    compute: Callable[[int], dict[str, np.ndarray]],
    store: ShardStore,
    on_shard: Callable[[int, bool], None] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Draw this process's shards (those on disk are loaded, not recomputed) and gather every shard's arrays.

    Args:
        world (`World`): which shards are this process's.
        n_shards (`int`): shards of the cell.
        compute (`Callable[[int], dict]`): shard index -> arrays (per-image rows first).
        store (`ShardStore`): finished shards.
        on_shard (`Callable[[int, bool], None]`, *optional*): called after each shard with (index, computed).

    Returns:
        every shard's arrays in shard order, on every process.
    """
    mine = []
    for b in world.shards(n_shards):
        arrays = store.load(b)
        computed = arrays is None
        if computed:
            arrays = compute(b)
            store.save(b, arrays)
        mine.append((b, arrays))
        if on_shard:
            on_shard(b, computed)
    every = sorted(world.gather(mine), key=lambda t: t[0])
    if [b for b, _ in every] != list(range(n_shards)):
        raise RuntimeError(f"gathered shards {[b for b, _ in every][:10]}..., expected 0..{n_shards - 1}")
    return [arrays for _, arrays in every]


def concat(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Shards' arrays joined along the first axis (per-image order)."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def total_over(world: World, value: float) -> float:
    """The sum of one number over every process."""
    return float(sum(world.gather([value])))
