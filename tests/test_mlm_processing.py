"""Masked-language-modelling data processing: corpus reading, block grouping, masking, collators (offline)."""

from __future__ import annotations

import random
import string
from pathlib import Path

import datasets
import pytest
import torch
import transformers

from kp_lightning.data.mlm import (
    MLMCollator,
    PaddingCollator,
    fixed_masking,
    load_text_corpus,
    mask_tokens,
    read_text_files,
    tokenize_and_group,
)
from tests.text_fixtures import tiny_tokenizer

WIKITEXT_VALID = Path(__file__).resolve().parents[2] / "shared/data/wikitext-2/wiki.valid.tokens"
MASK, CLS, SEP, PAD, VOCAB = 4, 2, 3, 0, 78


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def random_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 7))) for _ in range(300)]
    return [" ".join(rng.choices(words, k=rng.randint(3, 15))) + rng.choice([".", "!", ""]) for _ in range(n)]


def group(lines: list[str], tokenizer, block_size: int, batch_size: int = 1000) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"text": lines}).map(
        tokenize_and_group,
        batched=True,
        batch_size=batch_size,
        remove_columns=["text"],
        fn_kwargs={"tokenizer": tokenizer, "block_size": block_size},
    )


# ----------------------------------------------------------------------------------------------------- reading


