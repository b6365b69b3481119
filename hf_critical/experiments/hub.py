"""The Hub push of a recipe: once, at the end, after everything is written locally.

`defer_hub_push` takes the push out of the Trainer's hands; `push_outputs` uploads the output
folder; a failed push raises `HubPushError` saying where the local files are (never the token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..names import INITIAL_WEIGHTS_FILE
from .redaction import redact_secrets

__all__ = ["HubPushError", "HubPushRequest", "defer_hub_push", "push_outputs"]


class HubPushError(RuntimeError):
    """The Hub push failed; the message says where the local outputs are."""


@dataclass
class HubPushRequest:
    """What ``--push_to_hub`` asked for, kept aside until the outputs are written (the token is not printed)."""

    repo_id: str | None
    token: str | None = field(default=None, repr=False)
    private: bool | None = None
    revision: str | None = None


def defer_hub_push(args: Any) -> HubPushRequest | None:
    """Take the Hub push out of the Trainer's hands; None if ``args.push_to_hub`` is off.

    With ``push_to_hub`` the Trainer creates the repository in its constructor and pushes
    checkpoints during training, so an unreachable Hub stops the run before anything is trained.
    This turns both off; `push_outputs` pushes once, at the end. It also clears ``hub_token`` from
    the arguments, pushing or not, so that ``training_args.bin`` and the results never hold it.
    """
    token = getattr(args, "hub_token", None)
    args.hub_token = None
    if not getattr(args, "push_to_hub", False):
        return None
    args.push_to_hub = False
    return HubPushRequest(
        repo_id=args.hub_model_id,
        token=token,
        private=args.hub_private_repo,
        revision=getattr(args, "hub_revision", None),
    )


def push_outputs(request: HubPushRequest, output_dir: str, commit_message: str = "End of training") -> str:
    """Upload ``output_dir`` (checkpoints excluded) to the Hub; returns the commit URL.

    Raises `HubPushError` naming the repository and the local folder when anything fails; the
    token never appears in the message.
    """
    repo_name = request.repo_id or Path(output_dir).absolute().name
    try:
        from huggingface_hub import HfApi

        api = HfApi(token=request.token)
        repo_id = api.create_repo(repo_name, private=request.private, exist_ok=True).repo_id
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=output_dir,
            commit_message=commit_message,
            revision=request.revision,
            # The initial weights kept for layer rotation are a copy of the starting model: not a result.
            ignore_patterns=["_*", "checkpoint-*", "*.tmp", INITIAL_WEIGHTS_FILE],
        )
    except Exception as err:
        reason = redact_secrets(f"{type(err).__name__}: {err}", [request.token])
        raise HubPushError(
            f"pushing {output_dir} to the Hub repository {repo_name!r} failed ({reason}). Everything is saved "
            f"locally in {output_dir}; upload it later with `hf upload {repo_name} {output_dir}` once the Hub is "
            "reachable and a token with write access is set (HF_TOKEN or `hf auth login`)."
        ) from None
    return str(getattr(commit, "commit_url", commit))
