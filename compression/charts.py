"""Plotly figures from the lab's DataFrames: quality vs pruning, latency and size bars, Pareto fronts, layer
sensitivity, and the app's history of single comparisons.

Two table shapes come in:

- **tidy sweep results** (`compression.sweep`): one row per setting x metric, columns `setting`,
  `prune_amount` (0-0.95), `prune_method`, `prune_scope`, `quant_mode`, `bits`, `metric`, `reference`,
  `value`, `ci_low`, `ci_high`, `n`, `unit`, `higher_is_better`, `note`;
- **comparison history** (the app's Compare tab): one row per comparison, the columns of
  `compression.metrics.pair_row` (wide: `clip_baseline`, `clip_compressed`, `psnr_db`, `ssim`, `latency_ms`, ...).

Every axis carries its unit, every legend entry its N, and figures say plainly where a number cannot be
trusted (a Frechet distance below its meaningful N) or where a setting brings no speed-up (masked pruning on
dense kernels). Nothing here computes a metric: figures only draw what the tables hold.

Example:
    >>> df = pd.read_csv("assets/results/seed-study/results.csv")
    >>> quality_vs_pruning(df, "KID-tinyCLIP", reference="baseline").show()
"""

from __future__ import annotations

import html
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# Qualitative colours that stay apart for colour-blind readers (Okabe-Ito).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
GREY = "#9e9e9e"
FONT = dict(family="Inter, Segoe UI, Helvetica, Arial, sans-serif", size=13)

MASKED_NOTE = (
    "Unstructured pruning only writes zeros: dense kernels do the same work, so no speed-up is "
    "expected (and none is claimed)."
)
SIZE_NOTE = "Zeros are stored densely: a pruned UNet keeps its size unless stored in a sparse format."
# Rows that measure real images of the data generator instead of a model setting: drawn as reference lines.
REAL_SETTING = "real data"


# -------------------------------------------------------------------------------------------- helpers


def _unit_suffix(unit: str) -> str:
    return f" ({unit})" if unit else ""


def axis_title(metric: str, unit: str = "", reference: str = "") -> str:
    """An axis title with the unit and the direction, e.g. "KID-tinyCLIP vs baseline (lower is better)"."""
    directions = {
        "FD": "lower is better",
        "KID": "lower is better",
        "PSNR": "higher is better",
        "SSIM": "higher is better",
        "CLIP score": "higher is better",
        "accuracy": "higher is better",
    }
    direction = next((d for k, d in directions.items() if metric.startswith(k)), "")
    ref = f" vs {reference}" if reference and reference != "prompt" else ""
    parts = [p for p in (unit, direction) if p]
    return f"{metric}{ref}" + (f" ({', '.join(parts)})" if parts else "")


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _legend_rows(fig: go.Figure, width_px: int = 900) -> int:
    """Rows a horizontal legend wraps to at about `width_px` (~7 px a character, ~45 px of symbol and gap)."""
    names = [t.name or "" for t in fig.data if t.showlegend is not False and t.name]
    rows, used = 1, 0
    for name in names:
        w = 45 + 7 * len(name)
        if used and used + w > width_px:
            rows, used = rows + 1, 0
        used += w
    return rows


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str, notes: Sequence[str] = ()) -> go.Figure:
    notes = [n for n in dict.fromkeys(notes) if n]  # unique, in order
    if x_title:
        fig.update_layout(xaxis_title=x_title)
    if y_title:
        fig.update_layout(yaxis_title=y_title)
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left", font=dict(size=16)),
        template="plotly_white",
        font=FONT,
        # Legend above the plot: below it, it collided with rotated tick labels and the x-axis title.
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0, xanchor="left"),
        # The title sits at the middle of the top margin and the legend's rows (~24 px each) grow up from the plot:
        # a margin of ~48 px a row keeps them apart (six series wrapped to three rows and covered the title).
        margin=dict(l=70, r=20, t=max(90, 30 + 48 * _legend_rows(fig)), b=110 + 18 * len(notes)),
        hovermode="closest",
    )
    for i, note in enumerate(notes):
        fig.add_annotation(
            text=html.escape(note),
            xref="paper",
            yref="paper",
            x=0,
            y=-0.37 - 0.07 * i,
            showarrow=False,
            xanchor="left",
            align="left",
            font=dict(size=11, color="#555"),
        )
    return fig