def test_read_text_files_keeps_non_blank_lines_in_order(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(" = Title = \n\n   \nThe cat sat.\n", encoding="utf-8")
    second.write_text("Über café\n\t\nlast line", encoding="utf-8")
    dataset = read_text_files([first, str(second)])
    assert dataset.column_names == ["text"]
    assert dataset["text"] == ["= Title =", "The cat sat.", "Über café", "last line"]
    assert load_text_corpus(str(first))["text"] == ["= Title =", "The cat sat."]
    assert load_text_corpus([str(first), str(second)])["text"] == dataset["text"]


def test_read_text_files_errors(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_text_files([missing])
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_text_corpus(str(missing))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\t\n", encoding="utf-8")
    with pytest.raises(ValueError, match="No non-blank line"):
        read_text_files([blank])
    with pytest.raises(ValueError, match="at least one file"):
        read_text_files([])


@pytest.mark.skipif(not WIKITEXT_VALID.is_file(), reason=f"WikiText-2 validation file not present at {WIKITEXT_VALID}")
def test_read_wikitext2_validation_file():
    dataset = read_text_files([WIKITEXT_VALID])
    assert len(dataset) == 2461  # 3,760 lines, of which 1,299 are blank (" \n")
    assert dataset[0]["text"] == "= Homarus gammarus ="
    assert all(text.strip() for text in dataset["text"][:200])


# ---------------------------------------------------------------------------------------------------- grouping


def test_blocks_have_specials_and_round_trip_the_token_stream(tokenizer):
    lines = random_lines(120)
    block_size = 32
    blocks = group(lines, tokenizer, block_size)
    stream = [i for ids in tokenizer(lines, add_special_tokens=False)["input_ids"] for i in ids]
    content = block_size - 2
    assert len(blocks) == len(stream) // content > 10
    content_ids = []
    for block in blocks:
        ids = block["input_ids"]
        assert len(ids) == block_size
        assert ids[0] == CLS and ids[-1] == SEP
        assert block["attention_mask"] == [1] * block_size
        assert block["special_tokens_mask"] == [1] + [0] * content + [1]
        content_ids += ids[1:-1]
    assert content_ids == stream[: len(content_ids)]
    assert len(stream) - len(content_ids) < content  # only the short remainder is dropped


def test_tiny_batch_keeps_one_short_block(tokenizer):
    out = tokenize_and_group({"text": ["ab cd", "", "  "]}, tokenizer, block_size=64)
    assert out["input_ids"] == [[CLS, *tokenizer("ab cd", add_special_tokens=False)["input_ids"], SEP]]
    assert out["word_ids"] == [[-1, 0, 0, 1, 1, -1]]
    assert tokenize_and_group({"text": ["", " "]}, tokenizer, block_size=64)["input_ids"] == []


def test_word_ids_follow_words_and_lines(tokenizer):
    # Different lines are different words even though the tokenizer numbers words from 0 in each line.
    out = tokenize_and_group({"text": ["a", "b", "cat dog", "[MASK] x"]}, tokenizer, block_size=16)
    assert out["word_ids"] == [[-1, 0, 1, 2, 2, 2, 3, 3, 3, -1, 5, -1]]
    assert out["special_tokens_mask"] == [[1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1]]  # in-text [MASK] is special
    for block in group(random_lines(60, seed=1), tokenizer, 24):
        words, tokens = block["word_ids"], tokenizer.convert_ids_to_tokens(block["input_ids"])
        assert [w == -1 for w in words] == [bool(s) for s in block["special_tokens_mask"]]
        content = words[1:-1]
        assert content[0] == 0 and all(b - a in (0, 1) for a, b in zip(content, content[1:]))
        for prev, cur, token in zip(content, content[1:], tokens[2:-1]):
            # Same word exactly for WordPiece continuations ("##x"); every other token starts a new word.
            assert (cur == prev) == token.startswith("##")


def test_roberta_style_tokenizer_gets_bos_eos_blocks():
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    letters = list(string.ascii_lowercase)
    vocab = {token: i for i, token in enumerate(specials + letters + ["\u0120", *("\u0120" + c for c in letters)])}
    roberta = transformers.RobertaTokenizer(vocab=vocab, merges=[("\u0120", c) for c in letters])
    out = tokenize_and_group({"text": ["cat dog", "ab"]}, roberta, block_size=8)
    assert roberta.convert_ids_to_tokens(out["input_ids"][0]) == ["<s>", "c", "a", "t", "\u0120d", "o", "g", "</s>"]
    assert out["word_ids"] == [[-1, 0, 0, 0, 1, 1, 1, -1]]
    batch = MLMCollator(roberta, whole_word_mask=True, seed=0)([{k: v[0] for k, v in out.items()}])
    assert batch["labels"][0, 0] == batch["labels"][0, -1] == -100


def test_tokenize_and_group_validation(tokenizer):
    with pytest.raises(ValueError, match="block_size must be an int >= 8"):
        tokenize_and_group({"text": ["abc"]}, tokenizer, block_size=4)
    limited = tiny_tokenizer()
    limited.model_max_length = 16
    with pytest.raises(ValueError, match="exceeds tokenizer.model_max_length=16"):
        tokenize_and_group({"text": ["abc"]}, limited, block_size=32)
    assert tokenize_and_group({"text": ["abc"]}, limited, block_size=16)["input_ids"]

    class SlowTokenizer:
        is_fast = False

    with pytest.raises(TypeError, match="fast tokenizer"):
        tokenize_and_group({"text": ["abc"]}, SlowTokenizer(), block_size=16)
    with pytest.raises(ValueError, match="'text' column"):
        tokenize_and_group({"sentence": ["abc"]}, tokenizer, block_size=16)


# ----------------------------------------------------------------------------------------------------- masking


def padded_batch(rows: int = 200, length: int = 128, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, length), generator=gen)
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=gen)
    padding = torch.arange(length).unsqueeze(0) >= lengths.unsqueeze(1)
    ids[:, 0] = CLS
    ids[torch.arange(rows), lengths - 1] = SEP
    ids[padding] = PAD
    special = padding | (ids == CLS) | (ids == SEP)
    return ids, special


