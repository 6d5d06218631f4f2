"""CoFi algorithm on tiny models: gates, expected size, Lagrangian, layer mapping, exact materialization."""

from __future__ import annotations

import math

import pytest
import torch

from kp_lightning.cofi import (
    CoFiGates,
    CoFiPruner,
    SparsitySchedule,
    default_teacher_layers,
    full_size,
    identity_transform,
    layer_distillation_loss,
    match_layers,
    structure_size,
)
from kp_lightning.cofi.hard_concrete import (
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    deterministic_gates,
    prob_nonzero,
    sample_gates,
    uniform_noise,
)
from kp_lightning.core.adapter import EncoderAdapter, EncoderShape
from kp_lightning.core.compaction import compact
from kp_lightning.core.export import export_compact, load_compressed
from kp_lightning.core.report import parameter_counts
from tests.helpers import ARCHS, main_output, tiny_batch, tiny_model

BERT_BASE = EncoderShape(hidden_size=768, head_size=64, heads=(12,) * 12, neurons=(3072,) * 12)


def randomize(gates: CoFiGates, seed: int = 0, std: float = 3.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gates.learned_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def test_hard_concrete_probabilities_match_the_reference_values():
    values = prob_nonzero(torch.tensor([0.0, LOG_ALPHA_MAX, LOG_ALPHA_MIN]))
    torch.testing.assert_close(values, torch.tensor([0.832, 0.998, 0.047]), atol=1e-3, rtol=0)
    # Monte Carlo: the fraction of non-zero samples is P(z > 0).
    log_alpha = torch.full((200_000,), -0.7)
    z = sample_gates(log_alpha, uniform_noise(log_alpha.shape, torch.Generator().manual_seed(0)))
    assert float(z.min()) >= 0 and float(z.max()) <= 1
    assert abs(float((z > 0).float().mean()) - float(prob_nonzero(torch.tensor(-0.7)))) < 5e-3


def test_deterministic_gates_zero_the_expected_count_and_keep_soft_values():
    log_alpha = torch.tensor([-3.0, -2.0, 0.5, 1.0, 4.0, -1.0])
    z = deterministic_gates(log_alpha)
    expected_zeros = round(6 - float(prob_nonzero(log_alpha).sum()))
    assert int((z == 0).sum()) == expected_zeros
    assert bool((z[z > 0] < 1).all())  # soft values, folded into the weights later
    kept_order = torch.argsort(log_alpha, descending=True)[: 6 - expected_zeros]
    assert bool((z[kept_order] > 0).all())
    # A single (sublayer) gate is dropped iff P(z > 0) < 0.5.
    for value in (-2.0, -1.5, -1.0, 0.0):
        dropped = float(deterministic_gates(torch.tensor([value]))[0]) == 0
        assert dropped == (float(prob_nonzero(torch.tensor(value))) < 0.5)


def test_expected_size_is_the_exact_parameter_count_at_the_limits():
    assert full_size(BERT_BASE) == 12 * (4 * 768 * 768 + 4 * 768 + 2 * 768 + 2 * 768 * 3072 + 3072 + 768 + 2 * 768)
    gates = CoFiGates(BERT_BASE)
    # The reference's init (log α 10 / neurons 0) starts near 11 % expected sparsity (cofi.md §2.8).
    assert 0.10 < float(gates.expected_sparsity()) < 0.12
    with torch.no_grad():
        for p in gates.learned_parameters():
            p.fill_(40.0)
    assert abs(float(gates.expected_sparsity())) < 1e-5  # P(z>0) is clamped to 1 - 1e-6


@pytest.mark.parametrize("arch", ARCHS)
def test_masked_compacted_and_reloaded_models_agree(arch, tmp_path):
    for task in ("ForSequenceClassification", "ForQuestionAnswering", "ForTokenClassification"):
        model = tiny_model(arch, task)
        pruner = CoFiPruner(model, SparsitySchedule(0.5, 0, 10))
        randomize(pruner.gates, seed=3)
        with torch.no_grad():  # exercise whole-sublayer removal and hidden-dim pruning
            pruner.gates.attention[1] = -4.6
            pruner.gates.ffn[0] = -4.6
        pruner.step = 5
        pruner.attach(model)
        batch = tiny_batch()
        masked = main_output(model.eval()(**batch))
        structure = pruner.structure()
        assert not structure.attention_kept[1] and not structure.ffn_kept[0]
        assert len(structure.hidden) < 32
        small = pruner.materialize(model).eval()
        pruner.detach()
        torch.testing.assert_close(main_output(small(**batch)), masked, atol=1e-5, rtol=0)
        export_compact(small, tmp_path / f"{arch}{task}")
        reloaded = load_compressed(tmp_path / f"{arch}{task}").eval()
        torch.testing.assert_close(main_output(reloaded(**batch)), masked, atol=1e-5, rtol=0)
        # The size model counts exactly the compact encoder's parameters.
        assert structure_size(structure) == parameter_counts(small)["encoder"]
        assert full_size(EncoderAdapter(model).shape()) == parameter_counts(model)["encoder"]


def test_training_forward_samples_gates_and_every_group_gets_gradients():
    model = tiny_model("bert", "ForSequenceClassification").train()
    pruner = CoFiPruner(model, SparsitySchedule(0.5, 2, 4))
    pruner.attach(model)
    batch = tiny_batch()
    pruner.step = 0  # pre-pruning: masks are ones, the penalty is an all-zero-gradient term
    model(**batch)
    assert all(bool((h == 1).all()) for h in pruner.masks.head)
    loss, _ = pruner.penalty()
    loss.backward()
    assert all(float(p.grad.abs().sum()) == 0 for p in pruner.parameters())
    pruner.zero_grad()
    randomize(pruner.gates, std=1.0)  # at the reference init most samples sit at the clamp (zero gradient)
    with torch.no_grad():
        pruner.multipliers.lambda_2.fill_(1.0)  # λ = 0 at init gives the penalty no gradient yet
    pruner.step = 4
    out = main_output(model(**batch)).sum()
    penalty, stats = pruner.penalty()
    (out + penalty).backward()
    assert stats["target_sparsity"] == pytest.approx(0.25)
    for name in ("head", "neuron", "attention", "ffn", "hidden"):
        grads = [p.grad for p in pruner.gates._group(name)]
        assert all(g is not None and float(g.abs().sum()) > 0 for g in grads), name
    gap = stats["expected_sparsity"] - 0.25
    assert float(pruner.multipliers.lambda_1.grad) == pytest.approx(gap, abs=1e-6)
    assert float(pruner.multipliers.lambda_2.grad) == pytest.approx(gap**2, abs=1e-6)


def test_the_same_step_draws_the_same_sample_on_every_replica():
    model = tiny_model("bert", "ForSequenceClassification")
    a = CoFiPruner(model, SparsitySchedule(0.5, 0, 4), seed=7)
    b = CoFiPruner(model, SparsitySchedule(0.5, 0, 4), seed=7)
    a.step = b.step = 3
    sa, sb = a.gates.sample(a.noise()), b.gates.sample(b.noise())
    for x, y in zip(sa.neuron, sb.neuron, strict=True):
        torch.testing.assert_close(x, y)
    b.step = 4
    assert not torch.equal(sa.neuron[0], b.gates.sample(b.noise()).neuron[0])


def test_lambdas_ascend_and_log_alpha_is_clamped():
    model = tiny_model("bert", "ForSequenceClassification")
    pruner = CoFiPruner(model, SparsitySchedule(0.5, 0, 0))
    optimizer = torch.optim.AdamW(
        [{"params": pruner.gates.learned_parameters(), "lr": 0.1, "weight_decay": 0.0},
         {"params": list(pruner.multipliers.parameters()), "lr": 0.1, "maximize": True, "weight_decay": 0.0}]
    )  # fmt: skip
    for _ in range(3):
        loss, stats = pruner.penalty()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.gates.constrain()
    assert stats["expected_sparsity"] < 0.5  # below target: λ1 is pushed down, which pushes sparsity up
    assert float(pruner.multipliers.lambda_1) < 0
    assert all(float(p.max()) <= LOG_ALPHA_MAX and float(p.min()) >= LOG_ALPHA_MIN for p in pruner.gates.parameters())


def test_target_schedule_ramps_linearly_after_pre_pruning():
    schedule = SparsitySchedule(0.9, start_step=10, warmup_steps=20)
    assert [schedule.at(s) for s in (0, 9, 10, 20, 30, 99)] == pytest.approx([0, 0, 0, 0.45, 0.9, 0.9])
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="in \\(0, 1\\)"):
            SparsitySchedule(bad, 0, 1)


