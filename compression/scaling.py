"""The sweep command's options for runs at paper scale: your own prompts, a real reference, the paper protocol,
tracking. `compression.sweep.main` adds them with `add_arguments` and applies them with the functions below;
the machinery lives in `datasets`, `reference`, `paper`, `tracking` and `distributed`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import paper
from .datasets import load_prompt_file
from .distributed import World
from .reference import load_reference_images, reference_from_images, reference_from_stats
from .tracking import TRACKERS, SweepTracker, check_tracker

# The paper preset's sampler and protocol beside its grid (the grid keys are those of every preset).
PAPER_PRESET = dict(
    prune="0,10,20,30",
    method="l1-unstructured",
    quant="fp32",
    scope="all",
    steps=paper.PAPER["steps"],
    guidance=paper.PAPER["guidance"],
    protocol="bk-sdm-256",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--prompts-file, --prompt-column, --reference-dir, --reference-stats, --track, --track-project."""
    p.add_argument(
        "--prompts-file",
        type=Path,
        help="your prompts: .txt (one a line), .csv or .jsonl (see --prompt-column); replaces --prompt-set",
    )
    p.add_argument("--prompt-column", help="the CSV/JSONL column holding the prompt (default: prompt)")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument(
        "--reference-dir",
        type=Path,
        help="folder of real images: FD and KID against them (shorter side resized, centre-cropped)",
    )
    ref.add_argument("--reference-stats", type=Path, help="pytorch-fid-style .npz (mu, sigma[, n]): FD against it")
    p.add_argument("--reference-limit", type=int, help="use the first N images of --reference-dir (by name)")
    p.add_argument(
        "--track",
        choices=sorted(TRACKERS),
        help="also log to a tracker through accelerate (trackio: local, offline; wandb, mlflow: if installed)",
    )
    p.add_argument("--track-project", default="diffusion-compression-lab", help="the tracker's project")


def check_arguments(args: argparse.Namespace) -> None:
    """Fail before loading a model: a missing tracker package, an unreadable reference.

    Raises:
        ValueError, ImportError: naming what is wrong.
    """
    if args.track:
        check_tracker(args.track)
    for path in (args.reference_dir, args.reference_stats):
        if path is not None and not path.exists():
            raise ValueError(f"no such reference: {path}")


def load_prompts_file(args: argparse.Namespace) -> list[str]:
    """--prompts-file, the first --prompts of it (all without --prompts)."""
    return load_prompt_file(args.prompts_file, args.prompt_column, args.prompts)


def apply_metric_options(args, ms, engine, world: World, protocol: str, n_images: int, steps: int, guidance: float):
    """Set the metric set's image protocol and real reference; under the paper protocol, label its FD.

    The reference's features are computed by process 0 and shared (the same digest on every process).
    """
    ms.protocol = protocol
    height, width = engine.default_size()
    note = ""
    if protocol == "bk-sdm-256":
        reasons = paper.comparability(
            protocol=protocol,
            scheduler=type(engine.pipeline.scheduler).__name__,
            steps=steps,
            guidance=guidance,
            height=height,
            width=width,
            n=n_images,
            features=[f.name for f in ms.features],
            reference_kind="stats" if args.reference_stats else "images" if args.reference_dir else None,
            reference_n=_stats_n(args.reference_stats) if args.reference_stats else None,
            safety_checker=getattr(engine.pipeline, "safety_checker", None) is not None,
        )
        note = paper.comparability_note(reasons)
        if world.is_main:
            print(f"paper protocol: {note}", file=sys.stderr)
    size = paper.measured_size(protocol, height, width)
    if args.reference_dir:
        ms.reference = world.share(
            lambda: reference_from_images(
                load_reference_images(args.reference_dir, *size, limit=args.reference_limit),
                ms.features,
                args.reference_dir.name,
                note,
            )
        )
    elif args.reference_stats:
        ms.reference = reference_from_stats(args.reference_stats, ms.features, note)
    return ms


def _stats_n(path: Path) -> int | None:
    import numpy as np

    with np.load(path) as data:
        return int(data["n"]) if "n" in data.files else None


def make_tracker(args: argparse.Namespace) -> SweepTracker | None:
    """The --track tracker (created on every process; it logs on process 0 only), run name = the out folder."""
    if not args.track:
        return None
    return SweepTracker(args.track, args.track_project, run_name=Path(args.out).name)
