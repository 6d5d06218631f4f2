"""Physical compaction: fold mask values into weights and slice away what the masks remove."""

from __future__ import annotations

import torch
from torch import nn

from ..compact_model.configuration_kp import COMPACT_CONFIG_CLASSES
from ..compact_model.modeling_kp import COMPACT_MODEL_CLASSES, REMOVED_SUBLAYER, STRUCTURE_RECORD_KEY
from .adapter import EncoderAdapter
from .masks import StructuralMasks
from .structure import EncoderStructure

PARENT_STRUCTURE_KEY = STRUCTURE_RECORD_KEY


@torch.no_grad()
def compact(model: nn.Module, masks: StructuralMasks | EncoderStructure) -> nn.Module:
    """Build a physically smaller model equal (in eval mode) to ``model`` with ``masks`` attached.

    Soft mask values are folded into the weights; units with value 0 are sliced away; a removed sublayer
    keeps only its (scaled) output bias and its LayerNorm, ``LN(x + b)``. ``model`` is not modified.

    Args:
        model: A supported encoder, stock or already compact.
        masks: Masks (or a 0/1 structure) for the model's current shape.

    Returns:
        A ``KP<Class>`` model (a subclass of the stock class) whose ``config.kp_structure`` records its sizes.
    """
    adapter = EncoderAdapter(model)
    shape = adapter.shape()
    if isinstance(masks, EncoderStructure):
        masks.validate(shape)
        masks = StructuralMasks.from_structure(masks)
    masks.validate(shape)
    structure = masks.to_structure(shape)
    state = _sliced_state_dict(adapter, masks, structure)

    config_dict = model.config.to_dict()
    config_dict.pop("auto_map", None)
    config_dict["kp_structure"] = {**structure.kept_counts(), "removed_sublayer": REMOVED_SUBLAYER}
    config_dict[PARENT_STRUCTURE_KEY] = original_structure(model).compose(structure).to_dict()
    config = COMPACT_CONFIG_CLASSES[adapter.layout.model_type](**config_dict)
    config._attn_implementation = model.config._attn_implementation
    cls = COMPACT_MODEL_CLASSES[(adapter.layout.model_type, adapter.task)]
    with torch.device("meta"):
        small = cls(config)
    small.load_state_dict(state, strict=True, assign=True)
    buffers = dict(model.named_buffers())
    for name, buf in small.named_buffers():
        if buf.is_meta:
            _set_buffer(small, name, buffers[name].clone())
    small.tie_weights()
    small.train(model.training)
    return small


def original_structure(model: nn.Module) -> EncoderStructure:
    """What ``model`` keeps of the dense model it was compacted from (everything, for a dense model)."""
    record = getattr(model.config, PARENT_STRUCTURE_KEY, None)
    if record:
        return EncoderStructure.from_dict(record)
    return EncoderStructure.full(EncoderAdapter(model).shape())


def _set_buffer(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    model.get_submodule(owner).register_buffer(leaf, value, persistent=False)


def _index(kept: list[int], device) -> torch.Tensor:
    return torch.tensor(kept, dtype=torch.long, device=device)


def _sliced_state_dict(adapter: EncoderAdapter, masks: StructuralMasks, structure: EncoderStructure) -> dict:
    """State dict of the compact model: the source state dict with prunable tensors folded and sliced."""
    model = adapter.model
    names = {module: name for name, module in model.named_modules()}
    state = dict(model.state_dict())
    device = masks.hidden.device
    hid = _index(structure.hidden, device)
    hidden = masks.hidden

    def put(module: nn.Module, weight: torch.Tensor | None, bias: torch.Tensor | None = None) -> None:
        prefix = names[module] + "."
        if weight is not None:  # None: a removed sublayer's output projection, which keeps only its bias
            state[prefix + "weight"] = weight.contiguous()
        if bias is not None:
            state[prefix + "bias"] = bias.contiguous()

    def drop(module: nn.Module) -> None:
        prefix = names[module] + "."
        for key in [k for k in state if k.startswith(prefix)]:
            del state[key]

    def put_rows(module: nn.Module, rows: torch.Tensor, columns: torch.Tensor | None = None) -> None:
        """Keep ``rows`` of the weight (and its input ``columns``) and of the bias, when there is one."""
        weight = module.weight[rows]
        put(
            module,
            weight if columns is None else weight[:, columns],
            None if module.bias is None else module.bias[rows],
        )

    def scaled(bias: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor | None:
        return None if bias is None else bias[hid] * scale

    def norm(module: nn.Module | None) -> None:
        if isinstance(module, nn.LayerNorm):  # an identity pre-norm has nothing to fold
            put(module, (module.weight * hidden)[hid], scaled(module.bias, hidden[hid]))

    def reader(module: nn.Linear) -> None:
        put(module, module.weight[:, hid], module.bias)

    projection = adapter.embedding_projection
    if projection is not None:  # the tables and their LayerNorm keep the embedding width
        put(projection, (projection.weight * hidden[:, None])[hid], (projection.bias * hidden)[hid])
    else:
        for table in adapter.embedding_tables:
            put(table, table.weight[:, hid])
        norm(adapter.embedding_norm)
    relative = adapter.relative_embeddings
    if relative is not None:  # read through every layer's projections: its columns are hidden dims
        put(relative, relative.weight[:, hid])
        if adapter.relative_embedding_norm is not None:
            norm(adapter.relative_embedding_norm)

    for view, heads, neurons in zip(adapter.layers, structure.heads, structure.neurons, strict=True):
        i, dh = view.index, view.head_size
        out = view.attention_out
        row_scale = (masks.attention[i] * hidden)[hid]
        if not heads:  # removed: LN(x + b) (pre-LN: x + b), the bias scaled like the sublayer's output
            for module in view.head_projections:  # none when the sublayer is already removed
                drop(module)
            drop(out)
            put(out, None, scaled(out.bias, row_scale))
        else:
            for proj, blocks in view.head_projection_blocks:
                rows = _index(view.head_rows(heads, blocks), device)
                put_rows(proj, rows, hid)
            dims = _index(view.head_rows(heads, 1), device)
            col_scale = masks.head[i].repeat_interleave(dh)[dims]
            weight = out.weight[hid][:, dims] * col_scale * row_scale[:, None]
            put(out, weight, scaled(out.bias, row_scale))
        norm(view.attention_norm)
        up, down = view.ffn_up, view.ffn_down
        row_scale = (masks.ffn[i] * hidden)[hid]
        if not neurons:
            if up is not None:  # None when the FFN core is already removed
                drop(up)
            drop(down)
            put(down, None, scaled(down.bias, row_scale))
        else:
            rows = _index(view.neuron_rows(neurons), device)
            put_rows(up, rows, hid)
            kept = _index(neurons, device)
            weight = down.weight[hid][:, kept] * masks.neuron[i][kept] * row_scale[:, None]
            put(down, weight, scaled(down.bias, row_scale))
        norm(view.ffn_norm)
    norm(adapter.final_norm)

    for module in adapter.stream_readers():
        reader(module)
    head = adapter.head
    if head.lm_transform and projection is not None:  # it writes the (unpruned) embedding space
        reader(model.get_submodule(head.lm_transform))
    elif head.lm_transform:
        transform = model.get_submodule(head.lm_transform)
        put_rows(transform, hid, hid)
        put_rows(model.get_submodule(head.lm_norm), hid)
        decoder = model.get_submodule(head.lm_decoder)
        put(decoder, decoder.weight[:, hid])
    return state
