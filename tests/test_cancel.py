"""Stopping model work: the library's CancelToken, and the app's cancel, Stop button and clients that leave.

Library: a token cancelled during a denoising step stops `generate_pair` / `generate_batch` at the end of that
step (counted by the engine's image-step counter and by UNet forwards), and a stopped sweep keeps its finished
settings for the rerun. App (the real server, `lab_app`): a sweep or a comparison cancelled through the API, a
client process killed mid-sweep, a browser page closed mid-sweep and the Stop button all stop the server's work
within a few seconds: the engine's image-step counter stops, the job's worker thread ends, and the next request
runs alone. Signals are counters, threads and files, never CPU time.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from compression import Cancelled, CancelToken, CompressionSpec, Engine
from compression.engine import _TOKENIZER_LOCK

PROMPTS = ["a red circle on the left on a white background", "a blue square at the top on a black background"]
SPEC = CompressionSpec(prune_amount=0.3)


class CancelAtForward:
    """A forward hook on a UNet that cancels a fresh token during its `at`-th forward (one denoising step)."""

    def __init__(self, unet, at: int):
        self.token, self.at, self.calls = CancelToken(), at, 0
        self.handle = unet.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1
        if self.calls == self.at:
            self.token.cancel("test")


def test_token_stops_generate_batch_and_pair_within_one_step(tiny_pipe):
    engine = Engine(tiny_pipe, "tiny-cancel", cache_size=1, baseline_cache_size=0)
    unet = engine.compress(SPEC)[0].unet  # the cached compressed copy: hooks on it never touch the baseline
    hook, before = CancelAtForward(unet, at=3), engine.image_steps
    try:
        with pytest.raises(Cancelled, match="test"):
            engine.generate_batch(PROMPTS, [0, 1], 10, 4.0, SPEC, cancel=hook.token)
    finally:
        hook.handle.remove()
    assert hook.calls == 3  # the step in which it was cancelled finished; no fourth forward
    assert engine.image_steps - before == 3 * len(PROMPTS)

    hook, before = CancelAtForward(unet, at=2), engine.image_steps
    try:
        with pytest.raises(Cancelled):
            engine.generate_pair(PROMPTS[0], 0, 10, 4.0, SPEC, cancel=hook.token)
    finally:
        hook.handle.remove()
    assert hook.calls == 2 and engine.image_steps - before == 10 + 2  # the baseline's 10 steps, 2 compressed
    assert not _TOKENIZER_LOCK.locked()

    early = CancelToken()
    early.cancel("before it started")
    before = engine.image_steps
    with pytest.raises(Cancelled, match="before it started"):
        engine.generate_batch(PROMPTS, [0, 1], 10, 4.0, SPEC, cancel=early)
    assert engine.image_steps == before and not early.cancel("again") and early.reason == "before it started"
    # The engine is left usable: the same call without a token runs to the end.
    assert engine.generate_batch(PROMPTS, [0, 1], 2, 4.0, SPEC).images.shape[0] == 2


@pytest.mark.slow
def test_stopped_sweep_keeps_finished_settings_and_the_rerun_reuses_them(tiny_pipe, tmp_path):
    from compression.sweep import MetricSet, SweepStopped, run_sweep

    engine = Engine(tiny_pipe, "tiny-cancel-sweep", cache_size=1, baseline_cache_size=0)
    specs = [CompressionSpec(), CompressionSpec(prune_amount=0.3), CompressionSpec(prune_amount=0.6)]
    labels = [s.label for s in specs]
    prompts = PROMPTS * 2
    fast = dict(steps=2, guidance=2.0, batch_size=2, latency_repeats=0, n_boot=20, show_bar=False, plotlyjs="cdn")

    def stop_after(text: str):
        """A token and a progress callback that cancels it once the batch reported as `text` is done."""
        token = CancelToken()
        return token, lambda fraction, what: what == text and token.cancel("enough")

    token, progress = stop_after(f"{labels[1]} 4/4")  # the first pruned setting's last batch
    with pytest.raises(SweepStopped) as stop:
        run_sweep(
            engine, specs, prompts, metric_set=MetricSet(), out_dir=tmp_path, progress=progress, cancel=token, **fast
        )
    assert stop.value.reason == "enough"
    assert stop.value.finished == labels[:2] and stop.value.unfinished == labels[2:]
    assert len(list((tmp_path / "cells").glob("*.json"))) == 2

    # The rerun reuses both finished settings (draws nothing for them) and goes on with the third; stopped
    # again after that one's first batch, it has drawn exactly that batch: 2 images x 2 steps.
    token, progress = stop_after(f"{labels[2]} 2/4")
    before = engine.image_steps
    with pytest.raises(SweepStopped) as stop:
        run_sweep(
            engine, specs, prompts, metric_set=MetricSet(), out_dir=tmp_path, progress=progress, cancel=token, **fast
        )
    assert stop.value.finished == labels[:2] and engine.image_steps - before == 2 * 2


# ------------------------------------------------------------------------------------------ the real app

SWEEP = dict(prune_percents=[0, 30, 60], prune_methods=["l1-unstructured"], quant_modes=["fp32"], study="grid")
CLIENT_SCRIPT = """
import sys, time
from gradio_client import Client
job = Client(sys.argv[1], verbose=False).submit(**eval(sys.argv[2]), api_name="/sweep")
print("submitted", flush=True)
time.sleep(600)
"""

app_warnings = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:gradio.*", "ignore::FutureWarning:gradio.*", "ignore:.*:Warning:gradio.queueing"
)


def wait_until(condition, timeout: float, what: str, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(poll)


class Watch:
    """Samples the app's running model jobs every 10 ms in a thread: the most seen at once, and every kind."""

    def __init__(self, app):
        self.app, self.most, self.stop = app, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            self.most = max(self.most, len(self.app.JOBS.running()))
            self.stop.wait(0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def engines(app):
    loaded = app.LAB.get(app.LAB.default_model)
    return loaded.engine, loaded.sweep_engine


def assert_stopped(app, engine, job_kind: str, timeout: float = 10.0) -> None:
    """No model job runs any more, and the engine's image-step counter stays still for half a second (a stray
    worker would have run 20 or more steps of the embedded model by then)."""
    wait_until(lambda: not app.JOBS.running(), timeout, f"the {job_kind} job's worker stopped")
    steps = engine.image_steps
    time.sleep(0.5)
    assert engine.image_steps == steps, f"the {job_kind} went on drawing after it was stopped"


def last_job(app, kind: str):
    return next(j for j in reversed(app.JOBS.recent) if j.kind == kind)


@app_warnings
@pytest.mark.slow
def test_api_cancel_stops_the_sweep_and_the_next_request_runs_alone(lab_app, caplog):
    from gradio_client import Client

    app, url = lab_app
    compare_engine, sweep_engine = engines(app)
    caplog.set_level("INFO", logger="dcl.app")
    with Watch(app) as watch:
        start = sweep_engine.image_steps
        job = Client(url, verbose=False).submit(**SWEEP, n_prompts=32, steps=17, latency_repeats=0, api_name="/sweep")
        wait_until(lambda: sweep_engine.image_steps > start + 50, 60, "the sweep started drawing")
        job.cancel()  # POST /cancel: answered once the task (and, now, its worker) has ended
        assert_stopped(app, sweep_engine, "sweep")
        stopped = last_job(app, "sweep")
        assert stopped.outcome == "stopped" and stopped.token.reason == "cancelled by the client"
        assert 50 < stopped.steps_run < stopped.cost == 3 * 17 * 32

        before = compare_engine.image_steps, sweep_engine.image_steps
        out = Client(url, verbose=False).predict(prompt=PROMPTS[0], steps=3, api_name="/compare")
        assert out[9]["steps"] == 3
        timing = 0 if out[9]["numbers"]["latency_cached"] else app.svc.compare_cost(0)  # the warm timing rounds
        assert compare_engine.image_steps - before[0] == 2 * 3 + timing and sweep_engine.image_steps == before[1]
    assert watch.most == 1  # never two model jobs at once
    assert last_job(app, "compare").started >= stopped.ended
    assert app.JOBS.estimate_seconds(1000) > 0  # the pace measured on finished jobs prices the next ones
    assert f"job {stopped.ref}: sweep stopped (cancelled by the client)" in caplog.text


@app_warnings
def test_api_cancel_stops_a_running_comparison(lab_app):
    from gradio_client import Client

    app, url = lab_app
    compare_engine, _ = engines(app)
    client = Client(url, verbose=False)
    with Watch(app) as watch:
        for seed in (11, 12):  # twice in a row: each ends before the next starts
            start = compare_engine.image_steps
            job = client.submit(prompt=PROMPTS[0], seed=seed, steps=100, height=128, width=128, api_name="/compare")
            wait_until(lambda s=start: compare_engine.image_steps >= s + 3, 60, "the comparison started drawing")
            job.cancel()
            assert_stopped(app, compare_engine, "comparison")
            stopped = last_job(app, "compare")
            assert stopped.outcome == "stopped" and stopped.steps_run < stopped.cost == app.svc.compare_cost(100)
    assert watch.most == 1


def leave_as_killed_client(app, url: str, started) -> None:
    """A gradio_client in its own process submits a sweep and is killed once the sweep draws."""
    args = repr(dict(SWEEP, n_prompts=32, steps=13, latency_repeats=0))
    proc = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, url, args], stdout=subprocess.DEVNULL)
    try:
        wait_until(started, 60, "the client's sweep started drawing")
    finally:
        proc.kill()
        proc.wait(10)


