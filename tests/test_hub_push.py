"""Pushing a bundle to the Hub with the visitor's OAuth token, against a local stand-in of the Hub.

The stand-in (tests/hub_standin.py) answers on 127.0.0.1 and records what arrives; every other address is
refused at the socket, so nothing here can reach the network. The app handler is called as Gradio calls it after
a login, with a `gr.OAuthProfile` and a `gr.OAuthToken`; the server's own HF_TOKEN is set to a different value
to show it is never the one used.
"""

from __future__ import annotations

import socket
import time

import gradio as gr
import pytest
from app_args import compare_args
from hub_standin import start_hub

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.*", "ignore::FutureWarning:gradio.*")

SETTING = compare_args(seed=3, quant_mode="int8-weight")
USER = {"name": "Alice", "preferred_username": "alice", "profile": "", "picture": ""}


@pytest.fixture
def hub(monkeypatch):
    """The stand-in Hub as HF_ENDPOINT, huggingface_hub allowed online (LFS, not Xet), loopback only."""
    import huggingface_hub.constants as hf

    connect = socket.socket.connect

    def loopback_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"test guard: no network ({address[0]})")
        return connect(sock, address)

    server, url, record = start_hub()
    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", "hf_server_token_never_used")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf, "HF_HUB_DISABLE_XET", True)
    try:
        yield url, record
    finally:
        server.shutdown()


def _token(value: str) -> gr.OAuthToken:
    return gr.OAuthToken(token=value, scope="openid profile contribute-repos", expires_at=int(time.time()) + 3600)


def test_push_uploads_the_bundle_with_the_visitors_token(lab_app, hub, tmp_path):
    from compression.export import image_sha256, load_compressed, read_manifest

    app, _ = lab_app
    url, record = hub
    push = app_hub_handler(app)
    note = push(**SETTING, repo_name="tiny-unet", profile=gr.OAuthProfile(USER), oauth_token=_token("hf_oauth_alice"))
    assert f"{url}/alice/tiny-unet" in note and "L1 30% + int8 weights" in note
    assert record.repos == {"alice/tiny-unet": {"private": True, "token": "hf_oauth_alice"}}
    assert record.tokens == {"hf_oauth_alice"} and not record.unexpected
    (commit,) = record.commits
    assert commit["summary"] == "Compressed UNet: L1 30% + int8 weights"
    # What arrived is an intact bundle (every file's sha256 as its manifest says) that draws the lab's image.
    for path, data in commit["files"].items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    manifest = read_manifest(tmp_path)
    assert set(commit["files"]) == {*manifest["files"], "compression.json"}
    assert {"unet/diffusion_pytorch_model.safetensors", "README.md", "comparison.png"} <= set(commit["files"])
    lab = app.LAB.get("tiny-shapes").engine.generate_pair(
        SETTING["prompt"], 3, 2, 4.0, app.svc.parse_compare(app.LAB, *SETTING.values()).spec
    )
    sample = manifest["sample"]
    pipe = load_compressed(tmp_path, pipeline=app.LAB.get("tiny-shapes").engine.pipeline)
    import torch

    image = pipe(
        sample["prompt"],
        generator=torch.Generator("cpu").manual_seed(sample["seed"]),
        num_inference_steps=sample["steps"],
        guidance_scale=sample["guidance"],
        height=sample["height"],
        width=sample["width"],
    ).images[0]
    assert image_sha256(image) == sample["compressed_sha256"] == image_sha256(lab.compressed_image)


def test_push_needs_a_login_and_a_valid_repo_name(lab_app, hub):
    app, _ = lab_app
    _, record = hub
    push = app_hub_handler(app)
    with pytest.raises(gr.Error, match="Log in with Hugging Face first"):
        push(**SETTING, repo_name="tiny-unet", profile=None, oauth_token=None)
    with pytest.raises(gr.Error, match="a Hub repo name is letters"):
        push(**SETTING, repo_name="bad--name", profile=gr.OAuthProfile(USER), oauth_token=_token("t"))
    assert not record.repos and not record.commits and not record.tokens


def test_push_refused_by_the_hub_says_so_plainly(lab_app, hub):
    app, _ = lab_app
    _, record = hub
    record.repos["bob/theirs"] = {"private": True, "token": "hf_oauth_bob"}  # exists, and is not alice's
    push = app_hub_handler(app)
    with pytest.raises(gr.Error, match=r"refused the upload \(HTTP 403\)") as caught:
        push(**SETTING, repo_name="bob/theirs", profile=gr.OAuthProfile(USER), oauth_token=_token("hf_oauth_alice"))
    assert "hf_oauth_alice" not in str(caught.value) and not record.commits


def test_hub_push_is_off_unless_the_flag_builds_it(lab_app, monkeypatch):
    import app_hub
    import app_service as svc

    app, _ = lab_app
    assert not app.HUB_PUSH and not app.demo.expects_oauth  # off by default: no login button, no endpoint
    assert "push_to_hub" not in {fn.api_name for fn in app.demo.fns.values()}
    monkeypatch.delenv("HF_TOKEN", raising=False)  # off a Space, Gradio's mocked login would ask the Hub who it is
    demo = gr.Blocks()  # what app.py builds with APP_HUB_PUSH=1
    try:
        with demo:
            inputs = [gr.Textbox() for _ in range(14)]  # Compare's inputs but the session history
            app_hub.wire(app_hub.push_controls(), inputs, {}, app.LAB)
    except ImportError as err:
        # Closing a Blocks builds its server app; its login routes need gradio[oauth], which this venv lacks:
        # app.py's gate (svc.hub_push_missing) keeps the flag from building the controls without it.
        assert "gradio[oauth]" in str(err) and svc.hub_push_missing()
    except ValueError as err:  # with gradio[oauth], off a Space: Gradio's mocked login needs a local HF login
        assert "logged in" in str(err)
    assert demo.expects_oauth and "push_to_hub" in {fn.api_name for fn in demo.fns.values()}


def app_hub_handler(app):
    import app_hub

    return app_hub.handler(app.LAB)
