"""Tokenizing SQuAD into overlapping windows, collating them, and turning start/end logits back into answer text.

Conventions shared by all functions here:

* The question is the first sequence and the context the second (`truncation="only_second"`), so long contexts are
  cut into several windows that overlap by `doc_stride` tokens. Nothing is padded here; the collators pad on the
  right (whatever `tokenizer.padding_side` says) so token indices stay valid.
* The "no answer" token is index 0 (`[CLS]` / `<s>`): train labels point there when the answer is not fully inside a
  window or the question has none, and the SQuAD v2.0 null score is read there.
* Eval offsets: `offset_mapping[w][t]` is the `(start_char, end_char)` of token `t` of window `w` inside the context,
  or `None` for question, special and padding tokens. `None` survives Arrow round trips (`Dataset.map`); after one,
  pairs come back as lists. `best_answer` also accepts `[-1, -1]` (or any negative start) as "not context".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from kp_lightning.errors import ConfigError

SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _check_windowing(tokenizer: Any, questions: Sequence[str], max_length: int, doc_stride: int) -> None:
    """Raise `ValueError` unless `tokenizer` is fast and every question leaves more than `doc_stride` context tokens."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"SQuAD windowing needs offset mappings, which need a fast tokenizer; got {type(tokenizer).__name__}. "
            "Load a fast one, e.g. AutoTokenizer.from_pretrained(name, use_fast=True)."
        )
    if not 0 <= doc_stride < max_length:
        raise ConfigError(f"doc_stride must satisfy 0 <= doc_stride < max_length, got {doc_stride=} and {max_length=}.")
    if not questions:
        return
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    longest = max(len(ids) for ids in tokenizer(list(questions), add_special_tokens=False)["input_ids"])
    room = max_length - specials - longest
    if room <= doc_stride:
        raise ConfigError(
            f"max_length={max_length} leaves {room} context tokens per window after the longest question "
            f"({longest} tokens) and {specials} special tokens, but it must exceed doc_stride={doc_stride}; "
            "increase max_length, decrease doc_stride or shorten the questions."
        )


def _tokenize(tokenizer: Any, questions: list[str], contexts: list[str], max_length: int, doc_stride: int) -> Any:
    """Tokenize question/context pairs into overlapping, unpadded windows with offsets."""
    questions = [question.lstrip() for question in questions]
    _check_windowing(tokenizer, questions, max_length, doc_stride)
    return tokenizer(
        questions,
        list(contexts),
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )


