"""``GradualMagnitudePruning``: Zhu & Gupta cubic magnitude pruning, as in Prune Once for All's sparse pre-training."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from callbacks.sparse_weights import SparseWeightsCallback
from kp_lightning.errors import ConfigError
from kp_lightning.sparsity import CubicSparsitySchedule, RewindingLinearSchedule


class GradualMagnitudePruning(SparseWeightsCallback):
    """Prune Linear weights by magnitude along the cubic schedule while the module trains (e.g. distils).

    At every ``frequency``-th optimizer step from ``begin_step`` to ``end_step`` the masks are recomputed
    from ``|W|`` at ``s(t) = s_f + (s_i − s_f)(1 − (t − begin)/(ramp_end − begin))³``; after ``end_step`` they
    are frozen. Pruned weights stay exactly zero after every step; parameter names never change. Masks and
    schedule position are saved in checkpoints, so a resumed run continues exactly.

    Args:
        final_sparsity: Target fraction of zeros per weight, in [0, 1) (N:M patterns: must be ``1 − N/M``).
        initial_sparsity: Sparsity at ``begin_step``.
        begin_step: First mask update and start of the ramp.
        ramp_end_step: Step at which the target is reached.
        end_step: Last mask update (``-1``: update until the end of training).
        frequency: Optimizer steps between mask updates.
        lr_rewinding: Reshape the module's linear schedule: the learning rate rewinds after every mask
            update while the ramp runs, then decays linearly (pofa.md §3.7).
        pattern, allocation, include, exclude, output_dir, overwrite, storage_values, push_to_hub, hub_private:
            See ``SparseWeightsCallback``.
    """

    log_prefix = "gmp"

    def __init__(
        self,
        final_sparsity: float,
        initial_sparsity: float = 0.0,
        begin_step: int = 0,
        ramp_end_step: int = 1000,
        end_step: int = -1,
        frequency: int = 100,
        lr_rewinding: bool = False,
        pattern: str = "unstructured",
        allocation: str = "uniform",
        include: list[str] | None = None,
        exclude: list[str] = [],
        output_dir: str | None = None,
        overwrite: bool = False,
        storage_values: str | None = "float32",
        push_to_hub: str | None = None,
        hub_private: bool = False,
    ):
        self.schedule = CubicSparsitySchedule(
            initial_sparsity, final_sparsity, begin_step, ramp_end_step, end_step, frequency
        )
        super().__init__(
            include, exclude, pattern, allocation, output_dir, overwrite, storage_values, push_to_hub, hub_private
        )
        fixed = self.pattern.fixed_sparsity
        if fixed is not None and abs(final_sparsity - fixed) > 1e-9:
            raise ConfigError(
                f"pattern {self.pattern_spec} means {fixed:.0%} sparsity: set final_sparsity to {fixed} "
                f"(got {final_sparsity})"
            )
        self.lr_rewinding = lr_rewinding
        self.last_update: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        total = int(trainer.estimated_stepping_batches)
        if self.schedule.ramp_end_step > total:
            raise ConfigError(
                f"GradualMagnitudePruning reaches its target at step {self.schedule.ramp_end_step}, but the run has "
                f"only {total} optimizer steps: lower ramp_end_step or train longer."
            )
        if self.lr_rewinding:
            self._install_rewinding(trainer, pl_module, total)
        s = self.schedule
        rank_zero_info(
            f"GradualMagnitudePruning: {s.initial_sparsity:.0%} -> {s.final_sparsity:.0%} over steps "
            f"{s.begin_step}-{s.ramp_end_step}, masks updated every {s.frequency} steps until "
            f"{'the end' if s.end_step == -1 else s.end_step}, {total} steps in all"
        )

    def _install_rewinding(self, trainer: pl.Trainer, pl_module: pl.LightningModule, total: int) -> None:
        steps = getattr(pl_module, "lr_schedule_steps", None)
        configs = trainer.lr_scheduler_configs
        if steps is None or len(configs) != 1 or not hasattr(configs[0].scheduler, "lr_lambdas"):
            raise ConfigError("lr_rewinding needs the TaskModule's own warmup/linear-decay learning-rate schedule")
        scheduler = configs[0].scheduler
        s = self.schedule
        rewinding = RewindingLinearSchedule(steps[0], total, s.begin_step, s.ramp_end_step, s.frequency)
        for i, group in enumerate(scheduler.optimizer.param_groups):
            if group.get("scheduled", True):
                scheduler.lr_lambdas[i] = rewinding
                group["lr"] = scheduler.base_lrs[i] * rewinding(scheduler.last_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.last_update or not self.schedule.update_due(step):
            return
        self.masked.prune_to(self.schedule.sparsity(step))
        self.last_update = step
        self.log_per_layer(trainer)

    def _step_metrics(self) -> dict[str, float]:
        return {**super()._step_metrics(), "gmp/target_sparsity": self.target_now}

    @property
    def target_now(self) -> float:
        return self.schedule.sparsity(self.last_update) if self.last_update is not None else 0.0

    def _report(self, trainer: pl.Trainer) -> dict:
        s = self.schedule
        schedule = {
            "initial_sparsity": s.initial_sparsity,
            "final_sparsity": s.final_sparsity,
            "begin_step": s.begin_step,
            "ramp_end_step": s.ramp_end_step,
            "end_step": s.end_step,
            "frequency": s.frequency,
            "lr_rewinding": self.lr_rewinding,
        }
        return {**super()._report(trainer), "target_sparsity": s.final_sparsity, "schedule": schedule}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "last_update": self.last_update}

    def _load(self, state: dict) -> None:
        self.last_update = state.get("last_update")
        super()._load(state)
