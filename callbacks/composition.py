"""Whether the callbacks of one ``fit`` run compose, checked before its first training step.

``QuantizationAwareTraining``, ``GradualMagnitudePruning`` and ``PatternLock`` take hold of ``pl_module.model`` in
``setup`` (fake-quantized Linear forwards, weight masks) and export that model at the end of ``fit``. Two callbacks
break this when they share the run:

* ``KPrune`` listed after them: its ``setup`` replaces the model by the pruned compact one, so they would keep
  acting on (and finally export) the dense model that is no longer trained;
* ``CoFi``: its gates decide the structure while training and it exports a new compact model at the end, which
  the fake quantization or the masks never saw (their export would be the unpruned model).

Both are refused in ``setup`` with what to do instead (prune first, then quantize or sparsify the export in a second
run, which works: compact models are first-class inputs). :func:`check_model_unchanged` catches any other
replacement of the model in ``on_fit_start``, still before the first step.
"""

from __future__ import annotations

import lightning.pytorch as pl
from torch import nn

from callbacks.cofi import CoFi
from callbacks.kprune import KPrune
from kp_lightning.errors import ConfigError


def check_composition(callback: pl.Callback, trainer: pl.Trainer, holds: str) -> None:
    """Refuse a ``CoFi`` in the same run, or a ``KPrune`` that has not pruned yet and comes after ``callback``.

    Args:
        callback: The callback being set up.
        trainer: Its trainer.
        holds: What ``callback`` does to the model, for the message (``"fake-quantized"``, ``"masked"``).

    Raises:
        ConfigError: the combination cannot give a correct result.
    """
    name = type(callback).__name__
    callbacks = list(trainer.callbacks)
    if any(isinstance(other, CoFi) for other in callbacks):
        raise ConfigError(
            f"{name} and CoFi cannot share one fit run: CoFi exports a new compact model at the end, which {name} "
            f"never {holds}, and {name}'s own export would be the unpruned model",
            fix=f"run CoFi first, then a second `train.py fit` with {name} and "
            "--model.init_args.model_name_or_path <CoFi output_dir>",
        )
    position = next((i for i, other in enumerate(callbacks) if other is callback), -1)
    if any(isinstance(other, KPrune) and other.structure is None for other in callbacks[position + 1 :]):
        raise ConfigError(
            f"KPrune comes after {name} in trainer.callbacks: KPrune replaces the model by the pruned one in its "
            f"setup, after {name} {holds} the dense one, so {name} would export a model that is not trained",
            fix=f"list KPrune before {name} in trainer.callbacks, or prune with prune.py and train its export",
        )


def check_model_unchanged(callback: pl.Callback, model: nn.Module, pl_module: pl.LightningModule) -> None:
    """Refuse to train when ``pl_module.model`` is no longer the ``model`` that ``callback`` set up on.

    Raises:
        ConfigError: something replaced the model between ``callback``'s ``setup`` and the start of training.
    """
    if getattr(pl_module, "model", None) is not model:
        name = type(callback).__name__
        raise ConfigError(
            f"the model was replaced after {name} set up on it (by a callback or hook listed after {name}), so "
            f"{name} would train and export a stale model",
            fix=f"make the callback that replaces the model run before {name} (earlier in trainer.callbacks)",
        )
