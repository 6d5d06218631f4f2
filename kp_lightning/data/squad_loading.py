"""Reading SQuAD v1.1 / v2.0 (official JSON, zipped JSON or hub datasets) into one flat `datasets.Dataset` layout.

Every loader returns the columns `id`, `title`, `context`, `question` (strings) and `answers`
(`{"text": list[str], "answer_start": list[int]}`, both empty for unanswerable v2.0 questions), i.e. the layout of the
hub datasets `rajpurkar/squad` and `rajpurkar/squad_v2`.
"""

from __future__ import annotations

import json
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import datasets

from kp_lightning.errors import ConfigError, KPError

DEFAULT_HUB_NAMES = {False: "rajpurkar/squad", True: "rajpurkar/squad_v2"}
"""Hub dataset used by `load_squad` when `source` is empty, keyed by `version_2`."""

SQUAD_COLUMNS = ("id", "title", "context", "question", "answers")

SQUAD_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {
            "text": datasets.List(datasets.Value("string")),
            "answer_start": datasets.List(datasets.Value("int32")),
        },
    }
)


class SquadFormatError(KPError, ValueError):
    """A SQuAD file is missing, unreadable or does not follow the official SQuAD JSON layout."""


def _load_json(path: Path) -> Any:
    """Parse `path` as JSON, or the single `.json` member of `path` when it is a zip archive."""
    if not path.exists():
        raise SquadFormatError(f"SQuAD file not found: {str(path)!r}. Check the path (relative to {Path.cwd()}).")
    if not path.is_file():
        raise SquadFormatError(f"SQuAD path {str(path)!r} is not a file; point it at a .json or .zip file.")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                members = [n for n in names if n.lower().endswith(".json") and not n.startswith("__MACOSX/")]
                if len(members) != 1:
                    raise SquadFormatError(
                        f"Zip archive {str(path)!r} must hold exactly one .json member, found {len(members)}: "
                        f"{members} (all members: {names}). Repack it with a single SQuAD JSON file."
                    )
                with archive.open(members[0]) as handle:
                    return json.load(handle)
        with path.open("rb") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SquadFormatError(f"{str(path)!r} is not valid JSON: {error}") from error
    except zipfile.BadZipFile as error:
        raise SquadFormatError(f"{str(path)!r} is not a readable zip archive: {error}") from error


def _require(mapping: Any, key: str, where: str, expected: type | tuple[type, ...]) -> Any:
    """Return `mapping[key]`, raising `SquadFormatError` naming `where` if it is absent or of the wrong type."""
    if not isinstance(mapping, dict) or key not in mapping:
        raise SquadFormatError(f"Invalid SQuAD JSON: {where} has no {key!r} key.")
    value = mapping[key]
    if not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise SquadFormatError(f"Invalid SQuAD JSON: {key!r} of {where} must be a {names}, got {type(value).__name__}.")
    return value


def read_squad_file(path: str | Path) -> datasets.Dataset:
    """Read an official SQuAD v1.1 or v2.0 JSON file (or a `.zip` holding exactly one `.json` member).

    Args:
        path: The `.json` or `.zip` file, e.g. `dev-v1.1.json.zip`.

    Returns:
        A dataset with the columns `id`, `title`, `context`, `question` and `answers`
        (`{"text": [...], "answer_start": [...]}`; empty lists for v2.0 `is_impossible` questions).

    Raises:
        SquadFormatError: The file is missing, is not JSON, the zip does not hold exactly one `.json` member, a
            required key is missing, or an `answer_start` does not point at its answer text.
    """
    path = Path(path)
    root = _load_json(path)
    articles = _require(root, "data", f"the top level of {str(path)!r}", list)
    columns: dict[str, list] = {name: [] for name in SQUAD_COLUMNS}
    for article_index, article in enumerate(articles):
        where = f"article {article_index}"
        title = _require(article, "title", where, str)
        where = f"article {article_index} ({title!r})"
        for paragraph_index, paragraph in enumerate(_require(article, "paragraphs", where, list)):
            paragraph_where = f"paragraph {paragraph_index} of {where}"
            context = _require(paragraph, "context", paragraph_where, str)
            for qa_index, qa in enumerate(_require(paragraph, "qas", paragraph_where, list)):
                qa_where = f"question {qa_index} of {paragraph_where}"
                qid = str(_require(qa, "id", qa_where, (str, int)))
                qa_where = f"question {qid!r} in {paragraph_where}"
                question = _require(qa, "question", qa_where, str)
                impossible = bool(qa.get("is_impossible", False))
                raw_answers = [] if impossible else _require(qa, "answers", qa_where, list)
                texts, starts = [], []
                for answer in raw_answers:
                    text = _require(answer, "text", f"an answer of {qa_where}", str)
                    start = _require(answer, "answer_start", f"an answer of {qa_where}", int)
                    if context[start : start + len(text)] != text:
                        raise SquadFormatError(
                            f"Invalid SQuAD JSON: answer_start={start} of question {qid!r} ({where}) does not point "
                            f"at its answer text {text!r}; the context there reads "
                            f"{context[start : start + len(text)]!r}. Fix the answer_start or the text."
                        )
                    texts.append(text)
                    starts.append(start)
                for name, value in zip(SQUAD_COLUMNS, (qid, title, context, question)):
                    columns[name].append(value)
                columns["answers"].append({"text": texts, "answer_start": starts})
    return datasets.Dataset.from_dict(columns, features=SQUAD_FEATURES)


