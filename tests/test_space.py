"""A Space with real SD 1.x architectures: ZeroGPU wiring, the distilled-model comparison, the hub loader path.

No network and no GPU here, so:
- the catalog's hub models (SD 1.5, BK-SDM base/small/tiny, Segmind small-sd/tiny-sd) are stand-ins built in
  code with each one's UNet block layout and tiny widths (`compression.standin`), filed in a Hugging Face cache
  under their real hub ids and loaded offline through `models.load_pipeline` / `models.load_unet`: the loader
  path is what is tested, not the real weights;
- ZeroGPU is a stand-in `spaces` module written here onto the app's path: `spaces.GPU(duration=...)` records
  which functions it wraps and, per call, the duration asked (calling a duration function like ZeroGPU does),
  and what crosses: the arguments and the result are pickled across as ZeroGPU does, and their types logged;
  an exception crossing is turned into ZeroGPU's "ZeroGPU worker error" with the class name only. The real
  app.py runs in its own process (`python app.py`, MODEL_ID=sd-1.5) on the CPU with it.
"""

from __future__ import annotations

import json
import textwrap

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from space_tools import SpaceProcess

from compression import models, standin

PROMPT = "a red apple next to a blue cup"

STAND_IN = textwrap.dedent(
    '''
    """Stand-in for Hugging Face's `spaces` package (written by tests/test_space.py): records what crosses."""
    import functools, json, os, pickle

    import gradio as gr
    from PIL import Image

    RECORD = os.environ["SPACES_RECORD"]


    def _write(event):
        with open(RECORD, "a") as f:
            f.write(json.dumps(event) + "\\n")


    def _types(v):
        if isinstance(v, Image.Image):
            return "PIL"
        if v is None or isinstance(v, (bool, int, float, str)):
            return type(v).__name__
        if isinstance(v, (list, tuple)):
            return [_types(x) for x in v]
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            return {k: _types(x) for k, x in v.items()}
        return "NOT JSON: " + type(v).__name__


    def GPU(task=None, *, duration=None, size=None):
        def wrap(fn):
            _write({"event": "decorated", "function": fn.__qualname__, "dynamic": callable(duration)})

            @functools.wraps(fn)
            def call(*args, **kwargs):
                seconds = duration(*args, **kwargs) if callable(duration) else duration
                args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))  # the worker gets copies
                try:
                    result = pickle.loads(pickle.dumps(fn(*args, **kwargs)))
                except Exception as err:  # what ZeroGPU makes of anything but a gr.Error
                    _write({"event": "raised", "function": fn.__qualname__, "error": type(err).__name__})
                    raise gr.Error(type(err).__name__, title="ZeroGPU worker error") from None
                _write({"event": "call", "function": fn.__qualname__, "duration": seconds,
                        "args": _types(list(args)), "kwargs": _types(kwargs), "result": _types(result),
                        "fields": args[0] if args and isinstance(args[0], dict) else None})
                return result
            return call
        return wrap if task is None else wrap(task)
    '''
)


def _json_only(types) -> bool:
    if isinstance(types, str):
        return not types.startswith("NOT JSON")
    values = types.values() if isinstance(types, dict) else types
    return all(_json_only(t) for t in values)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """Every hub model of the catalog, as a tiny stand-in of its architecture, in an offline HF cache."""
    hub = tmp_path_factory.mktemp("hub")
    for name in standin.LAYOUTS:
        standin.save_snapshot(
            standin.build_pipeline(name, words=PROMPT.split(), width="tiny"), models.CATALOG[name].source, hub
        )
    return hub


@pytest.fixture(scope="module")
def space(hub_cache, tmp_path_factory):
    """The real app (MODEL_ID=sd-1.5) in its own process with the stand-in `spaces` on its path."""
    root = tmp_path_factory.mktemp("space")
    (root / "shim" / "spaces").mkdir(parents=True)
    (root / "shim" / "spaces" / "__init__.py").write_text(STAND_IN)
    record = root / "record.jsonl"
    env = {
        "PYTHONPATH": str(root / "shim"),
        "SPACES_RECORD": str(record),
        "MODEL_ID": "sd-1.5",
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_OFFLINE": "1",
        "APP_OUTPUT_DIR": str(root / "out"),
        "APP_CACHE_MB": "8",  # the stand-in SD UNet is 12.3 MB: fp32 copies are refused, int8 fits; so do
        "OMP_NUM_THREADS": "1",  # bk-sdm-tiny (5.6 MB) but not bk-sdm-base (8.2 MB)
    }
    app = SpaceProcess(env, root / "app.log")
    try:
        yield app, record
    finally:
        app.stop()


def _events(record, kind):
    return [e for e in map(json.loads, record.read_text().splitlines()) if e["event"] == kind]


