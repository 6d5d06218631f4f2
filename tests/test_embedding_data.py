"""Sentence-embedding data: sentence sources, STS pairs, retrieval sets, and EmbeddingDataModule's batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kp_lightning.data.glue_files import DataFormatError
from kp_lightning.data.retrieval import load_retrieval_set, pairs_retrieval_set, qnli_retrieval_set
from kp_lightning.data.sentences import is_wikitext_heading, load_sentences, sample_sentences
from kp_lightning.data.sts import read_sts_pairs
from kp_lightning.datamodules import EmbeddingDataModule
from kp_lightning.errors import ConfigError, MissingFileError
from kp_lightning.pruning.sampling import draw_sample_batches
from tests.text_fixtures import tiny_tokenizer, write_sst2, write_stsb

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not (SHARED / "glue" / "QNLI" / "dev.tsv").is_file(), reason=f"shared GLUE data not found under {SHARED}"
)
STS_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
STS_ROWS = [
    ("a cat sat.", "the cat sat down.", 4.5),
    ('"odd quote start', "a dog ran.", 0.25),
    ("one two", "three", 2.0),
]
# QNLI: qa has two entailing sentences, qb one, qc none (only sd, which stays in the corpus); sb appears twice.
QNLI_ROWS = [
    ("qa what?", "sa one.", "entailment"),
    ("qb who?", "sb two.", "entailment"),
    ("qa what?", "sb two.", "entailment"),
    ("qc why?", "sd four.", "not_entailment"),
    ("qb who?", "sc three.", "not_entailment"),
]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_sts(path: Path, rows=STS_ROWS) -> Path:
    lines = [STS_HEADER] + [f"{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{s}" for i, (a, b, s) in enumerate(rows)]
    return write_lines(path, lines)


def write_qnli(path: Path, rows=QNLI_ROWS) -> Path:
    return write_lines(
        path, ["index\tquestion\tsentence\tlabel"] + [f"{i}\t{q}\t{s}\t{y}" for i, (q, s, y) in enumerate(rows)]
    )


# ---- sentences -----------------------------------------------------------------------------------------------
def test_sentences_are_stripped_filtered_and_deduplicated_in_first_occurrence_order(tmp_path):
    one = write_lines(tmp_path / "one.txt", ["  beta sentence ", "", "alpha sentence", "tiny", "beta sentence"])
    two = write_lines(tmp_path / "two.txt", ["gamma sentence", "alpha sentence", "   "])
    assert load_sentences([str(one), str(two)], min_chars=5) == ["beta sentence", "alpha sentence", "gamma sentence"]
    assert load_sentences([str(one)], min_chars=1) == ["beta sentence", "alpha sentence", "tiny"]


def test_seeded_sampling_is_reproducible_and_keeps_order():
    pool = [f"sentence {i}" for i in range(50)]
    first, again, other = (sample_sentences(pool, 10, seed) for seed in (3, 3, 4))
    assert first == again and first != other and len(first) == 10 == len(set(first))
    assert first == sorted(first, key=pool.index)  # original order kept
    assert sample_sentences(pool, None, 0) == pool == sample_sentences(pool, 99, 0)


def test_wikitext_headings_and_blank_lines_are_skipped(tmp_path):
    lines = [
        " ",
        " = Homarus gammarus = ",
        " ",
        " Homarus gammarus is a lobster . ",
        " = = Description = = ",
        " ",
        " The claws are large . ",
        " = = = Life = = = ",
    ]
    tokens = write_lines(tmp_path / "wiki.valid.tokens", lines)
    expected = ["Homarus gammarus is a lobster .", "The claws are large ."]
    assert load_sentences([str(tokens)], min_chars=1) == expected
    as_txt = write_lines(tmp_path / "wiki.txt", lines)
    assert load_sentences([f"wikitext:{as_txt}"], min_chars=1) == expected
    assert "= Homarus gammarus =" in load_sentences([str(as_txt)], min_chars=1)  # a plain .txt keeps every line
    assert is_wikitext_heading("= A =") and not is_wikitext_heading("a = b =")


def test_glue_sources_read_every_text_column_row_by_row(tmp_path):
    glue = write_stsb(write_sst2(tmp_path, n_train=6, n_dev=2), n_train=3, n_dev=2)
    stsb = (tmp_path / "STS-B" / "train.tsv").read_text().splitlines()[1:]
    pairs = [line.split("\t")[7:9] for line in stsb]
    got = load_sentences(["glue:STS-B"], glue, min_chars=1)
    assert got == list(dict.fromkeys(s for pair in pairs for s in pair))
    dev = load_sentences(["glue:sst2:validation"], glue, min_chars=1)
    assert dev == list(
        dict.fromkeys(line.split("\t")[0] for line in (tmp_path / "SST-2/dev.tsv").read_text().splitlines()[1:])
    )
    with pytest.raises(MissingFileError, match="glue:RTE") as err:
        load_sentences(["glue:RTE"], glue)
    assert "glue_dir" in err.value.fix
    with pytest.raises(ConfigError, match="no split 'test'"):
        load_sentences(["glue:SST-2:test"], glue)


def test_table_sources_use_text_columns_and_name_the_columns_when_one_is_missing(tmp_path):
    csv_file = write_lines(tmp_path / "s.csv", ["title,body", '"a title, with comma",first body', "t2,second body"])
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text(json.dumps({"text": "from json lines", "n": 1}) + "\n" + json.dumps({"text": None}) + "\n")
    tsv = write_lines(tmp_path / "s.tsv", ["text\tother", '"bare quote start\tx'])
    got = load_sentences([str(csv_file)], text_columns=["title", "body"], min_chars=1)
    assert got == ["a title, with comma", "first body", "t2", "second body"]
    assert load_sentences([str(jsonl), str(tsv)], min_chars=1) == ["from json lines", '"bare quote start']
    with pytest.raises(DataFormatError, match=r"no column\(s\) \['text'\]; the file has \['title', 'body'\]") as err:
        load_sentences([str(csv_file)])
    assert "text_columns" in err.value.fix


def test_empty_missing_and_unknown_sources_are_clear_errors(tmp_path):
    empty = write_lines(tmp_path / "empty.txt", [""])
    with pytest.raises(DataFormatError, match="empty.txt.*has no sentence"):
        load_sentences([str(empty)])
    short = write_lines(tmp_path / "short.txt", ["ab", "cd"])
    with pytest.raises(DataFormatError, match="2 text\\(s\\) read, none .* min_chars=10"):
        load_sentences([str(short)])
    with pytest.raises(MissingFileError, match="nope.txt"):
        load_sentences([str(tmp_path / "nope.txt")])
    with pytest.raises(ConfigError, match="unknown sentence source 'hub:wiki'"):
        load_sentences(["hub:wiki"])
    with pytest.raises(ConfigError, match="no sentence source"):
        load_sentences([])


# ---- STS -----------------------------------------------------------------------------------------------------
def test_sts_pairs_read_glue_layout_and_named_columns(tmp_path):
    pairs = read_sts_pairs(write_sts(tmp_path / "dev.tsv"))
    assert pairs.first == [a for a, _, _ in STS_ROWS] and pairs.second == [b for _, b, _ in STS_ROWS]
    assert pairs.scores == [4.5, 0.25, 2.0] and len(pairs) == 3
    custom = write_lines(tmp_path / "sts.csv", ["left,right,gold", '"x, y",z,1'])
    pairs = read_sts_pairs(custom, ["left", "right", "gold"])
    assert (pairs.first, pairs.second, pairs.scores) == (["x, y"], ["z"], [1.0])


def test_sts_errors_name_the_columns_and_the_bad_row(tmp_path):
    no_score = write_lines(tmp_path / "a.tsv", ["sentence1\tsentence2\tlabel", "a\tb\t1"])
    with pytest.raises(
        DataFormatError,
        match=r"no column\(s\) \['score'\]; the file has \['sentence1', "
        r"'sentence2', 'label'\]",
    ) as err:
        read_sts_pairs(no_score)
    assert "sts_columns" in err.value.fix
    bad = write_sts(tmp_path / "b.tsv", [("a", "b", 1.0), ("c", "d", "high")])
    with pytest.raises(DataFormatError, match="b.tsv, row 2: score 'high' is not a number"):
        read_sts_pairs(bad)
    ragged = write_lines(tmp_path / "c.tsv", ["sentence1\tsentence2\tscore", "a\tb\t1\textra"])
    with pytest.raises(DataFormatError, match="c.tsv, line 2: expected 3 fields"):
        read_sts_pairs(ragged)


# ---- retrieval -----------------------------------------------------------------------------------------------
def test_qnli_retrieval_set(tmp_path):
    built = qnli_retrieval_set(write_qnli(tmp_path / "dev.tsv"))
    assert built.queries == ["qa what?", "qb who?"]
    assert built.corpus == ["sa one.", "sb two.", "sd four.", "sc three."]
    assert built.relevant == {0: {0, 1}, 1: {1}} and built.num_pairs == 3
    one = qnli_retrieval_set(tmp_path / "dev.tsv", max_queries=1, seed=0)
    assert one.queries == qnli_retrieval_set(tmp_path / "dev.tsv", max_queries=1, seed=0).queries
    assert len(one.queries) == 1 and one.corpus == built.corpus
    assert one.relevant[0] == built.relevant[built.queries.index(one.queries[0])]


def test_generic_retrieval_file(tmp_path):
    table = write_lines(
        tmp_path / "r.tsv",
        ["query\tdocument\trelevant", "qa\tda\t1", "qa\tdb\t0", "qb\tdc\t2.5", "qb\tda\t0", "qa\tdc\t1"],
    )
    built = load_retrieval_set(str(table))
    assert built.queries == ["qa", "qb"] and built.corpus == ["da", "db", "dc"]
    assert built.relevant == {0: {0, 2}, 1: {2}}
    renamed = write_lines(tmp_path / "r.csv", ["q,d,rel", "x,y,1"])
    assert pairs_retrieval_set(renamed, ["q", "d", "rel"]).relevant == {0: {0}}


def test_retrieval_errors(tmp_path):
    lonely = write_lines(tmp_path / "r.tsv", ["query\tdocument\trelevant", "qa\tda\t1", "qb\tda\t0", "qc\tdb\t0"])
    with pytest.raises(DataFormatError, match="2 queries have no relevant document, the first is 'qb'"):
        pairs_retrieval_set(lonely)
    bad = write_lines(tmp_path / "b.tsv", ["query\tdocument\trelevant", "qa\tda\t1", "qa\tdb\tyes"])
    with pytest.raises(DataFormatError, match="b.tsv, row 2: relevance 'yes'"):
        pairs_retrieval_set(bad)
    with pytest.raises(DataFormatError, match=r"no column\(s\) \['relevant'\]"):
        pairs_retrieval_set(write_lines(tmp_path / "c.tsv", ["query\tdocument", "a\tb"]))
    with pytest.raises(ConfigError, match="unknown retrieval source"):
        load_retrieval_set("corpus.xml")


# ---- data module ---------------------------------------------------------------------------------------------
@pytest.fixture
def embedding_files(tmp_path):
    tokenizer = tmp_path / "tokenizer"
    tiny_tokenizer().save_pretrained(tokenizer)
    sentences = write_lines(
        tmp_path / "sentences.txt",
        ["the first sentence", "a second one here", "the first sentence", "word " * 40, "more text to embed"],
    )
    return {
        "tokenizer": str(tokenizer),
        "sentences": [str(sentences)],
        "sts_file": str(write_sts(tmp_path / "sts.tsv")),
        "retrieval": f"qnli:{write_qnli(tmp_path / 'qnli.tsv')}",
        "cache_dir": None,
        "glue_dir": None,
    }


def decode(tokenizer, ids: torch.Tensor) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "")


def test_data_module_splits_spec_and_train_batches(embedding_files):
    data = EmbeddingDataModule(**embedding_files, max_length=16, batch_size=4)
    spec = data.task_spec
    assert (spec.kind, spec.eval_splits) == ("embedding", ["sts", "retrieval"])
    assert spec.metrics == ["spearman", "pearson", "ndcg10", "mrr10", "recall1", "recall10"]
    assert data._eval_split_keys() == ["validation_sts", "validation_retrieval"]
    data.setup()
    assert list(data.datasets) == ["train", "validation_sts", "validation_retrieval"]
    assert data.datasets["train"].column_names == ["input_ids", "token_type_ids", "attention_mask"]
    assert len(data.datasets["train"]) == 4  # the duplicate dropped
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"} and batch["input_ids"].shape == (4, 16)
    draws = draw_sample_batches(data.datasets["train"], data.train_collator(), num_tokens=1000, batch_size=2)
    assert sum(len(b["input_ids"]) for b in draws) == 4  # K-prune's sample draw works on the train split


def test_sts_and_retrieval_batches_follow_the_contract(embedding_files):
    data = EmbeddingDataModule(**embedding_files, batch_size=4, eval_batch_size=2)
    sts_loader, retrieval_loader = data.val_dataloader()
    tokenizer = data.tokenizer
    sts = next(iter(sts_loader))
    assert set(sts) == {"input_ids", "attention_mask", "token_type_ids", "sts_scores"}
    assert sts["input_ids"].shape[0] == sts["attention_mask"].shape[0] == sts["token_type_ids"].shape[0] == 4
    assert [decode(tokenizer, row) for row in sts["input_ids"]] == [
        s.replace(" ", "") for s in (STS_ROWS[0][0], STS_ROWS[1][0], STS_ROWS[0][1], STS_ROWS[1][1])
    ]
    assert sts["sts_scores"].dtype == torch.float32 and sts["sts_scores"].tolist() == [4.5, 0.25]
    assert sts["attention_mask"].sum(1).tolist() == [
        len(tokenizer(s)["input_ids"]) for s in (STS_ROWS[0][0], STS_ROWS[1][0], STS_ROWS[0][1], STS_ROWS[1][1])
    ]
    rows = [
        row
        for batch in retrieval_loader
        for row in zip(
            *(batch[k] for k in ("retrieval_role", "retrieval_id", "relevant_ids", "input_ids")), strict=True
        )
    ]
    assert [(int(r), int(i)) for r, i, _, _ in rows] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert [decode(tokenizer, ids) for *_, ids in rows] == [
        "qawhat?",
        "qbwho?",
        "saone.",
        "sbtwo.",
        "sdfour.",
        "scthree.",
    ]
    first = next(iter(retrieval_loader))
    assert set(first) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "retrieval_role",
        "retrieval_id",
        "relevant_ids",
    }
    assert first["relevant_ids"].tolist() == [[0, 1], [1, -1]] and first["retrieval_id"].dtype == torch.long
    last = list(retrieval_loader)[-1]
    assert last["relevant_ids"].tolist() == [[-1], [-1]]  # documents: width 1, all padding
    assert data.test_dataloader()[0].collate_fn.__class__.__name__ == "StsCollator"


def test_one_evaluation_split_and_cache_round_trip(embedding_files, tmp_path):
    args = {**embedding_files, "sts_file": None, "cache_dir": str(tmp_path / "cache")}
    data = EmbeddingDataModule(**args, max_queries=1)
    assert data.task_spec.eval_splits == ["retrieval"] and data.task_spec.main_metric == "val/ndcg10"
    assert data._eval_split_keys() == ["validation_retrieval"]
    data.setup()  # tokenized, saved to the cache and loaded back
    batch = next(iter(data.val_dataloader()))
    assert batch["retrieval_role"].tolist()[:2] == [0, 1] and batch["relevant_ids"].shape[1] >= 1
    cached = data._cache_path()
    assert cached.is_dir() and EmbeddingDataModule(**args, max_queries=1)._cache_path() == cached
    assert EmbeddingDataModule(**args, max_queries=2)._cache_path() != cached
    Path(embedding_files["sentences"][0]).write_text("changed sentence here\n")
    assert EmbeddingDataModule(**args, max_queries=1)._cache_path() != cached


def test_data_module_errors_come_before_any_work(embedding_files, tmp_path):
    with pytest.raises(ConfigError, match="needs sts_file or retrieval"):
        EmbeddingDataModule(**{**embedding_files, "sts_file": None, "retrieval": None})
    with pytest.raises(MissingFileError, match="sts_file not found") as err:
        EmbeddingDataModule(**{**embedding_files, "sts_file": str(tmp_path / "none.tsv")})
    assert "sts_file" in err.value.fix
    with pytest.raises(MissingFileError, match="retrieval file not found"):
        EmbeddingDataModule(**{**embedding_files, "retrieval": f"qnli:{tmp_path / 'none.tsv'}"})
    with pytest.raises(MissingFileError, match="glue:SST-2") as err:
        EmbeddingDataModule(**{**embedding_files, "sentences": ["glue:SST-2"], "glue_dir": str(tmp_path)})
    assert "glue_dir" in err.value.fix
    with pytest.raises(ConfigError, match="sts_columns must name 3 columns"):
        EmbeddingDataModule(**embedding_files, sts_columns=["a", "b"])


# ---- the shared data -----------------------------------------------------------------------------------------
@needs_shared
def test_real_stsb_dev_qnli_retrieval_and_default_sentences():
    glue = SHARED / "glue"
    pairs = read_sts_pairs(glue / "STS-B" / "dev.tsv")
    assert len(pairs) == 1500 and pairs.first[0] == "A man with a hard hat is dancing." and pairs.scores[0] == 5.0
    assert min(pairs.scores) == 0.0 and max(pairs.scores) == 5.0
    qnli = load_retrieval_set(f"qnli:{glue / 'QNLI' / 'dev.tsv'}")
    assert (len(qnli.queries), len(qnli.corpus), qnli.num_pairs) == (2702, 3911, 2702)
    subset = load_retrieval_set(f"qnli:{glue / 'QNLI' / 'dev.tsv'}", max_queries=500)
    assert len(subset.queries) == 500 and len(subset.corpus) == 3911
    sentences = load_sentences(["glue:SST-2", "glue:MRPC", "glue:STS-B", "glue:RTE", "glue:CoLA"], glue)
    assert len(sentences) == 92755 == len(set(sentences))
