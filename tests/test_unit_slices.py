"""One head and one FFN neuron zeroed through each path (structural masks, CoFi gates, GMP weight masks on the
default selection, the compact model) change the same outputs, on every architecture: each path acts on the
unit's own slices of the weights."""

import pytest
import torch

from kp_lightning import EncoderAdapter, StructuralMasks, attach_masks, compact
from kp_lightning.cofi import CoFiPruner, SparsitySchedule
from kp_lightning.sparsity.masked_weights import MaskedWeights
from kp_lightning.sparsity.weight_selection import encoder_linear_names
from tests.helpers import ARCHS, main_output, tiny_batch, tiny_model

LAYER, HEAD, NEURON = 1, 2, 5


def zeroed_unit(model, kind: str) -> StructuralMasks:
    masks = StructuralMasks.ones(EncoderAdapter(model).shape())
    (masks.head if kind == "head" else masks.neuron)[LAYER][HEAD if kind == "head" else NEURON] = 0
    return masks


def through_gates(model, kind: str, batch) -> torch.Tensor:
    pruner = CoFiPruner(model, SparsitySchedule(0.5, 0, 10))
    with torch.no_grad():
        for group in ("head", "neuron", "hidden", "attention", "ffn"):
            for p in getattr(pruner.gates, group):
                p.fill_(30.0)  # every gate open: deterministic value sigmoid(36) = 1 in float32
        gate = pruner.gates.head[LAYER] if kind == "head" else pruner.gates.neuron[LAYER]
        gate[HEAD if kind == "head" else NEURON] = -30.0
    pruner.step = 5
    pruner.attach(model)
    try:
        out = main_output(model(**batch))
        expected = zeroed_unit(model, kind)
        assert torch.equal(pruner.masks.head[LAYER], expected.head[LAYER])
        assert torch.equal(pruner.masks.neuron[LAYER], expected.neuron[LAYER])
    finally:
        pruner.detach()
    return out


def through_weight_masks(model, kind: str, batch) -> torch.Tensor:
    """GMP's masks on the default selection: the unit's input columns of the projection that reads it zeroed."""
    view = EncoderAdapter(model).layers[LAYER]
    reader = view.attention_out if kind == "head" else view.ffn_down
    names = {module: name for name, module in model.named_modules()}
    selection = encoder_linear_names(model)
    assert names[reader] in selection
    weights = MaskedWeights(model, selection)
    weights.masks = {name: torch.ones_like(model.get_submodule(name).weight, dtype=torch.bool) for name in selection}
    columns = slice(HEAD * view.head_size, (HEAD + 1) * view.head_size) if kind == "head" else slice(NEURON, NEURON + 1)
    weights.masks[names[reader]][:, columns] = False
    saved = {name: model.get_submodule(name).weight.clone() for name in selection}
    weights.apply()
    try:
        return main_output(model(**batch))
    finally:
        for name, weight in saved.items():
            model.get_submodule(name).weight.copy_(weight)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["head", "neuron"])
@torch.no_grad()
def test_one_unit_zeroed_through_every_path_gives_the_same_outputs(arch, kind):
    # the hidden states: every output dimension; a gated neuron's effect is quadratic in the weights, so ModernBERT's
    # 0.02 init would leave it near the tolerance
    model = tiny_model(arch, "Model", **({"initializer_range": 0.1} if arch == "modernbert" else {}))
    batch = tiny_batch()
    dense = main_output(model(**batch))
    masks = zeroed_unit(model, kind)
    with attach_masks(model, masks):
        masked = main_output(model(**batch))
    assert (masked - dense).abs().max() > 1e-3  # the unit matters (1000 × the tolerance)
    torch.testing.assert_close(through_gates(model, kind, batch), masked, atol=1e-6, rtol=0)
    torch.testing.assert_close(through_weight_masks(model, kind, batch), masked, atol=1e-6, rtol=0)
    small = compact(model, masks).eval()
    shape = EncoderAdapter(small).shape()
    assert (shape.heads[LAYER], shape.neurons[LAYER]) == ((3, 37) if kind == "head" else (4, 36))
    torch.testing.assert_close(main_output(small(**batch)), masked, atol=1e-5, rtol=0)
    torch.testing.assert_close(main_output(model(**batch)), dense, atol=0, rtol=0)  # every path left it intact
