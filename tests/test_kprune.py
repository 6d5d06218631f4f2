"""K-prune and shared pruning machinery on tiny random models (every supported architecture)."""

from __future__ import annotations

import pytest
import torch

from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.core.export import export_compact, load_compressed
from kp_lightning.core.flops import encoder_flops
from kp_lightning.pruning import KPruneConfig, PruneError, kprune
from kp_lightning.pruning.knowledge import KnowledgeProbe, Sublayer, prediction_loss
from kp_lightning.pruning.layer_stream import embedding_output, layer_outputs, start_at_layer
from kp_lightning.pruning.least_squares import solve_normal_equations
from kp_lightning.pruning.mask_search import threshold_keep
from kp_lightning.pruning.sample_set import SampleSet
from kp_lightning.pruning.sampling import draw_sample_batches
from tests.helpers import ARCHS, main_output, tiny_batch, tiny_model

TASKS = {
    "classification": "ForSequenceClassification",
    "question_answering": "ForQuestionAnswering",
    "token_classification": "ForTokenClassification",
}
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "start_positions", "end_positions")


def sample_set(
    n_batches: int = 4, batch: int = 4, seq: int = 12, labels: bool = False, kind: str = "classification"
) -> SampleSet:
    batches = []
    for s in range(n_batches):
        b = tiny_batch(seed=s, batch=batch, seq=seq)
        b["attention_mask"][0, seq - 3 :] = 0
        if labels and kind == "token_classification":  # a tag per token, padding ignored
            b["labels"] = (torch.arange(batch * seq).view(batch, seq) % 2).masked_fill(b["attention_mask"] == 0, -100)
        elif labels:
            b["labels"] = torch.arange(batch) % 2
            b["start_positions"] = torch.arange(batch) + 1
            b["end_positions"] = torch.arange(batch) + 3
        batches.append(b)
    return SampleSet(batches, "cpu", INPUT_KEYS)


@pytest.mark.parametrize("arch", ARCHS)
def test_running_from_a_cached_layer_input_equals_the_full_forward(arch):
    model = tiny_model(arch, "ForSequenceClassification")
    inputs = tiny_batch()
    full = model(**inputs).logits
    hidden = embedding_output(model, inputs)
    for layer in range(3):
        with torch.no_grad(), start_at_layer(model, layer) as feed:
            feed.hidden = hidden
            from_here = model(**inputs).logits
        torch.testing.assert_close(from_here, full, atol=1e-5, rtol=0)
        hidden, _ = layer_outputs(model, layer, hidden, inputs)
    assert len(EncoderAdapter(model).encoder_modules()) == 3  # layers restored


