"""LightningDataModules: GLUE and custom classification files, SQuAD, MLM text corpora, token classification
(NER), multiple choice, sentence embeddings."""

from kp_lightning.datamodules.base import EncoderDataModule
from kp_lightning.datamodules.classification import GlueDataModule, TextClassificationDataModule
from kp_lightning.datamodules.embedding import EmbeddingDataModule
from kp_lightning.datamodules.masked_lm import MLMDataModule
from kp_lightning.datamodules.multiple_choice import MultipleChoiceDataModule
from kp_lightning.datamodules.squad import SquadDataModule
from kp_lightning.datamodules.token_classification import TokenClassificationDataModule

__all__ = [
    "EmbeddingDataModule",
    "EncoderDataModule",
    "GlueDataModule",
    "MLMDataModule",
    "MultipleChoiceDataModule",
    "SquadDataModule",
    "TextClassificationDataModule",
    "TokenClassificationDataModule",
]