def leave_as_raw_http_client(app, url: str, started) -> None:
    """POST /gradio_api/call/sweep, open its event stream, close the connection once the sweep draws (no session
    heartbeat: only the closed stream tells the server)."""
    import httpx

    # ... n_prompts, steps, guidance, latency repeats, recovery steps, track
    data = [app.LAB.default_model, *SWEEP.values(), 32, 11, 4.0, 0, [0], False]
    with httpx.Client(timeout=30) as http:
        event_id = http.post(f"{url}gradio_api/call/sweep", json={"data": data}).json()["event_id"]
        with http.stream("GET", f"{url}gradio_api/call/sweep/{event_id}"):
            wait_until(started, 60, "the raw client's sweep started drawing")


@app_warnings
@pytest.mark.parametrize("leave", [leave_as_killed_client, leave_as_raw_http_client], ids=["killed", "raw-http"])
def test_a_client_that_leaves_stops_its_sweep(lab_app, caplog, leave):
    from app_jobs import CLIENT_LEFT, SESSION_CLOSED

    app, url = lab_app
    _, sweep_engine = engines(app)
    caplog.set_level("INFO", logger="dcl.app")
    start = sweep_engine.image_steps
    leave(app, url, lambda: sweep_engine.image_steps > start + 50)
    assert_stopped(app, sweep_engine, "sweep of the client that left")
    stopped = last_job(app, "sweep")
    # A gradio_client also keeps a session heartbeat: whichever of the two closes first is the reason.
    reasons = (CLIENT_LEFT, SESSION_CLOSED) if leave is leave_as_killed_client else (CLIENT_LEFT,)
    assert stopped.outcome == "stopped" and stopped.token.reason in reasons
    assert f"job {stopped.ref}: stop asked ({stopped.token.reason})" in caplog.text


