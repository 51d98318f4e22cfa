"""Charts from hand-made tables: units on axes, N in legends, honest notes, Pareto fronts, the app's history."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from compression import charts


def _row(
    setting,
    amount,
    method,
    metric,
    value,
    reference="",
    unit="",
    n=200,
    ci=0.5,
    quant="fp32",
    scope="all",
    higher=None,
    note="",
):
    return dict(
        model="tiny-shapes",
        setting=setting,
        prune_amount=amount,
        prune_method=method,
        prune_scope=scope,
        quant_mode=quant,
        bits=None,
        metric=metric,
        reference=reference,
        value=value,
        ci_low=value - ci,
        ci_high=value + ci,
        n=n,
        unit=unit,
        higher_is_better=higher,
        note=note,
        cell=setting,
    )


@pytest.fixture(scope="module")
def table():
    rows = []
    fd_note = "N=200 < 640 (5 x 128 features): FD is biased and noisy at this N; read KID"
    for method, short in (("l1-unstructured", "L1"), ("random-unstructured", "random")):
        for a in (0.0, 0.3, 0.6):
            s = "baseline" if a == 0 else f"{short} {round(a * 100)}%"
            if a == 0 and method != "l1-unstructured":
                continue
            drop = a * (40 if short == "L1" else 90)
            rows += [
                _row(s, a, method, "accuracy: all", 95 - drop, "prompt", "%", higher=True),
                _row(s, a, method, "FD-tinyCLIP", drop / 10, "real", higher=False, note=fd_note),
                _row(s, a, method, "latency", 480 + 5 * a, unit="ms", n=5, ci=10, higher=False),
                _row(s, a, method, "UNet size", 10.68, unit="MB", n=1, ci=0, higher=False),
                _row(s, a, method, "sparsity", 100 * a, unit="%", n=1, ci=0),
            ]
    rows.append(
        _row(
            "int8 weights", 0.0, "l1-unstructured", "accuracy: all", 94, "prompt", "%", quant="int8-weight", higher=True
        )
    )
    rows.append(
        _row(
            "int8 weights",
            0.0,
            "l1-unstructured",
            "UNet size",
            2.9,
            unit="MB",
            n=1,
            ci=0,
            quant="int8-weight",
            higher=False,
        )
    )
    rows.append(
        dict(_row(charts.REAL_SETTING, math.nan, "", "accuracy: all", 100, "prompt", "%", higher=True), quant_mode="")
    )
    return pd.DataFrame(rows)


def _texts(fig: go.Figure) -> str:
    return " ".join(a.text for a in fig.layout.annotations)


def test_quality_vs_pruning_has_lines_bands_units_and_n(table):
    fig = charts.quality_vs_pruning(table, "accuracy: all", "prompt")
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    names = sorted(t.name for t in lines)
    assert names == ["int8-weight (N=200)", "l1-unstructured (N=200)", "random-unstructured (N=200)"]
    l1 = next(t for t in lines if t.name.startswith("l1"))
    random = next(t for t in lines if t.name.startswith("random"))
    assert list(l1.x) == [0, 30, 60] and list(random.x) == [0, 30, 60]  # the 0% baseline starts both lines
    assert any(t.fill == "toself" for t in fig.data)  # CI bands
    assert "%" in fig.layout.yaxis.title.text and "higher is better" in fig.layout.yaxis.title.text
    assert "%" in fig.layout.xaxis.title.text and "N=200" in fig.layout.title.text
    assert "real images: 100" in _texts(fig)  # the ceiling drawn as a reference line


def test_fd_below_its_meaningful_n_says_so(table):
    fig = charts.quality_vs_pruning(table, "FD-tinyCLIP", "real")
    assert "read KID" in _texts(fig) and "lower is better" in fig.layout.yaxis.title.text


def test_missing_metric_gives_an_explaining_figure(table):
    fig = charts.quality_vs_pruning(table, "KID-DINOv2", "real")
    assert "No results for KID-DINOv2" in _texts(fig)


def test_cost_bars_mark_the_baseline_and_say_masked_pruning_is_not_faster(table):
    fig = charts.cost_bars(table, "latency")
    bar = fig.data[0]
    assert list(bar.x)[0] == "baseline" and len(bar.x) == 5
    assert "baseline 480 ms" in _texts(fig) and charts.MASKED_NOTE in _texts(fig)
    assert fig.layout.yaxis.title.text == "latency (ms)"
    size = charts.cost_bars(table, "UNet size")
    assert charts.SIZE_NOTE in _texts(size) and size.layout.yaxis.title.text == "UNet size (MB)"


def test_pareto_front():
    cost = [1, 2, 3, 4, 2]
    quality = [1, 3, 2, 5, 3]
    assert charts.pareto_front(cost, quality).tolist() == [True, True, False, True, True]
    assert charts.pareto_front(cost, quality, higher_quality_is_better=False).tolist() == [
        True,
        False,
        False,
        False,
        False,
    ]
    assert charts.pareto_front([1, float("nan")], [1, 2]).tolist() == [True, False]


def test_quality_cost_pareto_highlights_the_front(table):
    fig = charts.quality_cost_pareto(table, "accuracy: all", "UNet size", "prompt")
    front = next(t for t in fig.data if t.name.startswith("Pareto front"))
    assert set(front.text) == {"baseline", "int8 weights"}  # smaller and as good beats pruned-but-as-large
    assert "MB" in fig.layout.xaxis.title.text


def test_layer_sensitivity_bars_carry_the_share_of_weights():
    rows = [_row("baseline", 0.0, "l1-unstructured", "accuracy: all", 95, "prompt", "%", higher=True)]
    for scope, acc, share in (("down", 80, 10.8), ("up", 40, 28.6), ("projection", 93, 1.7)):
        s = f"L1 50% ({scope})"
        rows += [
            _row(s, 0.5, "l1-unstructured", "accuracy: all", acc, "prompt", "%", scope=scope, higher=True),
            _row(s, 0.5, "l1-unstructured", "sparsity", share, unit="%", n=1, ci=0, scope=scope),
        ]
    # A whole-UNet setting in the same table (scope "all") is not one of the parts: no bar for it.
    rows.append(_row("L1 50%", 0.5, "l1-unstructured", "accuracy: all", 60, "prompt", "%", higher=True))
    fig = charts.layer_sensitivity(pd.DataFrame(rows), "accuracy: all", "prompt")
    labels = list(fig.data[0].y)  # horizontal bars
    assert labels == ["up (28.6% of weights)", "down (10.8% of weights)", "projection (1.7% of weights)"]
    assert "unpruned 95" in _texts(fig) and "50%" in fig.layout.title.text


def test_history_charts_from_pair_rows():
    rows = [
        dict(
            setting="L1 30%",
            prune_amount=0.3,
            prune_method="l1-unstructured",
            quant_mode="fp32",
            prompt="p",
            clip_baseline=30.0,
            clip_compressed=29.0,
            psnr_db=31.0,
            ssim=0.9,
            latency_baseline_ms=480.0,
            latency_ms=470.0,
            unet_mb_baseline=10.7,
            unet_mb=10.7,
            nonfinite=False,
        ),
        dict(
            setting="int8 weights",
            prune_amount=0.0,
            prune_method="l1-unstructured",
            quant_mode="int8-weight",
            prompt="p",
            clip_baseline=30.0,
            clip_compressed=math.nan,
            psnr_db=math.nan,
            ssim=math.nan,
            latency_baseline_ms=480.0,
            latency_ms=900.0,
            unet_mb_baseline=10.7,
            unet_mb=2.9,
            nonfinite=True,
        ),
    ]
    cost = charts.history_cost(pd.DataFrame(rows))
    assert {t.name for t in cost.data} >= {
        "baseline latency (ms)",
        "compressed latency (ms)",
        "compressed UNet size (MB)",
    }
    assert charts.MASKED_NOTE in _texts(cost) and "N=2" in cost.layout.title.text
    quality = charts.history_quality(pd.DataFrame(rows))
    assert "NaN/inf" in _texts(quality) and quality.layout.yaxis.title.text == "CLIP score (0-100)"
    assert "Generate a comparison" in _texts(charts.history_cost(pd.DataFrame()))


def test_report_html_inline_is_self_contained_and_cdn_is_small(table, tmp_path):
    figs = [("accuracy", charts.quality_vs_pruning(table, "accuracy: all", "prompt"))]
    inline = charts.write_report_html(figs, tmp_path / "a.html", "T <&>", plotlyjs="inline")
    cdn = charts.write_report_html(figs, tmp_path / "b.html", "T", plotlyjs="cdn")
    assert inline.stat().st_size > 3_000_000 > cdn.stat().st_size
    assert 'src="https://cdn.plot.ly' not in inline.read_text() and "T &lt;&amp;&gt;" in inline.read_text()
    assert 'src="https://cdn.plot.ly' in cdn.read_text()
    with pytest.raises(ValueError, match="inline"):
        charts.write_report_html(figs, tmp_path / "c.html", "T", plotlyjs="svg")


def test_axis_titles():
    assert charts.axis_title("KID-tinyCLIP", "", "baseline") == "KID-tinyCLIP vs baseline (lower is better)"
    assert charts.axis_title("PSNR", "dB", "baseline") == "PSNR vs baseline (dB, higher is better)"


@pytest.mark.skipif(not (shutil.which("chromium") or os.path.exists("/usr/bin/chromium")), reason="no Chromium here")
def test_save_png_renders_offline(table, tmp_path):
    from PIL import Image

    path = charts.save_png(
        charts.quality_vs_pruning(table, "accuracy: all", "prompt"), tmp_path / "f.png", width=600, height=400
    )
    image = Image.open(path).convert("L")
    assert image.size == (616, 416) and np.asarray(image).std() > 5  # a drawn chart, not a blank page


def test_quality_by_mode_groups_bars_by_pruning(table):
    fig = charts.quality_by_mode(table, "accuracy: all", "prompt")
    assert [t.name.split(" (")[0] for t in fig.data] == [
        "no pruning",
        "l1-unstructured 30%",
        "random-unstructured 30%",
        "l1-unstructured 60%",
        "random-unstructured 60%",
    ]
    assert list(fig.data[0].x) == ["fp32", "int8-weight"] and fig.data[0].y[1] == 94
    assert "real images: 100" in _texts(fig) and "%" in fig.layout.yaxis.title.text


def test_layer_sensitivity_labels_name_the_amount_when_a_study_has_several():
    rows = [_row("baseline", 0.0, "l1-unstructured", "accuracy: all", 95, "prompt", "%", higher=True)]
    for amount, acc in ((0.3, 90), (0.6, 70)):
        rows.append(
            _row(
                f"L1 {amount:.0%} (up)",
                amount,
                "l1-unstructured",
                "accuracy: all",
                acc,
                "prompt",
                "%",
                scope="up",
                higher=True,
            )
        )
    fig = charts.layer_sensitivity(pd.DataFrame(rows), "accuracy: all", "prompt")
    assert list(fig.data[0].y) == ["up at 60%", "up at 30%"]