def empty_figure(message: str) -> go.Figure:
    """A blank figure that says why there is nothing to draw (e.g. "run a sweep first")."""
    fig = go.Figure()
    fig.add_annotation(
        text=html.escape(message),
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.5,
        showarrow=False,
        font=dict(size=14, color="#555"),
    )
    fig.update_layout(
        template="plotly_white",
        font=FONT,
        xaxis=dict(visible=False),
        yaxis=dict(visible=False),
        margin=dict(l=20, r=20, t=20, b=20),
        height=300,
    )
    return fig


def _select(df: pd.DataFrame, metric: str, reference: str | None) -> pd.DataFrame:
    rows = df[df["metric"] == metric]
    if reference is not None:
        rows = rows[rows["reference"].fillna("") == reference]
    return rows


def _mode_label(row) -> str:
    bits = row.get("bits")
    mode = str(row["quant_mode"])
    if bits is not None and not (isinstance(bits, float) and math.isnan(bits)):
        mode = f"{mode} {int(bits)}-bit"
    recovered = row.get("recover_steps")
    if recovered is not None and not (isinstance(recovered, float) and math.isnan(recovered)) and recovered > 0:
        # a line of its own: recovered settings are a different model from the pruned ones at the same amount
        mode = f"recovered {int(recovered)} steps" + ("" if mode == "fp32" else f" + {mode}")
    return mode


def _n_text(ns: Sequence[int]) -> str:
    ns = sorted({int(n) for n in ns if n is not None and not (isinstance(n, float) and math.isnan(n))})
    if not ns:
        return "N=?"
    return f"N={ns[0]}" if len(ns) == 1 else f"N={ns[0]}-{ns[-1]}"


def _notes(rows: pd.DataFrame) -> list[str]:
    if "note" not in rows:
        return []
    return [str(n) for n in rows["note"].dropna().unique() if str(n).strip()]


def _is_masked(method: str) -> bool:
    return "unstructured" in str(method)


# --------------------------------------------------------------------------------- quality vs pruning


def curve_scopes(df: pd.DataFrame) -> list[str]:
    """The pruning scopes that a sweep ran at two or more non-zero amounts: each is a curve against pruning
    (a scope at one amount, as in the layer-sensitivity study, is a bar of `layer_sensitivity` instead)."""
    if "prune_scope" not in df:
        return ["all"]
    pruned = df[df["prune_amount"].fillna(0) > 0]
    counts = pruned.groupby("prune_scope")["prune_amount"].nunique()
    return [s for s, n in counts.items() if n >= 2] or ["all"]


