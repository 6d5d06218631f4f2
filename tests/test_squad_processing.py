"""SQuAD reading, splitting, windowing, collating and answer decoding (offline, tiny letter-spelling tokenizer)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import datasets
import pytest
import torch
import transformers
from tokenizers import pre_tokenizers
from torchmetrics.text import SQuAD

from kp_lightning.data.squad import (
    SQUAD_FEATURES,
    SquadEvalCollator,
    SquadFormatError,
    SquadTrainCollator,
    best_answer,
    decode_eval_batch,
    load_squad,
    prepare_eval_windows,
    prepare_train_features,
    read_squad_file,
    split_by_article,
    squad_metric_inputs,
)
from kp_lightning.data.squad_loading import _from_hub_rows
from tests.text_fixtures import tiny_tokenizer

DEV_SET = Path(__file__).resolve().parents[2] / "shared/data/squad/dev-v1.1.json.zip"
MAX_LENGTH, DOC_STRIDE = 64, 16

LONG_CONTEXT = (
    "the old lighthouse stood on a rocky cape far from any town and every night its keeper climbed the narrow "
    "stairs to light the great lamp while ships passed safely through the dark strait below until one winter "
    "storm broke the glass and the keeper named tobias mended it with copper wire"
)
ARTICLES = [
    (
        "Foxes",
        "the quick brown fox jumps over the lazy dog",
        [("q1", "what jumps over the dog?", ["brown fox", "quick brown fox"])],
    ),
    (
        "Paris",
        "paris is the capital of france and a lovely city",
        [("q2", "what is the capital of france?", ["paris"]), ("q3", "where is paris?", ["france", "of france"])],
    ),
    ("Lighthouse", LONG_CONTEXT, [("q4", "who mended the lamp?", ["tobias"]), ("q5", "what cape?", ["rocky cape"])]),
    ("Rivers", "the river flows north into a cold sea", [("q6", "where does the river flow?", ["north"])]),
]


def squad_json(articles=ARTICLES, impossible: dict[str, str] | None = None) -> dict:
    """An official-layout SQuAD dict; `impossible` maps extra v2.0 question ids (added to article 0) to questions."""
    data = []
    for title, context, questions in articles:
        qas = [
            {"id": qid, "question": q, "answers": [{"text": a, "answer_start": context.index(a)} for a in answers]}
            for qid, q, answers in questions
        ]
        data.append({"title": title, "paragraphs": [{"context": context, "qas": qas}]})
    for qid, question in (impossible or {}).items():
        plausible = [{"text": "lazy dog", "answer_start": ARTICLES[0][1].index("lazy dog")}]
        qa = {"id": qid, "question": question, "answers": [], "plausible_answers": plausible, "is_impossible": True}
        data[0]["paragraphs"][0]["qas"].append(qa)
    return {"version": "v2.0" if impossible else "1.1", "data": data}


def write_json(path: Path, content) -> Path:
    path.write_text(json.dumps(content))
    return path


def write_zip(path: Path, members: dict[str, object]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, json.dumps(content))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def v1_file(tmp_path):
    return write_json(tmp_path / "train-v1.1.json", squad_json())


@pytest.fixture
def v2_file(tmp_path):
    return write_json(tmp_path / "train-v2.0.json", squad_json(impossible={"q7": "what barks at the fox?"}))


def roberta_style_tokenizer():
    """A byte-level BPE (RoBERTa) fast tokenizer with no merges: one token per byte, no token_type_ids."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *alphabet])}
    return transformers.RobertaTokenizer(vocab=vocab, merges=[])


def squash(text: str) -> str:
    return text.lower().replace(" ", "")


# ---------------------------------------------------------------------------------------------------- reading


def test_read_json_v1(v1_file):
    ds = read_squad_file(v1_file)
    assert ds.column_names == ["id", "title", "context", "question", "answers"]
    assert ds.features == SQUAD_FEATURES
    assert ds["id"] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    row = ds[2]
    assert row["title"] == "Paris" and row["question"] == "where is paris?"
    assert row["answers"] == {"text": ["france", "of france"], "answer_start": [24, 21]}


