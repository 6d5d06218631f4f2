"""The offline demo behind ``python prune.py``: a small encoder trained on a task generated in code.

Nothing is downloaded: the vocabulary, tokenizer, data and model are built here, and the model is trained
briefly with the same Lightning stack as ``train.py`` so that pruning has knowledge to lose.
"""

from __future__ import annotations

import random
from pathlib import Path

import lightning.pytorch as pl
import torch
import transformers

from kp_lightning.datamodules import TextClassificationDataModule
from kp_lightning.modules import TaskModule

POSITIVE = ["good", "great", "fine", "superb", "lovely", "brilliant", "charming", "solid", "moving", "fresh"]
NEGATIVE = ["bad", "poor", "dull", "awful", "boring", "weak", "messy", "flat", "tired", "stale"]
NEUTRAL = (  # noqa: SIM905  (a word list reads better as one string)
    "the a film plot story actor scene music script camera it was is and but with this that its very quite "
    "somewhat rather mostly often ending start middle cast director score pace tone look feel"
).split()
NEGATION = "not"
LABELS = ["negative", "positive"]


def demo_sentence(rng: random.Random) -> tuple[str, int]:
    """A sentence whose label is the sign of its sentiment; ``not`` flips the sentiment word after it."""
    while True:
        words, score = [], 0
        for _ in range(rng.randint(10, 28)):
            r = rng.random()
            if r < 0.08:
                words.append(NEGATION)
                continue
            flip = -1 if words and words[-1] == NEGATION else 1
            if r < 0.2:
                words.append(rng.choice(POSITIVE))
                score += flip
            elif r < 0.32:
                words.append(rng.choice(NEGATIVE))
                score -= flip
            else:
                words.append(rng.choice(NEUTRAL))
        if score != 0:
            return " ".join(words), int(score > 0)


def write_demo_data(directory: Path, n_train: int = 4000, n_dev: int = 500, seed: int = 0) -> Path:
    """``train.tsv`` and ``dev.tsv`` (columns ``sentence``, ``label``) in ``directory``."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = [demo_sentence(rng) for _ in range(n)]
        lines = ["sentence\tlabel"] + [f"{s}\t{LABELS[y]}" for s, y in rows]
        (directory / name).write_text("\n".join(lines) + "\n")
    return directory


def demo_tokenizer() -> transformers.BertTokenizer:
    """A word-level BERT tokenizer over the demo vocabulary."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", NEGATION, *POSITIVE, *NEGATIVE, *NEUTRAL]
    return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)


def build_base_model(directory: Path, seed: int = 0) -> Path:
    """A randomly initialised 4-layer BERT (hidden 128, 4 heads, FFN 512) with its tokenizer."""
    tokenizer = demo_tokenizer()
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=64,
        num_labels=2,
    )
    transformers.BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def prepare_demo(workdir: str | Path = "outputs/demo", max_epochs: int = 6) -> Path:
    """Build data and a trained demo model under ``workdir`` (skipped if ``workdir/teacher`` exists).

    Returns:
        The directory of the trained model.
    """
    workdir = Path(workdir)
    teacher = workdir / "teacher"
    if (teacher / "config.json").exists():
        return teacher
    data = write_demo_data(workdir / "data")
    base = build_base_model(workdir / "base")
    pl.seed_everything(0, verbose=False)
    datamodule = TextClassificationDataModule(
        train_file=str(data / "train.tsv"),
        validation_file=str(data / "dev.tsv"),
        text_columns=["sentence"],
        label_names=LABELS,
        task_name="demo-sentiment",
        tokenizer=str(base),
        batch_size=32,
        max_length=64,
        cache_dir=None,
    )
    module = TaskModule(str(base), task_spec=datamodule.task_spec, learning_rate=5e-4, warmup_ratio=0.1)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    print(f"demo: training a small encoder on a generated sentiment task ({max_epochs} epochs)...")
    trainer.fit(module, datamodule=datamodule)
    print(f"demo: trained model dev accuracy {float(trainer.callback_metrics['val/accuracy']):.4f}")
    staging = workdir / "teacher.partial"
    module.model.save_pretrained(staging)
    datamodule.tokenizer.save_pretrained(staging)
    staging.rename(teacher)
    return teacher