def test_mask_tokens_statistics():
    ids, special = padded_batch()
    original = ids.clone()
    masked, labels = mask_tokens(
        ids, special, mask_token_id=MASK, vocab_size=VOCAB, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(ids, original)  # not modified in place
    assert masked.dtype == labels.dtype == torch.long and masked.shape == labels.shape == ids.shape
    selected = labels != -100
    assert not (selected & special).any()  # specials and padding are never selected
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])
    assert abs(selected.sum() / (~special).sum() - 0.15) < 0.01
    n = selected.sum()
    to_mask = (masked == MASK) & selected
    unchanged = (masked == ids) & selected
    to_random = selected & ~to_mask & ~unchanged
    assert abs(to_mask.sum() / n - 0.8) < 0.03
    assert abs(to_random.sum() / n - 0.1 * 76 / 78) < 0.02  # a random id may hit the original or the mask id
    assert abs(unchanged.sum() / n - 0.1) < 0.02
    assert masked[to_random].min() >= 0 and masked[to_random].max() < VOCAB


def test_mask_tokens_configurable_fractions_and_reproducibility():
    ids, special = padded_batch(rows=50)
    kwargs = {"mask_token_id": MASK, "vocab_size": VOCAB, "mlm_probability": 0.3}
    masked, labels = mask_tokens(ids, special, mask_replace_prob=1.0, random_replace_prob=0.0, **kwargs)
    assert torch.equal(masked == MASK, labels != -100)
    first = mask_tokens(ids, special, generator=torch.Generator().manual_seed(3), **kwargs)
    again = mask_tokens(ids, special, generator=torch.Generator().manual_seed(3), **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    no_words = torch.full_like(ids, -1)  # whole-word masking with no word to select is a no-op, not an error
    assert (mask_tokens(ids, special, word_ids=no_words, **kwargs)[1] == -100).all()


def test_whole_word_masking_selects_complete_words(tokenizer):
    blocks = group(random_lines(400, seed=2), tokenizer, 64)
    collate = MLMCollator(tokenizer, whole_word_mask=True, seed=0)
    features = [blocks[i] for i in range(len(blocks))]
    ids = torch.tensor([f["input_ids"] for f in features])
    words = torch.tensor([f["word_ids"] for f in features])
    batch = collate(features)
    selected = batch["labels"] != -100
    assert not selected[words == -1].any()
    fully, total = 0, 0
    for row in range(len(features)):
        for word in words[row].unique().tolist():
            if word < 0:
                continue
            chosen = selected[row, words[row] == word]
            assert chosen.all() or not chosen.any(), f"word {word} of row {row} is partly selected"
            fully += int(chosen.all())
            total += 1
    assert abs(fully / total - 0.15) < 0.02
    assert torch.equal(batch["labels"][selected], ids[selected])


def test_masking_probability_validation(tokenizer):
    ids, special = padded_batch(rows=2)
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"mlm_probability must be in \(0, 1\)"):
            mask_tokens(ids, special, mask_token_id=MASK, vocab_size=VOCAB, mlm_probability=bad)
    with pytest.raises(ValueError, match="must be <= 1"):
        mask_tokens(ids, special, mask_token_id=MASK, vocab_size=VOCAB, mask_replace_prob=0.9, random_replace_prob=0.2)
    with pytest.raises(ValueError, match="random_replace_prob must be in"):
        mask_tokens(ids, special, mask_token_id=MASK, vocab_size=VOCAB, random_replace_prob=-0.1)
    with pytest.raises(ValueError, match="same shape"):
        mask_tokens(ids, special[:, :-1], mask_token_id=MASK, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="mlm_probability"):
        MLMCollator(tokenizer, mlm_probability=0.0)
    with pytest.raises(ValueError, match="mlm_probability"):
        fixed_masking({"input_ids": [CLS, 5, SEP]}, 0, tokenizer=tokenizer, mlm_probability=2.0)


# --------------------------------------------------------------------------------------------------- collators