def test_read_zip_matches_json(tmp_path, v1_file):
    archive = write_zip(tmp_path / "train.json.zip", {"inner/train-v1.1.json": squad_json()})
    assert read_squad_file(str(archive)).to_list() == read_squad_file(v1_file).to_list()


def test_read_v2_impossible_questions(v2_file):
    ds = read_squad_file(v2_file)
    assert len(ds) == 7
    by_id = {row["id"]: row for row in ds}
    assert by_id["q7"]["answers"] == {"text": [], "answer_start": []}
    assert by_id["q7"]["title"] == "Foxes"
    assert by_id["q1"]["answers"]["text"] == ["brown fox", "quick brown fox"]


def _without(key: str, where: str):
    content = squad_json()
    target = content["data"][1] if where == "article" else content["data"][1]["paragraphs"][0]["qas"][0]
    del target[key]
    return content


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"version": "1.1"}, "no 'data' key"),
        ({"data": {"title": "x"}}, "'data' of the top level .* must be a list"),
        (_without("paragraphs", "article"), r"article 1 \('Paris'\) has no 'paragraphs' key"),
        (_without("title", "article"), "article 1 has no 'title' key"),
        (_without("question", "qa"), r"question 'q2' in paragraph 0 of article 1 \('Paris'\) has no 'question'"),
        (_without("answers", "qa"), "question 'q2' .* has no 'answers' key"),
    ],
)
def test_read_missing_keys(tmp_path, content, match):
    with pytest.raises(SquadFormatError, match=match):
        read_squad_file(write_json(tmp_path / "bad.json", content))


def test_read_wrong_answer_start(tmp_path):
    content = squad_json()
    content["data"][2]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] += 3
    with pytest.raises(SquadFormatError, match="answer_start=.* of question 'q5' .*does not point at its answer"):
        read_squad_file(write_json(tmp_path / "bad.json", content))


def test_read_missing_file(tmp_path):
    missing = tmp_path / "nowhere" / "dev-v1.1.json"
    with pytest.raises(SquadFormatError, match=f"SQuAD file not found: '{missing}'"):
        read_squad_file(missing)
    with pytest.raises(SquadFormatError, match="not found"):
        load_squad(str(missing), split="validation")


def test_read_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(SquadFormatError, match="broken.json' is not valid JSON"):
        read_squad_file(path)


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ({"readme.txt": "hi"}, r"exactly one \.json member, found 0: \[\] \(all members: \['readme.txt'\]\)"),
        ({"a.json": {}, "b/c.json": {}}, r"found 2: \['a.json', 'b/c.json'\]"),
    ],
)
def test_read_zip_member_count(tmp_path, members, match):
    with pytest.raises(SquadFormatError, match=match):
        read_squad_file(write_zip(tmp_path / "data.zip", members))


def test_load_squad_local_file(v1_file, v2_file):
    assert load_squad(str(v1_file), split="train").to_list() == read_squad_file(v1_file).to_list()
    assert len(load_squad(str(v2_file), split="train", version_2=True)) == 7
    with pytest.warns(UserWarning, match="1 of 7 questions .* have no answer .*set version_2=True"):
        load_squad(str(v2_file), split="train")


