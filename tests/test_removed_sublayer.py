"""A removed post-LayerNorm sublayer computes ``LN(x + b)``, a removed pre-LayerNorm one ``x + b``, in the masked
model, the compact model and exports."""

import inspect
import json

import pytest
import torch

from kp_lightning import (
    EncoderAdapter,
    ExportError,
    StructuralMasks,
    attach_masks,
    compact,
    export_compact,
    load_compressed,
)
from tests.helpers import ARCHS, tiny_batch, tiny_model
from tests.test_export import run_fresh_python


def by_hand(model, batch, attention_bias: bool, ffn_bias: bool) -> torch.Tensor:
    """Output of a 1-layer model whose attention and FFN are both removed, from its own modules."""
    adapter = EncoderAdapter(model)
    view = adapter.layers[0]
    embeddings = adapter.base.embeddings
    extra = {"mask": batch["attention_mask"]} if "mask" in inspect.signature(embeddings.forward).parameters else {}
    x = embeddings(input_ids=batch["input_ids"], **extra)  # DeBERTa's embeddings zero the padded positions
    if adapter.embedding_projection is not None:  # ELECTRA with embedding_size != hidden_size
        x = adapter.embedding_projection(x)
    b_att = view.attention_out.bias if attention_bias else torch.zeros_like(view.attention_out.bias)
    b_ffn = view.ffn_down.bias if ffn_bias else torch.zeros_like(view.ffn_down.bias)
    if adapter.layout.pre_norm:  # the residual branches are constants; the final norm follows the layer
        return adapter.final_norm(x + b_att + b_ffn)
    h = view.attention_norm(x + b_att)
    return view.ffn_norm(h + b_ffn)


BIASES = {"modernbert": {"attention_bias": True, "mlp_bias": True, "norm_bias": True}}  # none by default


def one_layer_model(arch):
    """A 1-layer model whose output projections have random biases (for the architectures that have them)."""
    model = tiny_model(arch, "Model", layers=1, **BIASES.get(arch, {}))
    view = EncoderAdapter(model).layers[0]
    with torch.no_grad():
        for projection in (view.attention_out, view.ffn_down):
            projection.bias.normal_(0, 0.5)
    return model


def units_removed(model) -> StructuralMasks:
    """Every head and every neuron of the only layer masked to 0 (the sublayer scales stay 1)."""
    shape = EncoderAdapter(model).shape()
    masks = StructuralMasks.ones(shape)
    masks.head[0] = torch.zeros(shape.heads[0])
    masks.neuron[0] = torch.zeros(shape.neurons[0])
    return masks


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_removed_sublayers_keep_bias_and_layernorm_in_masked_and_compact_models(arch):
    model = one_layer_model(arch)
    batch = tiny_batch()
    expected = by_hand(model, batch, attention_bias=True, ffn_bias=True)
    masks = units_removed(model)
    with attach_masks(model, masks):
        masked = model(**batch).last_hidden_state
    small = compact(model, masks).eval()
    view = EncoderAdapter(small).layers[0]
    assert not view.has_attention and not view.has_ffn
    assert small.config.kp_structure["removed_sublayer"] == "bias_and_norm"
    torch.testing.assert_close(masked, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(small(**batch).last_hidden_state, expected, atol=1e-5, rtol=0)
    # masking the compact model again (e.g. a second pruning round) keeps the same meaning
    with attach_masks(small, StructuralMasks.ones(EncoderAdapter(small).shape())):
        torch.testing.assert_close(small(**batch).last_hidden_state, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_a_zero_sublayer_scale_also_scales_the_bias_away(arch):
    """A sublayer gate of 0 (CoFi) multiplies the whole output, bias included: ``LN(x)``."""
    model = one_layer_model(arch)
    batch = tiny_batch()
    expected = by_hand(model, batch, attention_bias=False, ffn_bias=False)
    masks = StructuralMasks.ones(EncoderAdapter(model).shape())
    masks.attention[0] = 0
    masks.ffn[0] = 0
    with attach_masks(model, masks):
        torch.testing.assert_close(model(**batch).last_hidden_state, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(compact(model, masks).eval()(**batch).last_hidden_state, expected, atol=1e-5, rtol=0)


def test_removed_sublayers_reload_through_both_paths(tmp_path):
    from safetensors.torch import save_file

    batch = tiny_batch()
    tensors = dict(batch)
    for arch in ARCHS:
        model = one_layer_model(arch)
        with torch.no_grad():
            tensors[f"expected_{arch}"] = by_hand(model, batch, attention_bias=True, ffn_bias=True).contiguous()
        out = export_compact(model, tmp_path / arch, masks=units_removed(model))
        with torch.no_grad():
            loaded = load_compressed(out).eval()(**batch).last_hidden_state
        torch.testing.assert_close(loaded, tensors[f"expected_{arch}"], atol=1e-5, rtol=0)
    save_file(tensors, str(tmp_path / "io.safetensors"))
    stdout = run_fresh_python(
        f"""
        import sys, torch, transformers
        from safetensors.torch import load_file
        io = load_file("io.safetensors")
        for arch in {list(ARCHS)!r}:
            model = transformers.AutoModel.from_pretrained(arch, trust_remote_code=True).eval()
            with torch.no_grad():
                out = model(input_ids=io["input_ids"], attention_mask=io["attention_mask"]).last_hidden_state
            print(arch, "maxdiff", (out - io["expected_" + arch]).abs().max().item())
        print("imported", "kp_lightning" in sys.modules)
        """,
        tmp_path,
    )
    for arch in ARCHS:
        assert float(stdout.split(f"{arch} maxdiff ")[1].split()[0]) < 1e-5
    assert "imported False" in stdout


def _strip_semantics_marker(export_dir):
    """Make an export look like one written before removed sublayers kept their LayerNorm."""
    config_file = export_dir / "config.json"
    config = json.loads(config_file.read_text())
    del config["kp_structure"]["removed_sublayer"]
    config_file.write_text(json.dumps(config))


def test_an_export_from_before_the_change_is_refused_only_when_it_removes_a_sublayer(tmp_path):
    model = tiny_model("bert", "ForSequenceClassification", layers=1)
    removed = export_compact(model, tmp_path / "removed", masks=units_removed(model))
    _strip_semantics_marker(removed)
    with pytest.raises(ExportError, match=r"earlier kp_lightning.*trust_remote_code=True"):
        load_compressed(removed)

    masks = StructuralMasks.ones(EncoderAdapter(model).shape())
    masks.head[0][1:] = 0  # heads pruned, but no sublayer removed: both versions compute the same
    kept = export_compact(model, tmp_path / "kept", masks=masks)
    _strip_semantics_marker(kept)
    batch = tiny_batch()
    with torch.no_grad(), attach_masks(model, masks):
        expected = model(**batch).logits
    with torch.no_grad():
        torch.testing.assert_close(load_compressed(kept).eval()(**batch).logits, expected, atol=1e-5, rtol=0)
