"""The compact model's fast forward: one fused Q/K/V GEMM, sdpa by default, removed sublayers that copy nothing."""

import copy
import gc
import pickle
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kp_lightning import EncoderAdapter, StructuralMasks, attach_masks, compact, export_compact, load_compressed
from kp_lightning.compact_model.modeling_kp import FusedQKVForward, remove_fused_qkv
from tests.helpers import (
    ARCHS,
    STOCK_ATTENTION,
    TASKS,
    edge_case_masks,
    main_output,
    tiny_batch,
    tiny_config,
    tiny_model,
)
from tests.test_export import run_fresh_python

ATOL = 1e-5


def compact_model(arch: str, task: str = "ForSequenceClassification", attn: str = "eager", soft: bool = True):
    model = tiny_model(arch, task, attn_implementation=attn)
    masks = edge_case_masks(model, soft=soft)
    return model, masks, compact(model, masks).eval()


def stock_copy(model):
    """A copy of ``model`` whose attention cores run the stock forward (three Q/K/V GEMMs)."""
    stock = copy.deepcopy(model)
    assert remove_fused_qkv(stock) > 0
    return stock


FUSED_ARCHS = [arch for arch in ARCHS if arch not in STOCK_ATTENTION]  # MPNet keeps the stock attention


def fused_cores(model):
    """The attention cores of ``model`` that run the fused forward."""
    return [m for m in model.modules() if isinstance(m.__dict__.get("forward"), FusedQKVForward)]