def quality_vs_pruning(
    df: pd.DataFrame, metric: str, reference: str | None = None, title: str | None = None, scope: str | None = "all"
) -> go.Figure:
    """Quality against the pruned percentage: one line per pruning method x quantization mode, 95% CI bands.

    Rows at 0% pruning are the uncompressed (or only quantized) model whatever the method, so they start every
    method's line of their quantization mode.

    Args:
        df (`pd.DataFrame`): tidy sweep results.
        metric (`str`): e.g. "KID-tinyCLIP", "CLIP score (tinyCLIP)", "accuracy: all", "PSNR".
        reference (`str`, *optional*): "baseline", "real", "prompt"; None takes every row of the metric.
        title (`str`, *optional*): defaults to the metric and its reference.
        scope (`str`, *optional*, defaults to "all"): keep one pruning scope (None: one line per scope of
            `curve_scopes`, e.g. all / linear / conv in the layer-type study).

    Returns:
        `go.Figure`; an `empty_figure` saying why when no row matches.
    """
    rows = _select(df, metric, reference)
    real = rows[rows["setting"] == REAL_SETTING]
    rows = rows[rows["setting"] != REAL_SETTING]
    if "prune_scope" in rows:
        rows = (
            rows[(rows["prune_scope"] == scope) | (rows["prune_amount"] == 0)]
            if scope is not None
            else rows[rows["prune_scope"].isin(curve_scopes(rows)) | (rows["prune_amount"] == 0)]
        )
    rows = rows[np.isfinite(rows["value"].astype(float))] if len(rows) else rows
    if rows.empty:
        return empty_figure(f"No results for {metric}" + (f" vs {reference}" if reference else "") + " yet.")
    rows = rows.assign(mode=rows.apply(_mode_label, axis=1))
    zero = rows[rows["prune_amount"] == 0]
    fig = go.Figure()
    unit = str(rows["unit"].dropna().iloc[0]) if "unit" in rows and rows["unit"].notna().any() else ""
    if "prune_scope" not in rows:
        rows = rows.assign(prune_scope="all")
    pruned = rows[rows["prune_amount"] > 0]
    several_scopes = pruned["prune_scope"].nunique() > 1
    groups = pruned[["prune_method", "mode", "prune_scope"]].drop_duplicates().values.tolist()
    pruned_modes = {m for _, m, _ in groups}
    groups += [[None, m, None] for m in zero["mode"].unique() if m not in pruned_modes]  # quantized only: one point
    for i, (method, mode, part_scope) in enumerate(groups):
        colour = PALETTE[i % len(PALETTE)]
        part = rows[
            (rows["mode"] == mode)
            & (((rows["prune_method"] == method) & (rows["prune_scope"] == part_scope)) | (rows["prune_amount"] == 0))
        ]
        part = part.drop_duplicates(subset=["prune_amount"]).sort_values("prune_amount")
        x = part["prune_amount"].astype(float).to_numpy() * 100
        name = " + ".join(p for p in (method, None if mode == "fp32" else mode) if p) or str(mode)
        if several_scopes and part_scope:
            name = f"{name}, scope {part_scope}"
        name = f"{name} ({_n_text(part['n'])})"
        lo, hi = part["ci_low"].astype(float).to_numpy(), part["ci_high"].astype(float).to_numpy()
        if np.isfinite(lo).all() and np.isfinite(hi).all():
            fig.add_trace(
                go.Scatter(
                    x=np.concatenate([x, x[::-1]]),
                    y=np.concatenate([hi, lo[::-1]]),
                    fill="toself",
                    mode="lines",
                    fillcolor=_rgba(colour, 0.15),
                    line=dict(width=0),
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=name,
                    name=f"{name} 95% CI",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=part["value"],
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line=dict(color=colour, width=2),
                marker=dict(size=7),
                customdata=np.stack([lo, hi, part["n"], part["setting"]], axis=1),
                hovertemplate="%{customdata[3]}<br>%{x:.0f}% pruned: %{y:.4g}<br>95% CI %{customdata[0]:.4g} to "
                "%{customdata[1]:.4g}<br>N=%{customdata[2]}<extra></extra>",
            )
        )
    for r in real.itertuples():
        what = "two real sets (floor)" if r.reference == "real" else "real images"
        fig.add_hline(
            y=float(r.value),
            line=dict(color="#333", dash="dot", width=1),
            annotation_text=f"{what}: {float(r.value):.3g}",
            annotation_position="bottom right",
        )
    ref_text = f" vs {reference}" if reference and reference != "prompt" else ""
    title = title or f"{metric}{ref_text} against pruning ({_n_text(rows['n'])}, bands: 95% CI)"
    fig.update_xaxes(ticksuffix="%", rangemode="tozero")
    return _layout(
        fig,
        title,
        "pruned weights (% of Linear/Conv2d weights in scope)",
        axis_title(metric, unit, reference),
        _notes(rows),
    )


