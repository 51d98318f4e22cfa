"""A real browser on the real app: Debian's chromium driven by Playwright (no Playwright browser download).

Loads the page at 1280x800, sets the pruning slider and the quantization mode, presses Generate, and checks
that two images and a Plotly chart appear; then the same page on a 400 px wide phone screen must not scroll
sideways. Screenshots go to artifacts/ (gitignored) for people to look at; with UPDATE_SCREENSHOTS=1 the
1280 px one also replaces docs/images/compare.png, the README's picture (quantized to a palette: a few hundred KB).

Without /usr/bin/chromium the test is skipped with a message, unless REQUIRE_BROWSER=1 (CI), where it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
README_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "compare.png"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:.*:Warning:gradio.queueing")]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium (Playwright's own download is not used)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def set_slider(page, label: str, value: int) -> None:
    """Type into the number box of a Gradio slider (what a keyboard user does) and commit with Enter."""
    box = page.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


def choose(page, elem_id: str, option: str) -> None:
    """Open a Gradio dropdown and click one of its options."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=False).first.click()


def save_readme_screenshot(page) -> None:
    """The Compare tab's top (prompt, controls, the image pair) as a small palette PNG for the README."""
    from PIL import Image

    page.evaluate("() => window.scrollTo(0, 0)")
    shot = ARTIFACTS / "readme-compare-1280.png"
    page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1280, "height": 1100}, full_page=True)
    README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(shot) as im:
        # 128 colours: the page is flat UI colours plus two 64x64 drawings, so a palette keeps it legible.
        im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(README_SCREENSHOT, optimize=True)


def test_compare_in_a_browser(lab_app, browser):
    _, url = lab_app
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    page.wait_for_selector("#generate", timeout=30_000)
    assert page.title() == "Diffusion Compression Lab"
    assert page.locator("#bits").is_hidden()  # the bit width belongs to the simulated mode only

    set_slider(page, "Pruning amount (%)", 45)
    choose(page, "quant", "simulated-int")
    page.locator("#bits").wait_for(state="visible", timeout=10_000)
    set_slider(page, "Simulated bit width", 6)
    page.click("#generate")

    status = page.locator("#status")
    status.get_by_text("L1 45% + sim int6 (fake)").wait_for(timeout=60_000)
    for elem_id in ("baseline", "compressed", "difference"):
        img = page.locator(f"#{elem_id} img")
        img.wait_for(timeout=10_000)
        assert img.evaluate("e => e.complete && e.naturalWidth") == 64
    assert page.locator("#slider img").count() == 2
    page.locator("#numbers").get_by_text("PSNR vs baseline (dB)").wait_for()
    chart = page.locator("#cost-plot .js-plotly-plot")
    chart.wait_for(timeout=20_000)
    assert page.locator("#quality-plot .js-plotly-plot").count() == 1
    assert page.locator("#history").get_by_text("L1 45% + sim int6 (fake)").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "browser-compare-1280.png"), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        save_readme_screenshot(page)

    page.set_viewport_size({"width": 400, "height": 800})
    page.wait_for_timeout(500)
    overflow = page.evaluate("() => document.documentElement.scrollWidth")
    page.screenshot(path=str(ARTIFACTS / "browser-compare-400.png"), full_page=True)
    assert overflow <= 400, f"the page scrolls sideways on a phone ({overflow} px wide)"
    assert not errors, errors
    page.close()