@pytest.mark.parametrize("kind", list(TASKS))
@pytest.mark.parametrize("arch", ARCHS)
def test_kprune_meets_the_budget_and_the_export_reloads_exactly(arch, kind, tmp_path):
    model = tiny_model(arch, TASKS[kind])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    samples = sample_set()
    result = kprune(model, samples, kind, KPruneConfig(0.5), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    shape = EncoderAdapter(model).shape()
    assert result.flops_dense == pytest.approx(encoder_flops(shape, samples.mean_length))
    assert result.flops_pruned <= 0.5 * result.flops_dense * (1 + 1e-9)
    assert result.flops_reduction == pytest.approx(0.5, abs=0.05)
    assert EncoderAdapter(result.model).shape() == result.structure.compacted_shape()
    export_compact(result.model, tmp_path / "out")
    reloaded = load_compressed(tmp_path / "out").eval()
    inputs = tiny_batch(seed=9)
    torch.testing.assert_close(main_output(reloaded(**inputs)), main_output(result.model(**inputs)), atol=1e-5, rtol=0)


def test_regression_models_are_pruned_with_the_mse_objective():
    model = tiny_model("bert", "ForSequenceClassification")
    model.config.num_labels = 1
    model = type(model)(model.config).eval()
    result = kprune(model, sample_set(), "regression", KPruneConfig(0.4), progress=False)
    assert result.flops_reduction == pytest.approx(0.4, abs=0.05)


def test_weight_tuning_solves_the_least_squares_problem_of_the_first_sublayer():
    """MHA₀: the student is the teacher, so the target is W·a; compare with an explicit lstsq on features."""
    model = tiny_model("bert", "ForSequenceClassification")
    samples = sample_set()
    result = kprune(model, samples, "classification", KPruneConfig(0.5), progress=False)
    kept = result.structure.heads[0]
    assert 0 < len(kept) < 4
    view = EncoderAdapter(model).layers[0]
    features = []
    hook = view.attention_out.register_forward_pre_hook(lambda m, a: features.append(a[0].detach()))
    with torch.no_grad():
        for _, b in samples.batches():
            model(**samples.model_inputs(b))
    hook.remove()
    a = torch.cat([f[samples.token_mask(b)] for f, (_, b) in zip(features, samples.batches(), strict=True)]).double()
    dims = torch.tensor([h * 8 + j for h in kept for j in range(8)])
    w = view.attention_out.weight.detach().double()
    target = a @ w.T
    expected = torch.linalg.lstsq(a[:, dims], target).solution.T
    tuned = EncoderAdapter(result.model).layers[0].attention_out.weight.detach().double()

    def error(weight):
        return float(((a[:, dims] @ weight.T - target) ** 2).sum())

    # Same optimum (the weights themselves differ along ill-conditioned directions: the Gram is summed in fp32).
    assert error(tuned) == pytest.approx(error(expected), rel=1e-5)
    assert error(tuned) < 0.5 * error(w[:, dims])  # much better than slicing alone


def test_without_weight_tuning_the_kept_weights_are_only_sliced():
    model = tiny_model("bert", "ForSequenceClassification")
    result = kprune(model, sample_set(), "classification", KPruneConfig(0.5, weight_tuning=False), progress=False)
    kept = result.structure.heads[0]
    dims = torch.tensor([h * 8 + j for h in kept for j in range(8)])
    original = EncoderAdapter(model).layers[0].attention_out.weight[:, dims]
    torch.testing.assert_close(EncoderAdapter(result.model).layers[0].attention_out.weight, original)


def test_predictive_knowledge_is_zero_while_the_student_is_the_teacher_and_not_after():
    model = tiny_model("bert", "ForSequenceClassification")
    for p in model.parameters():
        p.requires_grad_(False)
    batch = sample_set().all_batches[0]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    teacher = {"logits": model(**inputs).logits.detach()}
    mask = batch["attention_mask"].bool()
    probe = KnowledgeProbe(model, Sublayer(0, "attention"))
    probe.token_mask, probe.teacher_sum = mask, torch.zeros(*mask.shape, 32)
    with probe:
        prediction_loss("classification", {"logits": model(**inputs).logits}, teacher, mask, 2.0).backward()
        probe.after_backward()
        assert all(float(v.abs().max()) < 1e-12 for v in probe.pred.values())
        shifted = {"logits": teacher["logits"] + torch.tensor([1.0, -1.0])}
        prediction_loss("classification", {"logits": model(**inputs).logits}, shifted, mask, 2.0).backward()
        probe.after_backward()
    assert all(float(v.max()) > 0 for v in probe.pred.values())
    assert all(float(v.min()) > 0 for v in probe.rep.values())


def reference_threshold(scores, flops, budget):
    """The paper's loop: raise the threshold until the units scoring above it fit the budget."""
    for threshold in [-float("inf"), *sorted(scores.tolist())]:
        keep = scores > threshold
        if float(flops[keep].sum()) <= budget:
            return keep
    return torch.zeros_like(scores, dtype=torch.bool)


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_mask_search_equals_the_threshold_loop(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(60, generator=g, dtype=torch.float64)
    flops = torch.where(torch.arange(60) < 12, 130.0, 1.0).double()
    budget = float(flops.sum()) * float(torch.rand(1, generator=g))
    assert torch.equal(threshold_keep(scores, flops, budget), reference_threshold(scores, flops, budget))


def test_singular_systems_are_solved_with_a_reported_ridge():
    a = torch.randn(5, 8, dtype=torch.float64)  # 5 tokens, 8 unknowns: rank 5
    solution = solve_normal_equations(a.T @ a, a.T @ torch.randn(5, 3, dtype=torch.float64))
    assert solution.ridge > 0 and torch.isfinite(solution.x).all()
    full = torch.randn(50, 8, dtype=torch.float64)
    assert solve_normal_equations(full.T @ full, full.T @ torch.randn(50, 3, dtype=torch.float64)).ridge == 0
    model = tiny_model("bert", "ForSequenceClassification")
    few_tokens = SampleSet([tiny_batch(batch=2, seq=5)], "cpu", INPUT_KEYS)  # 6 tokens < 37 FFN unknowns
    result = kprune(model, few_tokens, "classification", KPruneConfig(0.2), progress=False)
    assert any("singular" in note and "ridge" in note for note in result.notes)


@pytest.mark.parametrize("value", [0.0, 1.0, -0.2, 1.5])
def test_reductions_outside_the_open_unit_interval_are_refused(value):
    with pytest.raises(PruneError, match="fraction of FLOPs to REMOVE"):
        KPruneConfig(value).validate()


def test_nan_in_the_model_stops_with_a_clear_message():
    model = tiny_model("bert", "ForSequenceClassification")
    with torch.no_grad():
        EncoderAdapter(model).layers[1].ffn_up.weight[0, 0] = float("nan")
    with pytest.raises(PruneError, match="NaN or infinite knowledge scores"):
        kprune(model, sample_set(), "classification", KPruneConfig(0.5), progress=False)


def test_masked_lm_models_are_refused():
    model = tiny_model("bert", "ForMaskedLM")
    with pytest.raises(PruneError, match="fine-tuned task model"):
        kprune(model, sample_set(), "masked_lm", KPruneConfig(0.5), progress=False)


def test_sample_draw_is_seeded_and_refuses_less_than_one_batch():
    data = [{"input_ids": list(range(3 + i % 5)), "attention_mask": [1] * (3 + i % 5)} for i in range(40)]

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        pad = [[*r["input_ids"], *[0] * (width - len(r["input_ids"]))] for r in rows]
        att = [[*r["attention_mask"], *[0] * (width - len(r["attention_mask"]))] for r in rows]
        return {"input_ids": torch.tensor(pad), "attention_mask": torch.tensor(att)}

    first = draw_sample_batches(data, collate, num_tokens=60, batch_size=4, seed=3)
    again = draw_sample_batches(data, collate, num_tokens=60, batch_size=4, seed=3)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again, strict=True))
    assert 60 <= sum(int(b["attention_mask"].sum()) for b in first) < 60 + 8
    with pytest.raises(PruneError, match="fewer than one batch"):
        draw_sample_batches(data, collate, num_tokens=10, batch_size=8, seed=0)
