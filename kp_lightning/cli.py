"""``train.py``'s LightningCLI: subclass mode, argument links, full config logged to every logger."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

import callbacks  # noqa: F401  (short class names on the command line: --trainer.callbacks+=SaveBestPretrained)
import kp_lightning.datamodules  # noqa: F401  (--data GlueDataModule)
import kp_lightning.modules  # noqa: F401  (--model TaskModule)


class LoggedSaveConfigCallback(SaveConfigCallback):
    """Write ``config.yaml`` to the log dir and log the fully resolved config as hyperparameters (W&B, CSV...)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.loggers and not (self.config.get("trainer") or {}).get("default_root_dir"):
            self.save_to_log_dir = False  # no logger and no root dir: nothing goes into the working directory
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_check=True))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class KPLightningCLI(LightningCLI):
    """LightningCLI with the links every kp_lightning run needs.

    * ``model.init_args.model_name_or_path`` → ``data.init_args.tokenizer`` (the model's own tokenizer);
    * ``data.task_spec`` → ``model.init_args.task_spec`` (head kind, number of labels, metrics, eval splits).
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer")
        parser.link_arguments("data.task_spec", "model.init_args.task_spec", apply_on="instantiate")

    def before_fit(self) -> None:
        """``fit --ckpt_path FILE``: give the trainer the checkpoint before its ``setup`` hooks run (Lightning
        only records it later), so callbacks that change the architecture, such as ``KPrune``, rebuild it from
        the checkpoint instead of recomputing it."""
        config = self.config_init[self.subcommand]
        path = config.get("ckpt_path")
        if path and Path(path).is_file():
            self.trainer.ckpt_path = path
            config.ckpt_path = None


PARSER_KWARGS = {"default_env": False, "exit_on_error": False}  # errors reach kp_lightning.command_errors


def build_cli(cli_class: type[KPLightningCLI], args: list[str] | None, run: bool) -> KPLightningCLI:
    """Parse ``args`` (``None`` reads ``sys.argv``) into model, data and trainer; run the subcommand if ``run``.

    Parse errors are raised (``jsonargparse.ArgumentError``), not printed with the whole usage: the commands
    print them as one block (:mod:`kp_lightning.command_errors`).
    """
    subcommands = dict.fromkeys(cli_class.subcommands(), PARSER_KWARGS) if run else {}
    with warnings.catch_warnings():  # the commands pass args on purpose and keep sys.argv for DDP's relaunch
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return cli_class(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=LoggedSaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={**PARSER_KWARGS, **subcommands},
            seed_everything_default=0,  # what `true` resolves to without PL_GLOBAL_SEED, minus the warning
            args=args,
            run=run,
        )


def main(args: list[str] | None = None, run: bool = True) -> KPLightningCLI:
    """Entry point of ``train.py`` (``args=None`` reads ``sys.argv``)."""
    return build_cli(KPLightningCLI, args, run)