@pytest.mark.slow
def test_loader_path_of_every_hub_model_in_the_catalog(hub_cache, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    base, _ = models.load_pipeline("sd-1.5", device="cpu")
    assert base.unet.config.layers_per_block == 2 and base.unet.mid_block is not None
    stages = {"sd-1.5": 4, "bk-sdm-base": 4, "bk-sdm-small": 4, "bk-sdm-tiny": 3, "segmind-small-sd": 4}
    for name in models.DISTILLED:
        entry = models.CATALOG[name]
        assert entry.compare_with == "sd-1.5" and entry.licence and entry.side == 512
        unet, info = models.load_unet(name, device="cpu")
        assert info.source == entry.source and unet.config.layers_per_block == 1
        assert len(unet.down_blocks) == stages.get(name, 3)
        assert (unet.mid_block is None) == (name in ("bk-sdm-small", "bk-sdm-tiny", "segmind-tiny-sd"))
        assert sum(p.numel() for p in unet.parameters()) < sum(p.numel() for p in base.unet.parameters())
        assert unet.config.cross_attention_dim == base.text_encoder.config.hidden_size  # shares the encoder


@pytest.mark.slow
def test_zerogpu_one_gpu_call_per_action_with_its_duration_and_json_only(space):
    app, record = space
    page = httpx.get(app.url + "config", timeout=10).text
    assert "Model **sd-1.5** on **cpu**" in page and "UNet 12.3 MB" in page  # loaded at import, stated on the page
    assert "warmed" not in app.text()  # no GPU at import on ZeroGPU: nothing is drawn then
    decorated = {e["function"]: e["dynamic"] for e in _events(record, "decorated")}
    assert decorated == {"draw_pair": True, "run_sweep_on_gpu": True, "export_on_gpu": True, "bundle_on_gpu": True}

    client = Client(app.url, verbose=False, download_files=False)
    for steps in (2, 20):
        client.predict(prompt=PROMPT, steps=steps, prune_percent=0, quant_mode="int8-weight", api_name="/compare")
    client.predict(prompt=PROMPT, steps=2, prune_percent=0, quant_mode="int8-weight", api_name="/export")
    client.predict(
        prune_percents=[0, 30], quant_modes=["int8-weight"], n_prompts=2, steps=2, latency_repeats=0, api_name="/sweep"
    )
    calls = _events(record, "call")
    assert [c["function"] for c in calls] == ["draw_pair", "draw_pair", "export_on_gpu", "run_sweep_on_gpu"]
    import app_gpu

    for c in calls:
        duration_of = {"draw_pair": app_gpu.compare_seconds, "export_on_gpu": app_gpu.export_seconds}
        assert c["duration"] == duration_of.get(c["function"], app_gpu.sweep_seconds)(c["fields"])
        assert isinstance(c["args"][0], dict) and c["kwargs"] == {}  # the request; then a job's reference, a flag
        assert _json_only(c["args"]) and _json_only(c["result"]), c
    assert calls[1]["duration"] > calls[0]["duration"]  # twice the steps: a longer GPU call is asked for
    assert calls[0]["result"][:2] == ["PIL", "PIL"] and isinstance(calls[0]["result"][2], dict)
    assert calls[3]["fields"]["specs"] and len(calls[3]["fields"]["prompts"]) == 2
    assert not _events(record, "raised")


@pytest.mark.slow
def test_distilled_model_beside_sd15_same_seed_measured(space):
    app, record = space
    client = Client(app.url, verbose=False, download_files=False)
    out = client.predict(prompt=PROMPT, seed=5, steps=2, distilled="bk-sdm-tiny", api_name="/compare_distilled")
    details, status, table = out[9], out[8], {r[0]: r[1:] for r in out[7]["data"]}
    assert details["model"] == "sd-1.5" and details["against"] == "bk-sdm-tiny" and details["seed"] == 5
    assert details["setting"] == "bk-sdm-tiny (distilled)" and "bk-sdm-tiny (distilled)" in out[3]
    assert "same VAE and text encoder" in status and "Licence: CreativeML OpenRAIL-M" in status
    base_params, tiny_params = (float(x) for x in table["parameters (M)"][:2])
    assert 0 < tiny_params < base_params  # measured: the stand-ins' 1.48 M vs 3.22 M
    step_ms = next(v for k, v in table.items() if k.startswith("denoising step"))
    assert float(step_ms[1]) > 0  # the distilled UNet's step, timed warm beside SD 1.5's
    again = client.predict(prompt=PROMPT, seed=5, steps=2, distilled="bk-sdm-tiny", api_name="/compare_distilled")
    assert again[9]["baseline_sha256"] == details["baseline_sha256"]  # same seed: the same SD 1.5 image
    assert again[9]["compressed_sha256"] == details["compressed_sha256"] and again[9]["baseline_cached"]
    assert "loaded in" in status and "distilled UNet from cache" in again[8]

    # A failure inside the GPU function reaches the visitor as our sentence, not "ZeroGPU worker error".
    with pytest.raises(AppError, match=r"bk-sdm-base: its UNet would hold about 8 MiB, more than .* 8 MiB budget"):
        client.predict(prompt=PROMPT, steps=2, distilled="bk-sdm-base", api_name="/compare_distilled")
    assert not _events(record, "raised")
    assert _events(record, "call")[-1]["result"] == {"error": "str"}  # returned as data across the boundary
