"""The headline "value [95% CI]" table, built once in compression.report and shown by the app, report.html and
summary.json; the app's formatting helpers, called without a server; latency ratios from paired rounds."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import app_format
from compression import latency, report
from compression.metrics import LatencyStats


def _stats(times: tuple[float, ...]) -> LatencyStats:
    """Timing rounds as `measure_latency_interleaved` returns them (only the times and their median matter here)."""
    med = sorted(times)[len(times) // 2 - 1 : len(times) // 2 + 1]
    return LatencyStats(sum(med) / 2, 0.0, 0.0, 0.0, 0.0, times, 1)


def _row(setting, amount, metric, value, lo, hi, n, reference="", unit=""):
    return dict(
        model="tiny-shapes",
        setting=setting,
        prune_amount=amount,
        prune_method="l1-unstructured",
        prune_scope="all",
        quant_mode="fp32",
        bits=None,
        metric=metric,
        reference=reference,
        value=value,
        ci_low=lo,
        ci_high=hi,
        n=n,
        unit=unit,
        higher_is_better=True,
        note="",
        cell=setting,
    )


@pytest.fixture
def table():
    return pd.DataFrame(
        [
            _row("baseline", 0.0, "accuracy: all", 100.0, 100.0, 100.0, 8, "prompt", "%"),
            _row("L1 30%", 0.3, "accuracy: all", 37.5, 12.5, 62.5, 8, "prompt", "%"),
            _row("baseline", 0.0, "KID-tinyCLIP", 0.0012, -0.002, 0.004, 8, "real"),
            _row("L1 30%", 0.3, "KID-tinyCLIP", 0.000012, -0.00003, 0.00005, 8, "real"),
            _row("baseline", 0.0, "sparsity", 0.0, 0.0, 0.0, 1, "", "%"),
            _row("L1 30%", 0.3, "sparsity", 30.0, 30.0, 30.0, 1, "", "%"),
            _row("L1 30%", 0.3, "latency", 1234.5, 1100.0, 1300.0, 5, "", "ms"),
            _row(report.REAL_SETTING, math.nan, "accuracy: all", 99.0, 98.0, 100.0, 8, "prompt", "%"),
        ]
    )


@pytest.mark.parametrize(
    "value, digits, text",
    [
        (100.0, 2, "100"),
        (100.0, 3, "100"),
        (37.5, 3, "37.5"),
        (0.000012, 2, "0.000012"),
        (12345.6, 3, "12300"),
        (math.nan, 3, "-"),
        (0.0, 4, "0"),
    ],
)
def test_numbers_are_plain_never_exponent(value, digits, text):
    assert report.plain_number(value, digits) == text


@pytest.mark.parametrize(
    "value, digits, text",
    [(100.0, 2, "100"), (99.96, 2, "100"), (999.7, 3, "1,000"), (12345.6, 4, "12,346"), (0.000123, 3, "0.000123")],
)
def test_app_table_cells_never_use_exponents(value, digits, text):
    # The pair's numbers and the history table: "{:.2g}" turned 99.96 into "1e+02".
    assert app_format.num(value, digits) == text


def test_app_summary_prints_100_not_1e02(table):
    out = app_format.sweep_summary(table)
    assert list(out["setting"]) == ["baseline", "L1 30%"]  # the real-images row is not a setting
    by = out.set_index("setting")
    assert by.loc["baseline", "accuracy %"] == "100"  # an interval of one value: the value alone
    assert by.loc["L1 30%", "accuracy %"] == "37.5 [12.5, 62.5]"
    assert by.loc["L1 30%", "sparsity %"] == "30"
    assert by.loc["L1 30%", "latency ms"] == "1230 [1100, 1300]"
    assert by.loc["baseline", "latency ms"] == ""  # not measured for this setting
    assert "e" not in "".join(out.drop(columns="setting").to_numpy().ravel())
    assert "CLIP score" not in out  # a column the table has no metric for is left out


def test_report_and_app_use_the_same_cells(table):
    wide = report.headline_table(table, report.report_columns(table), include_real=True).set_index("setting")
    assert (
        wide.loc["L1 30%", "accuracy: all (%)"]
        == app_format.sweep_summary(table).set_index("setting").loc["L1 30%", "accuracy %"]
    )
    assert wide.loc["L1 30%", "KID-tinyCLIP vs real"] == "0.000012 [-0.00003, 0.00005]"
    assert report.REAL_SETTING in wide.index
    records = report.headline_records(table)
    assert records["L1 30%"]["KID-tinyCLIP vs real"]["ci"] == [-0.00003, 0.00005]
    assert records["baseline"]["accuracy: all"]["n"] == 8


def test_sweep_module_keeps_the_report_names():
    from compression import sweep

    for name in (
        "summarize",
        "write_report",
        "write_pngs",
        "report_figures",
        "first_clear_drop",
        "quality_holds_until",
        "paired_difference",
    ):
        assert getattr(sweep, name) is getattr(report, name)


def test_paired_latency_ratio_and_interval():
    base = LatencyStats(0.2, 0.19, 0.21, 0.19, 0.21, (0.2, 0.21, 0.19, 0.2, 0.2), 1)
    this = LatencyStats(0.1, 0.09, 0.11, 0.09, 0.11, (0.1, 0.11, 0.09, 0.1, 0.1), 1)
    pair = latency.PairedLatency(base, this)
    assert pair.ratio == pytest.approx(0.5)
    lo, hi = pair.ratio_interval(n_boot=200)
    assert lo <= 0.5 <= hi
    lat, speed = pair.sweep_estimates(steps=2, warmup=1, n_boot=200)
    assert (lat.metric, lat.value, lat.n) == ("latency", pytest.approx(100.0), 5)
    assert speed.value == pytest.approx(2.0)
    fields = pair.bench_fields()
    assert fields["step_ms"] == pytest.approx(100.0) and fields["step_ratio"] == pytest.approx(0.5)


def test_pair_captions_and_sweep_texts():
    from types import SimpleNamespace

    spec = SimpleNamespace(label="L1 <30%>")
    result = SimpleNamespace(
        baseline_seconds=0.5,
        baseline_cached=True,
        compressed_seconds=0.25,
        compressed_nonfinite=True,
        spec=spec,
        steps=10,
        latency=None,
    )
    base, comp = app_format.pair_captions(result)
    assert base == "**Baseline** · fp32 · 50.0 ms/step (cached)"
    # a label is escaped, never markup; drawing times are no warm, paired comparison and say so
    assert comp == "**L1 &lt;30%&gt;** · 25.0 ms/step (0.50× baseline, not timed warm) · NaN/inf"
    rounds = (0.010, 0.011, 0.012, 0.010, 0.009, 0.010, 0.011, 0.010)
    timed = latency.PairedLatency(_stats(rounds), _stats(tuple(1.02 * t for t in rounds)))
    base, comp = app_format.pair_captions(SimpleNamespace(**{**vars(result), "latency": timed}))
    assert base == "**Baseline** · fp32 · 10.0 ms/step"  # warm medians: the cache no longer matters
    assert comp == "**L1 &lt;30%&gt;** · 10.2 ms/step (1.02× baseline [1.02, 1.02]) · NaN/inf"
    t = pd.DataFrame(
        [
            dict(metric="non-finite images", value=2.0, n=8, setting="int4"),
            dict(metric="non-finite images", value=0.0, n=8, setting="baseline"),
        ]
    )
    assert app_format.nonfinite_warnings(t) == ["int4: 2 of 8 images held NaN/inf; they are left out of its scores."]