def _from_hub_rows(dataset: datasets.Dataset, name: str) -> datasets.Dataset:
    """Reduce a hub SQuAD-style dataset to `SQUAD_COLUMNS` with `SQUAD_FEATURES`."""
    missing = [column for column in SQUAD_COLUMNS if column not in dataset.column_names]
    if missing:
        raise SquadFormatError(
            f"Hub dataset {name!r} lacks the SQuAD columns {missing} (it has {dataset.column_names}); "
            f"use a SQuAD-style dataset such as {DEFAULT_HUB_NAMES[False]!r} or {DEFAULT_HUB_NAMES[True]!r}."
        )
    dataset = dataset.select_columns(list(SQUAD_COLUMNS))
    if dataset.features != SQUAD_FEATURES:
        dataset = dataset.cast(SQUAD_FEATURES)
    return dataset


def load_squad(source: str, split: str, version_2: bool = False) -> datasets.Dataset:
    """Load SQuAD from a local official JSON/zip file or from a hub dataset.

    Args:
        source: An existing local `.json`/`.zip` file (then `split` is ignored: a file is one split), a hub dataset
            name such as `rajpurkar/squad`, or `""` for the default hub dataset of the chosen version.
        split: Hub split name, e.g. `"train"` or `"validation"`.
        version_2: Whether unanswerable (SQuAD v2.0) questions are expected; only picks the default hub name and
            warns when a v1.1 load turns out to contain unanswerable questions.

    Returns:
        A dataset with the columns of `read_squad_file`.
    """
    name = source or DEFAULT_HUB_NAMES[version_2]
    if Path(name).is_file():
        dataset = read_squad_file(name)
    else:
        if Path(name).suffix.lower() in {".json", ".zip"}:
            raise SquadFormatError(f"SQuAD file not found: {name!r}. Check the path (relative to {Path.cwd()}).")
        dataset = _from_hub_rows(datasets.load_dataset(name, split=split), name)
    if not version_2:
        unanswerable = sum(1 for answers in dataset["answers"][:] if not answers["text"])
        if unanswerable:
            warnings.warn(
                f"{unanswerable} of {len(dataset)} questions in {name!r} have no answer (SQuAD v2.0 data) "
                "but version_2=False; set version_2=True to predict empty answers.",
                stacklevel=2,
            )
    return dataset


def split_by_article(
    dataset: datasets.Dataset, eval_fraction: float, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split a SQuAD dataset into train/eval parts by article (`title`), so that no article is in both.

    Args:
        dataset: A dataset with a `title` column.
        eval_fraction: Fraction of the articles for the eval part, in (0, 1); it gets `round(eval_fraction *
            n_articles)` articles, at least 1 and at most `n_articles - 1`.
        seed: Seed of the (deterministic) article shuffle.

    Returns:
        `(train, eval)`, each keeping the original row order.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must lie strictly between 0 and 1, got {eval_fraction}.")
    titles = dataset["title"][:]
    articles = list(dict.fromkeys(titles))
    if len(articles) < 2:
        raise ConfigError(
            f"split_by_article needs at least 2 articles (distinct titles), the dataset has {len(articles)}; "
            "use a larger dataset or a separate eval file."
        )
    n_eval = min(max(round(eval_fraction * len(articles)), 1), len(articles) - 1)
    eval_articles = set(random.Random(seed).sample(articles, n_eval))
    train_rows = [i for i, title in enumerate(titles) if title not in eval_articles]
    eval_rows = [i for i, title in enumerate(titles) if title in eval_articles]
    return dataset.select(train_rows), dataset.select(eval_rows)
