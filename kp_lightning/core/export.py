"""Save compressed models as self-contained directories and load them back (safetensors + JSON only)."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from torch import nn

from kp_lightning.embedding.st_export import embedding_card_info, write_embedding_files
from kp_lightning.errors import KPError

from ..compact_model import configuration_kp, fused_attention, layout_fields, layouts, modeling_kp
from ..compact_model.layouts import layout_for_model_type
from ..compact_model.modeling_kp import COMPACT_MODEL_CLASSES, LegacyCompactModelError
from ..compact_model.registration import auto_map
from .adapter import EncoderAdapter
from .compaction import compact
from .masks import StructuralMasks
from .model_card import render_model_card
from .report import compression_report
from .structure import EncoderStructure

REMOTE_CODE_FILES = (
    configuration_kp.__file__,
    modeling_kp.__file__,
    layouts.__file__,
    layout_fields.__file__,
    fused_attention.__file__,
)
REPORT_FILE = "compression_report.json"


class ExportError(KPError, ValueError):
    """Raised when a model cannot be exported the way that was asked."""


def model_class(name: str | None) -> type | None:
    """The class a config's ``architectures`` entry names: a kp_lightning compact class (``KPBertFor...``) or a
    stock transformers class; ``None`` if it is neither."""
    if not name:
        return None
    compact_classes = {cls.__name__: cls for cls in COMPACT_MODEL_CLASSES.values()}
    cls = compact_classes.get(name) or getattr(transformers, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, nn.Module) else None


def is_compact_config(config) -> bool:
    """Whether ``config`` describes a compact model (it records ``kp_structure`` for a known layout)."""
    model_type = getattr(config, "model_type", "") or ""
    return getattr(config, "kp_structure", None) is not None and layout_for_model_type(model_type) is not None


def add_remote_code(directory: str | Path, config) -> bool:
    """Make a directory whose ``config.json`` holds a compact config load without kp_lightning.

    Copies the compact modeling code (:data:`REMOTE_CODE_FILES`) next to ``config.json`` and writes the ``auto_map``
    that ``AutoConfig``/``AutoModelFor<Task>.from_pretrained(dir, trust_remote_code=True)`` follow (a compact model
    built in memory by :func:`compact` has none). Does nothing for a stock config.

    Returns:
        Whether the directory holds a compact config (and now its code).
    """
    if not is_compact_config(config):
        return False
    directory = Path(directory)
    config_file = directory / "config.json"
    data = json.loads(config_file.read_text())
    data["auto_map"] = auto_map(layout_for_model_type(config.model_type).model_type)
    config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    for path in REMOTE_CODE_FILES:
        shutil.copy(path, directory / Path(path).name)
    return True


def check_output_dir(path: Path, overwrite: bool, hint: str = "pass overwrite=True") -> None:
    """Refuse a non-empty output directory (or a file in its place) before any work is done.

    Args:
        path: The output directory.
        overwrite: Whether replacing it was asked for.
        hint: How the caller's user asks for overwriting (``--overwrite true``, ``overwrite: true``...).
    """
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise ExportError(f"output_dir {path} exists and is not empty", fix=f"choose another one or {hint}")


@contextmanager
def staging_dir(out_dir: Path, overwrite: bool):
    """Write into a temporary sibling directory and move it into place only when everything succeeded."""
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty; pass overwrite=True or choose another directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


def _write_common(staging: Path, model: nn.Module, kind: str, tokenizer, reference, report_extra: dict) -> None:
    model.save_pretrained(staging)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    write_embedding_files(staging, model)  # an embedding model: the sentence-transformers files too
    report = compression_report(model, reference=reference, export=kind, **report_extra)
    (staging / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str))
    base = report_extra.get("base_model") or getattr(reference, "name_or_path", None) or None
    card = render_model_card(
        report, kind, base_model=base, method=report_extra.get("method"), embedding=embedding_card_info(model)
    )
    card.save(staging / "README.md")


def export_compact(
    model: nn.Module,
    out_dir: str | Path,
    masks: StructuralMasks | EncoderStructure | None = None,
    tokenizer=None,
    reference: nn.Module | None = None,
    overwrite: bool = False,
    **report_extra,
) -> Path:
    """Save a physically compacted model that loads with or without kp_lightning.

    Writes ``model.safetensors``, ``config.json`` (with ``kp_structure`` and an ``auto_map``), the small
    modeling code, tokenizer files (when given), ``README.md`` and ``compression_report.json``.

    Args:
        model: A supported encoder, stock or compact.
        out_dir: Target directory; written atomically.
        masks: If given, ``model`` is compacted with them first.
        tokenizer: Saved alongside when given.
        reference: The dense model, for the report's ratios (defaults to ``model`` itself when masks are given).
        overwrite: Replace a non-empty ``out_dir``.
        **report_extra: Extra report fields (method, metrics, timings, base_model, ...).

    Returns:
        The export directory.
    """
    out_dir = Path(out_dir)
    if masks is not None:
        reference = reference if reference is not None else model
    small = compact(model, masks if masks is not None else StructuralMasks.ones(EncoderAdapter(model).shape()))
    small.config.auto_map = auto_map(EncoderAdapter(small).layout.model_type)
    with staging_dir(out_dir, overwrite) as staging:
        _write_common(staging, small, "compact", tokenizer, reference, report_extra)
        for path in REMOTE_CODE_FILES:
            shutil.copy(path, staging / Path(path).name)
    return out_dir


@torch.no_grad()
def fold_masks_dense(model: nn.Module, masks: StructuralMasks) -> nn.Module:
    """A copy of a stock model whose weights carry ``masks`` (zeros for pruned units), same architecture.

    A removed sublayer is all zeros but its (scaled) output bias: ``LN(x + s·b)``, as in the compact model.

    Raises:
        ExportError: the masks prune hidden dims, which a stock model cannot express.
    """
    adapter = EncoderAdapter(model)
    masks.validate(adapter.shape())
    if adapter.is_compact:
        raise ExportError("a compact model has no stock architecture; use export_compact")
    if not bool((masks.hidden == 1).all()):
        raise ExportError("hidden-dimension masks cannot be expressed in a stock model; use export_compact")
    dense = copy.deepcopy(model)
    for view in EncoderAdapter(dense).layers:
        i = view.index
        pruned_heads = torch.nonzero(masks.head[i] == 0).flatten().tolist()
        for proj, blocks in view.head_projection_blocks:
            _zero_rows(proj, view.head_rows(pruned_heads, blocks))
        _scale_output(view.attention_out, masks.head[i].repeat_interleave(view.head_size), masks.attention[i])
        _zero_rows(view.ffn_up, view.neuron_rows(torch.nonzero(masks.neuron[i] == 0).flatten().tolist()))
        _scale_output(view.ffn_down, masks.neuron[i], masks.ffn[i])
    return dense


def _zero_rows(projection: nn.Linear, rows: list[int]) -> None:
    """Zero output ``rows`` of a projection (weight and bias, when there is one)."""
    projection.weight[rows] = 0
    if projection.bias is not None:
        projection.bias[rows] = 0


def _scale_output(projection: nn.Linear, columns: torch.Tensor, sublayer: torch.Tensor) -> None:
    """Fold unit values (per input column) and the sublayer scale into an output projection."""
    projection.weight.mul_(columns * sublayer)
    if projection.bias is not None:
        projection.bias.mul_(sublayer)


def export_dense(
    model: nn.Module,
    out_dir: str | Path,
    masks: StructuralMasks | None = None,
    tokenizer=None,
    reference: nn.Module | None = None,
    overwrite: bool = False,
    **report_extra,
) -> Path:
    """Save a stock-architecture model (pruned weights left as zeros) that plain ``AutoModel`` loads.

    Suits unstructured sparsity (Prune Once for All) and head/neuron masks (removed sublayers included).
    """
    out_dir = Path(out_dir)
    if EncoderAdapter(model).is_compact:
        raise ExportError("a compact model has no stock architecture; use export_compact")
    dense = fold_masks_dense(model, masks) if masks is not None else model
    with staging_dir(out_dir, overwrite) as staging:
        _write_common(staging, dense, "dense", tokenizer, reference, report_extra)
    return out_dir


def load_compressed(path: str | Path, **kwargs) -> nn.Module:
    """Load an export written by :func:`export_compact` or :func:`export_dense` (no remote code needed).

    Raises:
        ExportError: the directory is not a kp_lightning export, or a compact export from an earlier version
            whose removed sublayers this version would compute differently.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file() or not (path / "model.safetensors").is_file():
        raise ExportError(f"{path} is not an export: it needs config.json and model.safetensors")
    config = json.loads(config_file.read_text())
    architecture = (config.get("architectures") or [None])[0]
    cls = model_class(architecture)
    if cls is None:
        raise ExportError(f"{config_file} names architecture {architecture!r}, which kp_lightning cannot load")
    try:
        return cls.from_pretrained(path, use_safetensors=True, **kwargs)
    except LegacyCompactModelError as err:
        raise ExportError(f"{path}: {err}") from None