def quality_by_mode(df: pd.DataFrame, metric: str, reference: str | None = None, title: str | None = None) -> go.Figure:
    """Grouped bars: quality per quantization mode (x), one bar colour per pruning amount, 95% CI error bars.

    For "quantization on the same footing": every mode at 0% and combined with pruning, side by side.
    """
    rows = _select(df, metric, reference)
    real = rows[rows["setting"] == REAL_SETTING]
    rows = rows[(rows["setting"] != REAL_SETTING) & (rows["prune_scope"].isin(["all"]) | (rows["prune_amount"] == 0))]
    rows = rows[np.isfinite(rows["value"].astype(float))] if len(rows) else rows
    if rows.empty:
        return empty_figure(f"No results for {metric}" + (f" vs {reference}" if reference else "") + " yet.")
    rows = rows.assign(mode=rows.apply(_mode_label, axis=1))
    modes = list(dict.fromkeys(rows["mode"]))
    unit = str(rows["unit"].dropna().iloc[0]) if rows["unit"].notna().any() else ""
    fig = go.Figure()
    # At 0% the method changes nothing: one "no pruning" group, then one group per (amount, method).
    rows = rows.assign(
        _amount=rows["prune_amount"].astype(float),
        _method=np.where(rows["prune_amount"] == 0, "", rows["prune_method"].astype(str)),
    )
    for i, ((amount, method), part) in enumerate(rows.groupby(["_amount", "_method"], sort=True)):
        part = part.drop_duplicates("mode").set_index("mode").reindex(modes)
        label = "no pruning" if amount == 0 else f"{method} {round(amount * 100)}%"
        fig.add_trace(
            go.Bar(
                x=modes,
                y=part["value"],
                name=f"{label} ({_n_text(part['n'].dropna())})",
                marker_color=PALETTE[i % len(PALETTE)],
                error_y=dict(
                    type="data",
                    array=(part["ci_high"] - part["value"]).clip(lower=0),
                    arrayminus=(part["value"] - part["ci_low"]).clip(lower=0),
                ),
                customdata=np.stack([part["setting"].fillna(""), part["n"].fillna(0)], axis=1),
                hovertemplate="%{customdata[0]}<br>%{y:.4g} (N=%{customdata[1]})<extra></extra>",
            )
        )
    for r in real.itertuples():
        what = "two real sets (floor)" if r.reference == "real" else "real images"
        fig.add_hline(
            y=float(r.value),
            line=dict(color="#333", dash="dot", width=1),
            annotation_text=f"{what}: {float(r.value):.3g}",
            annotation_position="bottom right",
        )
    fig.update_layout(barmode="group")
    ref_text = f" vs {reference}" if reference and reference != "prompt" else ""
    title = title or f"{metric}{ref_text} per quantization mode ({_n_text(rows['n'])}, error bars: 95% CI)"
    notes = _notes(rows)
    if (rows["quant_mode"] == "simulated-int").any():
        notes.append(
            "simulated-int rounds weights but stores them as float: a quality study only, no speed or memory gain."
        )
    return _layout(fig, title, "quantization mode", axis_title(metric, unit, reference or ""), notes)


# ----------------------------------------------------------------------------------------- cost bars


def _setting_order(rows: pd.DataFrame) -> list[str]:
    keyed = rows.drop_duplicates("setting").assign(_q=lambda r: r["quant_mode"].astype(str))
    keyed = keyed.sort_values(["_q", "prune_method", "prune_scope", "prune_amount"], kind="stable")
    base = keyed[keyed["setting"] == "baseline"]
    return [*base["setting"], *[s for s in keyed["setting"] if s != "baseline"]]


def cost_bars(df: pd.DataFrame, metric: str = "latency", title: str | None = None) -> go.Figure:
    """One bar per setting for a cost metric ("latency", "UNet size", ...), the baseline marked by a line.

    Error bars are the 95% interval (latency: bootstrap of the median over the timing repeats). Adds the
    honest note that masked (unstructured) pruning buys no speed or size when such settings are present.
    """
    rows = _select(df, metric, None)
    rows = rows[np.isfinite(rows["value"].astype(float))] if len(rows) else rows
    if rows.empty:
        return empty_figure(f"No {metric} measured yet.")
    order = _setting_order(rows)
    rows = rows.drop_duplicates("setting").set_index("setting").loc[order].reset_index()
    unit = str(rows["unit"].iloc[0] or "")
    base = rows[(rows["prune_amount"] == 0) & (rows["quant_mode"] == "fp32")]
    colours = [GREY if s == "baseline" else PALETTE[0] for s in rows["setting"]]
    err_hi = (rows["ci_high"] - rows["value"]).clip(lower=0)
    err_lo = (rows["value"] - rows["ci_low"]).clip(lower=0)
    fig = go.Figure(
        go.Bar(
            x=rows["setting"],
            y=rows["value"],
            marker_color=colours,
            error_y=dict(type="data", array=err_hi, arrayminus=err_lo, visible=bool((err_hi + err_lo).sum() > 0)),
            customdata=np.stack([rows["n"]], axis=1),
            hovertemplate="%{x}: %{y:.4g}" + f" {unit}" + "<br>N=%{customdata[0]}<extra></extra>",
            showlegend=False,
        )
    )
    notes = []
    if not base.empty:
        b = float(base["value"].iloc[0])
        fig.add_hline(
            y=b,
            line=dict(color="#333", dash="dash", width=1),
            annotation_text=f"baseline {b:.3g} {unit}",
            annotation_position="top left",
        )
    pruned = rows[rows["prune_amount"] > 0]
    if not pruned.empty and pruned["prune_method"].map(_is_masked).any():
        notes.append(MASKED_NOTE if metric in ("latency", "speed-up") else SIZE_NOTE if "size" in metric else "")
    notes += _notes(rows)
    title = title or f"{metric} per setting ({_n_text(rows['n'])} per bar)"
    return _layout(fig, title, "setting", f"{metric}{_unit_suffix(unit)}", notes)