# ------------------------------------------------------------------------------------------------ browser


@pytest.fixture(scope="module")
def browser():
    from test_browser import ARGS, CHROMIUM

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def set_number(page, elem_id: str, value: int) -> None:
    """Type into a Gradio slider's number box and commit with Enter (what a keyboard user does)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def cells(app) -> set:
    """The finished settings in the app's sweep folder (the real-image reference rows have their own file)."""
    loaded = app.LAB.get(app.LAB.default_model)
    folder = app.svc.sweep_dir(loaded.name, loaded.fingerprint) / "cells"
    return {p for p in folder.glob("*.json") if not p.name.startswith("real-")}


@app_warnings
@pytest.mark.browser
def test_stop_buttons_and_a_closed_page_stop_the_work(lab_app, browser, monkeypatch):
    from app_jobs import CLIENT_LEFT, SESSION_CLOSED

    app, url = lab_app
    # 20 bootstrap resamples instead of 200: each FD resample is an eigendecomposition, and this test is about
    # stopping, not intervals (the cells' keys include the count, so nothing is shared with other tests).
    monkeypatch.setattr(app.svc, "SWEEP_BOOTSTRAP", 20)
    compare_engine, sweep_engine = engines(app)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)

    set_number(page, "steps", 100)  # Compare: 2 x 100 steps, stopped after the first few
    start = compare_engine.image_steps
    page.click("#generate")
    wait_until(lambda: compare_engine.image_steps >= start + 3, 60, "the comparison started drawing")
    page.click("#stop-compare")
    page.locator("#status").get_by_text("Stopped").wait_for(timeout=20_000)
    assert_stopped(app, compare_engine, "comparison stopped by the button")
    assert last_job(app, "compare").outcome == "stopped"

    page.get_by_role("tab", name="Sweep").click()
    page.get_by_label("60").uncheck()  # the grid: the baseline and L1 30%
    for elem_id, value in (("sweep-prompts", 12), ("sweep-steps", 7), ("sweep-latency", 0)):
        set_number(page, elem_id, value)
    before = cells(app)
    page.click("#run-sweep")
    # Stop once the baseline is on disk, while L1 30% is being drawn and scored (about 2 s).
    wait_until(lambda: cells(app) - before, 120, "the sweep's baseline finished", poll=0.01)
    page.click("#stop-sweep")
    status = page.locator("#sweep-status")
    status.get_by_text("Sweep stopped").wait_for(timeout=20_000)
    assert_stopped(app, sweep_engine, "sweep stopped by the button")
    assert "1 of 2 settings finished and kept (baseline)" in status.inner_text()
    kept = cells(app) - before
    assert len(kept) == 1 and last_job(app, "sweep").outcome == "stopped"

    page.click("#run-sweep")  # the rerun computes only the setting that was stopped
    status.get_by_text("computed 1, reused from earlier sweeps 1").wait_for(timeout=60_000)
    assert kept < cells(app) and last_job(app, "sweep").outcome == "finished"

    set_number(page, "sweep-prompts", 32)  # a longer sweep, then the page goes away
    start = sweep_engine.image_steps
    page.click("#run-sweep")
    wait_until(lambda: sweep_engine.image_steps > start + 50, 60, "the page's sweep started drawing")
    page.close()
    assert_stopped(app, sweep_engine, "sweep of the closed page")
    stopped = last_job(app, "sweep")
    assert stopped.outcome == "stopped" and stopped.token.reason in (CLIENT_LEFT, SESSION_CLOSED)
