"""Push an export directory to the Hugging Face Hub, after checks that need no network.

:func:`check_push_target` (a valid ``namespace/name`` repo id, not in offline mode) is cheap enough to call at
the start of a run, so that a bad target is refused before any training or pruning. :func:`check_export_dir`
checks that a directory is a complete export. :func:`push_to_hub` runs both, then calls ``huggingface_hub``
(``HfApi().create_repo(..., exist_ok=True)`` and ``upload_folder``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.utils import HFValidationError, validate_repo_id

from kp_lightning.errors import ConfigError, MissingFileError

REPORT_FILE = "compression_report.json"
CARD_FILE = "README.md"
# A complete export holds config.json and one of these weight layouts.
WEIGHT_LAYOUTS = (
    ("model.safetensors",),  # export_compact / export_dense / prune / CoFi / sparse exports / SaveBestPretrained
    ("model.onnx", "quantization.json"),  # QAT int8 (save_int8)
    ("sparse_model.safetensors",),  # sparse storage (save_sparse)
)
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether ``huggingface_hub`` is in offline mode (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` now, or when it
    was imported: it reads them once)."""
    now = any((os.environ.get(name) or "").strip().upper() in _TRUE for name in OFFLINE_VARIABLES)
    return now or bool(constants.HF_HUB_OFFLINE)


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid Hub model id with a namespace (``user/name`` or ``org/name``).

    Raises:
        ConfigError: anything else, with the validator's reason.
    """
    fix = (
        "use namespace/name (your user or organization, then the model name): letters, digits, '-', '_' and '.', "
        "e.g. my-org/bert-base-sst2-kprune"
    )
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"Hub repo id {repo_id!r} is not of the form namespace/name", fix=fix)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(f"Hub repo id {repo_id!r} is not valid: {err}", fix=fix) from None
    return repo_id


def check_push_target(repo_id: str) -> str:
    """Refuse a push that cannot succeed before any work: a bad ``repo_id`` or Hub offline mode.

    Returns:
        ``repo_id``.

    Raises:
        ConfigError: an invalid repo id, or ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set.
    """
    check_repo_id(repo_id)
    if hub_offline():
        set_vars = [name for name in OFFLINE_VARIABLES if os.environ.get(name)] or ["HF_HUB_OFFLINE"]
        raise ConfigError(
            f"cannot push to the Hub ({repo_id}): offline mode is on ({', '.join(set_vars)})",
            fix=f"unset {' and '.join(set_vars)} (or set it to 0) in the shell that pushes, then log in with "
            "`hf auth login` or pass a token",
        )
    return repo_id


def check_export_dir(export_dir: str | Path) -> Path:
    """``export_dir`` if it is a complete export: ``config.json`` with model weights (safetensors, or the int8
    ``model.onnx`` + ``quantization.json``, or ``sparse_model.safetensors``), a ``README.md`` whose YAML front matter
    ``huggingface_hub.ModelCard`` parses, and a ``compression_report.json`` holding a JSON object.

    Raises:
        MissingFileError: the directory or one of those files is missing.
        ConfigError: the card or the report does not parse.
    """
    path = Path(export_dir)
    if not path.is_dir():
        raise MissingFileError(
            f"export directory {path} does not exist" + (" (it is a file)" if path.exists() else ""),
            fix="pass the output_dir of `kp-lightning prune`, of a CoFi, GradualMagnitudePruning, PatternLock or "
            "QuantizationAwareTraining run, of SaveBestPretrained, or of export_compact / export_dense",
        )
    missing = [name for name in ("config.json", CARD_FILE, REPORT_FILE) if not (path / name).is_file()]
    if not any(all((path / f).is_file() for f in layout) for layout in WEIGHT_LAYOUTS):
        missing.append(" or ".join(" + ".join(layout) for layout in WEIGHT_LAYOUTS))
    if missing:
        raise MissingFileError(
            f"{path} is not a complete export: it has no {', '.join(missing)}",
            fix="push the directory an export wrote, unchanged (re-run the export if files were removed)",
        )
    try:
        card = ModelCard.load(path / CARD_FILE)
    except Exception as err:  # yaml and huggingface_hub raise several kinds
        raise ConfigError(
            f"{path / CARD_FILE} is not a valid model card: {err}", fix="re-run the export to rewrite the card"
        ) from None
    if not card.data.to_dict():
        raise ConfigError(
            f"{path / CARD_FILE} has no YAML front matter (the Hub metadata block between '---' lines)",
            fix="re-run the export: kp_lightning writes the card with its metadata",
        )
    try:
        report = json.loads((path / REPORT_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path / REPORT_FILE} is not valid JSON: {err}", fix="re-run the export") from None
    if not isinstance(report, dict):
        raise ConfigError(f"{path / REPORT_FILE} does not hold a JSON object", fix="re-run the export")
    return path


def push_to_hub(
    export_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a complete export to the model repo ``repo_id`` (created if needed); returns the repo's URL.

    Checks first, without network (:func:`check_push_target`, :func:`check_export_dir`); then
    ``HfApi().create_repo(repo_id, private=private, exist_ok=True)`` and ``upload_folder``. ``token`` defaults to
    the logged-in one. An existing repo keeps its visibility.
    """
    check_push_target(repo_id)
    path = check_export_dir(export_dir)
    if commit_message is None:
        method = json.loads((path / REPORT_FILE).read_text()).get("method")
        commit_message = f"Upload {method + ' ' if method else ''}export written by kp_lightning"
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(repo_id=repo_id, folder_path=str(path), commit_message=commit_message, repo_type="model")
    return str(url)
