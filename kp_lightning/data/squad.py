"""SQuAD v1.1 / v2.0 extractive question answering data processing (plain Python, no Lightning).

One import point for `kp_lightning.data.squad_loading` (reading files / hub datasets, article splits) and
`kp_lightning.data.squad_features` (windowing, collators, answer decoding, metric inputs).
"""

from kp_lightning.data.squad_features import (
    SquadEvalCollator,
    SquadTrainCollator,
    best_answer,
    decode_eval_batch,
    prepare_eval_windows,
    prepare_train_features,
    squad_metric_inputs,
)
from kp_lightning.data.squad_loading import (
    DEFAULT_HUB_NAMES,
    SQUAD_FEATURES,
    SquadFormatError,
    load_squad,
    read_squad_file,
    split_by_article,
)

__all__ = [
    "DEFAULT_HUB_NAMES",
    "SQUAD_FEATURES",
    "SquadEvalCollator",
    "SquadFormatError",
    "SquadTrainCollator",
    "best_answer",
    "decode_eval_batch",
    "load_squad",
    "prepare_eval_windows",
    "prepare_train_features",
    "read_squad_file",
    "split_by_article",
    "squad_metric_inputs",
]
