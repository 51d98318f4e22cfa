"""Supply chain and files (issue 7): what the app loads, what its server hands out, and what a full queue says.

- Weights: only safetensors; single-file checkpoints (.ckpt/.bin/.pt pickles) and pickle-only folders are refused
  with a plain error, and so is a model that ships its own .py classes (trust_remote_code is never set): the
  test checks that the shipped code did not run. Hub ids outside the catalog are refused unless ALLOW_ANY_MODEL
  is set, and even then the app serves only the catalog and the startup model.
- Files: the running server is asked for /etc/passwd, the repo's own app.py, .git/config and model weights
  through every route that serves files and several encodings of "..": it must answer 403/404 with none of
  their bytes, while the files it should serve (a CSV download, a result image) still come back.
- Uploads: max_file_size is 5 MB (a 6 MB upload gets 413); the queue holds at most 32 waiting requests and the
  next one gets HTTP 503 "Queue is full" (gradio_client: QueueError), then the queue drains and serves again.

All traffic goes to the in-process app on 127.0.0.1 (the `lab_app` fixture); nothing is downloaded.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import torch
from app_args import compare_args
from gradio_client import Client
from gradio_client.utils import QueueError

from compression import CATALOG, resolve_model
from compression.models import REPO_ROOT, UnsafeModelError, load_pipeline

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:gradio.*", "ignore::FutureWarning:gradio.*", "ignore:.*:Warning:gradio.queueing"
)

PROMPT = "a red circle on the left on a blue background"


def _no_hub_calls(monkeypatch):
    """Fail the test if anything reaches DiffusionPipeline.from_pretrained."""
    import diffusers

    def refuse(*args, **kwargs):
        raise AssertionError(f"from_pretrained was called with {args!r}")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", refuse)


# --------------------------------------------------------------------------------------------- weights


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt", ".pth", ".safetensors"])
def test_single_file_checkpoints_are_refused_before_loading(monkeypatch, tmp_path, suffix):
    monkeypatch.setenv("ALLOW_ANY_MODEL", "1")
    _no_hub_calls(monkeypatch)
    path = tmp_path / f"model{suffix}"
    torch.save({"state_dict": {}}, path)  # a pickle, whatever its suffix says
    with pytest.raises(UnsafeModelError, match="single-file checkpoints are not loaded") as err:
        load_pipeline(str(path), device="cpu")
    assert str(tmp_path) not in str(err.value)  # names the file, not the server's folders


def _saved(tiny_pipe, folder: Path, **kwargs) -> Path:
    tiny_pipe.save_pretrained(folder, **kwargs)
    return folder


def test_model_shipping_its_own_code_is_refused_and_the_code_never_runs(monkeypatch, tiny_pipe, tmp_path):
    monkeypatch.setenv("ALLOW_ANY_MODEL", "1")
    ran = tmp_path / "the-shipped-code-ran"
    code = f"open({str(ran)!r}, 'w').write('x')\nfrom diffusers import {{base}}\nclass Evil({{base}}):\n    pass\n"

    component = _saved(tiny_pipe, tmp_path / "custom-component")  # a UNet class in unet/evil.py
    (component / "unet" / "evil.py").write_text(code.format(base="UNet2DConditionModel"))
    index = json.loads((component / "model_index.json").read_text())
    index["unet"] = ["evil", "Evil"]
    (component / "model_index.json").write_text(json.dumps(index))

    pipeline = _saved(tiny_pipe, tmp_path / "custom-pipeline")  # the pipeline class in pipeline.py
    (pipeline / "pipeline.py").write_text(code.format(base="StableDiffusionPipeline"))
    index = json.loads((pipeline / "model_index.json").read_text())
    index["_class_name"] = ["pipeline", "Evil"]
    (pipeline / "model_index.json").write_text(json.dumps(index))

    for folder in (component, pipeline):
        with pytest.raises(UnsafeModelError, match="ships custom code.*trust_remote_code is never set") as err:
            load_pipeline(str(folder), device="cpu")
        assert str(tmp_path) not in str(err.value)
    assert not ran.exists(), "the model's own code was imported"


def test_pickle_only_model_is_refused_with_its_reason_on_the_page(monkeypatch, tiny_pipe, tmp_path):
    """The operator points MODEL_ID at a folder of .bin pickles: the app starts, does not load it, and the page
    says why (app_service.Lab.startup_error), without the server's path."""
    import app_service as svc

    monkeypatch.setenv("ALLOW_ANY_MODEL", "1")
    folder = _saved(tiny_pipe, tmp_path / "pickled", safe_serialization=False)
    lab = svc.Lab(default_model=str(folder))
    lab.startup(warm=False)
    assert lab.startup_error is not None and "only pickled weights" in lab.startup_error
    assert str(tmp_path) not in lab.startup_error.split("could not load ", 1)[1].split(":", 1)[1]
    assert lab.loaded(str(folder)) is None


