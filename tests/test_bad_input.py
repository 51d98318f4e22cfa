"""Bad input through the API, bypassing the UI (issue 7): a table of requests a browser would never send.

Every case is posted as raw JSON to `/gradio_api/call/<endpoint>` (the same route gradio_client uses), so values
the client library would refuse to send (NaN, infinities, booleans for numbers) reach the server too. Each must
be refused by the app's validator before it joins the queue: HTTP 422, in under 2 s, naming the parameter at
fault, with a plain message that states the valid range or values, that holds no stack trace and that never
echoes the raw value (Gradio renders error messages as HTML). Cases that can proceed (a prompt over 77 CLIP
tokens, a prompt holding HTML) run, and say so; after all of them a valid request still succeeds.
"""

from __future__ import annotations

import json
import math
import time

import httpx
import pytest
from app_args import compare_args
from gradio_client import Client
from gradio_client.exceptions import AppError, ValidationError

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:gradio.*", "ignore::FutureWarning:gradio.*", "ignore:.*:Warning:gradio.queueing"
)

PROMPT = "a red circle on the left on a blue background"
REFUSE_WITHIN_S = 2.0
# /compare's inputs in order (the 15th is the session's history State), at valid values.
COMPARE = compare_args(prompt=PROMPT, history=[])
SWEEP = dict(
    model="tiny-shapes",
    prune_percents=[0, 30],
    prune_methods=["l1-unstructured"],
    quant_modes=["fp32"],
    study="grid",
    n_prompts=2,
    steps=2,
    guidance=4.0,
    latency_repeats=0,
    recover_steps=[0],
    track=False,  # also log to trackio: a raw call sends every input, this one included
)
SCRIPT = "<script>alert('dcl')</script>"
MARK = "zzq-unknown-zzq"  # a value no valid-range message could contain


def case(endpoint, field, message, echo=(), **bad):
    """One row: the endpoint, the arguments changed from the valid ones, the parameter that must be named, a
    piece of the message (the valid range), and raw text that must not come back."""
    return pytest.param(endpoint, bad, field, message, tuple(echo), id=f"{endpoint}-{field}-{list(bad.values())!r:.40}")


RANGE_SEED = "seed must be a whole number from 0 to 4294967295"
RANGE_STEPS = "steps must be a whole number from 1 to 100"
RANGE_GUIDANCE = "guidance must be a number from 0 to 20"
RANGE_PRUNE = "pruning must be a number from 0 to 95%"
RANGE_SIZE = "must be a multiple of 8 from 32 to 128 pixels"