# -------------------------------------------------------------------------------------------- Pareto


def pareto_front(cost: Sequence[float], quality: Sequence[float], higher_quality_is_better: bool = True) -> np.ndarray:
    """Boolean mask of the non-dominated points: no other point is at most as costly and at least as good,
    and strictly better in one of the two (cost: lower is better)."""
    c = np.asarray(cost, dtype=float)
    q = np.asarray(quality, dtype=float) * (1 if higher_quality_is_better else -1)
    front = np.zeros(len(c), dtype=bool)
    for i in range(len(c)):
        if not (np.isfinite(c[i]) and np.isfinite(q[i])):
            continue
        dominated = (c <= c[i]) & (q >= q[i]) & ((c < c[i]) | (q > q[i]))
        front[i] = not dominated.any()
    return front


def _front_labels(part: pd.DataFrame) -> list[str]:
    # Settings at the same point (e.g. equal size and quality) share one label instead of overprinting.
    labels, seen = [], {}
    for setting, x, y in zip(part["setting"], part["value_cost"], part["value"]):
        key = (round(float(x), 9), round(float(y), 9))
        seen.setdefault(key, []).append(str(setting))
    for setting, x, y in zip(part["setting"], part["value_cost"], part["value"]):
        group = seen[(round(float(x), 9), round(float(y), 9))]
        labels.append(
            "" if setting != group[0] else group[0] + (f" (+{len(group) - 1} more)" if len(group) > 1 else "")
        )
    return labels


def _away_from_edges(x: pd.Series, all_x: pd.Series) -> list[str]:
    """Label positions that grow into the plot: right of points in the left half, left of the others
    (centred labels on the outermost points were cut off by the figure's edge)."""
    mid = (float(all_x.min()) + float(all_x.max())) / 2
    return ["top right" if float(v) <= mid else "top left" for v in x]


