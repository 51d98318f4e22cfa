"""Push the current comparison's compressed UNet to the visitor's Hugging Face account (behind APP_HUB_PUSH=1).

On a Space with `hf_oauth: true` in its README, `gr.LoginButton` signs the visitor in with Hugging Face, and
Gradio hands the handler that visitor's `gr.OAuthProfile` and `gr.OAuthToken`: the bundle is pushed with the
visitor's own token, into a private repo under their name, never with the Space's token. The flag is off by
default; off, app.py builds none of this (no login button, no /push_to_hub endpoint). See docs/export.md.

Layout and wiring only, like app.py: the work is `app_service.push_to_hub` and `compression.publish`.
"""

from __future__ import annotations

import html
import logging
import uuid
from dataclasses import dataclass

import gradio as gr

import app_service as svc

log = logging.getLogger("dcl.app")


@dataclass
class PushControls:
    """The components `push_controls` made (wired later by `wire`, once the Compare inputs exist)."""

    repo: gr.Textbox
    button: gr.Button
    note: gr.Markdown


def push_controls() -> PushControls:
    """The login button, the repo name and the push button, placed where this is called in the layout."""
    with gr.Row():
        gr.LoginButton(size="sm", elem_id="hub-login")
        repo = gr.Textbox(
            value="compressed-unet",
            label="Hub repo (private, under your account; or namespace/name)",
            max_lines=1,
            max_length=200,
            elem_id="hub-repo",
        )
        button = gr.Button("Push to the Hub", size="sm", elem_id="hub-push")
    note = gr.Markdown(elem_classes="note", elem_id="hub-note")
    return PushControls(repo, button, note)


def wire(controls: PushControls, compare_inputs: list, model_work: dict, lab: svc.Lab, build=None) -> None:
    """Push on click: the Compare inputs (the setting), then the repo name; Gradio adds the session's OAuth
    profile and token (the handler's annotated parameters). `build` makes the bundle folder (app.py passes its
    one GPU function for this action, see app_gpu.py); the upload runs in the handler."""
    controls.button.click(
        handler(lab, build), [*compare_inputs, controls.repo], controls.note, api_name="push_to_hub", **model_work
    )


def handler(lab: svc.Lab, build=None):
    """The click handler over `lab`'s models."""

    def push_to_hub(
        prompt,
        negative_prompt,
        seed,
        steps,
        guidance,
        model,
        prune_percent,
        prune_method,
        prune_scope,
        quant_mode,
        bits,
        height,
        width,
        recover_steps,
        repo_name,
        profile: gr.OAuthProfile | None = None,
        oauth_token: gr.OAuthToken | None = None,
    ) -> str:
        """Build the current setting's bundle and push it with the visitor's OAuth token; returns a note."""
        values = (prompt, negative_prompt, seed, steps, guidance, model, prune_percent, prune_method)
        try:
            req = svc.parse_compare(lab, *values, prune_scope, quant_mode, bits, height, width, recover_steps)
            url = svc.push_to_hub(
                lab,
                req,
                repo_name,
                profile.username if profile is not None else None,
                oauth_token.token if oauth_token is not None else None,
                build,
            )
        except gr.Error:  # already plain (the GPU side's failure, returned as data and raised here)
            raise
        except ValueError as err:  # RequestError and the library's checks: plain text, escaped
            raise gr.Error(html.escape(str(err), quote=False), print_exception=False) from None
        except Exception:  # noqa: BLE001 - anything else: logged with a reference, never a trace to the client
            ref = uuid.uuid4().hex[:8]
            log.exception("hub push failed (ref %s)", ref)
            raise gr.Error(f"The push failed unexpectedly (reference {ref}, logged).", print_exception=False) from None
        link = html.escape(url)
        return f"Pushed **{html.escape(req.spec.label)}** to [{link}]({link}) (a private repo)."

    return push_to_hub