CASES = [
    case("compare", "prompt", "prompt is empty", prompt=""),
    case("compare", "prompt", "prompt is empty", prompt=" \t\n  "),
    case("compare", "prompt", "at most 1000 characters", echo=["x" * 50], prompt="x" * 10_240),
    case("compare", "prompt", "at most 1000 characters", echo=["<script", "alert("], prompt=SCRIPT * 100),
    case("compare", "prompt", "prompt must be text", echo=[MARK], prompt={"text": MARK}),
    case("compare", "negative_prompt", "at most 1000 characters", echo=["<script"], negative_prompt=SCRIPT * 100),
    case("compare", "seed", RANGE_SEED, seed=-1),
    case("compare", "seed", RANGE_SEED, echo=[str(2**64)], seed=2**64),
    case("compare", "seed", RANGE_SEED, echo=["3.5"], seed=3.5),
    case("compare", "seed", RANGE_SEED, echo=["None", "null"], seed=None),
    case("compare", "seed", RANGE_SEED, echo=[MARK], seed=MARK),
    case("compare", "seed", RANGE_SEED, echo=["True", "true"], seed=True),
    case("compare", "steps", RANGE_STEPS, steps=0),
    case("compare", "steps", RANGE_STEPS, echo=["10000"], steps=10_000),
    case("compare", "steps", RANGE_STEPS, echo=["7.5"], steps=7.5),
    case("compare", "guidance", RANGE_GUIDANCE, echo=["nan", "NaN"], guidance=math.nan),
    case("compare", "guidance", RANGE_GUIDANCE, echo=["inf", "Infinity"], guidance=math.inf),
    case("compare", "guidance", RANGE_GUIDANCE, echo=["-inf", "-Infinity"], guidance=-math.inf),
    case("compare", "guidance", RANGE_GUIDANCE, echo=["-1"], guidance=-1),
    case("compare", "height", "height " + RANGE_SIZE, echo=["65"], height=65),
    case("compare", "width", "width " + RANGE_SIZE, echo=["100000"], width=100_000),
    case("compare", "height", "height " + RANGE_SIZE, echo=["4096"], height=4096),
    case("compare", "prune_percent", RANGE_PRUNE, echo=["-5"], prune_percent=-5),
    case("compare", "prune_percent", RANGE_PRUNE, echo=["100"], prune_percent=100),
    case("compare", "prune_percent", RANGE_PRUNE, echo=["nan", "NaN"], prune_percent=math.nan),
    case(
        "compare",
        "prune_method",
        "unknown pruning method; choose one of: l1-unstructured",
        echo=[MARK],
        prune_method=MARK,
    ),
    case(
        "compare",
        "prune_method",
        "unknown pruning method; choose one of:",
        echo=["<img", "onerror"],
        prune_method="<img src=x onerror=alert(1)>",
    ),
    case("compare", "prune_scope", "unknown pruning scope; choose one of: all", echo=[MARK], prune_scope=MARK),
    case("compare", "quant_mode", "unknown quantization mode; choose one of: fp32", echo=[MARK], quant_mode=MARK),
    case("compare", "quant_mode", "modes this device cannot run are hidden", echo=[], quant_mode="fp8"),
    case("compare", "model", "unknown model; choose one of: tiny-shapes", echo=[MARK], model=MARK),
    case("compare", "model", "unknown model; choose one of: tiny-shapes", echo=["passwd"], model="../../etc/passwd"),
    case("compare", "model", "unknown model; choose one of: tiny-shapes", echo=["someone"], model="someone/evil-model"),
    case("compare", "bits", "bits must be a whole number from 2 to 8", quant_mode="simulated-int", bits=1),
    case("compare", "bits", "bits must be a whole number from 2 to 8", echo=["9"], quant_mode="simulated-int", bits=9),
    case("compare", "recover_steps", "recovery steps must be a whole number from 0 to 100000", recover_steps=-1),
    case("compare", "recover_steps", "recovery steps must be a whole number from 0", echo=["2.5"], recover_steps=2.5),
    case("compare", "recover_steps", "Lower the recovery steps", recover_steps=5000),
    case("compare", "recover_steps", "recovery fine-tunes a pruned UNet", prune_percent=0, recover_steps=50),
    case("sweep", "n_prompts", "prompts must be a whole number from 1 to 200", n_prompts=0),
    case("sweep", "n_prompts", "prompts must be a whole number from 1 to 200", echo=["1000000"], n_prompts=10**6),
    case("sweep", "prune_percents", "choose at least one pruning percentage from 0 to 95", prune_percents=[]),
    case(
        "sweep",
        "prune_percents",
        "choose at most 14 pruning percentages",
        prune_percents=[i * 95 / 10**5 for i in range(10**5)],
    ),  # 10^5 settings (1.2 MB: under the body cap)
    case(
        "sweep",
        "prune_percents",
        "the app runs at most 24 per sweep",  # 14 x 5 x 9 settings x 200 prompts
        prune_percents=[0, 10, 20, 25, 30, 35, 40, 45, 50, 60, 70, 80, 90, 95],
        prune_methods=["l1-unstructured", "l1-unstructured-layer", "random-unstructured"],
        quant_modes=["fp32", "bf16", "int8-weight", "int8-dynamic", "int4-weight"],
        n_prompts=200,
    ),
    case("sweep", "prune_methods", "choose at least one pruning method", prune_methods=[]),
    case("sweep", "prune_methods", "unknown pruning method; choose one of:", echo=[MARK], prune_methods=[MARK] * 1000),
    case(
        "sweep",
        "quant_modes",
        "unknown quantization mode; choose one of: fp32",
        echo=["simulated-int:1"],
        quant_modes=["simulated-int:1"],
    ),
    case("sweep", "recover_steps", "choose at least one number of recovery steps", recover_steps=[]),
    case(
        "sweep",
        "recover_steps",
        "each number of recovery steps must be a whole number from 0 to 1000",
        echo=["1e9", "1000000000"],
        recover_steps=[0, 10**9],
    ),
    case("sweep", "study", "unknown study; choose one of: grid, layer-sensitivity", echo=[MARK], study=MARK),
    case("sweep", "steps", RANGE_STEPS, echo=["nan", "NaN"], steps=math.nan),
    case("sweep", "guidance", RANGE_GUIDANCE, echo=["inf"], guidance=math.inf),
    case(
        "sweep",
        "latency_repeats",
        "latency repeats must be a whole number from 0 to 10",
        echo=["1e9", "1000000000"],
        latency_repeats=10**9,
    ),
]
assert len(CASES) >= 25