class StockCalls(list):
    """The attention cores whose stock (class) forward ran."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.monkeypatch = monkeypatch

    def spy(self, cls: type) -> None:
        original = cls.forward

        def forward(core, *args, **kwargs):
            self.append(core)
            return original(core, *args, **kwargs)

        self.monkeypatch.setattr(cls, "forward", forward)


@pytest.fixture
def stock_calls(monkeypatch):
    return StockCalls(monkeypatch)


@pytest.mark.parametrize("arch", FUSED_ARCHS)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("soft", [False, True])
@torch.no_grad()
def test_fused_forward_equals_stock_forward_equals_masked_model(arch, task, attn, soft):
    model, masks, small = compact_model(arch, task, attn, soft)
    batch = tiny_batch()
    with attach_masks(model, masks):
        masked = main_output(model(**batch))
    fused = main_output(small(**batch))
    if masked.shape != fused.shape:  # bare models return the hidden stream: compare kept dims
        masked = masked[..., masks.hidden != 0]
    kept = [view.has_attention for view in EncoderAdapter(small).layers]
    assert len(fused_cores(small)) == sum(kept) and not kept[1]  # layer 1 has no attention left
    torch.testing.assert_close(fused, main_output(stock_copy(small)(**batch)), atol=ATOL, rtol=0)
    torch.testing.assert_close(fused, masked, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", FUSED_ARCHS)
def test_state_dict_keys_and_module_names_are_the_stock_ones(arch):
    model = tiny_model(arch, "ForMaskedLM")
    small = compact(model, StructuralMasks.ones(EncoderAdapter(model).shape()))
    assert list(small.state_dict()) == list(model.state_dict())
    assert [name for name, _ in small.named_modules()] == [name for name, _ in model.named_modules()]
    assert len(fused_cores(small)) == 3


@pytest.mark.parametrize("arch", FUSED_ARCHS)
@pytest.mark.parametrize("task", TASKS)
def test_training_mode_outputs_and_gradients_match_the_stock_forward(arch, task):
    model, masks, small = compact_model(arch, task, attn="sdpa")
    small.train()
    stock = stock_copy(small)
    batch = tiny_batch()
    results = []
    for net in (small, stock):
        torch.manual_seed(7)  # same dropout draws: the fused path consumes the RNG like the stock one
        loss = (main_output(net(**batch)) ** 2).sum()
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in net.named_parameters() if p.grad is not None}))
    (loss, grads), (stock_loss, stock_grads) = results
    torch.testing.assert_close(loss, stock_loss, atol=ATOL, rtol=1e-6)
    assert grads.keys() == stock_grads.keys()
    assert sum(".query." in n or ".q_lin." in n for n in grads) == 4  # weight and bias of both kept layers
    for name, grad in grads.items():  # to 1e-5 of each gradient's scale: sums over tokens round differently
        scale = max(1.0, stock_grads[name].abs().max().item())
        torch.testing.assert_close(grad, stock_grads[name], atol=ATOL * scale, rtol=0, msg=name)
    assert all(core.forward._cache is None for core in fused_cores(small))  # nothing cached while training

    for net in (model, small):  # without dropout, training mode computes what the masked model does
        net.train()
        for module in net.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    with attach_masks(model, masks):
        masked = main_output(model(**batch))
    out = main_output(small(**batch))
    if masked.shape != out.shape:
        masked = masked[..., masks.hidden != 0]
    torch.testing.assert_close(out, masked, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", FUSED_ARCHS)
@torch.no_grad()
def test_cached_weight_follows_in_place_edits_and_replaced_parameters(arch):
    _, _, small = compact_model(arch)
    core = fused_cores(small)[0]
    query, key, value = (core.get_submodule(name) for name in core.forward.projection_names)
    batch = tiny_batch()

    def check():
        out = main_output(small(**batch))
        torch.testing.assert_close(out, main_output(stock_copy(small)(**batch)), atol=ATOL, rtol=0)
        assert core.forward._cache is not None
        return out

    before = check()
    torch.testing.assert_close(main_output(small(**batch)), before, atol=0, rtol=0)  # cache hit
    value.weight.add_(1.0)  # in place: the version counter moves
    edited = check()
    assert not torch.allclose(edited, before)
    key.weight = torch.nn.Parameter(torch.randn_like(key.weight))  # a new Parameter (K-prune replaces them)
    replaced = check()
    assert not torch.allclose(replaced, edited)
    query.bias.data = query.bias.data + 1.0  # new storage under the same Parameter
    rebound = check()
    assert not torch.allclose(rebound, replaced)
    new_query = torch.nn.Linear(query.in_features, query.out_features)  # a new module
    setattr(core, core.forward.projection_names[0], new_query)
    assert not torch.allclose(check(), rebound)
    small.double()
    torch.testing.assert_close(main_output(small(**batch)), main_output(stock_copy(small)(**batch)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("arch", FUSED_ARCHS)
def test_a_weight_cached_in_inference_mode_serves_a_gradient_through_frozen_weights(arch):
    _, _, small = compact_model(arch, "Model")
    small.requires_grad_(False)
    batch = tiny_batch()
    with torch.inference_mode():
        small(**batch)
    assert all(core.forward._cache is not None for core in fused_cores(small))
    grads = []
    for model in (small, stock_copy(small)):
        embeds = EncoderAdapter(model).base.embeddings.word_embeddings(batch["input_ids"]).requires_grad_()
        model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state.sum().backward()
        grads.append(embeds.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("arch", FUSED_ARCHS)
@torch.no_grad()
def test_stock_forward_runs_when_a_projection_is_hooked_or_overridden(arch, stock_calls):
    _, _, small = compact_model(arch)
    stock_calls.spy(type(fused_cores(small)[0]))
    batch = tiny_batch()
    expected = main_output(small(**batch))
    assert stock_calls == []  # the fused path ran
    core = fused_cores(small)[0]
    query = core.get_submodule(core.forward.projection_names[0])
    seen = []
    handle = query.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    torch.testing.assert_close(main_output(small(**batch)), expected, atol=ATOL, rtol=0)
    assert stock_calls == [core] and len(seen) == 1
    handle.remove()
    stock_calls.clear()
    query.forward = lambda x: torch.nn.functional.linear(x, query.weight, query.bias) * 100  # as fake quantization
    assert not torch.allclose(main_output(small(**batch)), expected)
    assert stock_calls == [core]
    del query.forward
    stock_calls.clear()
    torch.testing.assert_close(main_output(small(**batch)), expected, atol=ATOL, rtol=0)
    assert stock_calls == []


@torch.no_grad()
def test_stock_forward_runs_when_attention_weights_are_asked_for(stock_calls):
    _, _, small = compact_model("bert", attn="eager")
    stock_calls.spy(type(fused_cores(small)[0]))
    batch = tiny_batch()
    out = small(**batch, output_attentions=True)
    assert len(stock_calls) == len(fused_cores(small)) == 2
    reference = stock_copy(small)(**batch, output_attentions=True)
    assert len(out.attentions) == 2
    for a, b in zip(out.attentions, reference.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_the_fused_forward_is_copied_and_pickled_with_its_core_and_makes_no_reference_cycle():
    _, _, small = compact_model("distilbert")
    batch = tiny_batch()
    with torch.no_grad():
        expected = small(**batch).logits
    for clone in (copy.deepcopy(small), pickle.loads(pickle.dumps(small))):
        fused = fused_cores(clone)
        assert len(fused) == 2 and all(core.forward.core is core for core in fused)
        assert not set(map(id, fused)) & set(map(id, fused_cores(small)))
        with torch.no_grad():
            torch.testing.assert_close(clone(**batch).logits, expected, atol=0, rtol=0)
    core = weakref.ref(fused_cores(small)[0])
    gc.disable()
    try:
        del small, clone, fused
        assert core() is None  # freed by reference counting alone
    finally:
        gc.enable()


@pytest.mark.parametrize("arch", FUSED_ARCHS)
def test_compact_models_use_sdpa_unless_eager_was_asked_for(tmp_path, arch):
    config = tiny_config(arch)
    config._attn_implementation = None  # as in a user's config: no kernel asked for
    model = tiny_model(arch, "ForSequenceClassification")  # eager, asked for explicitly
    default = type(model)(config).eval()
    default.load_state_dict(model.state_dict())
    assert default.config._attn_implementation == "sdpa"
    masks = edge_case_masks(model)
    assert compact(default, masks).config._attn_implementation == "sdpa"
    assert compact(model, masks).config._attn_implementation == "eager"
    loaded = load_compressed(export_compact(model, tmp_path / "export", masks=masks))
    assert loaded.config._attn_implementation == "sdpa"  # the choice is not saved: a reload gets the default
    batch = tiny_batch()
    with torch.no_grad(), attach_masks(model, masks):
        expected = model(**batch).logits
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, expected, atol=ATOL, rtol=0)


class _AllocatingOps(TorchDispatchMode):
    """Records the aten ops that write a tensor with elements into new memory (not views, not no-ops)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        known = {t.untyped_storage().data_ptr() for t in inputs}
        outputs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.numel() and t.untyped_storage().data_ptr() not in known for t in outputs):
            self.ops.append(func.overloadpacket.__name__)
        return out


