"""Fake quantization (QAT) of Linear layers: weight grids, activation observers, switches, the callback's token mask
(the int8 model built from it: tests/test_int8_model.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.ao.quantization.observer import MinMaxObserver, MovingAverageMinMaxObserver

from callbacks import QuantizationAwareTraining
from kp_lightning import EncoderAdapter
from kp_lightning.quantization import (
    DEFAULT_NO_OUTPUT_QUANT,
    FakeQuantizer,
    default_quantized_linears,
    fake_quantize_weight,
    is_fake_quantized,
    strip_fake_quant,
    weight_qparams,
)
from kp_lightning.quantization.fake_quant import ActivationObserver
from tests.helpers import ARCHS, tiny_batch, tiny_model
from tests.quantization_fixtures import logits, quantized


@pytest.mark.parametrize("arch", ARCHS)
def test_layers_feeding_a_residual_sum_and_value_projections_keep_a_float_output(arch):
    """The default rule reads the layout table: output projections, V (or the fused QKV) and heads stay float."""
    model = tiny_model(arch, "ForSequenceClassification")
    names = default_quantized_linears(model)
    quantizer = FakeQuantizer(model, names)
    modules = {id(model.get_submodule(n)): n for n in names}
    for view in EncoderAdapter(model).layers:
        projections = dict(view.head_projection_blocks)
        value = view.head_projections[0 if len(projections) == 1 else 2]  # fused QKV, or Q / K / V
        for module in (view.attention_out, view.ffn_down, value):
            assert not quantizer.output_quantized(modules[id(module)]), modules[id(module)]
        for module in (view.ffn_up, *(p for p in view.head_projections if p is not value)):
            assert quantizer.output_quantized(modules[id(module)]), modules[id(module)]


def test_default_linears_and_output_quant_rule():
    model = tiny_model("bert", "ForSequenceClassification")
    names = default_quantized_linears(model)
    assert len(names) == 3 * 6 + 2  # q, k, v, attention output, intermediate, output per layer; pooler; classifier
    assert not any("pooler" in n for n in default_quantized_linears(model, exclude=["pooler"]))
    quantizer = FakeQuantizer(model, names)
    no_out = {n for n in names if not quantizer.output_quantized(n)}
    assert {n.rsplit(".", 2)[-2] for n in no_out if "layer." in n} == {"self", "output"}
    assert all(n.endswith(("value", "output.dense")) or n == "classifier" for n in no_out)
    assert "decoder" in DEFAULT_NO_OUTPUT_QUANT
    with pytest.raises(TypeError, match="not an nn.Linear"):
        FakeQuantizer(model, ["bert.embeddings"])


def test_weight_fake_quant_matches_torch_observer_and_keeps_zeros():
    torch.manual_seed(0)
    weight = torch.randn(37, 32) * 0.05
    weight[3] = 0.0  # a pruned row
    weight[:, 5] = 0.0
    scale, zero_point = weight_qparams(weight)
    observer = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    observer(weight)
    ref_scale, ref_zp = observer.calculate_qparams()
    assert torch.allclose(scale, ref_scale[0], rtol=1e-6) and int(zero_point) == int(ref_zp[0]) == 0
    fq = fake_quantize_weight(weight)
    assert (fq - weight).abs().max() <= scale / 2 + 1e-7
    assert torch.equal(fq[weight == 0], torch.zeros(int((weight == 0).sum())))
    grid = fq / scale
    assert torch.allclose(grid, grid.round(), atol=1e-4) and grid.min() >= -128 and grid.max() <= 127


def test_activation_observer_is_a_moving_average_like_torch():
    model = tiny_model("bert", "ForSequenceClassification")
    quantizer = FakeQuantizer(model, ["bert.encoder.layer.0.attention.self.query"])
    obs = quantizer.quantizer("bert.encoder.layer.0.attention.self.query").input
    reference = MovingAverageMinMaxObserver(averaging_constant=0.01, dtype=torch.quint8)
    assert not obs.initialized
    for i, x in enumerate([torch.randn(4, 8) * 2 + 1, torch.randn(4, 8) * 5, torch.rand(3, 8) + 0.5]):
        previous = (obs.min_val.clone(), obs.max_val.clone())
        obs.observe(x)
        reference(x)
        if i == 0:
            assert obs.min_val == x.min() and obs.max_val == x.max()
        else:
            assert torch.allclose(obs.min_val, previous[0] + 0.01 * (x.min() - previous[0]))
        assert torch.allclose(obs.min_val, reference.min_val) and torch.allclose(obs.max_val, reference.max_val)
        scale, zero_point = obs.qparams()
        ref_scale, ref_zp = reference.calculate_qparams()
        assert torch.allclose(scale, ref_scale[0]) and int(zero_point) == int(ref_zp[0])


def _observe_a_shard(rank: int, port: int, batches: torch.Tensor, out: str) -> None:
    """One of 2 gloo processes: observe this rank's contiguous half of every global batch."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        obs = ActivationObserver(averaging_constant=0.1)
        for batch in batches:
            half = batch.shape[0] // 2
            obs.observe(batch[rank * half : (rank + 1) * half])
        torch.save(obs.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_observers_all_reduce_ranges_across_processes(tmp_path):
    """With torch.distributed initialized, each observation takes the range over all processes: both ranks keep
    the same ranges, those of one process observing the whole global batches; in one process it is a no-op."""
    import socket

    import torch.multiprocessing as mp

    from kp_lightning.quantization.fake_quant import all_reduce_range

    g = torch.Generator().manual_seed(0)
    batches = torch.randn(4, 6, 5, generator=g) * torch.tensor([1.0, 3.0, 0.5, 2.0]).view(4, 1, 1)
    batches[1, 0] += 10  # a maximum only rank 0 sees
    batches[2, 5] -= 10  # a minimum only rank 1 sees
    one = ActivationObserver(averaging_constant=0.1)
    for batch in batches:
        one.observe(batch)
    lo, hi = torch.tensor(-1.0), torch.tensor(2.0)
    assert all_reduce_range(lo, hi) == (lo, hi)  # no process group: unchanged
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_observe_a_shard, args=(port, batches, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for key, value in one.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert torch.equal(ranks[0][key], value), key


def test_ranges_move_only_in_training_with_observers_enabled():
    model = tiny_model("roberta", "ForSequenceClassification")
    quantizer = FakeQuantizer(model, default_quantized_linears(model), attach=True)
    with pytest.warns(RuntimeWarning, match="passes through unquantized"):
        logits(model)  # eval before any training batch: activations are not quantized yet
    assert not any(obs.initialized for obs in quantizer.observers())
    model.train()
    with torch.no_grad():
        model(**tiny_batch(seed=3))
    assert quantizer.initialized
    state = copy.deepcopy(quantizer.state_dict())

    def unchanged() -> bool:
        return all(torch.equal(v, state[k]) for k, v in quantizer.state_dict().items())

    model.eval()
    logits(model, tiny_batch(seed=4))
    assert unchanged()
    model.train()
    quantizer.observers_enabled = False
    with torch.no_grad():
        model(**tiny_batch(seed=5))
    assert unchanged() and not quantizer.observers_enabled
    quantizer.observers_enabled = True
    with torch.no_grad():
        model(**tiny_batch(seed=5))
    assert not unchanged()


@torch.no_grad()
def test_with_a_token_mask_padding_does_not_widen_the_ranges():
    model = tiny_model("bert", "ForSequenceClassification").train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.bert.embeddings.word_embeddings.weight[0] = 0.0  # token 0 (used as padding): one dimension spikes
    model.bert.embeddings.word_embeddings.weight[0, 5] = 100.0
    model.bert.embeddings.LayerNorm.weight[5] = 3.0  # normalised, the spike is ~3·sqrt(31); real tokens stay below
    batch = tiny_batch(seed=3)
    batch["input_ids"][batch["attention_mask"] == 0] = 0
    names = default_quantized_linears(model)
    seen = {}
    hook = model.get_submodule(names[0]).register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    model(**batch)
    hook.remove()
    real = seen["x"][batch["attention_mask"].bool()]
    ranges = {}
    for masked in (True, False):
        quantizer = FakeQuantizer(model, names, attach=True)
        quantizer.token_mask = batch["attention_mask"] if masked else None
        model(**batch)
        quantizer.detach()
        first = quantizer.quantizer(names[0])
        ranges[masked] = float(first.input.min_val), float(first.input.max_val)
        pooled = quantizer.quantizer("classifier").input  # one row per sequence: observed whole
        assert pooled.initialized
    assert ranges[True] == (float(real.min()), float(real.max()))  # the first observation sets the range
    assert ranges[False][1] > ranges[True][1]  # the padded rows' spike widens it without the mask


def test_the_qat_callback_observes_each_training_batch_at_its_real_tokens():
    model = tiny_model("bert", "ForSequenceClassification")
    qat = QuantizationAwareTraining()
    qat.quantizer = FakeQuantizer(model, default_quantized_linears(model))
    batch = tiny_batch()
    qat.on_train_batch_start(None, None, batch, 0)
    assert qat.quantizer.token_mask is batch["attention_mask"]
    qat.on_train_batch_end(None, None, None, batch, 0)
    assert qat.quantizer.token_mask is None


def test_straight_through_gradients_reach_weights_and_inputs():
    model, quantizer = quantized("distilbert")
    model.train()
    batch = tiny_batch()
    out = model(**batch, labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    for name in quantizer.module_names:
        grad = model.get_submodule(name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.distilbert.embeddings.word_embeddings.weight.grad.abs().sum() > 0  # through the first linears' inputs

    name = "distilbert.transformer.layer.0.attention.v_lin"  # no output requantization: a pure STE on the input
    linear, quant = model.get_submodule(name), quantizer.quantizer(name)
    assert quant.output is None
    x = (4 * torch.randn(5, linear.in_features)).requires_grad_()
    linear.eval()
    linear(x).sum().backward()
    scale, zero_point = quant.input.qparams()
    q = torch.round(x.detach() / scale) + zero_point
    inside = (q >= 0) & (q <= 255)
    assert inside.any() and (~inside).any()
    expected = fake_quantize_weight(linear.weight).sum(0).expand_as(x) * inside  # STE: zero outside the range
    assert torch.allclose(x.grad, expected, atol=1e-6)


def test_state_dict_keys_unchanged_and_detach_restores_exact_outputs():
    model = tiny_model("bert", "ForSequenceClassification")
    keys = list(model.state_dict())
    before = logits(model)
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    quantizer = FakeQuantizer(model, default_quantized_linears(model)).attach()
    with torch.no_grad():
        model(**tiny_batch(seed=3))
    model.eval()
    assert list(model.state_dict()) == keys and quantizer.attached
    assert all(k.startswith("linears.") and k.endswith(("min_val", "max_val")) for k in quantizer.state_dict())
    assert "linears.bert/encoder/layer/0/attention/self/query.output.max_val" in quantizer.state_dict()
    assert not torch.equal(logits(model), before)
    quantizer.detach()
    assert not quantizer.attached and not any(is_fake_quantized(m) for m in model.modules())
    assert torch.equal(logits(model), before)
    assert all(torch.equal(v, model_state[k]) for k, v in model.state_dict().items())
    quantizer.fake_quant_enabled = False
    quantizer.attach()
    assert torch.equal(logits(model), before)  # fake quant switched off: float forward


def test_observer_state_round_trip_and_deepcopy():
    model, quantizer = quantized("bert")
    expected = logits(model)
    fresh = tiny_model("bert", "ForSequenceClassification")
    restored = FakeQuantizer(fresh, default_quantized_linears(fresh), attach=True)
    restored.load_state_dict(quantizer.state_dict())
    assert restored.initialized
    assert restored.activation_qparams() == quantizer.activation_qparams()
    assert restored.weight_scales() == quantizer.weight_scales()
    assert torch.equal(logits(fresh), expected)

    copied = copy.deepcopy(model)  # keeps fake quant, with its own copy of the observers
    assert torch.equal(logits(copied), expected)
    assert strip_fake_quant(copied) == len(quantizer.module_names)
    assert torch.equal(logits(copied), logits(tiny_model("bert", "ForSequenceClassification")))
