"""Fit and evaluate through Lightning: classification, regression, MLM, distillation, extension points."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import transformers

from callbacks import SaveBestPretrained
from kp_lightning.data.glue_tasks import glue_task
from kp_lightning.datamodules import GlueDataModule, MLMDataModule
from kp_lightning.modules import DistillationModule, LossTerm, TaskModule, TokenizerMismatchError
from kp_lightning.modules.distillation_losses import prediction_distillation_loss, soft_kl
from tests.text_fixtures import VOCAB, save_tiny_model, write_sst2, write_stsb


def make_trainer(tmp_path, epochs: int = 2, **kwargs) -> pl.Trainer:
    defaults = {
        "accelerator": "cpu",
        "max_epochs": epochs,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
        "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**{**defaults, **kwargs})


def mean_train_loss(module: TaskModule, loader) -> float:
    module.eval()
    with torch.no_grad():
        losses = [module(batch).loss for batch in loader]
    return float(torch.stack(losses).mean())


def eval_outputs(module: TaskModule, loader):
    module.eval()
    with torch.no_grad():
        pairs = [(module(batch).logits, batch["labels"]) for batch in loader]
    return torch.cat([p for p, _ in pairs]), torch.cat([y for _, y in pairs])


@pytest.fixture(scope="module")
def cls_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("cls"), "ForSequenceClassification")


def glue_module(root, task, tokenizer, batch_size=8):
    return GlueDataModule(task, data_dir=str(root), tokenizer=str(tokenizer), batch_size=batch_size, cache_dir=None)


def test_classification_fit_lowers_loss_and_validate_matches_hand_computed_accuracy(tmp_path, cls_model_dir):
    data = glue_module(write_sst2(tmp_path / "glue", n_train=48, n_dev=25), "sst2", cls_model_dir)
    module = TaskModule(str(cls_model_dir), task_spec=data.task_spec, learning_rate=3e-3, warmup_ratio=0.0)
    data.setup("fit")
    before = mean_train_loss(module, data.train_dataloader())
    make_trainer(tmp_path, epochs=4).fit(module, datamodule=data)
    assert mean_train_loss(module, data.train_dataloader()) < before
    metrics = make_trainer(tmp_path).validate(module, datamodule=data)[0]
    logits, labels = eval_outputs(module, data.val_dataloader())
    assert metrics["val/accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert set(metrics) == {"val/accuracy", "val/loss"}


def test_regression_fit_and_pearson_matches_hand_computed(tmp_path):
    model_dir = save_tiny_model(tmp_path / "reg", "ForSequenceClassification", num_labels=1)
    data = glue_module(write_stsb(tmp_path / "glue"), "stsb", model_dir)
    module = TaskModule(str(model_dir), task_spec=data.task_spec, learning_rate=1e-3)
    assert module.model.config.problem_type == "regression"
    make_trainer(tmp_path, epochs=1).fit(module, datamodule=data)
    metrics = make_trainer(tmp_path).validate(module, datamodule=data)[0]
    preds, gold = eval_outputs(module, data.val_dataloader())
    expected = torch.corrcoef(torch.stack([preds.squeeze(-1), gold.float()]))[0, 1]
    assert metrics["val/pearson"] == pytest.approx(expected.item(), abs=1e-4)
    assert "val/spearman" in metrics


def test_mlm_fit_and_perplexity_matches_hand_computed(tmp_path):
    model_dir = save_tiny_model(tmp_path / "mlm", "ForMaskedLM")
    (tmp_path / "corpus.txt").write_text("the movie was good and the plot was dull\n\n" * 30)
    data = MLMDataModule(
        str(tmp_path / "corpus.txt"), str(tmp_path / "corpus.txt"), tokenizer=str(model_dir), max_length=32,
        batch_size=4, cache_dir=None, whole_word_mask=True,
    )  # fmt: skip
    module = TaskModule(str(model_dir), task_spec=data.task_spec, learning_rate=1e-3)
    make_trainer(tmp_path, epochs=1).fit(module, datamodule=data)
    metrics = make_trainer(tmp_path).validate(module, datamodule=data)[0]
    module.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for batch in data.val_dataloader():
            logits, labels = module(batch).logits, batch["labels"]
            picked = labels != -100
            nll += torch.nn.functional.cross_entropy(logits[picked], labels[picked], reduction="sum").item()
            count += int(picked.sum())
    assert metrics["val/perplexity"] == pytest.approx(torch.tensor(nll / count).exp().item(), rel=1e-4)
    assert 0.0 <= metrics["val/accuracy"] <= 1.0


def test_kd_losses_match_their_formulas():
    torch.manual_seed(0)
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    p_t, p_s = torch.softmax(t / 2, -1), torch.softmax(s / 2, -1)
    expected = 4 * (p_t * (p_t.log() - p_s.log())).sum(-1)
    assert torch.allclose(soft_kl(s, t, 2.0), expected, atol=1e-6)
    out = lambda logits: transformers.modeling_outputs.SequenceClassifierOutput(logits=logits)  # noqa: E731
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    s3, t3 = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mlm = prediction_distillation_loss("masked_lm", out(s3), out(t3), {"attention_mask": mask}, 2.0)
    assert mlm.item() == pytest.approx(soft_kl(s3, t3, 2.0)[mask.bool()].mean().item(), rel=1e-6)


def test_distillation_keeps_teacher_frozen_and_out_of_checkpoints(tmp_path, cls_model_dir):
    teacher_dir = save_tiny_model(tmp_path / "teacher", "ForSequenceClassification", seed=3)
    data = glue_module(write_sst2(tmp_path / "glue", n_train=16, n_dev=8), "sst2", cls_model_dir)
    module = DistillationModule(str(cls_model_dir), str(teacher_dir), task_spec=data.task_spec, learning_rate=1e-3)
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    trainer = make_trainer(tmp_path, epochs=1, log_every_n_steps=1)
    trainer.fit(module, datamodule=data)
    assert {"train/loss_task", "train/loss_kd"} <= set(trainer.logged_metrics)
    assert all(torch.equal(v, module.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert not module.teacher.training and not any(p.requires_grad for p in module.teacher.parameters())
    optimizer_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimizer_params & {id(p) for p in module.teacher.parameters()}
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    checkpoint = torch.load(tmp_path / "run.ckpt", weights_only=False)
    assert not any(k.startswith("teacher") for k in checkpoint["state_dict"])
    assert checkpoint["hyper_parameters"]["teacher_name_or_path"] == str(teacher_dir)
    restored = DistillationModule.load_from_checkpoint(tmp_path / "run.ckpt")
    assert torch.equal(restored.model.classifier.weight, module.model.classifier.weight)


def test_distillation_rejects_other_tokenizer_and_other_label_count(tmp_path, cls_model_dir):
    other = save_tiny_model(tmp_path / "other_tok", "ForSequenceClassification")
    vocab = {token: i for i, token in enumerate(VOCAB[:-1] + ["[NEW]"])}
    transformers.BertTokenizer(vocab=vocab).save_pretrained(other)
    spec = glue_task("sst2").task_spec()
    with pytest.raises(TokenizerMismatchError, match="use different tokenizers"):
        DistillationModule(str(cls_model_dir), str(other), task_spec=spec)
    three = save_tiny_model(tmp_path / "three", "ForSequenceClassification", num_labels=3)
    with pytest.raises(ValueError, match="has a classification head with 3 outputs but task 'sst2' needs 2"):
        DistillationModule(str(cls_model_dir), str(three), task_spec=spec)


class ClassifierNorm(LossTerm):
    def forward(self, ctx):
        return ctx.module.model.classifier.weight.pow(2).sum()


class ClassifierExtension(pl.Callback):
    """What a pruning callback does: one extra loss term and one parameter group with its own lr."""

    def setup(self, trainer, pl_module, stage):
        pl_module.add_loss_term("classifier_norm", ClassifierNorm(weight=0.01))
        pl_module.add_param_group("classifier", pl_module.model.classifier.parameters(), lr=0.05, scheduled=False)


def test_callbacks_add_loss_terms_and_param_groups(tmp_path, cls_model_dir):
    data = glue_module(write_sst2(tmp_path / "glue", n_train=16, n_dev=8), "sst2", cls_model_dir)
    module = TaskModule(str(cls_model_dir), task_spec=data.task_spec, learning_rate=1e-3)
    trainer = make_trainer(tmp_path, epochs=1, log_every_n_steps=1, callbacks=[ClassifierExtension()])
    trainer.fit(module, datamodule=data)
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert groups["classifier"]["lr"] == 0.05  # unscheduled: constant, while the default groups decayed
    assert groups["decay"]["lr"] < 1e-3
    classifier = {id(p) for p in module.model.classifier.parameters()}
    assert {id(p) for p in groups["classifier"]["params"]} == classifier
    assert not classifier & {id(p) for p in groups["decay"]["params"] + groups["no_decay"]["params"]}
    assert "train/loss_classifier_norm" in trainer.logged_metrics
    with pytest.raises(ValueError, match="already registered"):
        module.add_loss_term("classifier_norm", ClassifierNorm())


def test_save_best_pretrained_reloads_with_identical_outputs(tmp_path, cls_model_dir):
    data = glue_module(write_sst2(tmp_path / "glue", n_train=16, n_dev=8), "sst2", cls_model_dir)
    module = TaskModule(str(cls_model_dir), task_spec=data.task_spec, learning_rate=1e-3)
    saver = SaveBestPretrained(dirpath=str(tmp_path / "best"))
    make_trainer(tmp_path, epochs=1, callbacks=[saver]).fit(module, datamodule=data)
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "best").eval()
    assert reloaded.config.id2label == {0: "negative", 1: "positive"}
    batch = next(iter(data.val_dataloader()))
    module.eval()
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        assert torch.allclose(module(batch).logits, reloaded(**inputs).logits)
    assert (tmp_path / "best" / "best_metric.json").is_file()
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "best").get_vocab() == data.tokenizer.get_vocab()


def test_task_module_input_errors(cls_model_dir):
    with pytest.raises(ValueError, match="No task given"):
        TaskModule(str(cls_model_dir))
    with pytest.raises(ValueError, match="ignore_mismatched_head"):
        TaskModule(str(cls_model_dir), task_spec=glue_task("mnli").task_spec())
    module = TaskModule(str(cls_model_dir), task_spec=glue_task("mnli").task_spec(), ignore_mismatched_head=True)
    assert module.model.config.num_labels == 3


def test_question_answering_fit_and_squad_scores_match_hand_computed(tmp_path):
    from kp_lightning.data.squad import decode_eval_batch
    from kp_lightning.datamodules import SquadDataModule
    from tests.text_fixtures import write_squad_json

    model_dir = save_tiny_model(tmp_path / "qa", "ForQuestionAnswering")
    source = write_squad_json(tmp_path / "squad.json", n_articles=4)
    data = SquadDataModule(
        validation_source=str(source), eval_fraction=0.5, tokenizer=str(model_dir), max_length=64, doc_stride=16,
        batch_size=4, eval_batch_size=3, cache_dir=None,
    )  # fmt: skip
    module = TaskModule(str(model_dir), task_spec=data.task_spec, learning_rate=1e-3)
    make_trainer(tmp_path, epochs=1).fit(module, datamodule=data)
    metrics = make_trainer(tmp_path).validate(module, datamodule=data)[0]
    module.eval()
    exact, f1s = [], []
    with torch.no_grad():
        for batch in data.val_dataloader():
            assert batch["window_counts"].sum() == batch["input_ids"].shape[0] > len(batch["examples"])  # windows
            out = module(batch)
            for (qid, text), example in zip(decode_eval_batch(batch, out.start_logits, out.end_logits),
                                            batch["examples"], strict=True):  # fmt: skip
                assert qid == example["id"]
                gold = example["answers"]["text"][0]
                exact.append(float(text.strip().lower().removeprefix("the ") == gold))
                # Official SQuAD normalisation: lower case, no punctuation, no articles.
                pred_tokens = [t for t in text.lower().replace(".", " ").split() if t not in ("a", "an", "the")]
                gold_tokens = [gold]
                common = sum(min(pred_tokens.count(t), gold_tokens.count(t)) for t in set(pred_tokens))
                f1s.append(0.0 if not common else 2 * common / (len(pred_tokens) + len(gold_tokens)))
    assert metrics["val/exact_match"] == pytest.approx(100 * sum(exact) / len(exact), abs=1e-4)
    assert metrics["val/f1"] == pytest.approx(100 * sum(f1s) / len(f1s), abs=1e-4)


def test_hidden_state_distillation_term_is_zero_for_identical_student_and_logged(tmp_path, cls_model_dir):
    from kp_lightning.modules import HiddenStateMSE, StepContext

    data = glue_module(write_sst2(tmp_path / "glue", n_train=8, n_dev=4), "sst2", cls_model_dir)
    module = DistillationModule(
        str(cls_model_dir), str(cls_model_dir), task_spec=data.task_spec, loss_terms={"hidden": HiddenStateMSE()}
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module.eval()  # no dropout: the student is the teacher, so every layer matches exactly
    parts = module.training_losses(batch)
    assert parts["hidden"].item() == pytest.approx(0.0, abs=1e-10) and parts["kd"].item() == pytest.approx(0, abs=1e-6)
    with torch.no_grad():
        module.model.bert.encoder.layer[0].output.dense.weight[0].add_(1.0)
    assert module.training_losses(batch)["hidden"].item() > 1e-3
    other = module.teacher_outputs(batch, output_hidden_states=True)
    ctx = StepContext(module, batch, module(batch, output_hidden_states=True), other)
    assert HiddenStateMSE(layer_pairs=[[0, 0]])(ctx).item() == pytest.approx(0.0, abs=1e-10)  # embeddings untouched
    trainer = make_trainer(tmp_path, epochs=1, log_every_n_steps=1)
    trainer.fit(module, datamodule=data)
    assert "train/loss_hidden" in trainer.logged_metrics