def test_every_load_asks_for_safetensors_and_no_remote_code(monkeypatch):
    """The hub path (SD 1.5) is not downloaded here: the call it would make is captured instead."""
    import diffusers

    seen = {}

    class Stop(Exception):
        pass

    def capture(source, **kwargs):
        seen.update(kwargs, source=source)
        raise Stop

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", capture)
    for name in ("sd-1.5", "tiny-shapes"):
        seen.clear()
        with pytest.raises(Stop):
            load_pipeline(name, device="cpu")
        assert seen["source"] == CATALOG[name].source
        assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False


def test_hub_models_are_limited_to_the_catalog_unless_the_env_var_opens_it(monkeypatch, lab_app):
    import app_service as svc

    app, _ = lab_app
    monkeypatch.delenv("ALLOW_ANY_MODEL", raising=False)
    with pytest.raises(ValueError, match="ALLOW_ANY_MODEL"):
        resolve_model("someone/some-model")
    assert app.LAB.model_names == list(CATALOG)
    monkeypatch.setenv("ALLOW_ANY_MODEL", "1")  # opens the library and MODEL_ID, not the public app's dropdown
    assert resolve_model("someone/some-model").source == "someone/some-model"
    with pytest.raises(svc.RequestError, match="unknown model; choose one of: tiny-shapes, sd-1.5"):
        svc.parse_compare(
            app.LAB, PROMPT, "", 0, 2, 4.0, "someone/some-model", 30, "l1-unstructured", "all", "fp32", 4, 0, 0
        )
    assert app.LAB.loaded("someone/some-model") is None


# ----------------------------------------------------------------------------------------------- files


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET a path exactly as written (http.client does not normalise '..' or percent-escapes)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(200_000)
    finally:
        conn.close()


def _secrets() -> dict[str, bytes]:
    """Files the server must never hand out, with bytes that identify each."""
    out = {"/etc/passwd": b"root:"}
    for rel in ("app.py", "app_service.py", ".git/config", "assets/tiny-shapes-sd/model_index.json"):
        p = REPO_ROOT / rel
        if p.is_file():
            out[str(p)] = p.read_bytes()[:40]
    return out


def _attempts(downloads: Path, sweeps: Path) -> list[str]:
    app_py = str(REPO_ROOT / "app.py")
    up = "../" * (len(downloads.parts) + 2)  # enough '..' to reach / from the downloads folder
    targets = [
        "/etc/passwd",
        app_py,
        str(REPO_ROOT / ".git" / "config"),
        str(REPO_ROOT / "assets" / "tiny-shapes-sd" / "model_index.json"),
        "app.py",
        "./app.py",
        "assets/tiny-shapes-sd/model_index.json",
        str(sweeps / "secret.csv"),
    ]
    paths = []
    for route in ("/gradio_api/file=", "/gradio_api/file/", "/file=", "/static/", "/assets/"):
        paths += [route + t for t in targets]
    paths += [
        "/gradio_api/file=%2Fetc%2Fpasswd",
        "/gradio_api/file=" + app_py.replace("/", "%2F"),
        "/gradio_api/file=%252Fetc%252Fpasswd",
        "/gradio_api/file=..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/gradio_api/file=....//....//....//etc/passwd",
        "/gradio_api/file=..\\..\\..\\..\\etc\\passwd",
        "/gradio_api/file=//etc/passwd",
        "/gradio_api/file=file:///etc/passwd",
        "/gradio_api/file=/etc/passwd%00.png",
        f"/gradio_api/file={downloads}/{up}etc/passwd",  # starts inside the allowed folder
        f"/gradio_api/file={downloads}/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        f"/gradio_api/file={downloads}/../sweeps/secret.csv",
        f"/gradio_api/file={downloads}/{up}{app_py.lstrip('/')}",
        "/gradio_api/file=/tmp/gradio/../../etc/passwd",  # starts inside Gradio's cache
        "/gradio_api/file=/proc/self/environ",
        "/static/../../../../../../etc/passwd",
        "/assets/..%2F..%2F..%2F..%2Fapp.py",
        "/gradio_api/proxy=http://127.0.0.1/etc/passwd",
        f"/gradio_api/proxy=file://{app_py}",
    ]
    return paths


