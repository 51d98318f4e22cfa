"""What `python -m compression.recover` leaves in its folder once training is done.

    DIR/checkpoints/step-NNNNNNN.pt   training state every K steps (resume, continue to more steps)
    DIR/bundle/                       the recovered (then quantized) UNet in the export format (export.py)
    DIR/eval/<run>/                   the sweep that measured it: results.csv, summary.json, report.html
    DIR/recovery.json                 spec, settings, loss curve, wall time, sparsity before/after, parameters,
                                      held-out quality before and after recovery (each with N and interval)

Quality is measured by the sweep's own code (`run_sweep`): the pruned UNet without recovery and the recovered
one, on the model's held-out prompt set, against the baseline and (shapes world) real images. The engine there
answers the recovered spec with the UNet trained here (`pinned_engine`), since a command-line run may use
settings (learning rate, batch, loss weights) that the spec alone does not carry.

A recovery study is sweeps with `--recover-steps`, one folder per pruning method (each its own amounts); merge
them into one study with

    python -m compression.recover_report runs/recovery-l1 runs/recovery-structured --out DIR --png
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from .build import CompressedUNet
from .cost import module_cost
from .spec import CompressionSpec

# The rows of the evaluation that recovery.json repeats (prefixes of the sweep's metric names).
QUALITY_METRICS = ("accuracy: all", "CLIP score", "KID-", "FD-", "PSNR", "speed-up", "UNet MACs", "parameters")


def pinned_engine(pipe, model_name: str, pinned: dict):
    """An Engine that answers `compress(spec)` for the pinned specs with given `(unet, prune_report)` pairs and
    builds every other spec as usual."""
    from .engine import Engine

    class PinnedEngine(Engine):
        def compress(self, spec, *args, **kwargs):
            if spec in pinned:
                unet, report = pinned[spec]
                return CompressedUNet(unet, spec, report, 0.0, module_cost(unet), "recovered"), True
            return super().compress(spec, *args, **kwargs)

    return PinnedEngine(pipe, model_name, cache_size=1)


def quality_rows(table, label: str) -> dict:
    """The headline rows of one setting of a sweep table, each with its interval and N."""
    out = {}
    for row in table[table["setting"] == label].to_dict("records"):
        if str(row["metric"]).startswith(QUALITY_METRICS):
            ref = row["reference"] if row["reference"] in ("real", "baseline") else ""
            name = row["metric"] + (f" vs {ref}" if ref else "")
            out[name] = {k: row[k] for k in ("value", "ci_low", "ci_high", "n", "unit")}
    return out


def _evaluate(args, engine, before: CompressionSpec, after: CompressionSpec, entry, run_id: str) -> dict:
    from .sweep import load_prompts, run_sweep

    prompts = load_prompts(entry.prompt_set, args.eval_prompts)
    res = run_sweep(
        engine,
        [before, after],
        prompts,
        steps=entry.steps,
        guidance=entry.guidance,
        out_dir=args.out / "eval" / run_id,
        latency_repeats=args.latency_repeats,
        show_bar=not args.no_bar,
        plotlyjs="cdn",
    )
    return {
        "prompts": f"{entry.prompt_set} (held out), first {len(prompts)}",
        "steps": entry.steps,
        "guidance": entry.guidance,
        "baseline": quality_rows(res.table, CompressionSpec().label),
        "before": quality_rows(res.table, before.label),
        "after": quality_rows(res.table, after.label),
        "report": str((args.out / "eval" / run_id / "report.html").relative_to(args.out)),
    }


def write_outputs(args, pipe, model_name: str, spec: CompressionSpec, student, report, run, entry) -> dict:
    """The bundle, the evaluation and recovery.json of a finished recovery (main process only)."""
    from .export import SAMPLER_DEFAULTS, save_compressed
    from .recover import quantized_copy

    fp32 = dataclasses.replace(spec, quant_mode="fp32", bits=None)
    pinned = {fp32: (student, report)}
    if spec.quant_mode != "fp32":
        pinned[spec] = (quantized_copy(student, spec.quant_mode, spec.bits), report)
    engine = pinned_engine(pipe, model_name, pinned)
    bundle = args.out / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)  # a rerun writes the bundle of the state it reached
    sample = {**SAMPLER_DEFAULTS, "prompt": entry.examples[0], "steps": entry.steps, "guidance": entry.guidance}
    record = run.to_dict()
    save_compressed(bundle, spec, model_name, engine=engine, sample=sample, recovery=record)
    before = dataclasses.replace(spec, recover_steps=0, recover_data="real")
    base_cost = module_cost(pipe.unet)
    out = {
        "spec": spec.to_dict(),
        "label": spec.label,
        "model": model_name,
        "command": "python -m compression.recover " + " ".join(getattr(args, "argv", []) or []),
        "recovery": record,
        "wall_seconds": run.seconds,
        # at most: wall time x threads x processes (the threads are not always all busy)
        "cpu_minutes": run.seconds * run.threads * run.processes / 60 if run.device == "cpu" else None,
        "sparsity": {
            "before": run.zeros_before / run.weights if run.weights else 0.0,
            "after": run.zeros_after / run.weights if run.weights else 0.0,
            "zeros_before": run.zeros_before,
            "zeros_after": run.zeros_after,
            "weights": run.weights,
        },
        "parameters": {"baseline": base_cost.params, "recovered": module_cost(student).params},
        "bundle": "bundle",
    }
    if args.eval_prompts > 0 and run.processes == 1:
        run_id = hashlib.sha256(json.dumps([spec.to_dict(), record["config"], run.steps]).encode()).hexdigest()[:12]
        out["quality"] = _evaluate(args, engine, before, spec, entry, run_id)
    elif args.eval_prompts > 0:
        out["quality"] = None
        out["quality_note"] = "not measured in a multi-process run: rerun the same command as one process to measure"
    from .sweep import _clean

    (args.out / "recovery.json").write_text(json.dumps(_clean(out), indent=1, default=str, allow_nan=False))
    print(
        f"{spec.label}: {run.steps} steps in {run.seconds / 60:.1f} min ({run.seconds_per_step:.3f} s/step, "
        f"{run.threads} thread(s) x {run.processes} process(es)); zeros {run.zeros_before:,} -> {run.zeros_after:,}; "
        f"wrote {args.out / 'bundle'} and {args.out / 'recovery.json'}"
    )
    return out


# ------------------------------------------------------------------------------------ a recovery study


def recovery_knees(table) -> dict:
    """Per pruning method and number of recovery steps: how far accuracy holds within 5 points of the unpruned
    model, and where its interval first parts from the unpruned one's (the sweep's knee definitions)."""
    from .report import first_clear_drop, quality_holds_until

    out: dict = {}
    steps = table["recover_steps"].fillna(0).astype(int)
    pruned = table[table["prune_amount"] > 0]
    for method in sorted(pruned["prune_method"].dropna().unique()):
        for r in sorted(steps[table["prune_method"] == method].unique()):
            part = table[(table["prune_amount"] == 0) | (steps == r)]
            metric = "accuracy: all"
            out.setdefault(method, {})[f"{r} steps"] = {
                "holds_within_5pp": quality_holds_until(part, metric, "prompt", method, 5.0),
                "first_clear_drop": first_clear_drop(part, metric, "prompt", method),
            }
    return out


def merge_study(folders: list[Path], out: Path, png: bool = False) -> Path:
    """One study from several sweep folders (e.g. one per pruning method, each with its own amounts): the union
    of their results.csv (the shared baseline and real rows once), a summary with the knees per number of
    recovery steps, report.html (plotly.js from a CDN) and, with `png`, the report's figures as PNGs."""
    import pandas as pd

    from . import metrics
    from .report import summarize, write_pngs, write_report
    from .sweep import _write_json

    tables = [pd.read_csv(f / "results.csv") for f in folders]
    table = pd.concat(tables, ignore_index=True).drop_duplicates(["setting", "metric", "reference"], keep="first")
    table["recover_steps"] = table["recover_steps"].astype("Int64")
    summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
    out.mkdir(parents=True, exist_ok=True)
    for f in folders:  # the sample strips the report shows
        for strip in (f / "samples").glob("*.png"):
            (out / "samples").mkdir(exist_ok=True)
            shutil.copyfile(strip, out / "samples" / strip.name)
    features = {k: v for s in summaries for k, v in s.get("fd_min_n", {}).items()}
    plain = table[table["recover_steps"].fillna(0) == 0]
    summary = summarize(plain, summaries[0]["config"], features or {"tinyCLIP": metrics.fd_min_n(128)})
    summary["recovery_knees"] = recovery_knees(table)
    summary["cells"] = list({c["key"]: c for s in summaries for c in s.get("cells", [])}.values())
    summary["merged_from"] = [f.name for f in folders]
    table.to_csv(out / "results.csv", index=False)
    _write_json(out / "summary.json", summary)
    path = write_report(table, summary, out, "cdn")
    if png:
        write_pngs(table, out / "png")
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m compression.recover_report",
        description="Merge sweep folders (e.g. one per pruning method) into one study: results.csv, summary.json "
        "(with knees per number of recovery steps), report.html and, with --png, the figures.",
    )
    p.add_argument("folders", nargs="+", type=Path, help="sweep output folders (each with results.csv, summary.json)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--png", action="store_true", help="also write every figure as OUT/png/*.png (needs Chromium)")
    args = p.parse_args(argv)
    missing = [str(f) for f in args.folders if not (f / "results.csv").is_file()]
    if missing:
        p.error(f"no results.csv in {', '.join(missing)}")
    print(merge_study(args.folders, args.out, args.png))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
