"""Export bundles on the embedded model: reload gives the lab's exact pixels, bytes are real, tampering is refused."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from app_args import compare_args

from compression import CompressionSpec, Engine, load_pipeline
from compression.export import (
    SPARSE,
    WEIGHTS,
    BundleError,
    image_sha256,
    load_compressed,
    load_unet,
    main,
    make_recipe,
    parse_recipe,
    save_compressed,
)
from compression.quantization import available_quant_modes

SAMPLE = {"prompt": "a red circle on the left on a white background", "seed": 3, "steps": 3, "guidance": 5.0}
PRUNINGS = {
    "none": (0.0, "l1-unstructured"),
    "l1": (0.3, "l1-unstructured"),
    "channels": (0.33, "l1-structured-channels"),
}


@pytest.fixture(scope="module")
def engine():
    pipe, info = load_pipeline("tiny-shapes", device="cpu")
    return Engine(pipe, info.name, cache_size=0)


def _spec(mode: str, pruning: str) -> CompressionSpec:
    amount, method = PRUNINGS[pruning]
    return CompressionSpec(amount, method, quant_mode=mode, bits=4 if mode == "simulated-int" else None)


def _draw(pipe, sample: dict):
    return pipe(
        sample["prompt"],
        generator=torch.Generator("cpu").manual_seed(sample["seed"]),
        num_inference_steps=sample["steps"],
        guidance_scale=sample["guidance"],
        height=sample["height"],
        width=sample["width"],
    ).images[0]


def _data_bytes(path) -> int:
    with open(path, "rb") as f:
        header = struct.unpack("<Q", f.read(8))[0]
    return path.stat().st_size - 8 - header


@pytest.fixture(scope="module")
def l1_int8_bundle(engine, tmp_path_factory):
    return save_compressed(
        tmp_path_factory.mktemp("b") / "l1-int8", _spec("int8-weight", "l1"), engine=engine, sample=SAMPLE, sparse=True
    )


# Every mode x pruning runs in CI; the quick loop keeps one case per mode family and per pruning.
QUICK_ROUND_TRIPS = {("fp32", "channels"), ("int8-weight", "l1"), ("int4-weight", "none"), ("simulated-int", "l1")}


@pytest.mark.parametrize(
    ("mode", "pruning"),
    [
        pytest.param(m, p, id=f"{m}-{p}", marks=() if (m, p) in QUICK_ROUND_TRIPS else pytest.mark.slow)
        for p in PRUNINGS
        for m in available_quant_modes("cpu")
    ],
)
def test_round_trip_gives_the_labs_pixels(engine, tmp_path, mode, pruning):
    spec = _spec(mode, pruning)
    result = save_compressed(tmp_path / "bundle", spec, engine=engine, sample=SAMPLE)
    # The lab's own image for this setting, drawn independently of the bundle.
    lab = engine.generate_pair(SAMPLE["prompt"], SAMPLE["seed"], SAMPLE["steps"], SAMPLE["guidance"], spec)
    assert result.manifest["sample"]["compressed_sha256"] == image_sha256(lab.compressed_image)
    pipe = load_compressed(result.folder, pipeline=engine.pipeline)
    assert image_sha256(_draw(pipe, result.manifest["sample"])) == image_sha256(lab.compressed_image)
    # The tensors on disk are exactly the bytes the lab reports; the rest is safetensors' JSON header.
    file = result.folder / WEIGHTS
    assert _data_bytes(file) == result.reported_bytes == lab.compressed_cost.bytes
    print(
        f"\n{spec.label}: file {file.stat().st_size / result.reported_bytes:.4f}x the reported bytes, "
        f"{file.stat().st_size / result.manifest['measured']['baseline_bytes']:.3f}x the fp32 UNet"
    )


def test_baseline_is_not_touched_and_card_is_hub_format(engine, l1_int8_bundle):
    from compression.engine import state_dict_digest

    assert state_dict_digest(engine.pipeline.unet) == l1_int8_bundle.manifest["base_model"]["unet_digest"]
    card = (l1_int8_bundle.folder / "README.md").read_text()
    head = card.split("---")[1]
    for line in (
        "base_model: tiny-shapes",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "- pruning",
        "- quantization",
    ):
        assert line in head
    assert "| UNet bytes (in memory) |" in card and "comparison.png" in card
    assert (l1_int8_bundle.folder / "comparison.png").is_file()
    m = l1_int8_bundle.manifest
    assert m["layout"]["quantization_map"] and not m["layout"]["diffusers_native"]
    assert {"torch", "diffusers", "optimum-quanto", "safetensors"} <= set(m["versions"])


def test_sparse_form_holds_the_same_model_in_fewer_bytes(engine, l1_int8_bundle):
    dense, _ = load_unet(l1_int8_bundle.folder)
    sparse, _ = load_unet(l1_int8_bundle.folder, form="sparse")
    a, b = dense.state_dict(), sparse.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if hasattr(x, "_data"):
            x, y = x._data, y._data
        assert torch.equal(x, y), k
    # 30% zeros of int8 data: 1 bit of mask + 0.7 byte per weight < 1 byte
    assert (l1_int8_bundle.folder / SPARSE).stat().st_size < (l1_int8_bundle.folder / WEIGHTS).stat().st_size


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "config"])
def test_tampered_bundle_is_refused(engine, tmp_path, damage):
    result = save_compressed(tmp_path / "b", _spec("int8-weight", "channels"), engine=engine)
    target = result.folder / (WEIGHTS if damage != "config" else "unet/config.json")
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 1
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[: len(data) - 100]))
    elif damage == "delete":
        target.unlink()
    else:
        config = json.loads(target.read_text())
        config["sample_size"] += 8
        target.write_text(json.dumps(config))
    with pytest.raises(BundleError, match="altered|truncated|missing"):
        load_compressed(result.folder, pipeline=engine.pipeline)


def test_other_base_pipeline_is_refused(engine, tiny_pipe, tmp_path):
    result = save_compressed(tmp_path / "b", _spec("fp32", "l1"), engine=engine)
    with pytest.raises(BundleError, match="not the one this bundle was made from"):
        load_compressed(result.folder, pipeline=tiny_pipe)


def test_non_empty_folder_and_bad_manifest_are_refused(engine, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("a")
    with pytest.raises(ValueError, match="not empty"):
        save_compressed(tmp_path / "x", _spec("fp32", "none"), engine=engine)
    with pytest.raises(BundleError, match="not a compression bundle"):
        load_unet(tmp_path / "x")
    (tmp_path / "x" / "compression.json").write_text("{")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_unet(tmp_path / "x")


def test_bf16_bundle_loads_natively_in_diffusers(engine, tmp_path):
    from diffusers import UNet2DConditionModel

    result = save_compressed(tmp_path / "b", _spec("bf16", "l1"), engine=engine)
    assert result.manifest["layout"]["diffusers_native"]
    native = UNet2DConditionModel.from_pretrained(str(result.folder), subfolder="unet", torch_dtype=torch.bfloat16)
    ours, _ = load_unet(result.folder)
    a, b = native.state_dict(), ours.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_int8_dynamic_bundle_loads_natively_in_diffusers_as_the_same_model(engine, tmp_path):
    """TorchAoConfig in unet/config.json: diffusers' own loader gives the lab's tensors and the lab's pixels."""
    import copy

    from diffusers import UNet2DConditionModel

    result = save_compressed(tmp_path / "b", _spec("int8-dynamic", "l1"), engine=engine, sample=SAMPLE)
    layout = result.manifest["layout"]
    assert layout["diffusers_native"] and layout["diffusers_load"] == {"torch_dtype": "float32"}
    native = UNet2DConditionModel.from_pretrained(str(result.folder), subfolder="unet", torch_dtype=torch.float32)
    ours, _ = load_unet(result.folder)
    int8 = [n for n, m in native.named_modules() if type(getattr(m, "weight", None)).__name__ == "Int8Tensor"]
    assert len(int8) == sum(isinstance(m, torch.nn.Linear) for m in ours.modules()) > 0  # every Linear, no Conv2d
    base = engine.pipeline
    pipe = type(base)(
        **{**base.components, "unet": native.eval(), "scheduler": copy.deepcopy(base.scheduler)},
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    assert image_sha256(_draw(pipe, result.manifest["sample"])) == result.manifest["sample"]["compressed_sha256"]
    assert "TorchAoConfig" in (result.folder / "README.md").read_text()


@pytest.mark.parametrize(
    "mode, pruning, why", [("int4-weight", "none", "Conv2d"), ("fp32", "channels", "channel counts")]
)
def test_bundles_diffusers_cannot_describe_say_why(engine, tmp_path, mode, pruning, why):
    result = save_compressed(tmp_path / "b", _spec(mode, pruning), engine=engine)
    layout = result.manifest["layout"]
    assert not layout["diffusers_native"] and why in layout["diffusers_native_why"]
    assert "diffusers alone cannot load" in (result.folder / "README.md").read_text()
    config = json.loads((result.folder / "unet" / "config.json").read_text())
    assert "quantization_config" not in config


def test_recipe_round_trip_and_errors():
    spec = CompressionSpec(0.3, quant_mode="int8-weight")
    recipe = make_recipe("tiny-shapes", spec, {"seed": 7})
    assert parse_recipe(json.dumps(recipe)) == ("tiny-shapes", spec, recipe["sampler"])
    with pytest.raises(ValueError, match="unknown recipe field"):
        parse_recipe({**recipe, "extra": 1})
    with pytest.raises(ValueError, match="unknown sampler field"):
        parse_recipe({**recipe, "sampler": {"sed": 1}})
    with pytest.raises(ValueError, match="prune_amount"):
        parse_recipe({**recipe, "spec": {"prune_amount": 2.0}})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prune", "300"], "--prune/100 must be from 0.0"),
        (["--quant", "int9"], "invalid choice"),
        (["--quant", "int8-weight", "--bits", "4"], "bits applies only"),
        (["--model", "nope"], "unknown model"),
    ],
)
def test_cli_rejects_bad_input(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "b")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_cli_writes_a_bundle_from_a_recipe(engine, tmp_path, capsys):
    recipe = make_recipe("tiny-shapes", CompressionSpec(0.3, quant_mode="int8-weight"), {**SAMPLE})
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    assert main(["--recipe", str(tmp_path / "r.json"), "--out", str(tmp_path / "b")]) == 0
    assert "wrote" in capsys.readouterr().out
    pipe = load_compressed(tmp_path / "b", pipeline=engine.pipeline)
    sample = json.loads((tmp_path / "b" / "compression.json").read_text())["sample"]
    assert image_sha256(_draw(pipe, sample)) == sample["compressed_sha256"]


