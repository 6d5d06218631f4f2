"""``KPrune``: retraining-free structured pruning (K-prune or the Kwon et al. baseline) inside any Trainer run."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
import transformers
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.utilities import rank_zero_info

from callbacks.strategy_support import refuse_fsdp1
from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.core.compaction import compact
from kp_lightning.core.sharding import gathered_model, is_sharded
from kp_lightning.core.structure import EncoderStructure
from kp_lightning.embedding.losses import DEFAULT_EMBEDDING_LOSS
from kp_lightning.modules.model_loading import STRUCTURE_STATE_KEY, accepted_inputs
from kp_lightning.pruning import KPruneConfig, KwonConfig, PruneError, PruneResult, kprune, kwon_prune
from kp_lightning.pruning.pruning_run import check_reduction, check_task_kind
from kp_lightning.pruning.reference_protocol import task_avg_length
from kp_lightning.pruning.sample_set import SampleSet
from kp_lightning.pruning.sampling import check_sample_draw, collate_sample_batches, draw_sample_indices


class KPrune(pl.Callback):
    """Prune the module's model once, in ``setup``, before the run's first step (fit, validate or test).

    Used alone (``prune.py``, or ``train.py validate``) it is retraining-free pruning; at the start of a
    ``train.py fit`` run the pruned model is then fine-tuned or distilled. Under DDP every rank measures its
    share of the sample batches and the statistics are all-reduced, so all ranks build the same model. Under FSDP2
    (``ModelParallelStrategy``) ``setup`` runs before ``configure_model`` shards the model, so the full model is
    pruned; a model sharded by an earlier run (``prune.py``'s first validation) is gathered first.
    Checkpoints record the kept structure, so a resumed run rebuilds the pruned model without pruning again
    (``train.py fit --ckpt_path`` does this; from Python set ``trainer.ckpt_path`` before ``trainer.fit``).

    Args:
        flops_reduction: Fraction of encoder FLOPs to REMOVE, in (0, 1) (0.6 keeps 40 %).
        method: ``"kprune"`` (K-prune, label-free) or ``"kwon"`` (Kwon et al. 2022, needs labels).
        num_tokens: Tokens of training examples in the sample set (K-prune's default 100K).
        batch_size: Sample batch size.
        seed: Seed of the sample draw.
        sample_draw: ``"ours"``: distinct random examples up to ``num_tokens`` real tokens, FLOPs model at the
            sample's mean length. ``"reference"``: the reference code's protocol, to reproduce published numbers:
            ``min(int(num_tokens / L), len(train))`` examples drawn WITH replacement
            (``np.random.RandomState(seed).choice``) and the FLOPs model at ``L``, the task's fixed dev-set average
            length (``kp_lightning/pruning/reference_protocol.py``; other tasks are refused unless
            ``reference_avg_length`` is given).
        reference_avg_length: ``"reference"`` only: ``L`` for a task not in the table (or to replace its value).
        num_samples: ``"reference"`` only: draw exactly this many examples instead (Kwon et al. use 2048).
        temperature: K-prune softmax temperature.
        lambda_pred: K-prune weight of predictive knowledge.
        lambda_rep: K-prune weight of representational knowledge.
        mu: K-prune head-score multiplier.
        weight_tuning: K-prune least-squares weight tuning (KPWT), or Kwon mask tuning.
        seq_len: Sequence length of the FLOPs model (default: mean length of the sample set, or ``L`` with
            ``sample_draw="reference"``).
        embedding_loss: Embedding models, K-prune: the embedding-distillation loss of predictive knowledge
            (``similarity_kl``, ``cosine_mse`` or both joined by ``+``: :mod:`kp_lightning.embedding.losses`).
            Kwon et al. on embeddings always use the in-batch contrastive loss as their Fisher objective.
        flops_batch_size: Batch size the pruned model will be served at: costs a batch shares (DeBERTa's
            relative-position projection) count ``1/flops_batch_size`` per sequence in the FLOPs budget and report.
        allow_untrained_head: Prune even if the task head was newly initialised when the model was loaded.
        progress: Show per-sublayer progress bars.
    """

    def __init__(
        self,
        flops_reduction: float,
        method: Literal["kprune", "kwon"] = "kprune",
        num_tokens: int = 100_000,
        batch_size: int = 32,
        seed: int = 0,
        sample_draw: Literal["ours", "reference"] = "ours",
        reference_avg_length: float | None = None,
        num_samples: int | None = None,
        temperature: float = 2.0,
        lambda_pred: float = 1.0,
        lambda_rep: float = 2.5e-4,
        mu: float = 64.0,
        weight_tuning: bool = True,
        seq_len: float | None = None,
        embedding_loss: str = DEFAULT_EMBEDDING_LOSS,
        flops_batch_size: int = 1,
        allow_untrained_head: bool = False,
        progress: bool = True,
    ):
        check_reduction(flops_reduction)
        if method not in ("kprune", "kwon"):
            raise PruneError(f"method must be 'kprune' or 'kwon', got {method!r}")
        if num_tokens < 1 or batch_size < 1:
            raise PruneError("num_tokens and batch_size must be positive")
        check_sample_draw(sample_draw)
        if sample_draw == "ours" and (reference_avg_length is not None or num_samples is not None):
            raise PruneError(
                "reference_avg_length and num_samples apply to sample_draw: reference; sample_draw: ours draws "
                "num_tokens real tokens (set seq_len for the FLOPs model's length)"
            )
        if reference_avg_length is not None:
            reference_avg_length = task_avg_length(None, reference_avg_length)  # refuses a non-positive one
        if num_samples is not None and num_samples < 1:
            raise PruneError(f"num_samples must be positive, got {num_samples}")
        self.method = method
        self.num_tokens = num_tokens
        self.batch_size = batch_size
        self.seed = seed
        self.sample_draw = sample_draw
        self.reference_avg_length = reference_avg_length
        self.num_samples = num_samples
        self.avg_length: float | None = None  # the reference average length used (set in setup)
        self.allow_untrained_head = allow_untrained_head
        self.progress = progress
        if method == "kprune":
            self.config = KPruneConfig(
                flops_reduction,
                temperature,
                lambda_pred,
                lambda_rep,
                mu,
                weight_tuning,
                seq_len,
                embedding_loss,
                flops_batch_size,
            )
        else:
            self.config = KwonConfig(
                flops_reduction, mask_tuning=weight_tuning, seq_len=seq_len, flops_batch_size=flops_batch_size
            )
        self.config.validate()
        self.result: PruneResult | None = None
        self.dense_model: torch.nn.Module | None = None
        self.structure: EncoderStructure | None = None

    @property
    def flops_reduction(self) -> float:
        return self.config.flops_reduction

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.structure is not None:
            return
        refuse_fsdp1(trainer, "KPrune", PruneError)
        if is_sharded(pl_module.model):  # FSDP2, a second run of the same module (prune.py): gather, prune, re-shard
            _replace_model(pl_module, gathered_model(pl_module.model, all_ranks=True))
        restored = self._structure_from_checkpoint(trainer.ckpt_path)
        if restored is not None:
            self.structure = restored
            _replace_model(pl_module, compact(pl_module.model, restored))
            rank_zero_info(f"KPrune: rebuilt the pruned structure recorded in {trainer.ckpt_path} (not pruning again)")
            return
        config = self._config_for_task(_task_name(trainer, pl_module))  # refuses an unknown task before any work
        self._check_inputs(trainer, pl_module)
        dataset = trainer.datamodule.datasets["train"]
        indices = draw_sample_indices(
            dataset, self.num_tokens, self.seed, self.sample_draw, self.avg_length, self.num_samples
        )
        batches = collate_sample_batches(dataset, trainer.datamodule.train_collator(), indices, self.batch_size)
        device = trainer.strategy.root_device
        model = pl_module.model
        was_training = model.training
        self.dense_model = model
        model.to(device).eval()
        samples = SampleSet(batches, device, accepted_inputs(model))
        run = kprune if self.method == "kprune" else kwon_prune
        tick = time.perf_counter()
        self.result = run(model, samples, pl_module.task.kind, config, progress=self.progress)
        self.result.seconds["callback_total"] = time.perf_counter() - tick
        self.result.stats.update(  # num_samples (from the sample set) counts duplicates
            sample_draw=self.sample_draw, reference_avg_length=self.avg_length, num_distinct_samples=len(set(indices))
        )
        self.structure = self.result.structure
        pruned = self.result.model.train(was_training).requires_grad_(True)  # trainable for a following fit
        _replace_model(pl_module, pruned)
        self._log(trainer)

    def draw_settings(self) -> dict:
        """The sample-draw options as given, for reports and logs."""
        return {
            "num_tokens": self.num_tokens,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "sample_draw": self.sample_draw,
            "reference_avg_length": self.reference_avg_length,
            "num_samples": self.num_samples,
        }

    def _config_for_task(self, task_name: str | None) -> KPruneConfig | KwonConfig:
        """The method config for this run: with ``sample_draw="reference"`` and no ``seq_len``, the FLOPs model
        runs at the task's reference average length (resolved here, so an unknown task is refused first)."""
        if self.sample_draw != "reference":
            return self.config
        self.avg_length = task_avg_length(task_name, self.reference_avg_length)
        if self.config.seq_len is not None:
            return self.config
        return dataclasses.replace(self.config, seq_len=self.avg_length)

    def check_model(self, pl_module: pl.LightningModule) -> None:
        """Refuse a module this pruner cannot use (wrong kind, wrong task, untrained head), before any work:
        ``prune.py`` calls it before validating the dense model, ``setup`` again.

        Raises:
            PruneError: what is wrong, and what to do instead.
        """
        model = getattr(pl_module, "model", None)
        if model is None or not hasattr(pl_module, "task"):
            raise PruneError("KPrune needs a kp_lightning TaskModule or DistillationModule")
        check_task_kind(pl_module.task.kind)
        fresh = getattr(model, "kp_newly_initialized", [])
        if fresh and not self.allow_untrained_head:
            raise PruneError(
                f"the model's task head was newly initialised when loading ({', '.join(fresh[:4])}): pruning "
                "measures what a fine-tuned model knows. Fine-tune it first (train.py fit), or set "
                "allow_untrained_head: true if you really mean it."
            )
        EncoderAdapter(model)  # an unsupported architecture or configuration is refused here

    def _check_inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse what would waste the run: the module (see :meth:`check_model`), mismatched tokenizer, no data."""
        self.check_model(pl_module)
        model = pl_module.model
        dm = trainer.datamodule
        if dm is None or getattr(dm, "datasets", None) is None or "train" not in dm.datasets:
            raise PruneError("KPrune draws its samples from the data module's training split; none was found")
        tokenizer = getattr(dm, "tokenizer", None)
        path = getattr(model, "name_or_path", "")
        if tokenizer is not None and path:
            try:
                own = transformers.AutoTokenizer.from_pretrained(path)
            except (OSError, ValueError):
                own = None
            if own is not None and own.get_vocab() != tokenizer.get_vocab():
                raise PruneError(
                    f"the data is tokenized with {dm.tokenizer_name}, but the model {path} ships another tokenizer "
                    "(different vocabulary). Use the model's own tokenizer (train.py/prune.py link it by default)."
                )
        embeddings = EncoderAdapter(model).word_embeddings.num_embeddings
        if tokenizer is not None and len(tokenizer) > embeddings:
            raise PruneError(
                f"the tokenizer has {len(tokenizer)} tokens but the model only {embeddings} embeddings: "
                "they do not belong together"
            )

    def _structure_from_checkpoint(self, ckpt_path: str | None) -> EncoderStructure | None:
        if not ckpt_path:
            return None
        if Path(ckpt_path).is_dir():  # a distributed (sharded) checkpoint: callback states are in its metadata
            ckpt_path = Path(ckpt_path) / _METADATA_FILENAME
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if not state or not state.get(STRUCTURE_STATE_KEY):
            return None
        return EncoderStructure.from_dict(state[STRUCTURE_STATE_KEY])

    def _log(self, trainer: pl.Trainer) -> None:
        r = self.result
        metrics = {
            "prune/flops_reduction_target": self.flops_reduction,
            "prune/flops_reduction_actual": r.flops_reduction,
            "prune/seconds": r.seconds["total"],
            **{f"prune/seconds_{k}": v for k, v in r.seconds.items() if k != "total"},
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=0)
            pruning = {"method": self.method, **self.draw_settings(), **vars(self.config)}
            logger.log_hyperparams({"pruning": pruning})

    def state_dict(self) -> dict:
        return {STRUCTURE_STATE_KEY: self.structure.to_dict() if self.structure is not None else None}

    def load_state_dict(self, state_dict: dict) -> None:
        """The structure was already applied in ``setup`` (before the weights were restored)."""


def _replace_model(pl_module: pl.LightningModule, model: torch.nn.Module) -> None:
    pl_module.model = model


def _task_name(trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
    """The data module's task name (``TaskSpec.name``, e.g. ``"sst2"``), else the LightningModule's."""
    spec = getattr(trainer.datamodule, "task_spec", None)
    task = spec if spec is not None else getattr(pl_module, "task", None)
    return getattr(task, "name", None)