def test_path_traversal_gets_no_file(lab_app):
    import app_service as svc

    app, url = lab_app
    downloads, sweeps = svc.DOWNLOAD_DIR, svc.SWEEP_DIR
    downloads.mkdir(parents=True, exist_ok=True)
    sweeps.mkdir(parents=True, exist_ok=True)
    (sweeps / "secret.csv").write_text("SWEEP-SECRET\n")  # inside OUTPUT_DIR but outside the served folder
    secrets = {**_secrets(), str(sweeps / "secret.csv"): b"SWEEP-SECRET"}

    # The controls: what must be served still is (else every refusal below could be a dead server).
    (downloads / "control.csv").write_text("a,b\n1,2\n")
    assert raw_get(url, f"/gradio_api/file={downloads}/control.csv") == (200, b"a,b\n1,2\n")
    image = Client(url, verbose=False, download_files=False).predict(api_name="/compare", prompt=PROMPT, steps=1)[0]
    status, body = raw_get(url, urlsplit(image["url"]).path)
    assert status == 200 and body.startswith(b"\x89PNG")

    attempts = _attempts(downloads, sweeps)
    assert len(attempts) >= 60
    served = []
    for path in attempts:
        status, body = raw_get(url, path)
        leaked = [name for name, mark in secrets.items() if mark and mark in body]
        if status == 200 or leaked:
            served.append((path, status, leaked))
        assert b"Traceback" not in body
    assert not served, f"the server handed out files it must not: {served}"
    assert app.demo.allowed_paths == [str(downloads)]


def test_uploads_over_5_mb_are_refused(lab_app):
    app, url = lab_app
    assert app.demo.max_file_size == 5 * 1024**2
    upload = f"{url.rstrip('/')}/gradio_api/upload"
    ok = httpx.post(upload, files={"files": ("small.txt", b"x" * 1024)}, timeout=30)
    assert ok.status_code == 200  # the control: the route is there, small files pass
    big = httpx.post(upload, files={"files": ("big.bin", b"\0" * (6 * 1024**2))}, timeout=30)
    assert big.status_code == 413 and "maximum allowed size" in big.text


# ------------------------------------------------------------------------------------------------ queue


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_a_full_queue_answers_busy_and_then_drains(lab_app, monkeypatch):
    """The real queue (max_size 32, one model worker): the worker is held inside a request, 32 more wait, and
    the next one is refused at once with 'Queue is full'. Released, the waiting ones finish and the app serves
    again. The held request is released by the test, never by a timeout (60 s safety net)."""
    app, url = lab_app
    assert app.QUEUE_SIZE == 32
    engine = app.LAB.get("tiny-shapes").engine
    real = engine.generate_pair
    running = threading.Semaphore(0)
    gate = threading.Event()
    holding = [app.MODEL_CONCURRENCY]

    def held(*args, **kwargs):
        if holding[0] <= 0:  # a waiting request, let in after the release: fail fast, the queue drains in ms
            raise ValueError("drained by the test")
        holding[0] -= 1
        running.release()
        assert gate.wait(60), "the test never released the queue"
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "generate_pair", held)
    base = url.rstrip("/") + "/gradio_api"
    body = compare_args(prompt=PROMPT, seed=0, steps=1, prune_percent=0, history=[])

    def join(seed: int) -> httpx.Response:
        return httpx.post(f"{base}/call/compare", json={"data": list({**body, "seed": seed}.values())}, timeout=30)

    def queued() -> int:
        return httpx.get(f"{base}/queue/status", timeout=10).json()["queue_size"]

    events = []
    try:
        for i in range(app.MODEL_CONCURRENCY):  # fill the workers; each waits at the gate
            events.append(join(i).json()["event_id"])
            assert running.acquire(timeout=30), "a request never reached the model"
        for i in range(app.QUEUE_SIZE):
            r = join(100 + i)
            assert r.status_code == 200, r.text[:200]
            events.append(r.json()["event_id"])
        deadline = time.monotonic() + 10
        while queued() < app.QUEUE_SIZE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queued() == app.QUEUE_SIZE

        start = time.perf_counter()
        full = join(999)
        assert time.perf_counter() - start < 2
        assert full.status_code == 503
        assert f"Queue is full. Max size is {app.QUEUE_SIZE}" in full.json()["detail"]
        with pytest.raises(QueueError, match="Queue is full"):  # what an API user sees
            Client(url, verbose=False, download_files=False).predict(api_name="/compare", prompt=PROMPT, steps=1)
    finally:
        gate.set()

    deadline = time.monotonic() + 120
    while queued() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert queued() == 0, "the queue did not drain"
    monkeypatch.undo()
    out = Client(url, verbose=False, download_files=False).predict(api_name="/compare", prompt=PROMPT, seed=7, steps=1)
    assert out[9]["seed"] == 7
    first = httpx.get(f"{base}/call/compare/{events[0]}", timeout=60).text
    assert "event: complete" in first  # the held request itself finished normally
