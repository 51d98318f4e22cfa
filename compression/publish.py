"""Publish a bundle (see export.py) as a Hugging Face Hub model repo, with a token the caller holds.

`push_bundle` checks the bundle first (every file's sha256, as the loader does), creates the repo if it does not
exist (private unless asked otherwise) and uploads the folder as one commit through huggingface_hub's own
`create_repo` / `upload_folder`. The app calls it with the visitor's OAuth token when a Space enables it
(`APP_HUB_PUSH=1`, see docs/export.md); a script can call it with any write token.

The endpoint is `HF_ENDPOINT` read at call time (huggingface_hub reads it once, at import), so a test can point
it at a local stand-in of the Hub (tests/hub_standin.py) and check the files that arrive.

Example:
    >>> folder = save_compressed("out/l1-30-int8", CompressionSpec(0.3, quant_mode="int8-weight")).folder
    >>> push_bundle(folder, "me/tiny-shapes-l1-30-int8", token=os.environ["HF_TOKEN"])
    'https://huggingface.co/me/tiny-shapes-l1-30-int8'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .export import read_manifest


class PublishError(ValueError):
    """The Hub refused or could not be reached; the message is plain text (no token, no server path)."""


@dataclass(frozen=True)
class Published:
    """What `push_bundle` did.

    Args:
        repo_id (`str`): the model repo.
        url (`str`): its page.
        commit_url (`str`): the upload's commit.
        files (`int`): files uploaded.
    """

    repo_id: str
    url: str
    commit_url: str
    files: int


def check_repo_id(repo_id: str) -> str:
    """`namespace/name` or `name`, as the Hub allows them; PublishError (not echoing the value) otherwise."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PublishError(
            "a Hub repo name is letters, digits, '-', '_' and '.', at most 96 characters, optionally after "
            "'namespace/'; it may not start or end with '-' or '.', nor hold '--' or '..'."
        ) from None
    return repo_id


def push_bundle(
    folder: str | Path, repo_id: str, token: str, private: bool = True, commit_message: str | None = None
) -> Published:
    """Upload a bundle folder to the Hub model repo `repo_id` (created if missing) as one commit.

    Args:
        folder (`str` or `Path`): a bundle written by `save_compressed`; checked before anything is sent.
        repo_id (`str`): `namespace/name`.
        token (`str`): a token allowed to create and write the repo (the visitor's OAuth token in the app).
        private (`bool`, defaults to True): visibility of a repo created here (an existing one keeps its own).
        commit_message (`str`, *optional*): default: the bundle's setting.

    Raises:
        BundleError: the folder is not an intact bundle.
        PublishError: a bad repo name, no token, or the Hub refused / could not be reached.
    """
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    folder = Path(folder)
    manifest = read_manifest(folder)  # never publish a damaged bundle
    check_repo_id(repo_id)
    if not token:
        raise PublishError("no Hub token: log in first")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=url.repo_id,
            repo_type="model",
            commit_message=commit_message or f"Compressed UNet: {manifest['label']}",
        )
    except OfflineModeIsEnabled:
        raise PublishError("this server runs offline (HF_HUB_OFFLINE): it cannot reach the Hub") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "no response"
        hint = {401: ": log in again", 403: ": the token may not write there (scope or namespace)"}.get(status, "")
        raise PublishError(f"the Hub refused the upload (HTTP {status}){hint}") from None
    except (OSError, httpx2.TransportError) as err:  # huggingface_hub's HTTP client is httpx2
        raise PublishError(f"the Hub could not be reached ({type(err).__name__})") from None
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    return Published(url.repo_id, str(url), commit.commit_url, files)
