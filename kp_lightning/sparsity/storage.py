"""Sparse on-disk storage for pruned encoders: Linear weights as a bitmask + their non-zero values (plain torch).

A saved directory holds ``config.json``, the tokenizer (if given), ``sparse_model.safetensors`` and
``sparse_storage.json`` (sizes); for a compact kp_lightning model (``KPBertFor...``) also the compact modeling code
and an ``auto_map``, as in a compact export.

In the safetensors file, a weight ``W`` stored sparse becomes ``W/mask`` (uint8,
1 bit per element, row-major, most significant bit first, zero-padded to whole bytes), ``W/values`` (the elements
whose mask bit is set, in ``float32``, ``float16`` or ``int8``) and, for ``int8``, ``W/scale`` (float32 scalar,
``W = q * scale``). Other tensors are stored under their own name (``float32``/``float16``), or for ``others="int8"``
as ``W/q`` (int8) + ``W/scale`` (float32, one per row). The metadata holds ``format``, ``format_version`` and, under
each original tensor name, a JSON string ``{"encoding", "shape", "dtype", "stored"}`` (``{"encoding": "tied",
"to": name}`` for a tensor tied to another one, which is stored once).
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from kp_lightning.errors import KPError

from ..compact_model.modeling_kp import LegacyCompactModelError
from ..core.export import ExportError, add_remote_code, check_output_dir, model_class

SPARSE_FILE = "sparse_model.safetensors"
REPORT_FILE = "sparse_storage.json"
FORMAT_NAME = "kp_lightning.sparse"
FORMAT_VERSION = "1"
VALUE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8}
BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


class SparseStorageError(KPError, ValueError):
    """A model or directory that cannot be saved or loaded in the sparse format the way that was asked."""


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor (row-major) into uint8, 8 elements per byte, most significant bit first."""
    flat = mask.flatten().to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    return (flat.view(-1, 8) * BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the boolean tensor of ``shape``."""
    bits = packed.unsqueeze(1).bitwise_and(BIT_WEIGHTS).ne(0).flatten()
    return bits[: torch.Size(shape).numel()].view(shape)


def _int8(tensor: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # round(w · (1/scale)) like torch's fake quantization, so QAT weights decode to exactly what training used
    return torch.clamp(torch.round(tensor * (1.0 / scale)), -128, 127).to(torch.int8)


def _encode_sparse(weight: torch.Tensor, values: str, scale: float | None) -> tuple[dict, dict]:
    mask = weight != 0
    nonzero = weight[mask]
    stored = {"mask": pack_bits(mask)}
    if values == "int8":
        amax = nonzero.abs().max().item() if nonzero.numel() else 0.0
        stored["scale"] = torch.tensor(float(scale) if scale is not None else (amax / 127 or 1.0), dtype=torch.float32)
        stored["values"] = _int8(nonzero.float(), stored["scale"])
    else:
        stored["values"] = nonzero.to(VALUE_DTYPES[values], copy=True)
    return stored, {"encoding": "bitmask", "values": values}


def _encode_other(tensor: torch.Tensor, others: str) -> tuple[dict, dict]:
    if not tensor.is_floating_point():
        return {"": tensor.clone()}, {"encoding": "dense"}
    if others == "int8" and tensor.dim() == 2:
        amax = tensor.float().abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
        return {"q": _int8(tensor.float(), scale[:, None]), "scale": scale}, {"encoding": "int8_rows"}
    dtype = torch.float16 if others == "int8" else VALUE_DTYPES[others]
    return {"": tensor.to(dtype, copy=True)}, {"encoding": "dense"}


def _decode(info: dict, stored: dict[str, torch.Tensor]) -> torch.Tensor:
    dtype = getattr(torch, info["dtype"])
    if info["encoding"] == "bitmask":
        mask = unpack_bits(stored["mask"], info["shape"])
        values = stored["values"].float() * stored["scale"] if "scale" in stored else stored["values"]
        dense = torch.zeros(info["shape"], dtype=dtype)
        dense[mask] = values.to(dtype)
        return dense
    if info["encoding"] == "int8_rows":
        return (stored["q"].float() * stored["scale"][:, None]).to(dtype)
    return stored[""].to(dtype)


def _unique_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with tied tensors kept once (first name), and the ``{dropped: kept}`` aliases."""
    state, aliases, seen = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.stride(), tensor.dtype, tensor.device)
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        state[name] = tensor.detach().cpu()
    return state, aliases