def quality_cost_pareto(
    df: pd.DataFrame,
    quality_metric: str,
    cost_metric: str = "UNet size",
    reference: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """Quality against cost, one point per setting, the Pareto front highlighted and joined.

    Args:
        df (`pd.DataFrame`): tidy sweep results.
        quality_metric (`str`): e.g. "CLIP score (tinyCLIP)" or "KID-tinyCLIP" (direction from
            `higher_is_better`).
        cost_metric (`str`, defaults to "UNet size"): "UNet size" (MB), "latency" (ms), ...
        reference (`str`, *optional*): reference of the quality metric.
    """
    q = _select(df, quality_metric, reference)
    q = q[q["setting"] != REAL_SETTING]
    c = _select(df, cost_metric, None)
    if q.empty or c.empty:
        return empty_figure(f"Need both {quality_metric} and {cost_metric} results for a Pareto chart.")
    keep = [
        "setting",
        "value",
        "ci_low",
        "ci_high",
        "n",
        "unit",
        "higher_is_better",
        "prune_method",
        "prune_amount",
        "quant_mode",
    ]
    merged = q[keep].merge(c[["setting", "value", "unit"]], on="setting", suffixes=("", "_cost"))
    merged = merged[np.isfinite(merged["value"].astype(float)) & np.isfinite(merged["value_cost"].astype(float))]
    if merged.empty:
        return empty_figure("No setting has both numbers finite.")
    hib = merged["higher_is_better"].dropna()
    higher = bool(hib.iloc[0]) if len(hib) else True
    front = pareto_front(merged["value_cost"], merged["value"], higher)
    unit_q, unit_c = str(merged["unit"].iloc[0] or ""), str(merged["unit_cost"].iloc[0] or "")
    fig = go.Figure()
    for on_front, colour, name in ((False, GREY, "dominated"), (True, PALETTE[1], "Pareto front")):
        part = merged[front == on_front].sort_values("value_cost")
        if part.empty:
            continue
        err = dict(
            type="data",
            array=(part["ci_high"] - part["value"]).clip(lower=0),
            arrayminus=(part["value"] - part["ci_low"]).clip(lower=0),
            color=colour,
            thickness=1,
        )
        fig.add_trace(
            go.Scatter(
                x=part["value_cost"],
                y=part["value"],
                mode="lines+markers+text" if on_front else "markers",
                name=f"{name} ({len(part)})",
                text=_front_labels(part) if on_front else None,
                textposition=_away_from_edges(part["value_cost"], merged["value_cost"]),
                line=dict(color=colour, dash="dot") if on_front else None,
                marker=dict(color=colour, size=9),
                error_y=err,
                customdata=np.stack([part["setting"], part["n"]], axis=1),
                hovertemplate=(
                    "%{customdata[0]}<br>cost %{x:.4g}<br>quality %{y:.4g} (N=%{customdata[1]})<extra></extra>"
                ),
            )
        )
    ref_text = f" vs {reference}" if reference and reference != "prompt" else ""
    title = title or f"{quality_metric}{ref_text} against {cost_metric} ({_n_text(merged['n'])}): Pareto front"
    notes = _notes(q)
    if cost_metric == "latency" and (merged["prune_amount"] > 0).any():
        notes.append(MASKED_NOTE)
    return _layout(
        fig,
        title,
        f"{cost_metric}{_unit_suffix(unit_c)} (lower is better)",
        axis_title(quality_metric, unit_q, reference or ""),
        notes,
    )


# ---------------------------------------------------------------------------------- layer sensitivity


def layer_sensitivity(
    df: pd.DataFrame, metric: str, reference: str | None = None, title: str | None = None
) -> go.Figure:
    """Bars: quality when one part of the UNet is pruned at a time (one bar per scope), baseline marked.

    Each bar's hover and label give the share of all UNet weights that the scope holds ("sparsity" rows), so
    "hurts most" can be read per weight removed, not only in total.
    """
    rows = _select(df, metric, reference)
    # Bars: settings that prune one part; whole-UNet settings in the same table are left out, and the unpruned
    # fp32 baseline is the reference line.
    rows = rows[(rows["prune_amount"] > 0) & (rows["prune_scope"] != "all")] if len(rows) else rows
    if rows.empty:
        return empty_figure(f"No layer-sensitivity results for {metric} yet.")
    sparsity = _select(df, "sparsity", None)[["setting", "value"]].rename(columns={"value": "unet_sparsity"})
    hib = rows["higher_is_better"].dropna()
    higher = bool(hib.iloc[0]) if len(hib) else True
    # The most harmful part first: lowest quality when higher is better, highest distance otherwise.
    rows = rows.merge(sparsity, on="setting", how="left").sort_values("value", ascending=higher)
    unit = str(rows["unit"].dropna().iloc[0]) if rows["unit"].notna().any() else ""
    amounts = sorted({round(float(a) * 100) for a in rows["prune_amount"]})
    # With several amounts in one study each part appears once per amount: the label says which.
    parts = [
        f"{s} at {round(float(a) * 100)}%" if len(amounts) > 1 else str(s)
        for s, a in zip(rows["prune_scope"], rows["prune_amount"])
    ]
    labels = [
        f"{p} ({u:.1f}% of weights)" if np.isfinite(u) else p
        for p, u in zip(parts, rows["unet_sparsity"].astype(float))
    ]
    # Horizontal bars, the most harmful part on top: the scope labels are long and read level, not rotated.
    fig = go.Figure(
        go.Bar(
            y=labels,
            x=rows["value"],
            orientation="h",
            marker_color=PALETTE[2],
            error_x=dict(
                type="data",
                array=(rows["ci_high"] - rows["value"]).clip(lower=0),
                arrayminus=(rows["value"] - rows["ci_low"]).clip(lower=0),
            ),
            customdata=np.stack([rows["setting"], rows["n"]], axis=1),
            hovertemplate="%{customdata[0]}<br>%{x:.4g} (N=%{customdata[1]})<extra></extra>",
            showlegend=False,
        )
    )
    fig.update_yaxes(autorange="reversed", automargin=True)
    base = _select(df, metric, reference)
    base = base[(base["prune_amount"] == 0) & (base["quant_mode"] == "fp32")]
    if not base.empty:
        b = float(base["value"].iloc[0])
        fig.add_vline(
            x=b,
            line=dict(color="#333", dash="dash", width=1),
            annotation_text=f"unpruned {b:.4g}",
            annotation_position="top",
        )
    methods = ", ".join(sorted(rows["prune_method"].astype(str).unique()))
    ref_text = f" vs {reference}" if reference and reference != "prompt" else ""
    title = title or (
        f"Layer sensitivity: {metric}{ref_text} with {'/'.join(map(str, amounts))}% of one part pruned "
        f"({methods}, {_n_text(rows['n'])})"
    )
    fig = _layout(fig, title, axis_title(metric, unit, reference or ""), "", _notes(rows))
    return fig.update_layout(height=max(420, 120 + 38 * len(rows)))


# ------------------------------------------------------------------------------ the app's history charts


def history_cost(history: pd.DataFrame) -> go.Figure:
    """Latency (ms, grouped bars: baseline vs compressed) and UNet size (MB, line on a second axis) per
    comparison of the session. Takes rows of `metrics.pair_row`."""
    if history is None or len(history) == 0:
        return empty_figure("Generate a comparison to start the history.")
    h = history.reset_index(drop=True)
    x = [f"#{i + 1} {s}" for i, s in enumerate(h["setting"])]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=h["latency_baseline_ms"], name="baseline latency (ms)", marker_color=GREY))
    fig.add_trace(go.Bar(x=x, y=h["latency_ms"], name="compressed latency (ms)", marker_color=PALETTE[0]))
    fig.add_trace(
        go.Scatter(
            x=x,
            y=h["unet_mb"],
            name="compressed UNet size (MB)",
            yaxis="y2",
            mode="lines+markers",
            line=dict(color=PALETTE[1]),
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=h["unet_mb_baseline"],
            name="baseline UNet size (MB)",
            yaxis="y2",
            mode="lines",
            line=dict(color="#333", dash="dash"),
        )
    )
    fig.update_layout(
        barmode="group", yaxis2=dict(title="UNet size (MB)", overlaying="y", side="right", rangemode="tozero")
    )
    timed = "latency_rounds" in h and (h["latency_rounds"] > 0).all()
    notes = [
        "Latency: one denoising step (batch 1), both UNets timed warm in alternating rounds after drawing; "
        "the medians of the rounds."
        if timed
        else "Latency per denoising step from the drawing itself (N=1): a cold or cached baseline against a warm "
        "compressed run."
    ]
    if (h["prune_amount"] > 0).any() and h["prune_method"].map(_is_masked).any():
        notes.append(MASKED_NOTE)
    fig = _layout(
        fig, f"Latency and size per comparison (N={len(h)} comparisons)", "comparison", "ms per denoising step", notes
    )
    fig.update_layout(margin=dict(r=70))
    return fig


