"""Pruning registry: method name -> a function that zeroes or removes UNet weights in place.

Every method here is *permanent*: zeros are written straight into `weight`, or channels are cut out of the
layers (no `torch.nn.utils.prune` reparametrization, so no `weight_orig`, `weight_mask` or forward pre-hooks
stay behind to double memory and slow every forward). Three kinds:

- unstructured (`l1-unstructured`, `l1-unstructured-layer`, `random-unstructured`): zeros. No dense kernel gets
  faster or smaller from them: the lab reports them as sparsity, never as a speed-up.
- structured (`l1-structured-channels`, `l2-structured-channels`): whole channels are removed, layers shrink,
  and every kernel does less work. The amount is a fraction of *channels* (see `_STRUCTURED_TEXT`).
- semi-structured (`semi-structured-2of4`): 2 of every 4 weights of each Linear, which sparse tensor cores of
  CUDA GPUs (sm80+) multiply faster; CUDA only.

Each method is a `PrunePlan`, computed from a read-only module, so the engine can build a pruned copy layer by
layer (bounded memory, no deep copy of the float UNet); `apply_pruning_` runs the same plan in place. The
global L1 threshold is exact: `round(amount * n)` weights of the scope are zeroed (see `select.py`).

Files: `registry.py` (the methods, `apply_pruning_`, `PruneReport`), `scopes.py` (which layers), `plan.py`
(the plan interface), `select.py` (exact global k-th score), `unstructured.py`, `structured.py` (channel
groups of the UNet), `semi_structured.py` (2:4). Adding a method: a planner in its kind's file and one
`Pruner` entry in `registry.py`; adding a scope: one `Scope` entry in `scopes.py`.

Example:
    >>> report = apply_pruning_(unet_copy, "l1-unstructured", 0.3, scope="no-io")
    >>> round(report.sparsity, 3)
    0.3
"""

from .plan import MAX_AMOUNT, Alloc, PrunePlan
from .registry import (
    PRUNERS,
    Pruner,
    PruneReport,
    apply_pruning_,
    available_pruners,
    check_amount,
    get_pruner,
    measure_pruning,
)
from .scopes import SCOPE_REGISTRY, SCOPES, Scope, get_scope, scope_layers

# CHUNK and SAMPLE are read from .select at call time: set them there, not here, to tune them.
from .select import CHUNK, SAMPLE, Sampler, Scorer, _threshold  # noqa: F401
from .semi_structured import two_of_four_mask
from .structured import structured_size
from .unstructured import _l1_scores  # noqa: F401  (the selection tests score with it)

__all__ = [
    "CHUNK",
    "MAX_AMOUNT",
    "PRUNERS",
    "SAMPLE",
    "SCOPES",
    "SCOPE_REGISTRY",
    "Alloc",
    "PrunePlan",
    "PruneReport",
    "Pruner",
    "Sampler",
    "Scope",
    "Scorer",
    "apply_pruning_",
    "available_pruners",
    "check_amount",
    "get_pruner",
    "get_scope",
    "measure_pruning",
    "scope_layers",
    "structured_size",
    "two_of_four_mask",
]