def post(url: str, endpoint: str, args: dict) -> httpx.Response:
    """POST the raw JSON body gradio_client would send; NaN and infinities go as JSON5-style literals, as
    Python's json.dumps writes them (a hand-written client can send them; gradio_client cannot)."""
    body = json.dumps({"data": list(args.values())})
    return httpx.post(
        f"{url.rstrip('/')}/gradio_api/call/{endpoint}",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )


def stream(url: str, endpoint: str, event_id: str) -> tuple[str, str]:
    """(event, data) of the SSE result of /call/<endpoint>/<event_id>."""
    text = httpx.get(f"{url.rstrip('/')}/gradio_api/call/{endpoint}/{event_id}", timeout=120).text
    event = data = ""
    for line in text.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data = line.split(":", 1)[1].strip()
    return event, data


def assert_plain(text: str, echo: tuple[str, ...] = ()) -> None:
    assert "Traceback" not in text and 'File "' not in text and ".py" not in text, text[:500]
    for raw in echo:
        assert raw not in text, f"the raw input {raw!r} came back: {text[:300]}"


@pytest.mark.parametrize("endpoint, bad, field, message, echo", CASES)
def test_bad_request_is_refused_at_once_with_the_valid_range(lab_app, endpoint, bad, field, message, echo):
    _, url = lab_app
    body = json.dumps({"data": list({**(COMPARE if endpoint == "compare" else SWEEP), **bad}.values())})
    start = time.perf_counter()
    r = httpx.post(
        f"{url.rstrip('/')}/gradio_api/call/{endpoint}",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    seconds = time.perf_counter() - start
    assert r.status_code == 422, (r.status_code, r.text[:300])  # the validator: refused, never queued
    assert seconds < REFUSE_WITHIN_S, f"refused after {seconds:.2f} s"
    verdicts = {v["parameter_name"]: v for v in r.json()["detail"] if isinstance(v, dict) and "parameter_name" in v}
    assert verdicts[field]["is_valid"] is False
    text = verdicts[field]["message"]
    assert message in text, text
    assert len(text) < 400  # a sentence, not a dump of the input
    assert_plain(r.text)
    assert_plain(" ".join(v["message"] for v in verdicts.values()), echo)


def test_gradio_client_gets_the_same_plain_message(lab_app):
    _, url = lab_app
    client = Client(url, verbose=False, download_files=False)
    with pytest.raises(ValidationError) as caught:
        client.predict(api_name="/compare", prompt=PROMPT, steps=10_000)
    assert "- steps: steps must be a whole number from 1 to 100." in str(caught.value)
    assert_plain(str(caught.value), ("10000",))


def test_prompt_over_77_tokens_warns_and_still_runs(lab_app):
    _, url = lab_app
    long_prompt = " ".join([PROMPT] * 9)  # ~90 CLIP tokens, 413 characters: within the 1000-character limit
    r = post(url, "compare", {**COMPARE, "prompt": long_prompt})
    assert r.status_code == 200
    event, data = stream(url, "compare", r.json()["event_id"])
    assert event == "complete", data[:300]
    details = json.loads(data)[9]
    assert details["prompt_truncated"] is True
    assert any("77 tokens" in w for w in details["warnings"])


def test_prompt_holding_html_runs_and_is_never_rendered_as_html(lab_app):
    """Text with markup is a valid prompt (the model draws something); it comes back only as data: in the
    details JSON and the history table (text cells), never inside Markdown, captions or chart notes."""
    _, url = lab_app
    prompt = f"a red circle <img src=x onerror=alert(1)> {SCRIPT}"
    r = post(url, "compare", {**COMPARE, "prompt": prompt})
    assert r.status_code == 200
    event, data = stream(url, "compare", r.json()["event_id"])
    assert event == "complete", data[:300]
    out = json.loads(data)
    details = out[9]
    assert details["prompt"] == prompt  # data, shown by gr.JSON as text
    markdown = [out[i] for i in (2, 3, 6, 8, 14)]  # captions, status, chart notes: rendered as Markdown/HTML
    assert all("<img" not in m and "<script" not in m for m in markdown), markdown
    for plot in (out[12], out[13]):  # Plotly renders a subset of HTML (<a href>, <b>, ...) in hover labels
        figure = json.dumps(json.loads(plot["plot"]), ensure_ascii=False)  # its JSON escapes '<' as \u003c
        assert "<img" not in figure and "<script" not in figure


def test_unexpected_server_error_reaches_the_client_without_a_trace(lab_app, monkeypatch):
    """A failure nobody anticipated (here: the engine raises with a path and a secret in its message) becomes a
    generic message with a log reference; neither the exception text nor a stack trace reaches the client."""
    app, url = lab_app
    engine = app.LAB.get("tiny-shapes").engine

    def broken(*args, **kwargs):
        raise RuntimeError(f"SECRET-{MARK} in /work/main/compression/engine.py line 1")

    monkeypatch.setattr(engine, "generate_pair", broken)
    client = Client(url, verbose=False, download_files=False)
    with pytest.raises(AppError) as caught:
        client.predict(api_name="/compare", prompt=PROMPT, steps=2)
    text = str(caught.value)
    assert "unexpected error (reference" in text
    assert_plain(text, (MARK, "SECRET", "engine.py"))
    r = post(url, "compare", {**COMPARE, "seed": 4242})  # the raw route: the same
    event, data = stream(url, "compare", r.json()["event_id"])
    assert event == "error" and "unexpected error (reference" in data
    assert_plain(data, (MARK, "SECRET"))


def test_malformed_bodies_get_a_4xx_without_a_trace(lab_app):
    """Requests that are not even shaped like the endpoint's inputs: Gradio refuses them before our code.
    (Gradio's own 400 for too few inputs lists the values it received, as JSON; see README "Reliability".)"""
    _, url = lab_app
    base = f"{url.rstrip('/')}/gradio_api/call/compare"
    for body in ("not json", "{}", json.dumps({"data": "x"}), json.dumps({"data": list(COMPARE.values())[:3]})):
        r = httpx.post(base, content=body, headers={"content-type": "application/json"}, timeout=10)
        assert 400 <= r.status_code < 500, (body[:40], r.status_code)
        assert r.headers["content-type"].startswith("application/json")  # data, not a page a browser renders
        assert "Traceback" not in r.text


def test_after_every_bad_request_a_valid_one_succeeds(lab_app):
    """Runs after the table (pytest keeps file order): the server is not left in a broken state."""
    _, url = lab_app
    r = post(url, "compare", {**COMPARE, "seed": 43})
    event, data = stream(url, "compare", r.json()["event_id"])
    assert event == "complete", data[:300]
    assert json.loads(data)[9]["seed"] == 43
