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


@pytest.fixture
def make_model():
    return tiny_model


@pytest.fixture
def batch():
    return tiny_batch()
