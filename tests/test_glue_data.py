"""GLUE and custom-file loading: real shared files, their quirks, bad input, the data module."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from kp_lightning.data.glue_files import DataFormatError, read_glue_tsv
from kp_lightning.data.glue_tasks import GLUE_TASKS, glue_task
from kp_lightning.data.text_classification import load_labelled_files
from kp_lightning.datamodules import GlueDataModule, TextClassificationDataModule
from tests.text_fixtures import save_tiny_model, write_sst2

SHARED_GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_shared = pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason=f"shared GLUE data not found at {SHARED_GLUE}")

# Row and label counts published in shared/data/README.md (class ids in hub label order).
EXPECTED = {
    ("sst2", "train"): (67349, {0: 29780, 1: 37569}),
    ("sst2", "validation"): (872, {0: 428, 1: 444}),
    ("mrpc", "train"): (3668, {0: 1194, 1: 2474}),
    ("mrpc", "validation"): (408, {0: 129, 1: 279}),
    ("rte", "train"): (2490, {0: 1249, 1: 1241}),
    ("rte", "validation"): (277, {0: 146, 1: 131}),
    ("cola", "train"): (8551, {0: 2528, 1: 6023}),
    ("cola", "validation"): (1043, {0: 322, 1: 721}),
    ("qnli", "validation"): (5463, {0: 2702, 1: 2761}),
    ("stsb", "train"): (5749, None),
    ("stsb", "validation"): (1500, None),
}


@needs_shared
@pytest.mark.parametrize(("task", "split"), sorted(EXPECTED))
def test_shared_glue_files_parse_with_published_counts(task, split):
    glue = glue_task(task)
    columns = read_glue_tsv(SHARED_GLUE / glue.folder / glue.tsv_files[split], glue)
    rows, labels = EXPECTED[(task, split)]
    assert len(columns["label"]) == rows
    assert all(len(columns[c]) == rows for c in glue.text_columns)
    if labels is None:
        assert all(0.0 <= y <= 5.0 for y in columns["label"])
    else:
        assert dict(Counter(columns["label"])) == labels


@needs_shared
def test_shared_glue_quirks():
    # CoLA has no header: the first row is data; MRPC's BOM must not hide the "Quality" column.
    cola = read_glue_tsv(SHARED_GLUE / "CoLA" / "train.tsv", glue_task("cola"))
    assert cola["sentence"][0].startswith("Our friends won't buy this analysis")
    mrpc = read_glue_tsv(SHARED_GLUE / "MRPC" / "dev.tsv", glue_task("MRPC"))
    assert mrpc["sentence1"][0].startswith("He said the foodservice pie business")
    # RTE: sentences starting with a bare quote are kept whole, not swallowed by CSV quoting.
    rte = read_glue_tsv(SHARED_GLUE / "RTE" / "train.tsv", glue_task("rte"))
    assert any(s.startswith('"') for s in rte["sentence1"] + rte["sentence2"])


def test_every_glue_task_has_a_consistent_spec():
    for name, task in GLUE_TASKS.items():
        spec = task.task_spec()
        assert spec.name == name
        assert len(spec.eval_splits) == len(task.eval_splits)
        assert set(task.tsv_files) == {"train", *task.eval_splits}
    assert glue_task("mnli").task_spec().main_metric == "val/matched/accuracy"
    assert glue_task("STS-B").task_spec().kind == "regression"


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="unknown GLUE task 'sst3'"):
        glue_task("sst3")


def test_malformed_tsv_row_names_file_and_line(tmp_path):
    folder = tmp_path / "RTE"
    folder.mkdir()
    (folder / "dev.tsv").write_text('index\tsentence1\tsentence2\tlabel\n0\t"A quote\tB\tentailment\n1\tA\tB\n')
    with pytest.raises(DataFormatError, match=r"dev.tsv, line 3: expected 4 tab-separated fields, found 3"):
        read_glue_tsv(folder / "dev.tsv", glue_task("rte"))
    rows = read_glue_tsv(folder / "dev.tsv", glue_task("rte"), skip_malformed_rows=True)
    assert rows["sentence1"] == ['"A quote'] and rows["_skipped"] == [1]


def test_unknown_label_and_missing_header_column(tmp_path):
    (tmp_path / "bad_label.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tA\tB\tmaybe\n")
    with pytest.raises(DataFormatError, match=r"line 2: label 'maybe' is not one of \['entailment'"):
        read_glue_tsv(tmp_path / "bad_label.tsv", glue_task("rte"))
    (tmp_path / "bad_header.tsv").write_text("text\tlabel\nfoo\t1\n")
    with pytest.raises(DataFormatError, match=r"header has no column\(s\) \['sentence'\]"):
        read_glue_tsv(tmp_path / "bad_header.tsv", glue_task("sst2"))


def test_labelled_csv_and_json_files(tmp_path):
    (tmp_path / "train.csv").write_text('review,stars\n"great, really",pos\nawful,neg\n')
    (tmp_path / "dev.json").write_text("\n".join(json.dumps({"review": r, "stars": s}) for r, s in [("ok", 1)]))
    data = load_labelled_files({"train": str(tmp_path / "train.csv")}, ["review"], "stars", ["neg", "pos"])
    assert data["train"]["review"] == ["great, really", "awful"] and data["train"]["label"] == [1, 0]
    data = load_labelled_files({"validation": str(tmp_path / "dev.json")}, ["review"], "stars", ["neg", "pos"])
    assert data["validation"]["label"] == [1]
    with pytest.raises(DataFormatError, match=r"missing column\(s\) \['text'\]; the file has \['review', 'stars'\]"):
        load_labelled_files({"train": str(tmp_path / "train.csv")}, ["text"], "stars", ["neg", "pos"])


@pytest.fixture
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), "ForSequenceClassification")


def test_glue_data_module_tokenizes_caches_and_pads_dynamically(tmp_path, tiny_model_dir):
    root = write_sst2(tmp_path / "glue", n_train=20, n_dev=7)
    kwargs = {"task": "sst2", "data_dir": str(root), "tokenizer": str(tiny_model_dir), "batch_size": 4}
    module = GlueDataModule(**kwargs, cache_dir=str(tmp_path / "cache"))
    module.prepare_data()
    cached = list((tmp_path / "cache" / "tokenized").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("sst2-")
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())  # padded to the longest row
    assert set(batch) >= {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert sum(len(b["labels"]) for b in module.val_dataloader()) == 7
    # Same sources and settings → same cache entry; no cache → same data in memory.
    again = GlueDataModule(**kwargs, cache_dir=str(tmp_path / "cache"))
    assert again._cache_path() == cached[0]
    in_memory = GlueDataModule(**kwargs, cache_dir=None)
    in_memory.setup("fit")
    assert in_memory.datasets["validation"]["input_ids"] == module.datasets["validation"]["input_ids"]
    # Changing a processing option changes the cache key.
    assert GlueDataModule(**kwargs, cache_dir=str(tmp_path / "cache"), max_length=16)._cache_path() != cached[0]


def test_mnli_layout_gives_two_eval_loaders(tmp_path, tiny_model_dir):
    folder = tmp_path / "MNLI"
    folder.mkdir()
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label"
    for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        rows = [f"{i}\t1\t1\tg\ta cat\ta dog\tneutral\t{lab}" for i, lab in enumerate(["entailment", "contradiction"])]
        (folder / name).write_text("\n".join([header, *rows]) + "\n")
    module = GlueDataModule("mnli", data_dir=str(tmp_path), tokenizer=str(tiny_model_dir), cache_dir=None)
    assert module.task_spec.eval_splits == ["matched", "mismatched"]
    module.setup("validate")
    loaders = module.val_dataloader()
    assert len(loaders) == 2 and next(iter(loaders[1]))["labels"].tolist() == [0, 2]


def test_custom_files_module_and_bad_input(tmp_path, tiny_model_dir):
    for name in ("train.csv", "dev.csv"):
        (tmp_path / name).write_text("a,b,score\nx y,y z,1.5\nq,r,4.0\n")
    files = {"train_file": str(tmp_path / "train.csv"), "validation_file": str(tmp_path / "dev.csv")}
    module = TextClassificationDataModule(
        **files, text_columns=["a", "b"], label_column="score", tokenizer=str(tiny_model_dir), cache_dir=None
    )
    assert module.task_spec.kind == "regression" and module.task_spec.metrics == ["pearson", "spearman"]
    module.setup("fit")
    assert module.datasets["train"]["labels"] == [1.5, 4.0]
    with pytest.raises(FileNotFoundError, match="train file not found"):
        TextClassificationDataModule(str(tmp_path / "nope.csv"), files["validation_file"], ["a"], tokenizer="x")
    with pytest.raises(ValueError, match="one or two columns"):
        TextClassificationDataModule(**files, text_columns=["a", "b", "c"], tokenizer=str(tiny_model_dir))
