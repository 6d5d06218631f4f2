"""The reference implementations' sample protocol (K-prune and Kwon et al. code, kprune.md §1).

Both reference codebases take a fixed per-task sequence length (the dev-set average from their
``dataset/glue.py: avg_seq_length``, 170 for SQuAD) instead of measuring one. It sets the FLOPs model's
sequence length and, for K-prune, the sample size ``min(int(num_tokens / avg_length), len(train))``. The
examples are drawn with replacement by ``np.random.choice(len(train), k)`` after ``set_seed(seed)``, so the
same draw is ``np.random.RandomState(seed).choice(len(train), k)``.
"""

from __future__ import annotations

import numpy as np

from .result import PruneError

REFERENCE_AVG_LENGTHS: dict[str, float] = {
    "stsb": 31.47,
    "mrpc": 53.24,
    "rte": 64.59,
    "sst2": 25.16,
    "qqp": 30.55,
    "qnli": 50.97,
    "cola": 11.67,
    "mnli": 39.05,
    "squad": 170.0,
    "squad_v2": 170.0,  # the reference code uses 170 for every task whose name contains "squad"
}


def _table_key(task_name: str) -> str:
    """``"SST-2"``, ``"sst_2"`` and ``"sst2"`` all become ``"sst2"``; ``"squad-v2"`` becomes ``"squad_v2"``."""
    key = task_name.strip().lower().replace("-", "").replace("_", "")
    return "squad_v2" if key == "squadv2" else key


def task_avg_length(task_name: str | None, override: float | None = None) -> float:
    """The reference average sequence length of a task, or ``override`` when given.

    Args:
        task_name: The data module's task name (``TaskSpec.name``, e.g. ``"sst2"``, ``"squad"``).
        override: A user-supplied average length; it wins over the table (needed for tasks not in it).

    Raises:
        PruneError: ``override`` is not positive, or the task is not in the table and no override is given.
    """
    if override is not None:
        if not override > 0:
            raise PruneError(f"reference_avg_length must be positive, got {override}")
        return float(override)
    key = _table_key(task_name) if task_name else ""
    if key in REFERENCE_AVG_LENGTHS:
        return REFERENCE_AVG_LENGTHS[key]
    known = ", ".join(f"{name} ({length})" for name, length in REFERENCE_AVG_LENGTHS.items())
    raise PruneError(
        f"sample_draw: reference needs the task's reference average length, and the task {task_name!r} has none. "
        f"Known tasks: {known}. For another task pass reference_avg_length: <mean tokens per example> (the sample "
        "size is int(num_tokens / reference_avg_length)) and seq_len: <FLOPs sequence length> (default: "
        "reference_avg_length), or use sample_draw: ours."
    )


def reference_sample_indices(
    dataset_size: int, num_tokens: int, avg_length: float, seed: int = 0, num_samples: int | None = None
) -> list[int]:
    """Example indices drawn the reference way: uniformly WITH replacement, numpy's legacy generator.

    Equal to ``np.random.RandomState(seed).choice(dataset_size, k)``, which is what the reference's
    ``np.random.choice`` after ``np.random.seed(seed)`` gives. Duplicates are kept (and counted as samples).

    Args:
        dataset_size: Number of training examples.
        num_tokens: Token budget; ``k = min(int(num_tokens / avg_length), dataset_size)`` (K-prune's formula).
        avg_length: The task's reference average length (:func:`task_avg_length`).
        seed: Seed of the draw.
        num_samples: Draw exactly this many examples instead (Kwon et al.'s ``--num_samples``, 2048; no cap).

    Raises:
        PruneError: the dataset is empty or the sample size is not positive.
    """
    if dataset_size < 1:
        raise PruneError("the training split is empty: there is nothing to draw the sample set from")
    count = num_samples if num_samples is not None else min(int(num_tokens / avg_length), dataset_size)
    if count < 1:
        raise PruneError(
            f"the reference sample size is {count} (num_tokens {num_tokens} / average length {avg_length}, or "
            "num_samples): raise num_tokens or num_samples"
        )
    return np.random.RandomState(seed).choice(dataset_size, count).tolist()