def test_mlm_collator_pads_and_masks_freshly(tokenizer):
    features = [
        {"input_ids": [CLS, *range(5, 5 + n), SEP], "special_tokens_mask": [1] + [0] * n + [1]} for n in (40, 25, 60)
    ]
    collate = MLMCollator(tokenizer, mlm_probability=0.3, seed=7)
    batch = collate(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.long and t.shape == (3, 62) for t in batch.values())
    assert batch["attention_mask"].sum(1).tolist() == [42, 27, 62]
    padding = batch["attention_mask"] == 0
    assert (batch["input_ids"][padding] == PAD).all() and (batch["labels"][padding] == -100).all()
    assert (batch["labels"][:, 0] == -100).all()
    assert not torch.equal(collate(features)["labels"], batch["labels"])  # fresh randomness each call
    assert torch.equal(MLMCollator(tokenizer, mlm_probability=0.3, seed=7)(features)["labels"], batch["labels"])
    # special_tokens_mask is optional (derived from the special ids); word_ids is needed for whole words.
    assert MLMCollator(tokenizer)([{"input_ids": [CLS, 5, 6, SEP]}])["labels"].shape == (1, 4)
    with pytest.raises(ValueError, match="word_ids"):
        MLMCollator(tokenizer, whole_word_mask=True)(features)


def test_seeded_collator_differs_across_workers_and_epochs(tokenizer):
    item = {"input_ids": [CLS, *range(5, 65), SEP]}
    loader = torch.utils.data.DataLoader(
        [item] * 4, batch_size=1, num_workers=2, collate_fn=MLMCollator(tokenizer, mlm_probability=0.3, seed=0)
    )
    epochs = [[tuple(batch["labels"][0].tolist()) for batch in loader] for _ in range(2)]
    assert len(set(epochs[0])) == 4  # workers do not replay each other's masks
    assert not set(epochs[0]) & set(epochs[1])  # nor the previous epoch's


@pytest.mark.parametrize("whole_word_mask", [False, True])
def test_fixed_masking_is_deterministic_per_index(tokenizer, whole_word_mask):
    blocks = group(random_lines(200, seed=3), tokenizer, 48)
    kwargs = {"tokenizer": tokenizer, "mlm_probability": 0.2, "whole_word_mask": whole_word_mask, "seed": 5}
    example = blocks[0]
    first = fixed_masking(example, 0, **kwargs)
    assert first == fixed_masking(example, 0, **kwargs)
    assert first != fixed_masking(example, 1, **kwargs)
    assert first != fixed_masking(example, 0, **{**kwargs, "seed": 6})
    assert set(first) == {"input_ids", "attention_mask", "labels"}
    assert first["labels"][0] == first["labels"][-1] == -100
    selected = [label != -100 for label in first["labels"]]
    assert any(selected) and [x for x, s in zip(example["input_ids"], selected) if s] == [
        label for label in first["labels"] if label != -100
    ]
    # Through Dataset.map the result depends only on the row index, not on batching or the other rows.
    mapped = blocks.map(fixed_masking, with_indices=True, fn_kwargs=kwargs, remove_columns=["special_tokens_mask"])
    subset = blocks.select([4, 2]).map(fixed_masking, with_indices=True, fn_kwargs=kwargs)
    assert mapped[0]["labels"] == first["labels"]
    assert mapped[4]["labels"] == fixed_masking(blocks[4], 4, **kwargs)["labels"]
    assert subset[0]["labels"] == fixed_masking(blocks[4], 0, **kwargs)["labels"]


def test_padding_collator(tokenizer):
    items = [
        {"input_ids": [CLS, 4, 6, SEP], "attention_mask": [1, 1, 1, 1], "labels": [-100, 5, -100, -100]},
        {"input_ids": [CLS, 7, SEP], "attention_mask": [1, 1, 1], "labels": [-100, -100, -100]},
    ]
    batch = PaddingCollator(tokenizer)(items)
    assert all(t.dtype == torch.long and t.shape == (2, 4) for t in batch.values())
    assert batch["input_ids"][1].tolist() == [CLS, 7, SEP, PAD]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0]
    assert batch["labels"].tolist() == [[-100, 5, -100, -100], [-100] * 4]
    with pytest.raises(ValueError, match="labels"):
        PaddingCollator(tokenizer)([{"input_ids": [CLS, SEP], "attention_mask": [1, 1]}])
