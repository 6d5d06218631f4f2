"""SQuAD reading, hub-row conversion and the by-article split."""

from __future__ import annotations

import datasets
import pytest

from kp_lightning.data.squad import (
    SQUAD_FEATURES,
    SquadFormatError,
    load_squad,
    read_squad_file,
    split_by_article,
)
from kp_lightning.data.squad_loading import _from_hub_rows
from tests.squad_fixtures import (
    DEV_SET,
    squad_json,
    write_json,
    write_zip,
)

# ---------------------------------------------------------------------------------------------------- reading


def test_read_json_v1(squad_v1_file):
    ds = read_squad_file(squad_v1_file)
    assert ds.column_names == ["id", "title", "context", "question", "answers"]
    assert ds.features == SQUAD_FEATURES
    assert ds["id"] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    row = ds[2]
    assert row["title"] == "Paris" and row["question"] == "where is paris?"
    assert row["answers"] == {"text": ["france", "of france"], "answer_start": [24, 21]}


def test_read_zip_matches_json(tmp_path, squad_v1_file):
    archive = write_zip(tmp_path / "train.json.zip", {"inner/train-v1.1.json": squad_json()})
    assert read_squad_file(str(archive)).to_list() == read_squad_file(squad_v1_file).to_list()


def test_read_v2_impossible_questions(squad_v2_file):
    ds = read_squad_file(squad_v2_file)
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


def test_load_squad_local_file(squad_v1_file, squad_v2_file):
    assert load_squad(str(squad_v1_file), split="train").to_list() == read_squad_file(squad_v1_file).to_list()
    assert len(load_squad(str(squad_v2_file), split="train", version_2=True)) == 7
    with pytest.warns(UserWarning, match="1 of 7 questions .* have no answer .*set version_2=True"):
        load_squad(str(squad_v2_file), split="train")


def test_hub_rows_are_converted_to_the_file_layout(squad_v2_file):
    # The layout of `rajpurkar/squad(_v2)` (legacy `Sequence` answers, arbitrary column order); the hub itself is
    # unreachable offline, so only the conversion that `load_squad` applies to hub rows is checked.
    rows = read_squad_file(squad_v2_file).to_list()
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