def _is_sparse(name: str, tensor: torch.Tensor, linear_weights: set[str], min_sparsity: float) -> bool:
    if tensor.dim() != 2 or not tensor.is_floating_point() or name not in linear_weights or not tensor.numel():
        return False
    return (tensor == 0).sum().item() / tensor.numel() >= min_sparsity


def _positive(value) -> bool:
    try:
        return 0 < float(value) < float("inf")
    except (TypeError, ValueError):
        return False


def _check_options(model, values, others, min_sparsity, weight_scales) -> None:
    for option, value in (("values", values), ("others", others)):
        if value not in VALUE_DTYPES:
            raise SparseStorageError(f"{option}={value!r} is not known: use one of {sorted(VALUE_DTYPES)}")
    if not 0 <= min_sparsity <= 1:
        raise SparseStorageError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    if weight_scales and values != "int8":
        raise SparseStorageError(f"weight_scales only apply to values='int8' (got values={values!r}): drop them")
    if bad := {k: v for k, v in (weight_scales or {}).items() if not _positive(v)}:
        raise SparseStorageError(f"weight_scales must be positive finite numbers, got {bad}")
    check_storable(model)


def check_storable(model: nn.Module) -> None:
    """Refuse a model that :func:`load_sparse` could not rebuild (call it before spending time on training).

    Stock transformers classes and kp_lightning's compact classes (``KPBertForSequenceClassification``...) are
    storable.

    Raises:
        SparseStorageError: the model has no transformers config, or its class is neither of those.
    """
    name = type(model).__name__
    if getattr(getattr(model, "config", None), "save_pretrained", None) is None:
        raise SparseStorageError(
            f"{name} has no transformers config, so it cannot be stored sparse",
            fix="train a transformers model (AutoModelFor<Task>) or a kp_lightning compact export",
        )
    if model_class(name) is not type(model):
        raise SparseStorageError(
            f"{name} is neither a transformers class nor a kp_lightning compact class, so load_sparse could not "
            "rebuild it",
            fix="save the underlying transformers model, or a compact model made by compact()/export_compact",
        )


def save_sparse(
    model: nn.Module,
    out_dir,
    *,
    values: str = "float32",
    others: str = "float32",
    min_sparsity: float = 0.5,
    weight_scales: dict[str, float] | None = None,
    tokenizer=None,
    overwrite: bool = False,
) -> dict:
    """Save ``model`` with its sparse Linear weights as bitmask + non-zero values.

    Args:
        model: A transformers model whose pruned weights hold exact zeros.
        out_dir: Output directory, replaced atomically on success.
        values: Dtype of the stored non-zeros: ``"float32"`` (exact), ``"float16"`` or ``"int8"`` (per tensor).
        others: Dtype of the other floating tensors: ``"float32"``, ``"float16"`` or ``"int8"`` (per row for
            2-D tensors, float16 for the rest).
        min_sparsity: Fraction of zeros from which a Linear weight is stored sparse.
        weight_scales: Int8 scales per weight name (e.g. from quantization-aware training).
        tokenizer: Saved alongside if given.
        overwrite: Replace a non-empty ``out_dir``.

    Returns:
        The sizes written to ``sparse_storage.json``.
    """
    _check_options(model, values, others, min_sparsity, weight_scales)
    out_dir = Path(out_dir)
    try:
        check_output_dir(out_dir, overwrite, hint="pass overwrite=True")
    except ExportError as err:
        raise SparseStorageError(str(err)) from err
    state, aliases = _unique_state(model)
    linear_weights = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    sparse = {name for name, tensor in state.items() if _is_sparse(name, tensor, linear_weights, min_sparsity)}
    if unknown := sorted(set(weight_scales or {}) - sparse):
        raise SparseStorageError(f"weight_scales names {unknown} are not weights stored sparse: check the names")

    tensors, metadata = {}, {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    totals = {"sparse_tensors": 0, "sparse_elements": 0, "nonzeros": 0, "sparse_stored_bytes": 0}
    for name, tensor in state.items():
        if name in sparse:
            stored, info = _encode_sparse(tensor, values, (weight_scales or {}).get(name))
            totals["sparse_tensors"] += 1
            totals["sparse_elements"] += tensor.numel()
            totals["nonzeros"] += int((tensor != 0).sum())
            totals["sparse_stored_bytes"] += sum(t.numel() * t.element_size() for t in stored.values())
        else:
            stored, info = _encode_other(tensor, others)
        info.update(shape=list(tensor.shape), dtype=str(tensor.dtype).removeprefix("torch."), stored=sorted(stored))
        metadata[name] = json.dumps(info)
        tensors.update({f"{name}/{part}" if part else name: t.contiguous() for part, t in stored.items()})
    metadata.update({alias: json.dumps({"encoding": "tied", "to": kept}) for alias, kept in aliases.items()})
    elements = totals["sparse_elements"]
    totals["sparsity"] = 1 - totals["nonzeros"] / elements if elements else 0.0

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]
        config.save_pretrained(staging)
        add_remote_code(staging, config)  # a compact model: its code, for loading without kp_lightning
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        save_file(tensors, staging / SPARSE_FILE, metadata=metadata)
        dense_bytes = sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in state.values())
        file_bytes = (staging / SPARSE_FILE).stat().st_size
        report = {"format_version": FORMAT_VERSION, "values": values, "others": others, "min_sparsity": min_sparsity}
        report.update(
            sparse_file_bytes=file_bytes, dense_fp32_bytes=dense_bytes, ratio=file_bytes / max(dense_bytes, 1)
        )
        report.update(**totals, tied=aliases)
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.is_dir():
        shutil.rmtree(out_dir)
    elif out_dir.exists():
        out_dir.unlink()
    staging.rename(out_dir)
    return report