def test_hub_rows_are_converted_to_the_file_layout(v2_file):
    # The layout of `rajpurkar/squad(_v2)` (legacy `Sequence` answers, arbitrary column order); the hub itself is
    # unreachable offline, so only the conversion that `load_squad` applies to hub rows is checked.
    rows = read_squad_file(v2_file).to_list()
    hub_features = datasets.Features(
        {
            "answers": datasets.Sequence({"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}),
            "question": datasets.Value("string"),
            "context": datasets.Value("string"),
            "title": datasets.Value("string"),
            "id": datasets.Value("string"),
            "extra": datasets.Value("int64"),
        }
    )
    hub = datasets.Dataset.from_list([{**row, "extra": 1} for row in rows], features=hub_features)
    converted = _from_hub_rows(hub, "someone/squad_like")
    assert converted.features == SQUAD_FEATURES and converted.to_list() == rows
    with pytest.raises(SquadFormatError, match=r"'someone/squad_like' lacks the SQuAD columns \['title'\]"):
        _from_hub_rows(hub.remove_columns("title"), "someone/squad_like")


@pytest.mark.skipif(not DEV_SET.is_file(), reason=f"official SQuAD v1.1 dev set not found at {DEV_SET}")
def test_read_official_dev_set():
    ds = read_squad_file(DEV_SET)
    assert len(ds) == 10_570
    assert len(set(ds["title"])) == 48
    assert ds[0]["id"] == "56be4db0acb8001400a502ec"
    assert ds[0]["answers"]["text"][0] == "Denver Broncos"


# ---------------------------------------------------------------------------------------------------- splitting


def _titled(n_articles: int) -> datasets.Dataset:
    titles = [f"article{i}" for i in range(n_articles) for _ in range(i + 1)]
    return datasets.Dataset.from_dict({"title": titles, "row": list(range(len(titles)))})


def test_split_by_article_disjoint_and_deterministic():
    ds = _titled(10)
    train, evaluation = split_by_article(ds, eval_fraction=0.3, seed=7)
    assert len(set(evaluation["title"])) == 3 and len(set(train["title"])) == 7
    assert not set(train["title"]) & set(evaluation["title"])
    assert sorted(train["row"][:] + evaluation["row"][:]) == list(range(len(ds)))
    assert train["row"][:] == sorted(train["row"])  # original order kept
    again_train, again_eval = split_by_article(ds, eval_fraction=0.3, seed=7)
    assert again_train["row"][:] == train["row"][:] and again_eval["row"][:] == evaluation["row"][:]
    assert len({tuple(split_by_article(ds, 0.3, seed=s)[1]["title"]) for s in range(5)}) > 1


@pytest.mark.parametrize(("fraction", "n_eval"), [(0.01, 1), (0.5, 2), (0.99, 3)])
def test_split_by_article_bounds(fraction, n_eval):
    assert len(set(split_by_article(_titled(4), fraction)[1]["title"])) == n_eval


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_split_by_article_bad_fraction(fraction):
    with pytest.raises(ValueError, match="eval_fraction must lie strictly between 0 and 1"):
        split_by_article(_titled(4), fraction)


def test_split_by_article_needs_two_articles():
    with pytest.raises(ValueError, match="at least 2 articles .* has 1"):
        split_by_article(_titled(1), 0.5)


# ---------------------------------------------------------------------------------------------------- train features


def _train_features(ds, tokenizer):
    return ds.map(
        prepare_train_features,
        batched=True,
        batch_size=3,
        remove_columns=ds.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": MAX_LENGTH, "doc_stride": DOC_STRIDE},
    )


def test_train_features_labels(v2_file, tokenizer):
    ds = read_squad_file(v2_file)
    features = _train_features(ds, tokenizer)
    assert features.column_names == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "start_positions",
        "end_positions",
    ]
    row, found, outside = 0, set(), set()
    for example in ds:  # windows come out in example order, the same as prepare_eval_windows makes them
        windows = prepare_eval_windows(example, tokenizer, MAX_LENGTH, DOC_STRIDE)
        for input_ids, offsets in zip(windows["input_ids"], windows["offset_mapping"]):
            feature = features[row]
            row += 1
            assert feature["input_ids"] == input_ids and len(input_ids) <= MAX_LENGTH
            assert feature["attention_mask"] == [1] * len(input_ids)  # unpadded
            start, end = feature["start_positions"], feature["end_positions"]
            if not example["answers"]["text"]:
                assert (start, end) == (0, 0)
                continue
            answer, answer_start = example["answers"]["text"][0], example["answers"]["answer_start"][0]
            spans = [offset for offset in offsets if offset is not None]
            if spans[0][0] <= answer_start and answer_start + len(answer) <= spans[-1][1]:
                assert 0 < start <= end
                assert offsets[start][0] == answer_start and offsets[end][1] == answer_start + len(answer)
                assert squash(tokenizer.decode(input_ids[start : end + 1])) == squash(answer)
                found.add(example["id"])
            else:
                assert (start, end) == (0, 0)
                outside.add(example["id"])
    assert row == len(features)
    assert found == {"q1", "q2", "q3", "q4", "q5", "q6"}
    assert {"q4", "q5"} <= outside  # the long context has windows without the answer


def test_long_context_windows_overlap_by_stride(tokenizer):
    example = {"question": "who mended the lamp?", "context": LONG_CONTEXT}
    windows = prepare_eval_windows(example, tokenizer, MAX_LENGTH, DOC_STRIDE)
    assert len(windows["input_ids"]) >= 4
    context_ids = [
        [token for token, offset in zip(ids, offsets) if offset is not None]
        for ids, offsets in zip(windows["input_ids"], windows["offset_mapping"])
    ]
    for previous, current in zip(context_ids, context_ids[1:]):
        assert previous[-DOC_STRIDE:] == current[:DOC_STRIDE]
    assert all(len(ids) == MAX_LENGTH for ids in windows["input_ids"][:-1])
    assert len(windows["input_ids"][-1]) < MAX_LENGTH  # not padded


def test_train_features_roberta_style():
    tokenizer = roberta_style_tokenizer()
    context = "the keeper named tobias mended it"
    examples = {
        "question": ["  who mended it?", "who?"],
        "context": [context, context],
        "answers": [{"text": ["tobias"], "answer_start": [17]}, {"text": [], "answer_start": []}],
    }
    features = prepare_train_features(examples, tokenizer, max_length=32, doc_stride=4)
    assert "token_type_ids" not in features
    rows = list(zip(features["input_ids"], features["start_positions"], features["end_positions"]))
    assert len(rows) > 2
    answered = [tokenizer.decode(ids[s : e + 1]).strip() for ids, s, e in rows if s > 0]
    assert "tobias" in answered and set(answered) == {"tobias"}
    windows = prepare_eval_windows({"question": "who?", "context": context}, tokenizer, 32, 4)
    assert "token_type_ids" not in windows
    for ids, offsets in zip(windows["input_ids"], windows["offset_mapping"]):
        assert offsets[0] is None and offsets[-1] is None
        assert all(context[s:e] == tokenizer.decode([i]).strip() for i, o in zip(ids, offsets) if o for s, e in [o])


def test_feature_validation_errors(tokenizer):
    examples = {"question": ["what?"], "context": ["a b c"], "answers": [{"text": ["a"], "answer_start": [0]}]}

    class SlowTokenizer:
        is_fast = False

    with pytest.raises(ValueError, match="offset mappings, which need a fast tokenizer; got SlowTokenizer"):
        prepare_train_features(examples, SlowTokenizer(), 64, 16)
    with pytest.raises(ValueError, match="doc_stride < max_length"):
        prepare_eval_windows({"question": "what?", "context": "a b c"}, tokenizer, 16, 16)
    long_question = {"question": ["why " * 10], "context": ["a b c"], "answers": examples["answers"]}
    with pytest.raises(ValueError, match=r"leaves 15 context tokens .* longest question \(30 tokens\).* doc_stride=16"):
        prepare_train_features(long_question, tokenizer, 48, 16)


# ---------------------------------------------------------------------------------------------------- eval windows


def test_eval_windows_offsets_survive_arrow(v1_file, tokenizer):
    ds = read_squad_file(v1_file)
    windows = ds.map(prepare_eval_windows, fn_kwargs={"tokenizer": tokenizer, "max_length": 64, "doc_stride": 16})
    assert windows.column_names == ds.column_names + ["input_ids", "attention_mask", "token_type_ids", "offset_mapping"]
    row = windows[3]
    assert len(row["input_ids"]) == len(row["offset_mapping"]) > 1
    for ids, offsets in zip(row["input_ids"], row["offset_mapping"]):
        assert len(ids) == len(offsets)
        assert offsets[0] is None and offsets[-1] is None
        for token, offset in zip(ids, offsets):
            if offset is not None:
                assert row["context"][offset[0] : offset[1]] == tokenizer.decode([token]).removeprefix("##")


# ---------------------------------------------------------------------------------------------------- best_answer

CONTEXT = "alpha beta gamma delta epsilon"
#   window 0: [CLS] q [SEP] alpha beta gamma [SEP] [PAD]; window 1: [CLS] q [SEP] gamma delta epsilon [SEP]
OFFSETS = [
    [None, None, None, (0, 5), (6, 10), (11, 16), None],
    [None, None, None, (11, 16), (17, 22), (23, 30), None],
]


def logits(*cells, fill=0.0, shape=(2, 8)):
    values = torch.full(shape, fill)
    for window, position, value in cells:
        values[window, position] = value
    return values


def test_best_answer_across_windows():
    starts = logits((0, 3, 2.0), (1, 4, 5.0), (0, 1, 50.0))  # position 1 is a question token: ignored
    ends = logits((0, 4, 2.0), (1, 5, 4.0), (1, 7, 99.0), (0, 7, 99.0))  # position 7 is padding: ignored
    assert best_answer(CONTEXT, OFFSETS, starts, ends) == "delta epsilon"
    assert best_answer(CONTEXT, OFFSETS, starts, ends, max_answer_length=1) == "delta"  # 5 + 0 beats 0 + 4 and 2 + 0
    # delta (start 5) .. gamma (end 9) would score 14 but ends before it starts; gamma .. gamma scores 9
    assert best_answer(CONTEXT, OFFSETS, starts, logits((1, 3, 9.0))) == "gamma"
    as_pairs = [[list(o) if o else [-1, -1] for o in window] for window in OFFSETS]
    assert best_answer(CONTEXT, as_pairs, starts, ends) == "delta epsilon"
    assert best_answer(CONTEXT, [OFFSETS[1]], starts[1:], ends[1:], n_best=1) == "delta epsilon"


def test_best_answer_null_answer():
    starts = logits((0, 0, 3.0), (1, 0, 5.0), (0, 4, 2.0))
    ends = logits((0, 0, 3.0), (1, 0, 5.0), (0, 5, 2.0))
    # span score 4, null score min(6, 10) = 6
    assert best_answer(CONTEXT, OFFSETS, starts, ends) == "beta gamma"
    assert best_answer(CONTEXT, OFFSETS, starts, ends, allow_impossible=True) == ""
    assert best_answer(CONTEXT, OFFSETS, starts, ends, allow_impossible=True, null_score_diff_threshold=2.5) == (
        "beta gamma"
    )
    no_context = [[None] * 7, [None] * 7]
    assert best_answer(CONTEXT, no_context, starts, ends) == ""


def test_best_answer_shape_errors():
    with pytest.raises(ValueError, match="offset_mapping has 1 windows but the logits have 2"):
        best_answer(CONTEXT, OFFSETS[:1], logits(), logits())
    with pytest.raises(ValueError, match="n_best and max_answer_length must be >= 1"):
        best_answer(CONTEXT, OFFSETS, logits(), logits(), n_best=0)
    with pytest.raises(ValueError, match="Window 0 has 7 tokens but the logits only 5"):
        best_answer(CONTEXT, OFFSETS, logits(shape=(2, 5)), logits(shape=(2, 5)))


# ---------------------------------------------------------------------------------------------------- collators


def test_train_collator(v1_file, tokenizer):
    features = _train_features(read_squad_file(v1_file), tokenizer)
    rows = [features[i] for i in range(len(features))]
    batch = SquadTrainCollator(tokenizer)(rows)
    longest = max(len(row["input_ids"]) for row in rows)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"}
    assert batch["input_ids"].shape == (len(rows), longest) and batch["input_ids"].dtype == torch.long
    shortest = min(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    length = len(rows[shortest]["input_ids"])
    assert batch["input_ids"][shortest, length:].eq(tokenizer.pad_token_id).all()
    assert batch["attention_mask"].sum(1).tolist() == [len(row["input_ids"]) for row in rows]
    assert batch["start_positions"].tolist() == features["start_positions"]
    assert SquadTrainCollator(tokenizer, pad_to_multiple_of=24)(rows[:2])["input_ids"].shape[1] % 24 == 0


def test_eval_collator(v1_file, tokenizer):
    ds = read_squad_file(v1_file)
    items = list(ds.map(prepare_eval_windows, fn_kwargs={"tokenizer": tokenizer, "max_length": 64, "doc_stride": 16}))
    batch = SquadEvalCollator(tokenizer)(items)
    counts = [len(item["input_ids"]) for item in items]
    total = sum(counts)
    assert batch["window_counts"].tolist() == counts and total > len(items)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[key].shape == (total, max(len(w) for item in items for w in item["input_ids"]))
        assert batch[key].dtype == torch.long
    assert [example["id"] for example in batch["examples"]] == ds["id"]
    assert set(batch["examples"][0]) == {"id", "context", "answers", "offset_mapping"}
    with pytest.raises(ValueError, match=r"Eval items lack \['input_ids', 'offset_mapping'\]"):
        SquadEvalCollator(tokenizer)(list(ds))


# ---------------------------------------------------------------------------------------------------- end to end


def oracle_logits(batch, ds_by_id):
    """Logits with 10.0 at the gold start/end tokens (CLS for unanswerable questions) in every window holding them."""
    starts = torch.zeros(batch["input_ids"].shape)
    ends = torch.zeros(batch["input_ids"].shape)
    row = 0
    for example in batch["examples"]:
        answers = ds_by_id[example["id"]]["answers"]
        for offsets in example["offset_mapping"]:
            if not answers["text"]:
                starts[row, 0] = ends[row, 0] = 10.0
            else:
                first = answers["answer_start"][0]
                last = first + len(answers["text"][0])
                i = [t for t, o in enumerate(offsets) if o is not None and o[0] == first]
                j = [t for t, o in enumerate(offsets) if o is not None and o[1] == last]
                if i and j:
                    starts[row, i[0]] = ends[row, j[0]] = 10.0
            row += 1
    return starts, ends


@pytest.mark.parametrize("version_2", [False, True])
def test_oracle_logits_give_perfect_squad_scores(v1_file, v2_file, tokenizer, version_2):
    ds = read_squad_file(v2_file if version_2 else v1_file)
    items = ds.map(prepare_eval_windows, fn_kwargs={"tokenizer": tokenizer, "max_length": 64, "doc_stride": 16})
    collate = SquadEvalCollator(tokenizer)
    metric = SQuAD()
    by_id = {row["id"]: row for row in ds}
    for first in range(0, len(items), 3):
        batch = collate([items[i] for i in range(first, min(first + 3, len(items)))])
        starts, ends = oracle_logits(batch, by_id)
        predictions = decode_eval_batch(batch, starts, ends, allow_impossible=version_2)
        for qid, text in predictions:
            assert text == (by_id[qid]["answers"]["text"] or [""])[0]
        metric.update(*squad_metric_inputs(predictions, batch["examples"]))
    scores = metric.compute()
    assert scores["exact_match"].item() == pytest.approx(100.0) and scores["f1"].item() == pytest.approx(100.0)


def test_squad_metric_inputs_format():
    examples = [
        {"id": "a", "answers": {"text": ["x y"], "answer_start": [3]}},
        {"id": "b", "answers": {"text": [], "answer_start": []}},
    ]
    preds, target = squad_metric_inputs([("a", "x y"), ("b", "")], examples)
    assert preds == [{"prediction_text": "x y", "id": "a"}, {"prediction_text": "", "id": "b"}]
    assert target[1] == {"answers": {"answer_start": [-1], "text": [""]}, "id": "b"}
    with pytest.raises(ValueError, match=r"ids not among the examples: \['c'\]"):
        squad_metric_inputs([("c", "z")], examples)
