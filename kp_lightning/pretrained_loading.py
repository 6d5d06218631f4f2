"""``from_pretrained`` with an error that says what could not be loaded and what to do about it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kp_lightning.errors import ModelLoadError
from kp_lightning.hub_push import hub_offline


def load_pretrained(loader: Any, name_or_path: str, what: str = "model", **kwargs) -> Any:
    """``loader.from_pretrained(name_or_path, **kwargs)``; a name or folder that cannot be loaded raises
    :class:`ModelLoadError` instead of transformers' multi-paragraph ``OSError``.

    Args:
        loader: A transformers Auto class (or any class with ``from_pretrained``).
        name_or_path: A hub model id or a local directory.
        what: What is being loaded, for the message ("model", "tokenizer", "teacher").
    """
    try:
        return loader.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        if isinstance(err, ValueError) and "model_type" not in str(err) and "Unrecognized" not in str(err):
            raise
        raise _load_error(name_or_path, what, err) from err


def _load_error(name_or_path: str, what: str, err: Exception) -> ModelLoadError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    local = Path(name_or_path).expanduser()
    if local.exists():
        fix = (
            f"{name_or_path} must be a folder written by save_pretrained or one of our exports (with "
            "config.json and the weights), or a train.py .ckpt file"
        )
    elif str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:  # not a hub id
        fix = f"no such file or folder: check the path {name_or_path}"
    elif hub_offline():
        fix = (
            "HF_HUB_OFFLINE is set, so only models already in the local cache load: unset it to download, "
            "or pass a local directory"
        )
    else:
        fix = "check the model name (namespace/name) and your network, or pass a local directory"
    return ModelLoadError(f"cannot load {what} {name_or_path!r}: {reason}", fix=fix)
