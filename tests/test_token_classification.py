"""Token classification (NER): CoNLL and table data, entity metrics against seqeval, exact compaction and exports
of every architecture's head, label-set checks, K-prune on tokens, and train.py fit / prune.py K-prune end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch

from kp_lightning import attach_masks, compact, measured_flops, model_flops
from kp_lightning.cli import main as train_main
from kp_lightning.core.export import load_compressed
from kp_lightning.core.onnx_export import export_onnx, run_onnx
from kp_lightning.data.conll import read_conll
from kp_lightning.data.entity_metrics import entity_scores
from kp_lightning.data.glue_files import DataFormatError
from kp_lightning.data.task_metrics import TaskMetrics
from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.data.token_classification import load_tagged_splits
from kp_lightning.datamodules import TokenClassificationDataModule
from kp_lightning.errors import ConfigError
from kp_lightning.modules.distillation_losses import prediction_distillation_loss, soft_kl
from kp_lightning.modules.model_loading import load_task_model
from kp_lightning.prune_cli import main as prune_main
from kp_lightning.pruning import KwonConfig, kwon_prune
from kp_lightning.pruning.knowledge import prediction_loss
from kp_lightning.pruning.sample_set import SampleSet
from tests.head_checks import check_compact_exports, check_dense_exports
from tests.helpers import edge_case_masks, needs_onnx, tiny_batch, tiny_model
from tests.task_fixtures import NER_LABELS, ner_sentences, save_token_model, tiny_roberta_tokenizer, write_conll
from tests.text_fixtures import save_tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ner(tmp_path_factory):
    root = tmp_path_factory.mktemp("ner")
    train, dev = write_conll(root / "train.txt", 48, seed=0), write_conll(root / "dev.txt", 16, seed=1)
    encoder = save_tiny_model(root / "encoder", "Model")  # no head: fine-tuning starts a new one
    return root, train, dev, encoder


# ---- data ----------------------------------------------------------------------------------------------------
def test_conll_files_are_read_by_sentence(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("-DOCSTART- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter\tI-PER\n  \n-DOCSTART- O\n")
    assert read_conll(path) == {"tokens": [["EU", "rejects"], ["Peter"]], "tags": [["B-ORG", "O"], ["I-PER"]]}


def test_bad_conll_lines_and_unknown_labels_name_the_file_and_line(tmp_path, ner):
    root, train, _, encoder = ner
    bad = tmp_path / "bad.txt"
    bad.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(DataFormatError, match=f"{bad}, line 2: expected a token and a label") as err:
        read_conll(bad)
    assert "blank line between sentences" in err.value.fix
    bad.write_text("EU B-ORG\n\nPeter PER\n")
    with pytest.raises(DataFormatError, match=f"{bad}, line 3: 'PER' is not an entity tag"):
        read_conll(bad)
    dev = tmp_path / "dev.txt"
    dev.write_text("-DOCSTART- O\n\nann B-PER\nwent O\n\nrome B-CITY\n")
    with pytest.raises(DataFormatError, match=rf"{dev}, line 6: label 'B-CITY' is not in the label set") as err:
        TokenClassificationDataModule(str(train), str(dev), tokenizer=str(encoder), cache_dir=None)
    assert "label_names" in err.value.fix and "train.txt" in err.value.message
    with pytest.raises(DataFormatError, match=f"{dev}, line 3: label 'B-PER' is not in the label set"):
        TokenClassificationDataModule(str(dev), str(dev), tokenizer=str(encoder), cache_dir=None,
                                      label_names=["O", "B-LOC"])  # fmt: skip


def test_tables_hub_style_class_labels_and_conll_give_the_same_data(tmp_path):
    sentences = ner_sentences(12, seed=3)
    words, tags = [w for w, _ in sentences], [t for _, t in sentences]
    order = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]  # a dataset's own ClassLabel order
    features = datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("string")),
         "ner_tags": datasets.Sequence(datasets.ClassLabel(names=order))}
    )  # fmt: skip
    ids = [[order.index(t) for t in row] for row in tags]
    datasets.Dataset.from_dict({"tokens": words, "ner_tags": ids}, features=features).to_parquet(tmp_path / "t.parquet")
    (tmp_path / "v.jsonl").write_text("".join(json.dumps({"tokens": w, "ner_tags": t}) + "\n" for w, t in sentences))
    csv_rows = ["words,tags", *(f'"{" ".join(w)}","{" ".join(t)}"' for w, t in sentences)]
    (tmp_path / "v.csv").write_text("\n".join(csv_rows) + "\n")
    write_conll(tmp_path / "v.txt", 12, seed=3, docstart=False)

    splits, names = load_tagged_splits({"train": str(tmp_path / "t.parquet"), "validation": str(tmp_path / "v.jsonl")})
    assert names == order  # the ClassLabel names, in their order
    assert splits["train"]["ner_tags"] == ids == splits["validation"]["ner_tags"]
    assert splits["train"]["tokens"] == words
    splits, names = load_tagged_splits(
        {"train": str(tmp_path / "v.txt"), "validation": str(tmp_path / "v.csv")}, tags_column="tags",
        tokens_column="words",
    )  # fmt: skip
    assert names == sorted(order)  # inferred from the training tags
    assert splits["train"]["ner_tags"] == splits["validation"]["ner_tags"]
    assert [[names[i] for i in row] for row in splits["validation"]["ner_tags"]] == tags
    hub_split = datasets.Dataset.from_dict({"tokens": words, "ner_tags": ids}, features=features)
    splits, names = load_tagged_splits({"train": hub_split, "validation": hub_split}, label_names=NER_LABELS)
    assert names == NER_LABELS and [[names[i] for i in row] for row in splits["train"]["ner_tags"]] == tags
    (tmp_path / "ints.jsonl").write_text(json.dumps({"tokens": ["a"], "ner_tags": [0]}) + "\n")
    with pytest.raises(DataFormatError, match="ints.jsonl, row 1: integer tags but no names"):
        load_tagged_splits({"train": str(tmp_path / "ints.jsonl")})
    with pytest.raises(DataFormatError, match=r"v.jsonl, row 1: label 'B-PER' is not in the label set"):
        load_tagged_splits({"train": str(tmp_path / "ints.jsonl"), "validation": str(tmp_path / "v.jsonl")},
                           label_names=["O", "B-LOC"])  # fmt: skip


def test_a_hub_dataset_loads_through_load_dataset_like_the_same_conll_files(ner, tmp_path):
    """``hub_name`` goes through ``datasets.load_dataset(name)``; a local dataset folder (one Parquet file per
    split, ClassLabel names in its schema, as the hub serves conll2003) takes the same call without a network."""
    root, train, dev, encoder = ner
    order = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]  # the dataset's own ClassLabel order
    features = datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("string")),
         "ner_tags": datasets.Sequence(datasets.ClassLabel(names=order))}
    )  # fmt: skip
    folder = tmp_path / "conll_like"
    for split, (n, seed) in (("train", (48, 0)), ("validation", (16, 1))):
        rows = ner_sentences(n, seed)
        table = {"tokens": [w for w, _ in rows], "ner_tags": [[order.index(t) for t in tags] for _, tags in rows]}
        (folder / "data").mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(table, features=features).to_parquet(folder / "data" / f"{split}.parquet")
    hub = TokenClassificationDataModule(hub_name=str(folder), tokenizer=str(encoder), cache_dir=None, batch_size=4)
    files = TokenClassificationDataModule(str(train), str(dev), tokenizer=str(encoder), cache_dir=None,
                                          label_names=order, batch_size=4)  # fmt: skip
    hub.setup()
    files.setup()
    assert hub.task_spec.label_names == order == files.task_spec.label_names
    for split in ("train", "validation"):
        assert hub.datasets[split]["labels"] == files.datasets[split]["labels"]
        assert hub.datasets[split]["input_ids"] == files.datasets[split]["input_ids"]
    (folder / "data" / "validation.parquet").unlink()
    with pytest.raises(ConfigError, match=r"has no \['validation'\] split"):
        TokenClassificationDataModule(hub_name=str(folder), tokenizer=str(encoder), cache_dir=None).setup()


def expected_labels(words: list[str], tag_ids: list[int], inside: dict[int, int] | None = None) -> list[int]:
    """The tiny tokenizer spells each word letter by letter: [CLS], then per word its first letter + '##' rest."""
    labels = [-100]
    for word, tag in zip(words, tag_ids, strict=True):
        rest = -100 if inside is None else inside.get(tag, tag)
        labels += [tag] + [rest] * (len(word) - 1)
    return labels + [-100]


def test_labels_sit_on_the_first_sub_token_of_each_word(ner):
    root, train, dev, encoder = ner
    for label_all in (False, True):
        data = TokenClassificationDataModule(str(train), str(dev), tokenizer=str(encoder), cache_dir=None,
                                             label_all_tokens=label_all, batch_size=4)  # fmt: skip
        assert data.task_spec.label_names == NER_LABELS and data.task_spec.main_metric == "val/f1"
        data.setup()
        inside = {NER_LABELS.index(t): NER_LABELS.index("I-" + t[2:]) for t in NER_LABELS if t.startswith("B-")}
        for split, raw in (("train", ner_sentences(48, 0)), ("validation", ner_sentences(16, 1))):
            rows = data.datasets[split]
            for row, (words, tags) in zip(rows, raw, strict=True):
                ids = [NER_LABELS.index(t) for t in tags]
                use = inside if label_all and split == "train" else None  # evaluation scores one label per word
                assert row["labels"] == expected_labels(words, ids, use)
        batch = next(iter(data.train_dataloader()))
        assert batch["labels"].shape == batch["input_ids"].shape
        assert bool((batch["labels"][batch["attention_mask"] == 0] == -100).all())  # padding is never labelled


def test_a_byte_level_tokenizer_gets_a_prefix_space_for_pre_split_words(ner, tmp_path):
    root, train, dev, _ = ner
    plain = tiny_roberta_tokenizer(tmp_path / "roberta")
    assert plain(["ann", "went"], is_split_into_words=True)["input_ids"][1] != 5  # no "Ġ" before the first word
    data = TokenClassificationDataModule(str(train), str(dev), tokenizer=str(tmp_path / "roberta"), cache_dir=None)
    assert data.tokenizer.add_prefix_space
    data.setup()
    row = data.datasets["validation"][0]
    starts = [i for i, label in enumerate(row["labels"]) if label != -100]
    assert starts and all(row["input_ids"][i] == 5 for i in starts)  # every word starts with "Ġ"
    assert len(starts) == len(ner_sentences(16, 1)[0][0])


# ---- metrics -------------------------------------------------------------------------------------------------
SCHEMES = {  # (gold, predicted, hand-computed precision, recall, f1, accuracy)
    "IOB2": ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-ORG"]], 1 / 2, 1 / 2, 1 / 2, 3 / 4),
    "IOB1": ([["I-PER", "I-PER", "B-PER", "O", "I-LOC"]], [["I-PER", "I-PER", "I-PER", "O", "I-LOC"]],
             1 / 2, 1 / 3, 0.4, 4 / 5),
    "IOBES": ([["S-PER", "O", "B-LOC", "E-LOC"]], [["S-PER", "O", "E-LOC", "E-LOC"]], 1 / 3, 1 / 2, 0.4, 3 / 4),
}  # fmt: skip
MIXED = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "I-MISC"]


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_entity_scores_by_hand(scheme):
    gold, pred, precision, recall, f1, accuracy = SCHEMES[scheme]
    assert entity_scores(gold, pred) == pytest.approx(
        {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy}
    )


def random_tagging(seed: int, tags: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    rng = random.Random(seed)
    gold = [[rng.choice(tags) for _ in range(rng.randint(1, 9))] for _ in range(rng.randint(1, 6))]
    return gold, [[rng.choice(tags) if rng.random() < 0.4 else t for t in row] for row in gold]


@pytest.mark.parametrize("scheme", [*SCHEMES, "mixed"])
def test_entity_scores_equal_seqeval(scheme):
    metrics = pytest.importorskip("seqeval.metrics", reason="pip install seqeval (the [dev] extra)")
    cases = [SCHEMES[scheme][:2]] if scheme in SCHEMES else []
    tags = {"IOB2": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"], "IOB1": ["O", "I-PER", "B-PER", "I-LOC", "B-LOC"],
            "IOBES": ["O", "B-PER", "I-PER", "E-PER", "S-PER", "S-LOC"], "mixed": MIXED}[scheme]  # fmt: skip
    cases += [random_tagging(seed, tags) for seed in range(60)]
    for gold, pred in cases:
        expected = {
            "precision": metrics.precision_score(gold, pred, zero_division=0),
            "recall": metrics.recall_score(gold, pred, zero_division=0),
            "f1": metrics.f1_score(gold, pred, zero_division=0),
            "accuracy": metrics.accuracy_score(gold, pred),
        }
        assert entity_scores(gold, pred) == pytest.approx(expected, abs=1e-12), (gold, pred)


def test_task_metrics_score_words_over_batches_and_ignore_unlabelled_tokens():
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    spec = TaskSpec("ner", "token_classification", num_labels=4, label_names=names, metrics=["f1", "accuracy"])
    gold = torch.tensor([[-100, 1, -100, 2, 0, -100], [-100, 3, 0, 0, -100, -100]])
    pred = torch.tensor([[0, 1, 3, 2, 0, 3], [2, 3, 0, 1, 0, 0]])  # wrong only where unlabelled, and one B-PER
    metrics = TaskMetrics(spec)
    for row in range(2):
        logits = torch.nn.functional.one_hot(pred[row : row + 1], 4).float()
        metrics.update(SimpleNamespace(logits=logits), {"labels": gold[row : row + 1]})
    words = [[names[g] for g in row if g != -100] for row in gold.tolist()]
    predicted = [[names[p] for p, g in zip(pr, gr, strict=True) if g != -100] for pr, gr in zip(pred.tolist(),
                 gold.tolist(), strict=True)]  # fmt: skip
    expected = entity_scores(words, predicted)
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values == pytest.approx({"f1": expected["f1"], "accuracy": expected["accuracy"]})
    assert values["accuracy"] == pytest.approx(5 / 6) and 0 < values["f1"] < 1


# ---- models, exports, label checks ---------------------------------------------------------------------------
def test_every_architecture_masked_equals_compact_equals_reloaded(tmp_path):
    check_compact_exports(tmp_path, "ForTokenClassification", tiny_batch(), "AutoModelForTokenClassification")


def test_dense_exports_load_with_the_stock_class(tmp_path):
    check_dense_exports(tmp_path, "ForTokenClassification", tiny_batch())


@needs_onnx
def test_onnx_export_matches_onnxruntime(tmp_path):
    model = tiny_model("roberta", "ForTokenClassification")
    small = compact(model, edge_case_masks(model)).eval()
    path = export_onnx(small, tmp_path / "model.onnx", seq_len=16, batch_size=2)
    batch = tiny_batch(batch=3, seq=9)
    (logits,) = run_onnx(path, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(torch.from_numpy(logits), small(**batch).logits, atol=1e-4, rtol=0)


def test_flops_count_the_classifier_at_every_token():
    model = tiny_model("roberta", "ForTokenClassification")
    analytic, counted = model_flops(model, 40), measured_flops(model, 40)
    assert analytic["head"] == 2 * 40 * 32 * 2  # no pooler; a 32 → 2 classifier at each of the 40 tokens
    assert counted["total"] == pytest.approx(analytic["total"], rel=0.02)


def test_a_trained_head_with_another_label_set_is_refused(tmp_path):
    model_dir = save_token_model(tmp_path / "m")
    spec = TaskSpec("ner", "token_classification", num_labels=7, label_names=NER_LABELS)
    assert load_task_model(str(model_dir), spec).kp_newly_initialized == []
    reordered = TaskSpec("ner", "token_classification", num_labels=7, label_names=NER_LABELS[::-1])
    with pytest.raises(ConfigError, match="was trained with the labels") as err:
        load_task_model(str(model_dir), reordered)
    assert "label_names" in err.value.fix
    fewer = TaskSpec("ner", "token_classification", num_labels=3, label_names=["O", "B-PER", "I-PER"])
    with pytest.raises(ConfigError, match="head with 7 outputs but task 'ner' needs 3"):
        load_task_model(str(model_dir), fewer)
    fresh = load_task_model(str(model_dir), fewer, ignore_mismatched_head=True)
    assert fresh.config.id2label == {0: "O", 1: "B-PER", 2: "I-PER"} and fresh.classifier.out_features == 3


def test_kprune_compares_predictions_on_labelled_tokens_only():
    model = tiny_model("bert", "ForTokenClassification").requires_grad_(False)
    batch = tiny_batch(batch=2, seq=8)
    batch["labels"] = torch.tensor([[-100, 1, -100, 0, 1, -100, 0, -100], [-100, 0, 1, -100, 0, -100, -100, -100]])
    assert batch["attention_mask"][1, 4] == 0  # a label id on a padding position is not compared either
    samples = SampleSet([batch], "cpu", ("input_ids", "attention_mask", "labels"))
    mask = samples.prediction_mask(samples.all_batches[0], "token_classification")
    assert mask.tolist() == ((batch["labels"] != -100) & batch["attention_mask"].bool()).tolist()
    padding = samples.prediction_mask(samples.all_batches[0], "classification")
    assert padding.tolist() == batch["attention_mask"].bool().tolist()
    logits = model(**samples.model_inputs(samples.all_batches[0])).logits
    teacher = logits + torch.randn_like(logits)
    base = prediction_loss("token_classification", {"logits": logits}, {"logits": teacher}, mask, 2.0)
    changed = teacher.clone()
    changed[0, 2] += 5.0  # an unlabelled sub-token: not compared
    assert prediction_loss("token_classification", {"logits": logits}, {"logits": changed}, mask, 2.0) == base
    changed[0, 1] += 5.0
    assert prediction_loss("token_classification", {"logits": logits}, {"logits": changed}, mask, 2.0) != base


def test_kwon_on_tokens_meets_the_budget_and_folds_its_scales():
    model = tiny_model("distilbert", "ForTokenClassification")
    batches = []
    for seed in range(3):
        batch = tiny_batch(seed=seed, batch=4, seq=10)
        batch["labels"] = torch.randint(0, 2, (4, 10), generator=torch.Generator().manual_seed(seed))
        batch["labels"][:, 0] = -100
        batches.append(batch)
    samples = SampleSet(batches, "cpu", ("input_ids", "attention_mask", "labels"))
    result = kwon_prune(model, samples, "token_classification", KwonConfig(0.5), progress=False)
    assert result.flops_pruned <= 0.5 * result.flops_dense * (1 + 1e-9)
    with attach_masks(model, result.masks):
        masked = model(**tiny_batch(seed=7)).logits
    torch.testing.assert_close(result.model(**tiny_batch(seed=7)).logits, masked, atol=1e-5, rtol=0)


def test_distillation_compares_labelled_tokens_and_choices():
    labels = torch.tensor([[-100, 2, -100, 0], [-100, 1, 1, -100]])
    batch = {"attention_mask": torch.ones(2, 4, dtype=torch.long), "labels": labels}
    student, teacher = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    loss = prediction_distillation_loss("token_classification", SimpleNamespace(logits=student),
                                        SimpleNamespace(logits=teacher), batch, 2.0)  # fmt: skip
    expected = soft_kl(student, teacher, 2.0)[labels != -100].mean()
    torch.testing.assert_close(loss, expected)
    choices_s, choices_t = torch.randn(2, 4), torch.randn(2, 4)  # [batch, choices]
    loss = prediction_distillation_loss("multiple_choice", SimpleNamespace(logits=choices_s),
                                        SimpleNamespace(logits=choices_t), {}, 2.0)  # fmt: skip
    torch.testing.assert_close(loss, soft_kl(choices_s, choices_t, 2.0).mean())


# ---- train.py fit and prune.py K-prune -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(ner):
    root, train, dev, encoder = ner
    cli = train_main(["fit", "-c", str(REPO / "configs/finetune/token_classification.yaml"),
                      "-c", str(REPO / "configs/data/conll.yaml"), "-c", str(REPO / "configs/trainer/cpu.yaml"),
                      "--model.init_args.model_name_or_path", str(encoder), "--model.init_args.learning_rate", "3e-3",
                      "--data.init_args.train_file", str(train), "--data.init_args.validation_file", str(dev),
                      "--data.init_args.cache_dir", str(root / "cache"), "--data.init_args.batch_size", "8",
                      "--trainer.max_epochs", "4", "-c", str(REPO / "configs/logger/csv.yaml"),
                      "--trainer.logger.init_args.save_dir", str(root / "fit"), "--trainer.enable_progress_bar",
                      "false", "--trainer.default_root_dir", str(root / "fit")])  # fmt: skip
    return cli, next((root / "fit").rglob("best_model"))


def test_fit_through_train_py_logs_entity_metrics_and_saves_the_best_model(fitted):
    cli, best = fitted
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert {"val/f1", "val/precision", "val/recall", "val/accuracy", "val/loss"} <= set(metrics)
    assert json.loads((best / "best_metric.json").read_text())["monitor"] == "val/f1"
    config = json.loads((best / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert [config["id2label"][str(i)] for i in range(7)] == NER_LABELS
    assert metrics["val/accuracy"] > 0.5


def test_kprune_through_prune_py_exports_a_model_that_reproduces_the_metric(fitted, ner, tmp_path):
    root, train, dev, _ = ner
    _, best = fitted
    data = ["--data", "TokenClassificationDataModule", "--data.init_args.train_file", str(train),
            "--data.init_args.validation_file", str(dev), "--data.init_args.cache_dir", str(root / "cache"),
            "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    out = tmp_path / "pruned"
    report = prune_main(["--model", "TaskModule", "--model.init_args.model_name_or_path", str(best), *data,
                         "--pruner.flops_reduction", "0.5", "--pruner.num_tokens", "600", "--pruner.batch_size", "8",
                         "--pruner.progress", "false", "--latency_seconds", "0.05", "--latency_seq_len", "32",
                         "--output_dir", str(out)])  # fmt: skip
    assert report["method"] == "kprune" and report["metric_name"] == "val/f1"
    assert report["flops_reduction_actual"] == pytest.approx(0.5, abs=0.06)
    assert set(report["metrics_compressed"]) >= {"val/f1", "val/precision", "val/recall", "val/accuracy"}
    reloaded = load_compressed(out)
    assert type(reloaded).__name__ == "KPBertForTokenClassification" and reloaded.config.id2label[0] == "B-LOC"
    cli = train_main(["validate", "--model", "TaskModule", "--model.init_args.model_name_or_path", str(out), *data])
    for name in ("val/f1", "val/accuracy"):
        assert float(cli.trainer.callback_metrics[name]) == pytest.approx(report["metrics_compressed"][name], abs=1e-6)
