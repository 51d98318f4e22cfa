"""Diffusion Compression Lab: placeholder UI until the full app lands (issue 4).

It starts and serves without the embedded model (which may not be trained yet): it lists the models, the
pruning methods and the quantization modes this machine offers, each with where it runs.
Run: `python app.py` (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose the address; default 127.0.0.1:7860).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no phoning home

from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from compression import CATALOG, PRUNERS, QUANT_MODES  # noqa: E402
from compression.models import default_device  # noqa: E402

DEVICE = default_device()


def _models_table() -> list[list[str]]:
    rows = []
    for entry in CATALOG.values():
        if entry.local:
            state = "ready" if (Path(entry.source) / "model_index.json").is_file() else "not built yet"
        else:
            state = "hub (needs network)"
        rows.append([entry.name, entry.description, state])
    return rows


def _modes_table() -> list[list[str]]:
    rows = []
    for kind, registry in (("pruning", PRUNERS), ("quantization", QUANT_MODES)):
        for name, item in registry.items():
            ok, why = item.available(DEVICE)
            rows.append([kind, name, "yes" if ok else f"no: {why}", item.description])
    return rows


with gr.Blocks(title="Diffusion Compression Lab") as demo:
    gr.Markdown(
        "# Diffusion Compression Lab\n"
        "Prune and quantize a diffusion model's UNet and compare it with the baseline, same prompt and seed. "
        f"The interactive lab is on its way; this page lists what the library offers on this machine ({DEVICE})."
    )
    gr.Dataframe(value=_models_table(), headers=["model", "description", "state"], label="Models")
    gr.Dataframe(value=_modes_table(), headers=["kind", "name", f"available on {DEVICE}", "what it does"],
                 label="Compression methods", wrap=True)


if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