def _answer_token_span(sequence_ids: list[int | None], offsets: list[tuple[int, int]], answers: Mapping) -> tuple:
    """Token indices `(start, end)` of the first answer inside one window, or `(0, 0)` if it is not fully inside."""
    if not answers["text"]:
        return 0, 0
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    context_tokens = [i for i, sequence_id in enumerate(sequence_ids) if sequence_id == 1]
    if not context_tokens:
        return 0, 0
    first, last = context_tokens[0], context_tokens[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def prepare_train_features(examples: dict[str, list], tokenizer: Any, max_length: int, doc_stride: int) -> dict:
    """Tokenize a batch of SQuAD examples into training windows (for `Dataset.map(batched=True, remove_columns=...)`).

    Args:
        examples: Batched columns `question`, `context` and `answers` (only the first answer is used).
        tokenizer: A fast tokenizer.
        max_length: Maximum tokens per window (question + context + special tokens).
        doc_stride: Tokens of overlap between consecutive windows of one context.

    Returns:
        Unpadded `input_ids`, `attention_mask`, `token_type_ids` (if the tokenizer makes them) and the token labels
        `start_positions`/`end_positions` (0, the CLS token, when the answer is not fully inside the window or the
        question has no answer); one row per window.
    """
    encoded = _tokenize(tokenizer, examples["question"], examples["context"], max_length, doc_stride)
    features = {key: encoded[key] for key in SEQUENCE_KEYS if key in encoded}
    features["start_positions"], features["end_positions"] = [], []
    for window, (example, offsets) in enumerate(zip(encoded["overflow_to_sample_mapping"], encoded["offset_mapping"])):
        start, end = _answer_token_span(encoded.sequence_ids(window), offsets, examples["answers"][example])
        features["start_positions"].append(start)
        features["end_positions"].append(end)
    return features


def prepare_eval_windows(example: Mapping[str, Any], tokenizer: Any, max_length: int, doc_stride: int) -> dict:
    """Tokenize ONE SQuAD example into all its (unpadded) eval windows.

    Args:
        example: A row with `question` and `context`.
        tokenizer: A fast tokenizer.
        max_length: Maximum tokens per window.
        doc_stride: Tokens of overlap between consecutive windows.

    Returns:
        `input_ids`, `attention_mask`, `token_type_ids` (if produced): one token list per window; `offset_mapping`:
        per window and token the `(start_char, end_char)` in the context, `None` for non-context tokens.
    """
    encoded = _tokenize(tokenizer, [example["question"]], [example["context"]], max_length, doc_stride)
    windows = {key: encoded[key] for key in SEQUENCE_KEYS if key in encoded}
    windows["offset_mapping"] = [
        [tuple(offset) if sequence_id == 1 else None for offset, sequence_id in zip(offsets, encoded.sequence_ids(w))]
        for w, offsets in enumerate(encoded["offset_mapping"])
    ]
    return windows


def _context_span(offset: Any) -> tuple[int, int] | None:
    """`(start_char, end_char)` of a context token, or `None` for a `None` / negative (`[-1, -1]`) offset."""
    if offset is None:
        return None
    start, end = int(offset[0]), int(offset[1])
    return None if start < 0 else (start, end)


def best_answer(
    context: str,
    offset_mapping: Sequence[Sequence[Any]],
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    n_best: int = 20,
    max_answer_length: int = 30,
    allow_impossible: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> str:
    """Pick the best answer span of one example over all its windows (standard SQuAD post-processing).

    Args:
        context: The example's context.
        offset_mapping: Per window, per token `(start_char, end_char)` or `None`/`[-1, -1]` for non-context tokens.
        start_logits: `[n_windows, seq_len]`; positions past a window's offsets (padding) are ignored.
        end_logits: `[n_windows, seq_len]`.
        n_best: Start and end candidates kept per window.
        max_answer_length: Longest answer, in tokens.
        allow_impossible: SQuAD v2.0: return `""` when the null score (CLS start + end, min over windows) exceeds the
            best span score by more than `null_score_diff_threshold`.
        null_score_diff_threshold: See `allow_impossible`.

    Returns:
        `context[start_char:end_char]` of the best valid span, or `""` (no valid span, or predicted unanswerable).
    """
    if n_best < 1 or max_answer_length < 1:
        raise ConfigError(f"n_best and max_answer_length must be >= 1, got {n_best=} and {max_answer_length=}.")
    start_logits = torch.as_tensor(start_logits).detach().float().cpu()
    end_logits = torch.as_tensor(end_logits).detach().float().cpu()
    if start_logits.dim() == 1:
        start_logits, end_logits = start_logits.unsqueeze(0), end_logits.unsqueeze(0)
    if start_logits.shape != end_logits.shape or start_logits.dim() != 2:
        raise ConfigError(
            f"start_logits and end_logits must both be [n_windows, seq_len], got {tuple(start_logits.shape)} and "
            f"{tuple(end_logits.shape)}."
        )
    if len(offset_mapping) != start_logits.shape[0]:
        raise ConfigError(
            f"offset_mapping has {len(offset_mapping)} windows but the logits have {start_logits.shape[0]}."
        )
    best_score, best_span, null_score = float("-inf"), None, float("inf")
    for window, raw_offsets in enumerate(offset_mapping):
        offsets = [_context_span(offset) for offset in raw_offsets]
        if len(offsets) > start_logits.shape[1]:
            raise ConfigError(
                f"Window {window} has {len(offsets)} tokens but the logits only {start_logits.shape[1]} positions."
            )
        starts = start_logits[window, : len(offsets)]
        ends = end_logits[window, : len(offsets)]
        null_score = min(null_score, float(starts[0] + ends[0]))
        k = min(n_best, len(offsets))
        start_values, ends_values = starts.tolist(), ends.tolist()
        top_ends = torch.topk(ends, k).indices.tolist()
        for i in torch.topk(starts, k).indices.tolist():
            if offsets[i] is None:
                continue
            for j in top_ends:
                if offsets[j] is None or j < i or j - i + 1 > max_answer_length or offsets[j][1] < offsets[i][0]:
                    continue
                score = start_values[i] + ends_values[j]
                if score > best_score:
                    best_score, best_span = score, (offsets[i][0], offsets[j][1])
    if best_span is None or (allow_impossible and null_score - best_score > null_score_diff_threshold):
        return ""
    return context[best_span[0] : best_span[1]]


def decode_eval_batch(
    batch: Mapping[str, Any], start_logits: torch.Tensor, end_logits: torch.Tensor, **best_answer_kwargs: Any
) -> list[tuple[str, str]]:
    """Answer every example of a `SquadEvalCollator` batch from the model's `[total_windows, seq_len]` logits.

    Args:
        batch: The collated batch (`window_counts` and `examples` are used).
        start_logits: `[total_windows, seq_len]`, windows in batch order.
        end_logits: `[total_windows, seq_len]`.
        **best_answer_kwargs: Passed to `best_answer` (`n_best`, `max_answer_length`, `allow_impossible`, ...).

    Returns:
        `(id, answer_text)` per example, ready for `squad_metric_inputs`.
    """
    counts = [int(count) for count in batch["window_counts"]]
    starts, ends = torch.split(start_logits, counts), torch.split(end_logits, counts)
    return [
        (example["id"], best_answer(example["context"], example["offset_mapping"], s, e, **best_answer_kwargs))
        for example, s, e in zip(batch["examples"], starts, ends)
    ]


def _as_list(value: Any) -> list:
    return value.tolist() if hasattr(value, "tolist") else list(value)


class _PaddingCollator:
    """Right-pads token lists to the longest row (optionally rounded up to a multiple) as LongTensors."""

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> None:
        if tokenizer.pad_token_id is None:
            raise ConfigError(f"{type(tokenizer).__name__} has no pad token; set tokenizer.pad_token before collating.")
        self.pad_values = {
            "input_ids": tokenizer.pad_token_id,
            "attention_mask": 0,
            "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0) or 0,
        }
        self.pad_to_multiple_of = pad_to_multiple_of

    def _pad(self, rows: list[list[int]], key: str) -> torch.Tensor:
        length = max(len(row) for row in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        value = self.pad_values[key]
        return torch.tensor([row + [value] * (length - len(row)) for row in rows], dtype=torch.long)


class SquadTrainCollator(_PaddingCollator):
    """Collate `prepare_train_features` rows: right-pad `input_ids`/`attention_mask`/`token_type_ids` and stack labels.

    Returns LongTensors `input_ids`, `attention_mask`, (`token_type_ids`), `start_positions`, `end_positions`; other
    keys of the rows are dropped.
    """

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ConfigError("SquadTrainCollator got an empty batch.")
        batch = {
            key: self._pad([_as_list(f[key]) for f in features], key) for key in SEQUENCE_KEYS if key in features[0]
        }
        for key in ("start_positions", "end_positions"):
            batch[key] = torch.tensor([int(f[key]) for f in features], dtype=torch.long)
        return batch


class SquadEvalCollator(_PaddingCollator):
    """Collate eval examples (rows with `id`, `context`, `answers` and the `prepare_eval_windows` lists).

    Returns a dict with LongTensors `input_ids`, `attention_mask`, (`token_type_ids`) of all windows of all examples
    stacked (`[total_windows, max_len]`, right-padded), `window_counts` (`[n_examples]`) and `examples`: one dict per
    example with `id`, `context`, `answers` and `offset_mapping`, for `decode_eval_batch` / `best_answer`.
    """

    def __call__(self, items: list[Mapping[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ConfigError("SquadEvalCollator got an empty batch.")
        missing = [key for key in ("id", "context", "answers", "input_ids", "offset_mapping") if key not in items[0]]
        if missing:
            raise ConfigError(
                f"Eval items lack {missing} (they have {sorted(items[0])}); map prepare_eval_windows over the eval "
                "set without removing the id/context/answers columns."
            )
        keys = [key for key in SEQUENCE_KEYS if key in items[0]]
        batch: dict[str, Any] = {
            key: self._pad([_as_list(window) for item in items for window in item[key]], key) for key in keys
        }
        batch["window_counts"] = torch.tensor([len(item["input_ids"]) for item in items], dtype=torch.long)
        batch["examples"] = [
            {key: item[key] for key in ("id", "context", "answers", "offset_mapping")} for item in items
        ]
        return batch


def squad_metric_inputs(
    predictions: Sequence[tuple[str, str]], examples: Iterable[Mapping[str, Any]]
) -> tuple[list[dict], list[dict]]:
    """Build `(preds, target)` for `torchmetrics.text.SQuAD` from `(id, answer_text)` pairs and the examples.

    Args:
        predictions: `(id, predicted_text)` pairs, e.g. from `decode_eval_batch`.
        examples: Rows with `id` and `answers`; every example becomes a target (unpredicted ones score 0).
            Unanswerable questions get the gold answer `""`, as in the official v2.0 evaluation.

    Returns:
        `preds` (`{"prediction_text", "id"}`) and `target` (`{"answers": {"answer_start", "text"}, "id"}`).
    """
    target = []
    for example in examples:
        texts, starts = list(example["answers"]["text"]), list(example["answers"]["answer_start"])
        if not texts:
            texts, starts = [""], [-1]
        target.append({"answers": {"answer_start": starts, "text": texts}, "id": example["id"]})
    known = {row["id"] for row in target}
    unknown = [qid for qid, _ in predictions if qid not in known]
    if unknown:
        raise ConfigError(f"Predictions for ids not among the examples: {unknown[:5]} ({len(unknown)} in all).")
    return [{"prediction_text": text, "id": qid} for qid, text in predictions], target
