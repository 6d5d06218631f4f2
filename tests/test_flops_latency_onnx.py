import pytest
import torch

from kp_lightning import (
    EncoderAdapter,
    compact,
    encoder_flops,
    head_flops,
    measure_latency,
    measured_flops,
    model_flops,
    neuron_flops,
)
from kp_lightning.core.adapter import EncoderShape
from kp_lightning.core.onnx_export import export_onnx, output_names_of, run_onnx
from tests.helpers import ARCHS, TASKS, edge_case_masks, needs_onnx, tiny_batch, tiny_model


def test_unit_costs_match_the_kprune_formula_for_bert_base():
    # kprune.md §1: F_head = 6·d·d_h·n + 4·n²·d_h + 2·d_h·n·d, F_neuron = 4·n·d
    assert head_flops(768, 64, 128) == 6 * 768 * 64 * 128 + 4 * 128 * 128 * 64 + 2 * 64 * 128 * 768 == 54_525_952
    assert neuron_flops(768, 128) == 393_216
    bert_base = EncoderShape(hidden_size=768, head_size=64, heads=(12,) * 12, neurons=(3072,) * 12)
    # ≈ 9.15 GFLOPs per sequence at MRPC's average length (digest's figure), here at n = 53
    assert encoder_flops(bert_base, 53) / 1e9 == pytest.approx(9.15, abs=0.1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_analytic_flops_match_flop_counter_dense_and_compact(arch, task, attn):
    model = tiny_model(arch, task, attn_implementation=attn)
    small = compact(model, edge_case_masks(model))
    for m in (model, small):
        analytic = model_flops(m, 64)
        counted = measured_flops(m, 64)
        assert counted["encoder"] == pytest.approx(analytic["encoder"], rel=0.02)
        assert counted["total"] == pytest.approx(analytic["total"], rel=0.02)
    assert model_flops(small, 64)["encoder"] < model_flops(model, 64)["encoder"]
    assert model.config._attn_implementation == attn  # counting does not change the model


def test_latency_grid_records_environment():
    model = tiny_model("bert", "ForSequenceClassification")
    result = measure_latency(model, batch_sizes=(1, 2), seq_lens=(8, 16), min_run_time=0.05)
    env = result["environment"]
    assert env["device"] == "cpu" and env["dtype"] == "float32" and env["num_threads"] == torch.get_num_threads()
    grid = {(r["batch_size"], r["seq_len"]) for r in result["results"]}
    assert grid == {(1, 8), (1, 16), (2, 8), (2, 16)}
    assert all(r["median_ms"] > 0 and r["runs"] > 0 for r in result["results"])


@needs_onnx
def test_an_sdpa_model_is_exported_with_eager_attention_and_keeps_sdpa(tmp_path):
    """sdpa's ONNX graph guards every attention matrix with IsNaN/Where (slower in ONNX Runtime); the export traces
    eager attention instead, with the same outputs, and leaves the model on sdpa."""
    import onnx

    model = tiny_model("bert", "ForSequenceClassification", attn_implementation="sdpa")
    path = export_onnx(model, tmp_path / "model.onnx")
    assert "IsNaN" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    assert model.config._attn_implementation == "sdpa"
    batch = tiny_batch()
    (logits,) = run_onnx(path, batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        expected = model(**batch).logits
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-5, rtol=0)


# QA on every architecture, every head on three: post-LN BERT, MPNet (shared position bias), ModernBERT (pre-LN, fused
# QKV, gated FFN, its prediction head before every task head); an export takes ~8 s on 2 cores
ONNX_CASES = [(arch, "ForQuestionAnswering") for arch in ARCHS] + [
    (arch, task) for arch in ("bert", "mpnet", "modernbert") for task in TASKS if task != "ForQuestionAnswering"
]


@needs_onnx
@pytest.mark.parametrize(("arch", "task"), ONNX_CASES)
def test_onnx_export_of_compact_model_matches_onnxruntime(tmp_path, arch, task):
    """Every tensor output of a compact model with a layer without attention (and one without FFN), at shapes other
    than the traced ones (dynamic axes)."""
    model = tiny_model(arch, task)
    small = compact(model, edge_case_masks(model)).eval()
    path = export_onnx(small, tmp_path / "model.onnx", seq_len=16, batch_size=2)
    batch = tiny_batch(batch=3, seq=11)
    with torch.no_grad():
        expected = small(**batch)
    names = output_names_of(small)
    outputs = run_onnx(path, batch["input_ids"], batch["attention_mask"])
    assert len(outputs) == len(names) >= 1
    for name, value in zip(names, outputs, strict=True):
        torch.testing.assert_close(torch.from_numpy(value), expected[name], atol=1e-4, rtol=0, msg=name)
    assert EncoderAdapter(small).shape().heads[1] == 0