def test_measure_export_ratios_and_time(engine, tmp_path):
    """Benchmark (prints, asserts no time): bundle bytes vs the fp32 UNet's safetensors, and export seconds.

    Three views of the same file: the whole file, its tensor bytes alone (no safetensors header: what no layout
    of names can go below), and deflated as in the app's zip download (against the fp32 file deflated alike)."""
    import zlib

    fp32 = save_compressed(tmp_path / "fp32", CompressionSpec(), engine=engine)
    base = fp32.folder / WEIGHTS
    base_zip = len(zlib.compress(base.read_bytes(), 6))
    lines = []
    for name, spec in (
        ("int8-weight", _spec("int8-weight", "none")),
        ("int4-weight", _spec("int4-weight", "none")),
        ("channels 33%", _spec("fp32", "channels")),
    ):
        r = save_compressed(tmp_path / name.replace(" ", "_"), spec, engine=engine)
        file = r.folder / WEIGHTS
        deflated = len(zlib.compress(file.read_bytes(), 6))
        lines.append(
            f"{name}: {file.stat().st_size / base.stat().st_size:.3f}x the fp32 UNet file "
            f"(tensors alone {_data_bytes(file) / _data_bytes(base):.3f}x; deflated "
            f"{deflated / base.stat().st_size:.3f}x the fp32 file, {deflated / base_zip:.3f}x the fp32 file deflated), "
            f"written in {r.seconds:.2f} s"
        )
        assert _data_bytes(file) == r.reported_bytes
    print("\n" + "\n".join(lines))


