"""What a sweep's tidy table says: headline numbers, knees, paired differences, figures, HTML and PNG reports.

Everything here reads a finished table (one row per setting x metric, see `charts`) and draws nothing: the app's
Sweep tab, `python -m compression.sweep --report-only` and `run_sweep` all format results through these
functions, so the "value [95% CI]" table reads the same in the browser, in report.html and in summary.json.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import charts, metrics

REAL_SETTING = charts.REAL_SETTING  # rows measuring real images (the ceiling / floor a perfect model would reach)

# Cost rows: never charted as quality, never a knee.
COST_METRICS = (
    "latency",
    "speed-up",
    "UNet size",
    "UNet MACs",
    "parameters",
    "non-zero parameters",
    "sparsity",
    "scope sparsity",
    "compression time",
    "non-finite images",
)


# ---------------------------------------------------------------------------------------- headline table


def metric_label(metric: str, reference) -> str:
    """ "KID-tinyCLIP vs real": the metric, and its reference unless that is the prompt (or none)."""
    return metric + (f" vs {reference}" if isinstance(reference, str) and reference not in ("", "prompt") else "")


def plain_number(value: float, digits: int = 3) -> str:
    """`digits` significant digits, never in exponent notation: 100 (not "1e+02"), 37.5, 0.0012."""
    if not math.isfinite(value):
        return "-"
    return np.format_float_positional(value, precision=digits, unique=False, fractional=False, trim="-")


def value_ci_text(value: float, ci_low: float, ci_high: float, n) -> str:
    """ "37.5 [12.5, 62.5]": a value with its 95% interval (3 significant digits each), or the value alone
    (4 digits) where there is no interval (N=1, or an exact count whose interval is the value itself)."""
    if not math.isfinite(value):
        return "-"
    if n and n > 1 and math.isfinite(ci_low) and ci_low != ci_high:
        return f"{plain_number(value, 3)} [{plain_number(ci_low, 3)}, {plain_number(ci_high, 3)}]"
    return plain_number(value, 4)


def headline_columns(
    table: pd.DataFrame, wanted: Sequence[tuple[str, str | None, str]]
) -> list[tuple[str, str | None, str]]:
    """Resolve (metric prefix, reference or None for any, column name) to the metric names this table has: the
    first metric that starts with the prefix (e.g. "KID-" -> "KID-tinyCLIP"); wanted columns it lacks are left out.
    """
    names = table["metric"].astype(str)
    refs = table["reference"].fillna("")
    out = []
    for prefix, ref, name in wanted:
        hit = names.str.startswith(prefix) & (True if ref is None else refs == ref)
        if hit.any():
            out.append((str(names[hit].iloc[0]), ref, name))
    return out


def report_columns(table: pd.DataFrame) -> list[tuple[str, str | None, str]]:
    """The report's headline columns: accuracy, CLIP score, KID, PSNR, speed-up, size and sparsity against each
    reference the table has, named "metric vs reference (unit)", in the table's order."""
    metric = table["metric"].astype(str)
    head = table[
        metric.isin(["accuracy: all", "PSNR", "speed-up", "UNet size", "sparsity"])
        | metric.str.startswith("KID-")
        | metric.str.startswith("CLIP score")
    ]
    cols: dict[str, tuple[str, str | None, str]] = {}
    for m, ref, unit in zip(head["metric"], head["reference"].fillna(""), head["unit"].fillna("")):
        name = metric_label(m, ref) + (f" ({unit})" if unit else "")
        cols.setdefault(name, (m, ref, name))
    return list(cols.values())