def sparse_state_dict(path) -> dict[str, torch.Tensor]:
    """The decoded (dense) state dict of a sparse directory or ``sparse_model.safetensors`` file."""
    path = Path(path)
    file = path / SPARSE_FILE if path.is_dir() else path
    if not file.is_file():
        raise SparseStorageError(f"{file} does not exist: pass a directory written by save_sparse")
    with safe_open(file, framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT_NAME or metadata.get("format_version") != FORMAT_VERSION:
            raise SparseStorageError(
                f"{file} is not a version-{FORMAT_VERSION} sparse file (metadata format="
                f"{metadata.get('format')!r}, version={metadata.get('format_version')!r}): write it with save_sparse"
            )
        infos = {name: json.loads(text) for name, text in metadata.items() if name not in ("format", "format_version")}
        state = {}
        for name, info in infos.items():
            if info["encoding"] != "tied":
                stored = {part: handle.get_tensor(f"{name}/{part}" if part else name) for part in info["stored"]}
                state[name] = _decode(info, stored)
    state.update({name: state[info["to"]] for name, info in infos.items() if info["encoding"] == "tied"})
    return state


def load_sparse(path, device="cpu") -> nn.Module:
    """Rebuild the model saved by :func:`save_sparse` (stock or compact), in eval mode on ``device``."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise SparseStorageError(f"{path} has no config.json: pass a directory written by save_sparse")
    config = transformers.AutoConfig.from_pretrained(path)
    name = (config.architectures or [None])[0]
    cls = model_class(name)
    if cls is None:
        raise SparseStorageError(
            f"config.json of {path} names architecture {name!r}, which neither this transformers "
            f"{transformers.__version__} nor kp_lightning provides",
            fix="install a transformers version that has it, or fix 'architectures'",
        )
    state = sparse_state_dict(path)
    try:
        model = cls._from_config(config)
    except LegacyCompactModelError as err:
        raise SparseStorageError(f"{path}: {err}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    current = model.state_dict()
    loaded = {tensor.data_ptr() for key, tensor in current.items() if key in state}
    untied = [key for key in missing if current[key].data_ptr() not in loaded]
    if untied or unexpected:
        raise SparseStorageError(
            f"{path} does not match {name}: missing (not tied) {untied}, unexpected {unexpected}; "
            "it was saved from a different model or transformers version"
        )
    return model.to(device).eval()
