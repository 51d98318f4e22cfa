"""One process of a data-parallel recovery on the tests' tiny pipeline (started by torchrun in test_recover.py).

    torchrun --nproc_per_node 2 tests/recover_worker.py TOKENIZER_DIR STEPS OUT.pt

Every process builds the same pipeline and pruned student, runs `recover_(..., distributed=True)` (the code path of
`python -m compression.recover`), and rank 0 writes the student's state_dict, the loss curve and the world size
that accelerate saw. Run as one plain process (no torchrun) it is the 1-process reference.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import build_tiny_pipeline  # noqa: E402

from compression import CompressionSpec  # noqa: E402
from compression.recover import RecoveryConfig, pruned_copy, recover_  # noqa: E402

# Small enough for a test, and batch 4 splits into two shares of 2.
CONFIG = RecoveryConfig(batch_size=4, lr=1e-3, warmup_steps=0, real_pool=16)
SPEC = CompressionSpec(0.5, "l1-unstructured")


def main() -> None:
    torch.set_num_threads(1)
    tokenizer_dir, steps, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    pipe = build_tiny_pipeline(tokenizer_dir)
    student, _ = pruned_copy(pipe.unet, SPEC)
    run = recover_(pipe, student, steps, "real", CONFIG, show_bar=False, distributed=True)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({"student": student.state_dict(), "losses": run.losses, "processes": run.processes}, out)


if __name__ == "__main__":
    main()