def test_default_teacher_layers():
    assert default_teacher_layers(12) == [3, 6, 9, 12]
    assert default_teacher_layers(6) == [2, 3, 5, 6]


def test_ordered_mapping_is_top_down_monotone_and_never_out_of_range():
    costs = torch.tensor([[0.1, 0.5, 0.9, 0.2], [0.9, 0.1, 0.5, 0.3], [0.9, 0.9, 0.1, 0.0]])
    assert match_layers(costs, [True] * 4, ordered=False) == [0, 1, 3]
    assert match_layers(costs, [True] * 4, ordered=True) == [0, 1, 3]
    # The top teacher layer takes student 0, so nothing is left below it for the others: skipped, not wrapped.
    costs = torch.tensor([[0.5, 0.1], [0.5, 0.2], [0.0, 0.9]])
    assert match_layers(costs, [True, True], ordered=True) == [None, None, 0]
    # A layer exists if EITHER sublayer survives; removed layers are never chosen.
    costs = torch.tensor([[0.0, 0.5, 0.9], [0.9, 0.6, 0.5]])
    assert match_layers(costs, [False, True, True], ordered=True) == [1, 2]
    assert match_layers(costs, [False, False, False], ordered=False) == [None, None]


def test_layer_loss_flows_only_through_the_selected_layers():
    torch.manual_seed(0)
    student = [torch.randn(2, 5, 8, requires_grad=True) for _ in range(4)]
    teacher = [s.detach() + 0.01 * torch.randn_like(s) for s in student]
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, 3:] = 0
    transform = identity_transform(8, 8)
    loss, mapping = layer_distillation_loss(student, teacher, [1, 3], transform, mask, [True, True, True], True)
    assert mapping == [1, 3]
    loss.backward()
    assert float(student[2].grad.abs().sum()) == 0
    assert float(student[1].grad.abs().sum()) > 0 and float(student[3].grad.abs().sum()) > 0
    assert float(student[1].grad[0, 3:].abs().sum()) == 0  # padding does not count


