"""SQuAD windowing, collating, answer decoding and metric inputs (tiny letter-spelling tokenizer)."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.text import SQuAD

from kp_lightning.data.squad import (
    SquadEvalCollator,
    SquadTrainCollator,
    best_answer,
    decode_eval_batch,
    prepare_eval_windows,
    prepare_train_features,
    read_squad_file,
    squad_metric_inputs,
)
from tests.squad_fixtures import (
    DOC_STRIDE,
    LONG_CONTEXT,
    MAX_LENGTH,
    roberta_style_tokenizer,
    squash,
)
from tests.text_fixtures import tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


# ---------------------------------------------------------------------------------------------------- train features


def _train_features(ds, tokenizer):
    return ds.map(
        prepare_train_features,
        batched=True,
        batch_size=3,
        remove_columns=ds.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": MAX_LENGTH, "doc_stride": DOC_STRIDE},
    )


def test_train_features_labels(squad_v2_file, tokenizer):
    ds = read_squad_file(squad_v2_file)
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


def test_eval_windows_offsets_survive_arrow(squad_v1_file, tokenizer):
    ds = read_squad_file(squad_v1_file)
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


def test_train_collator(squad_v1_file, tokenizer):
    features = _train_features(read_squad_file(squad_v1_file), tokenizer)
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


def test_eval_collator(squad_v1_file, tokenizer):
    ds = read_squad_file(squad_v1_file)
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
def test_oracle_logits_give_perfect_squad_scores(squad_v1_file, squad_v2_file, tokenizer, version_2):
    ds = read_squad_file(squad_v2_file if version_2 else squad_v1_file)
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