# ------------------------------------------------------------------------------------------------------ app

pytestmark_app = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.*", "ignore::FutureWarning:gradio.*")


@pytestmark_app
def test_export_endpoint_gives_a_bundle_that_reloads_to_the_api_image(lab_app, engine, tmp_path):
    import zipfile

    from gradio_client import Client

    _, url = lab_app
    client = Client(url, verbose=False)
    args = compare_args(prompt=SAMPLE["prompt"], seed=5, steps=3, guidance=5.0, quant_mode="int8-weight")
    file, note = client.predict(api_name="/export", **args)
    assert "ready" in note and "L1 30% + int8 weights" in note
    with zipfile.ZipFile(file) as z:
        z.extractall(tmp_path / "bundle")
    pipe = load_compressed(tmp_path / "bundle", pipeline=engine.pipeline)
    sample = json.loads((tmp_path / "bundle" / "compression.json").read_text())["sample"]
    out = client.predict(api_name="/compare", **args)
    assert image_sha256(_draw(pipe, sample)) == sample["compressed_sha256"] == out[9]["compressed_sha256"]


def test_export_refused_above_the_limit(lab_app, monkeypatch):
    import app_service as svc

    monkeypatch.setattr(svc, "EXPORT_MAX_BYTES", 1000)
    req = svc.parse_compare(
        lab_app[0].LAB,
        SAMPLE["prompt"],
        "",
        0,
        2,
        5.0,
        "tiny-shapes",
        0,
        "l1-unstructured",
        "all",
        "int8-weight",
        4,
        None,
        None,
    )
    with pytest.raises(svc.RequestError, match="limited to"):
        svc.export_bundle(lab_app[0].LAB, req)