@pytest.mark.parametrize("arch", FUSED_ARCHS)
@torch.no_grad()
def test_a_removed_layer_costs_only_its_two_residual_layernorms(arch):
    model = tiny_model(arch, "Model", layers=1)
    masks = StructuralMasks.ones(EncoderAdapter(model).shape())
    masks.head[0] = torch.zeros_like(masks.head[0])
    masks.neuron[0] = torch.zeros_like(masks.neuron[0])
    small = compact(model, masks).eval()
    layer = EncoderAdapter(small).encoder_modules()[0]
    hidden = torch.randn(2, 5, 32)
    with _AllocatingOps() as recorded:
        layer(hidden)
    assert recorded.ops == ["add", "native_layer_norm", "add", "native_layer_norm"]


def test_removed_projection_returns_a_view_of_its_bias_that_carries_gradients():
    model = tiny_model("bert", "Model", layers=1)
    masks = StructuralMasks.ones(EncoderAdapter(model).shape())
    masks.neuron[0] = torch.zeros_like(masks.neuron[0])
    projection = EncoderAdapter(compact(model, masks)).layers[0].ffn_down
    x = torch.zeros(2, 5, 0)
    with torch.no_grad():
        out = projection(x)
    assert out.shape == (2, 5, 32) and out.data_ptr() == projection.bias.data_ptr() and not out.requires_grad
    projection(x).sum().backward()
    torch.testing.assert_close(projection.bias.grad, torch.full((32,), 10.0))


def test_exports_reload_with_the_fused_forward_in_a_fresh_process(tmp_path):
    from safetensors.torch import save_file

    batch = tiny_batch()
    tensors = dict(batch)
    for arch in ARCHS:
        model = tiny_model(arch, "ForSequenceClassification", attn_implementation="sdpa")
        masks = edge_case_masks(model)
        with torch.no_grad(), attach_masks(model, masks):
            tensors[f"expected_{arch}"] = model(**batch).logits.contiguous()
        out = export_compact(model, tmp_path / arch, masks=masks)
        loaded = load_compressed(out).eval()
        assert len(fused_cores(loaded)) == 2
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch).logits, tensors[f"expected_{arch}"], atol=ATOL, rtol=0)
    save_file(tensors, str(tmp_path / "io.safetensors"))
    stdout = run_fresh_python(
        f"""
        import sys, torch, transformers
        from safetensors.torch import load_file
        io = load_file("io.safetensors")
        for arch in {list(ARCHS)!r}:
            model = transformers.AutoModelForSequenceClassification.from_pretrained(arch, trust_remote_code=True)
            fused = [m for m in model.modules() if type(m.__dict__.get("forward")).__name__ == "FusedQKVForward"]
            with torch.no_grad():
                logits = model.eval()(input_ids=io["input_ids"], attention_mask=io["attention_mask"]).logits
            diff = (logits - io["expected_" + arch]).abs().max().item()
            print(arch, "maxdiff", diff, "fused", len(fused), model.config._attn_implementation)
        print("imported", "kp_lightning" in sys.modules)
        """,
        tmp_path,
    )
    for arch in ARCHS:
        line = stdout.split(f"{arch} maxdiff ")[1].split("\n")[0].split()
        assert float(line[0]) < ATOL and line[1:] == ["fused", "2", "sdpa"], stdout
    assert "imported False" in stdout