def history_quality(history: pd.DataFrame) -> go.Figure:
    """CLIP score of the compressed image, PSNR (dB) and SSIM against the baseline, against the pruned
    percentage: one line per quantization mode (three stacked panels, one unit each)."""
    from plotly.subplots import make_subplots

    if history is None or len(history) == 0:
        return empty_figure("Generate a comparison to start the history.")
    h = history.copy()
    h["prune_pct"] = h["prune_amount"].astype(float) * 100
    panels = [
        ("clip_compressed", "CLIP score (0-100)"),
        ("psnr_db", "PSNR vs baseline (dB)"),
        ("ssim", "SSIM vs baseline (0-1)"),
    ]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    modes = list(dict.fromkeys(h["quant_mode"].astype(str)))
    for j, mode in enumerate(modes):
        part = h[h["quant_mode"].astype(str) == mode].sort_values("prune_pct")
        colour = PALETTE[j % len(PALETTE)]
        for r, (col, label) in enumerate(panels, start=1):
            if col not in part:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["prune_pct"],
                    y=part[col],
                    mode="lines+markers",
                    name=f"{mode} (N={len(part)})",
                    legendgroup=mode,
                    showlegend=r == 1,
                    line=dict(color=colour),
                    customdata=np.stack([part["setting"], part["prompt"].astype(str).str.slice(0, 60)], axis=1),
                    hovertemplate="%{customdata[0]}<br>" + label + ": %{y:.4g}<br>%{customdata[1]}<extra></extra>",
                ),
                row=r,
                col=1,
            )
            fig.update_yaxes(title_text=label, row=r, col=1)
    if "clip_baseline" in h and h["clip_baseline"].notna().any():
        fig.add_hline(
            y=float(h["clip_baseline"].mean()),
            line=dict(color="#333", dash="dash", width=1),
            row=1,
            col=1,
            annotation_text="baseline (mean)",
            annotation_position="top left",
        )
    fig.update_xaxes(title_text="pruned weights (% of scope)", ticksuffix="%", row=3, col=1)
    notes = [
        "Single images (N=1 per point, different prompts possible): read trends, not decimals. "
        "Sweeps give N and intervals."
    ]
    if "nonfinite" in h and h["nonfinite"].any():
        notes.append("Comparisons whose compressed image held NaN/inf are shown as gaps: they are not scored.")
    fig = _layout(fig, f"Quality of each comparison against pruning (N={len(h)} comparisons)", "", "", notes)
    fig.update_layout(height=620)
    return fig