def test_identity_transform_maps_kept_hidden_dims_back_to_their_place():
    transform = identity_transform(3, 6, [0, 2, 5])
    out = transform(torch.tensor([[1.0, 2.0, 3.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 3.0]]))
    with pytest.raises(ValueError, match="cannot map"):
        identity_transform(3, 6, [0, 7, 1])


def test_gates_refuse_unknown_granularities_and_skip_unlearned_ones():
    with pytest.raises(ValueError, match="granularities"):
        CoFiGates(BERT_BASE, ["heads"])
    gates = CoFiGates(BERT_BASE, ["head", "neuron"])
    masks = gates.sample(gates.draw_noise(torch.Generator().manual_seed(0)))
    assert bool((masks.hidden == 1).all()) and bool((masks.attention == 1).all())
    assert len(gates.learned_parameters()) == 24
    assert math.isclose(
        float(gates.expected_size()) / full_size(BERT_BASE), 1 - float(gates.expected_sparsity()), rel_tol=1e-6
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_a_zero_sublayer_gate_means_layernorm_of_the_input_in_training_eval_and_materialized(arch):
    """Gate 0 on a post-LN sublayer scales its whole output (bias included) away: ``LN(x)`` everywhere (pre-LN:
    the sublayer adds nothing to ``x``)."""
    model = tiny_model(arch, "ForSequenceClassification")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # training-mode forwards become deterministic, so they can be compared
    pruner = CoFiPruner(model, SparsitySchedule(0.5, 0, 10))
    randomize(pruner.gates, seed=5, std=1.0)
    with torch.no_grad():
        pruner.gates.attention[1] = LOG_ALPHA_MIN
        pruner.gates.ffn[1] = LOG_ALPHA_MAX
    pruner.attach(model)
    steps = (s for s in range(100) if _sample_at(pruner, s).attention[1] == 0)
    pruner.step = next(steps)
    view = EncoderAdapter(model).layers[1]
    seen = {}
    hook = view.attention_norm.register_forward_hook(lambda m, a, out: seen.update(x=a[0], out=out))
    batch = tiny_batch()
    with torch.no_grad():
        trained = main_output(model.train()(**batch))
        sample = _sample_at(pruner, pruner.step)
        hidden = sample.hidden
        x = seen["x"]
        expected = (
            torch.nn.functional.layer_norm(
                x[..., hidden != 0],
                (int((hidden != 0).sum()),),
                view.attention_norm.weight[hidden != 0],
                None if view.attention_norm.bias is None else view.attention_norm.bias[hidden != 0],
                view.attention_norm.eps,
            )
            * hidden[hidden != 0]
        )
        torch.testing.assert_close(seen["out"][..., hidden != 0], expected, atol=1e-5, rtol=0)
        hook.remove()
        pruner.detach()
        torch.testing.assert_close(main_output(compact(model, sample).eval()(**batch)), trained, atol=1e-5, rtol=0)
        pruner.attach(model)
        evaluated = main_output(model.eval()(**batch))
        assert pruner.deterministic_masks().attention[1] == 0
        small = pruner.materialize(model).eval()
        pruner.detach()
        torch.testing.assert_close(main_output(small(**batch)), evaluated, atol=1e-5, rtol=0)


def _sample_at(pruner: CoFiPruner, step: int):
    pruner.step = step
    return pruner.gates.sample(pruner.noise())