def test_shared_link_values_are_checked_like_api_input(lab_app):
    from urllib.parse import parse_qsl

    import app_service as svc

    current = dict(
        prompt="a blue square",
        seed=42,
        steps=20,
        guidance=4.0,
        model="tiny-shapes",
        prune_percent=30,
        prune_method="l1-unstructured",
        prune_scope="all",
        quant_mode="fp32",
        bits=4,
    )
    values, notes = svc.parse_share_query(
        lab_app[0].LAB,
        {
            "seed": "7",
            "steps": "5000",
            "quant_mode": "int9",
            "guidance": "nan",
            "prune_percent": "abc",
            "evil": "<b>",
            "prompt": "a red circle",
        },
        current,
    )
    assert values == {"seed": 7, "prompt": "a red circle"}
    assert len(notes) == 5 and any("steps" in n for n in notes) and any("unknown" in n for n in notes)
    query = svc.share_query({**current, **values})
    again, notes = svc.parse_share_query(lab_app[0].LAB, dict(parse_qsl(query)), current)
    assert not notes and again["seed"] == 7


@pytest.fixture(scope="module")
def chromium():
    from pathlib import Path

    exe = Path("/usr/bin/chromium")
    if not exe.exists():
        import os

        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"{exe} is missing: apt-get install chromium")
        pytest.skip(f"{exe} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(exe), headless=True, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            yield b
        finally:
            b.close()


@pytest.mark.browser
@pytestmark_app
def test_shared_link_fills_the_controls_in_a_browser(lab_app, chromium, tmp_path):
    from urllib.parse import parse_qs, urlparse

    _, url = lab_app
    page = chromium.new_page(viewport={"width": 1280, "height": 800})
    page.goto(
        url + "?prompt=a+blue+square+on+the+right&seed=7&prune_percent=45&quant_mode=int8-weight"
        "&steps=5000&prune_scope=nowhere"
    )
    page.wait_for_selector("#generate", timeout=30_000)
    note = page.locator("#take-note")
    note.get_by_text("steps").wait_for(timeout=20_000)
    assert "prune_scope" in note.inner_text()
    assert page.get_by_label("number input for Pruning amount (%)").input_value() == "45"
    assert page.locator("#quant input").input_value() == "int8-weight"
    page.click("#generate")
    page.locator("#status").get_by_text("L1 45% + int8 weights").wait_for(timeout=60_000)
    # The page's compressed image is the API's for the same settings (the link reproduces the comparison).
    from io import BytesIO

    from gradio_client import Client
    from PIL import Image

    steps = int(page.get_by_label("number input for Steps").first.input_value())
    guidance = float(page.get_by_label("number input for Guidance scale").input_value())
    img = page.locator("#compressed img")
    img.wait_for(timeout=10_000)
    shown = Image.open(BytesIO(page.request.get(img.get_attribute("src")).body()))
    out = Client(url, verbose=False).predict(
        api_name="/compare",
        prompt="a blue square on the right",
        negative_prompt="",
        seed=7,
        steps=steps,
        guidance=guidance,
        model="tiny-shapes",
        prune_percent=45,
        prune_method="l1-unstructured",
        prune_scope="all",
        quant_mode="int8-weight",
        bits=4,
        height=0,
        width=0,
    )
    assert image_sha256(shown) == out[9]["compressed_sha256"]
    _download_reloads_to_the_shown_image(page, shown, tmp_path)
    page.click("#copy-link")
    box = page.locator("#share-url textarea")
    box.wait_for(timeout=10_000)
    query = parse_qs(urlparse(box.input_value()).query)
    assert query["seed"] == ["7"] and query["prune_percent"] == ["45"] and query["quant_mode"] == ["int8-weight"]
    assert query["prompt"] == ["a blue square on the right"] and "steps" in query
    page.close()


def _download_reloads_to_the_shown_image(page, shown, folder) -> None:
    """Build the bundle, download it as a visitor does, unzip, reload: it draws the page's compressed image."""
    import zipfile

    page.click("#export")
    button = page.locator("#export-file")
    button.get_by_text("Download compressed UNet (").wait_for(timeout=60_000)
    with page.expect_download(timeout=30_000) as caught:
        button.click()
    caught.value.save_as(folder / "bundle.zip")
    with zipfile.ZipFile(folder / "bundle.zip") as z:
        z.extractall(folder / "bundle")
    pipe = load_compressed(folder / "bundle")  # the base model from the catalog, as a downloader has it
    sample = json.loads((folder / "bundle" / "compression.json").read_text())["sample"]
    assert image_sha256(_draw(pipe, sample)) == image_sha256(shown) == sample["compressed_sha256"]