# ----------------------------------------------------------------------------------------------- report


def write_report_html(
    figures: Sequence[tuple[str, go.Figure]],
    path: str | Path,
    title: str,
    intro_html: str = "",
    plotlyjs: str = "inline",
) -> Path:
    """Write figures into one HTML page.

    Args:
        figures (`Sequence[tuple[str, go.Figure]]`): (section heading, figure) pairs.
        path (`str` or `Path`): the .html file to write.
        title (`str`): page title.
        intro_html (`str`, defaults to ""): trusted HTML shown under the title (callers escape their data).
        plotlyjs (`str`, defaults to "inline"): "inline" embeds plotly.js (~4.8 MB, works offline: the
            self-contained report); "cdn" links it (small files, needs network to view).
    """
    if plotlyjs not in ("inline", "cdn"):
        raise ValueError(f"plotlyjs must be 'inline' or 'cdn', got {plotlyjs!r}")
    parts = []
    for i, (heading, fig) in enumerate(figures):
        include = (True if plotlyjs == "inline" else "cdn") if i == 0 else False  # plotly.js once per page
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=include,
            default_width="100%",
            default_height=f"{int(fig.layout.height or 520)}px",
        )
        parts.append(f"<section><h2>{html.escape(heading)}</h2>{div}</section>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:Inter,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}}
h1{{font-size:1.6em}}h2{{font-size:1.15em;margin-top:2em}}table{{border-collapse:collapse;font-size:.9em}}
td,th{{border:1px solid #ddd;padding:.3em .6em;text-align:right}}th{{background:#f5f5f5}}
code{{background:#f3f3f3;padding:0 .2em}}</style>
</head><body><h1>{html.escape(title)}</h1>{intro_html}{"".join(parts)}</body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def save_png(
    fig: go.Figure,
    path: str | Path,
    width: int = 1000,
    height: int | None = None,
    browser: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Render a figure to PNG with a headless Chromium (offline: plotly.js is inlined), no kaleido needed.

    Args:
        fig (`go.Figure`): the figure.
        path (`str` or `Path`): the .png to write.
        width (`int`, defaults to 1000), height (`int`, *optional*): pixels (height: the figure's, else 560).
        browser (`str`, *optional*): a Chromium executable; default `$CHROMIUM`, /usr/bin/chromium or
            chromium on PATH.
        timeout (`float`, defaults to 60): seconds before giving up.

    Raises:
        RuntimeError: no Chromium found, or it wrote no image.
    """
    exe = browser or os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe or not Path(exe).exists():
        raise RuntimeError("save_png needs Chromium (apt-get install chromium, or set CHROMIUM=/path/to/it)")
    height = int(height or fig.layout.height or 560)
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "figure.html"
        fig.write_html(
            page,
            include_plotlyjs=True,
            full_html=True,
            default_width=f"{width}px",
            default_height=f"{height}px",
            config={"displayModeBar": False},
        )
        cmd = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
            f"--window-size={width + 16},{height + 16}",
            f"--screenshot={path}",
            page.as_uri(),
        ]
        if path.exists():
            path.unlink()
        subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=tmp, env={**os.environ, "HOME": tmp})
    if not path.is_file():
        raise RuntimeError(f"Chromium ({exe}) wrote no screenshot to {path}")
    return path


def slug(text: str) -> str:
    """A file-name-safe short form of a figure heading."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "figure"
