"""Test setup: offline everywhere, tiny random encoders built in-process."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

import kp_lightning  # noqa: E402,F401  (registers the compact model classes)
from tests.helpers import tiny_batch, tiny_model  # noqa: E402
from tests.squad_fixtures import squad_json, write_json  # noqa: E402


@pytest.fixture
def make_model():
    return tiny_model


@pytest.fixture
def batch():
    return tiny_batch()


@pytest.fixture
def squad_v1_file(tmp_path):
    """A small SQuAD v1.1 file (4 articles, one long context)."""
    return write_json(tmp_path / "train-v1.1.json", squad_json())


@pytest.fixture
def squad_v2_file(tmp_path):
    """The same articles plus one unanswerable v2.0 question."""
    return write_json(tmp_path / "train-v2.0.json", squad_json(impossible={"q7": "what barks at the fox?"}))
