"""Input the checks must refuse or keep apart, through the real server (raw HTTP to 127.0.0.1 only).

- Text that cannot be encoded (a lone UTF-16 surrogate, valid in JSON as "\\ud800") is refused by the
  validator with HTTP 422 naming the parameter, on every endpoint that takes free text (/compare, /export);
  /sweep takes none.
- Two pruning amounts that differ (30 and 30.001) are two settings with two labels: a sweep gives two rows.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.test_bad_input import COMPARE, SWEEP, stream

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:gradio.*", "ignore::FutureWarning:gradio.*", "ignore:.*:Warning:gradio.queueing"
)


def post_ascii(url: str, endpoint: str, args: dict) -> httpx.Response:
    """The JSON body as a hand-written client sends it: non-ASCII escaped, so a lone surrogate travels as the
    six characters \\ud800 (gradio_client cannot encode it)."""
    body = json.dumps({"data": list(args.values())}, ensure_ascii=True)
    assert "\\ud800" in body or "\\udfff" in body
    return httpx.post(
        f"{url.rstrip('/')}/gradio_api/call/{endpoint}",
        content=body.encode("ascii"),
        headers={"content-type": "application/json"},
        timeout=30,
    )


@pytest.mark.parametrize("endpoint", ["compare", "export"])
@pytest.mark.parametrize("field, value", [("prompt", "a red circle \ud800"), ("negative_prompt", "blurry \udfff")])
def test_lone_surrogate_is_refused_naming_the_parameter(lab_app, endpoint, field, value):
    _, url = lab_app
    args = {**COMPARE, field: value}
    if endpoint == "export":
        args.pop("history")  # /export takes the comparison's inputs without the session's history
    r = post_ascii(url, endpoint, args)
    assert r.status_code == 422, (r.status_code, r.text[:300])
    verdicts = {v["parameter_name"]: v for v in r.json()["detail"] if isinstance(v, dict) and "parameter_name" in v}
    assert verdicts[field]["is_valid"] is False
    name = field.replace("_", " ")
    assert verdicts[field]["message"].startswith(f"{name} holds characters that are not valid Unicode")
    assert "unexpected error" not in r.text
    others = [f for f, v in verdicts.items() if not v["is_valid"] and f != field]
    assert not others, others  # only the parameter at fault is marked


def test_valid_non_ascii_text_still_passes_the_checks(lab_app):
    import app_service as svc

    app, _ = lab_app
    assert svc.text("prompt", "a red circle \u00e9 \U0001f600", required=True)  # real characters, escaped or not
    with pytest.raises(svc.RequestError, match="^negative prompt holds characters"):
        svc.text("negative prompt", "\ud83d", required=False)  # half of a surrogate pair


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_amounts_that_differ_give_two_labels_and_two_rows(lab_app):
    _, url = lab_app
    args = {**SWEEP, "prune_percents": [30, 30.001], "n_prompts": 1, "steps": 1}
    r = httpx.post(f"{url.rstrip('/')}/gradio_api/call/sweep", json={"data": list(args.values())}, timeout=30)
    assert r.status_code == 200, r.text[:300]
    event, data = stream(url, "sweep", r.json()["event_id"])
    assert event == "complete", data[:300]
    out = json.loads(data)
    summary = out[1]
    text = json.dumps(summary)
    assert "L1 30%" in text and "L1 30.001%" in text, text[:500]
    import pandas as pd

    csv = out[2]
    path = csv["path"] if isinstance(csv, dict) else csv
    table = pd.read_csv(path)
    labels = set(table["label"]) if "label" in table else set(table.astype(str).stack())
    assert {"L1 30%", "L1 30.001%"} <= labels, sorted(labels)[:20]


def _rss_bytes() -> int:
    """This process's resident memory (the fixture serves the app in-process)."""
    import psutil

    return psutil.Process().memory_info().rss


def test_a_60_mb_body_is_refused_with_413_before_it_is_parsed(lab_app):
    import app_service as svc

    _, url = lab_app
    assert svc.MAX_BODY_BYTES < 60 * 2**20
    prompt = "x" * (60 * 2**20)
    body = json.dumps({"data": [prompt, *list(COMPARE.values())[1:]]}).encode()
    del prompt
    before = _rss_bytes()
    r = httpx.post(
        f"{url.rstrip('/')}/gradio_api/call/compare",
        content=body,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    grown = _rss_bytes() - before
    assert r.status_code == 413, (r.status_code, r.text[:200])
    assert "APP_MAX_BODY_MB" in r.text
    assert grown < 30 * 2**20, f"RSS grew by {grown / 2**20:.1f} MB"  # the client's copy was made before


def test_a_chunked_body_without_content_length_is_counted(lab_app):
    _, url = lab_app

    def chunks():
        for _ in range(60):
            yield b"x" * 2**20

    r = httpx.post(
        f"{url.rstrip('/')}/gradio_api/call/compare",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413, (r.status_code, r.text[:200])


def test_normal_requests_and_small_chunked_bodies_still_pass(lab_app):
    _, url = lab_app
    body = json.dumps({"data": list({**COMPARE, "steps": 1, "seed": 5}.values())}).encode()
    r = httpx.post(
        f"{url.rstrip('/')}/gradio_api/call/compare",
        content=iter([body[:10], body[10:]]),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 200, r.text[:300]
    event, data = stream(url, "compare", r.json()["event_id"])
    assert event == "complete", data[:300]
    assert httpx.get(f"{url.rstrip('/')}/gradio_api/info", timeout=10).status_code == 200


def test_an_over_budget_sweep_is_refused_with_its_cost_before_it_runs(lab_app):
    import app_service as svc

    _, url = lab_app
    args = {**SWEEP, "prune_percents": [0, 10, 20, 30, 40, 60], "n_prompts": 50, "steps": 100, "latency_repeats": 10}
    cost = svc.sweep_cost(6, 50, 100, 10)
    assert cost > svc.MAX_JOB_STEPS
    r = httpx.post(f"{url.rstrip('/')}/gradio_api/call/sweep", json={"data": list(args.values())}, timeout=30)
    assert r.status_code == 422, (r.status_code, r.text[:300])  # the validator: refused, never queued
    verdicts = {v["parameter_name"]: v for v in r.json()["detail"] if isinstance(v, dict) and "parameter_name" in v}
    text = verdicts["n_prompts"]["message"]
    assert f"costs {cost:,} denoising image-steps" in text, text
    assert f"at most {svc.MAX_JOB_STEPS:,}" in text and "Lower the prompts, steps" in text


def test_the_budget_is_one_constant_that_the_checks_read(lab_app, monkeypatch):
    import app_service as svc

    app, _ = lab_app
    ok = svc.sweep_problems(app.LAB, "tiny-shapes", [0, 30], ["l1-unstructured"], ["fp32"], "grid", 2, 2, 4.0, 0)
    assert ok == {}
    monkeypatch.setattr(svc, "MAX_JOB_STEPS", 7)  # 2 settings x 2 steps x 2 prompts = 8
    bad = svc.sweep_problems(app.LAB, "tiny-shapes", [0, 30], ["l1-unstructured"], ["fp32"], "grid", 2, 2, 4.0, 0)
    assert "costs 8 denoising image-steps" in bad["n_prompts"]
    problems = svc.compare_problems(
        app.LAB, "a red circle", "", 0, 4, 4.0, "tiny-shapes", 30, "l1-unstructured", "all", "fp32", 4, 0, 0
    )
    # 2 images x 4 steps + the warm timing: 2 UNets x (1 warm-up + 8 rounds) one-step runs = 26
    assert "costs 26 denoising image-steps" in problems["steps"]