def headline_table(
    table: pd.DataFrame, columns: Sequence[tuple[str, str | None, str]], include_real: bool = False
) -> pd.DataFrame:
    """One row per setting, one text column per (metric, reference, column name): "value [95% CI]".

    Args:
        table (`pd.DataFrame`): a sweep's tidy table.
        columns: exact metric names (see `headline_columns`, `report_columns`); reference None matches any.
        include_real (`bool`, defaults to False): keep the row of real images.

    Example:
        >>> headline_table(res.table, headline_columns(res.table, [("accuracy: all", "prompt", "accuracy %")]))
    """
    settings = [s for s in dict.fromkeys(table["setting"]) if include_real or s != REAL_SETTING]
    out = pd.DataFrame({"setting": settings})
    refs = table["reference"].fillna("")
    for metric, ref, name in columns:
        rows = table[(table["metric"] == metric) & (True if ref is None else refs == ref)]
        if rows.empty:
            continue
        text = {}
        for r in rows.itertuples():
            text.setdefault(r.setting, value_ci_text(r.value, r.ci_low, r.ci_high, r.n))
        out[name] = [text.get(s, "") for s in settings]
    return out


def headline_records(table: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """summary.json's headline: setting -> metric label -> value, interval, N and unit (numbers, not text)."""
    return {
        setting: {
            metric_label(r.metric, r.reference): {
                "value": r.value,
                "ci": [r.ci_low, r.ci_high],
                "n": r.n,
                "unit": r.unit,
            }
            for r in part.itertuples()
        }
        for setting, part in table.groupby("setting", sort=False)
    }


# ------------------------------------------------------------------------------------------ knees


def quality_holds_until(
    table: pd.DataFrame,
    metric: str,
    reference: str,
    method: str,
    max_drop: float,
    quant_mode: str = "fp32",
    scope: str = "all",
) -> float | None:
    """The largest pruning amount up to which `metric` stays within `max_drop` of the unpruned value at every
    measured amount (a "knee" with an explicit tolerance), or None when the metric or the 0% cell is missing.

    Args:
        max_drop (`float`): tolerance in the metric's unit, in its bad direction (e.g. 5 percentage points of
            accuracy, or a KID increase of 0.01).
    """
    rows = table[
        (table["metric"] == metric) & (table["reference"].fillna("") == reference) & (table["quant_mode"] == quant_mode)
    ]
    rows = rows[(rows["prune_amount"] == 0) | ((rows["prune_method"] == method) & (rows["prune_scope"] == scope))]
    rows = rows.drop_duplicates("prune_amount").sort_values("prune_amount")
    base = rows[rows["prune_amount"] == 0]
    if base.empty or len(rows) < 2:
        return None
    higher = bool(rows["higher_is_better"].dropna().iloc[0]) if rows["higher_is_better"].notna().any() else True
    b = float(base["value"].iloc[0])
    holds = 0.0
    for amount, value in zip(rows["prune_amount"], rows["value"].astype(float)):
        drop = (b - value) if higher else (value - b)
        if not math.isfinite(value) or drop > max_drop:
            break
        holds = float(amount)
    return holds


def first_clear_drop(
    table: pd.DataFrame, metric: str, reference: str, method: str, quant_mode: str = "fp32", scope: str = "all"
) -> float | None:
    """The smallest pruning amount whose 95% interval lies entirely on the bad side of the unpruned value's
    interval (a knee without a chosen tolerance; conservative: non-overlap of two intervals)."""
    rows = table[
        (table["metric"] == metric) & (table["reference"].fillna("") == reference) & (table["quant_mode"] == quant_mode)
    ]
    rows = rows[(rows["prune_amount"] == 0) | ((rows["prune_method"] == method) & (rows["prune_scope"] == scope))]
    rows = rows.drop_duplicates("prune_amount").sort_values("prune_amount")
    base = rows[rows["prune_amount"] == 0]
    if base.empty:
        return None
    higher = bool(rows["higher_is_better"].dropna().iloc[0]) if rows["higher_is_better"].notna().any() else True
    lo, hi = float(base["ci_low"].iloc[0]), float(base["ci_high"].iloc[0])
    for amount, clo, chi in zip(rows["prune_amount"], rows["ci_low"].astype(float), rows["ci_high"].astype(float)):
        if amount > 0 and ((chi < lo) if higher else (clo > hi)):
            return float(amount)
    return None


def summarize(table: pd.DataFrame, config: dict, fd_min: dict[str, int]) -> dict:
    """The JSON summary: configuration, per-setting headline numbers (value, CI, N), floors and knees."""
    headline = headline_records(table)
    # Knees of every fp32, whole-UNet pruning curve: where the 95% intervals part from the unpruned model's,
    # and, for accuracies, how far it stays within 5 percentage points.
    knees = {}
    pruned = table[(table["prune_amount"] > 0) & (table["prune_scope"] == "all") & (table["quant_mode"] == "fp32")]
    for method in sorted(pruned["prune_method"].dropna().unique()):
        if pruned[pruned["prune_method"] == method]["prune_amount"].nunique() < 2:
            continue
        k = {}
        for metric, ref in _quality_metrics(table):
            entry = {"first_clear_drop": first_clear_drop(table, metric, ref, method)}
            if metric.startswith("accuracy"):
                entry["holds_within_5pp"] = quality_holds_until(table, metric, ref, method, 5.0)
            k[metric_label(metric, ref)] = entry
        knees[method] = k
    return {
        "config": config,
        "fd_min_n": fd_min,
        "headline": headline,
        "knees": knees,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def paired_difference(
    out_dir: str | Path,
    label_a: str,
    label_b: str,
    column: str = "acc:all",
    n_boot: int = metrics.N_BOOT,
    seed: int = 0,
) -> metrics.Estimate:
    """Mean of (a - b) over the images two settings of one sweep share (same prompt and seed), with a bootstrap
    95% interval over image pairs: e.g. "does L1 beat random at 40%?" without the noise of two separate means.

    Args:
        out_dir (`str` or `Path`): a sweep folder (its summary.json and cells/*.images.csv).
        label_a, label_b (`str`): setting labels, e.g. "L1 40%" and "random 40%".
        column (`str`, defaults to "acc:all"): a per-image column: "acc:<attribute>" (0/100), "clip", "psnr",
            "ssim".

    Raises:
        ValueError: an unknown label or column.
    """
    out = Path(out_dir)
    cells = {c["label"]: c["key"] for c in json.loads((out / "summary.json").read_text())["cells"]}
    for label in (label_a, label_b):
        if label not in cells:
            raise ValueError(f"no setting {label!r} in {out}; known: {', '.join(cells)}")
    a = pd.read_csv(out / "cells" / f"{cells[label_a]}.images.csv")
    b = pd.read_csv(out / "cells" / f"{cells[label_b]}.images.csv")
    if column not in a or column not in b:
        known = ", ".join(c for c in a.columns if c not in ("prompt", "seed"))
        raise ValueError(f"no per-image column {column!r}; known: {known}")
    diff = (a[column] - b[column]).to_numpy(dtype=float)  # NaN where either image was non-finite: left out
    return metrics.mean_estimate(f"{column}: {label_a} - {label_b}", diff, label_b, "", None, n_boot=n_boot, seed=seed)


# ----------------------------------------------------------------------------------------- figures


def _quality_metrics(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(metric, reference) pairs to chart, KID before FD when N is below the FD-meaningful N."""
    q = table[~table["metric"].isin(COST_METRICS) & (table["setting"] != REAL_SETTING)]
    pairs = list(dict.fromkeys(zip(q["metric"], q["reference"].fillna(""))))
    # Below the N where FD is trusted its rows say "read KID" (and carry no interval): KID leads the charts then.
    fd_unreliable = q[q["metric"].str.startswith("FD-")]["note"].fillna("").str.contains("read KID").any()

    def rank(p):
        m = p[0]
        order = ["accuracy: all", "CLIP score", "KID-", "FD-", "PSNR", "SSIM", "accuracy: "]
        if fd_unreliable:
            order = ["accuracy: all", "CLIP score", "KID-", "PSNR", "SSIM", "FD-", "accuracy: "]
        return next((i for i, o in enumerate(order) if m.startswith(o)), len(order))

    return sorted(pairs, key=rank)


def report_figures(table: pd.DataFrame) -> list[tuple[str, object]]:
    """The report's figures, in reading order."""
    figs = []
    pruned = table[table["prune_amount"] > 0]
    scopes = set(pruned["prune_scope"].dropna()) - {"all", *charts.curve_scopes(table)}
    qm = _quality_metrics(table)
    modes = table[table["setting"] != REAL_SETTING].apply(lambda r: (r["quant_mode"], r["bits"]), axis=1).nunique()
    by_mode = modes > 2 and table["prune_amount"].nunique() <= 3  # a quantization study: bars read better
    if (pruned["prune_scope"] == "all").any() or pruned.empty:
        for metric, ref in qm:
            name = metric_label(metric, ref)
            figs.append(
                (
                    name,
                    charts.quality_by_mode(table, metric, ref)
                    if by_mode
                    else charts.quality_vs_pruning(table, metric, ref, scope=None),
                )
            )
    if scopes:
        for metric, ref in qm[:4]:
            figs.append(
                (f"Layer sensitivity: {metric_label(metric, ref)}", charts.layer_sensitivity(table, metric, ref))
            )
    figs.append(("Latency", charts.cost_bars(table, "latency")))
    figs.append(("Speed-up over the baseline", charts.cost_bars(table, "speed-up")))
    figs.append(("UNet size", charts.cost_bars(table, "UNet size")))
    if qm:
        metric, ref = qm[0]
        for cost in ("UNet size", "non-zero parameters", "UNet MACs", "latency"):
            values = table[(table["metric"] == cost) & (table["setting"] != REAL_SETTING)]["value"].astype(float)
            # A cost that no setting changes (masked pruning leaves the size as it is) has no front to show.
            if len(values) > 1 and values.max() > 1.02 * values.min():
                figs.append((f"Pareto: {metric} vs {cost}", charts.quality_cost_pareto(table, metric, cost, ref)))
    return figs


def write_report(table: pd.DataFrame, summary: dict, out: Path, plotlyjs: str = "inline") -> Path:
    """report.html in `out`: configuration, headline table, figures and a strip of sample images per setting."""
    import base64

    cfg = summary.get("config", {})
    fd_min = summary.get("fd_min_n", {})
    bits = [
        f"<b>model</b> {html.escape(str(cfg.get('model')))}",
        f"<b>images per setting</b> N={cfg.get('n_images')}",
        f"<b>steps</b> {cfg.get('steps')}",
        f"<b>guidance</b> {cfg.get('guidance')}",
        f"<b>size</b> {cfg.get('height')}x{cfg.get('width')}",
        f"<b>judge</b> {html.escape(str(cfg.get('judge')))}",
    ]
    intro = "<p>" + " &middot; ".join(bits) + "</p>"
    for name, need in fd_min.items():
        n = cfg.get("n_images") or 0
        verdict = "above it: FD is usable" if n >= need else "below it: read KID; FD is shown for completeness"
        intro += (
            f"<p>Frechet distance on {html.escape(name)} features ({need // 5} wide) is taken seriously from "
            f"N={need} images per set (5 x width); this sweep has N={n}, {verdict}.</p>"
        )
    intro += (
        "<p>Every number is a mean (accuracy: a rate; latency: a median) over N with a 95% interval: Wilson "
        "for accuracies, a jackknife for FD (bias-corrected from N = 5 x feature width; below that, no "
        "interval), a bootstrap for the rest. "
        "References: <i>baseline</i> = the uncompressed model, same prompts and seeds; <i>real</i> = images "
        "of the data generator for the same prompts; <i>prompt</i> = the text.</p>"
    )
    wide = headline_table(table, report_columns(table), include_real=True)
    if len(wide.columns) > 1:
        wide = wide.set_index("setting")
        wide.index.name = None
        intro += "<h2>Headline numbers (value [95% CI])</h2>" + wide.to_html(escape=True, na_rep="")
    strips = ""
    for cell in summary.get("cells", []):
        path = out / "samples" / f"{cell['key']}.png"
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode()
            strips += (
                f"<div><code>{html.escape(cell['label'])}</code><br>"
                f"<img alt='samples' style='image-rendering:pixelated;"
                f"height:64px' src='data:image/png;base64,{data}'></div>"
            )
    if strips:
        strips = "<h2>First images of each setting (same prompts and seeds)</h2>" + strips
    path = charts.write_report_html(
        report_figures(table), out / "report.html", f"Compression sweep: {cfg.get('model')}", intro, plotlyjs
    )
    if strips:
        text = path.read_text(encoding="utf-8").replace("</body>", strips + "</body>")
        path.write_text(text, encoding="utf-8")
    return path


def write_pngs(table: pd.DataFrame, folder: Path) -> list[Path]:
    """Every report figure as a PNG (numbered in reading order), rendered by headless Chromium."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        charts.save_png(fig, folder / f"{i:02d}-{charts.slug(title)}.png")
        for i, (title, fig) in enumerate(report_figures(table))
    ]


# ------------------------------------------------------------------------------ older sweeps, newer intervals


def recompute_rate_intervals(out_dir: str | Path, pngs: bool = True) -> pd.DataFrame:
    """Give a finished sweep folder's accuracies Wilson intervals, from its tidy table alone (nothing redrawn).

    An accuracy row holds the rate and its N, hence the count of right images, which is all a Wilson interval
    needs (`metrics.proportion_estimate`). Rewrites results.csv, summary.json's headline and knees (the rest of
    it, the "generated" time included, stays), report.html (its strip of sample images kept) and those of the
    report's PNGs that are in the folder. Other metrics are left as they are: FD and SSIM would need the
    features and images, which a sweep folder does not keep.

    Returns:
        The rewritten table.

    Raises:
        ValueError: an accuracy row whose rate is no whole count of its N.
    """
    from .intervals import wilson_interval

    out = Path(out_dir)
    table = pd.read_csv(out / "results.csv")
    for col in ("reference", "unit", "note"):  # empty text reads back as NaN; the sweep wrote ""
        table[col] = table[col].fillna("")
    rates = table["metric"].astype(str).str.startswith("accuracy") & (table["n"] > 0)
    for i in table.index[rates]:
        n = int(table.at[i, "n"])
        k = table.at[i, "value"] * n / 100
        if abs(k - round(k)) > 1e-6:
            raise ValueError(f"row {i}: {table.at[i, 'value']}% of {n} is no whole count")
        lo, hi = wilson_interval(round(k), n)
        table.at[i, "ci_low"], table.at[i, "ci_high"] = 100 * lo, 100 * hi
    table.to_csv(out / "results.csv", index=False)

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    fresh = summarize(table, summary.get("config", {}), summary.get("fd_min_n", {}))
    summary.update(headline=fresh["headline"], knees=fresh["knees"])
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=1, allow_nan=False), encoding="utf-8")

    page = out / "report.html"
    old = page.read_text(encoding="utf-8") if page.is_file() else ""
    strip = old[old.find("<h2>First images") : old.rfind("</body>")] if "<h2>First images" in old else ""
    plotlyjs = "cdn" if "cdn.plot.ly" in old else "inline"
    write_report(table, summary, out, plotlyjs)
    if strip:
        page.write_text(page.read_text(encoding="utf-8").replace("</body>", strip + "</body>"), encoding="utf-8")
    if pngs:
        for i, (title, fig) in enumerate(report_figures(table)):
            path = out / f"{i:02d}-{charts.slug(title)}.png"
            if path.is_file():
                charts.save_png(fig, path)
    return table


def _json_safe(obj):
    """NaN/inf -> None, numpy scalars -> Python (as sweeps write their JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
