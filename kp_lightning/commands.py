"""``kp-lightning``: the installed command (``train``, ``prune``, ``demo``, ``compare``, ``configs``).

``train.py`` and ``prune.py`` in a checkout are thin wrappers of ``train`` and ``prune``. Every command
reports bad input as one ``error:`` / ``fix:`` block and exits with status 2 (``--debug`` for the traceback).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from kp_lightning.command_errors import format_error_block, run_command
from kp_lightning.errors import ConfigError
from kp_lightning.recipe_files import copy_recipe, list_recipes, recipe_path, resolve_config_args

PROG = "kp-lightning"
DEMO_WORKDIR = "outputs/demo"
USAGE = f"""usage: {PROG} <command> [arguments]

commands:
  train     fine-tune, distill (CoFi, GMP, QAT via callbacks), validate, test:  {PROG} train fit -c <config>
  prune     retraining-free pruning (K-prune, Kwon et al.) and export:         {PROG} prune -c kprune ...
  demo      the offline demo: build and train a small encoder, prune it, export it
  compare   table and Pareto plot of several exports:                         {PROG} compare DIR [DIR ...]
  configs   the shipped recipes: {PROG} configs list | show NAME | copy NAME [DEST]

-c/--config takes a file or a recipe name (`{PROG} configs list`). `{PROG} <command> --help` for its options.
"""


def train(argv: list[str], prog: str = f"{PROG} train") -> object:
    """LightningCLI ``fit|validate|test`` (``train.py``)."""
    from kp_lightning.cli import main

    return run_command(main, prog, argv, prepare=resolve_config_args)


def prune(argv: list[str], prog: str = f"{PROG} prune") -> object:
    """Evaluate, prune without retraining, evaluate, export (``prune.py``)."""
    from kp_lightning.prune_cli import main

    return run_command(main, prog, argv, prepare=resolve_config_args)


def demo(argv: list[str], prog: str = f"{PROG} demo") -> object:
    """Build the demo model in ``--workdir`` (default ``outputs/demo``), then prune it with the demo recipe.

    Other arguments go to ``prune`` (e.g. ``--pruner.flops_reduction 0.5``).
    """
    workdir, rest = _pop_option(argv, "--workdir", DEMO_WORKDIR)

    def run(args: list[str]) -> object:
        from kp_lightning.demo import prepare_demo
        from kp_lightning.prune_cli import main

        prepare_demo(workdir)
        return main(args)

    args = ["--config", str(recipe_path("demo")), *demo_overrides(workdir), *rest]
    return run_command(run, prog, args, prepare=resolve_config_args)


def demo_overrides(workdir: str) -> list[str]:
    """The demo recipe's paths moved under ``workdir``."""
    root = Path(workdir)
    return [
        f"--model.init_args.model_name_or_path={root / 'teacher'}",
        f"--data.init_args.train_file={root / 'data' / 'train.tsv'}",
        f"--data.init_args.validation_file={root / 'data' / 'dev.tsv'}",
        f"--trainer.logger.init_args.save_dir={root / 'logs'}",
        f"--output_dir={root / 'pruned'}",
    ]


def compare(argv: list[str], prog: str = f"{PROG} compare") -> object:
    """Markdown table and PNG of several exports' ``compression_report.json``."""
    from kp_lightning.compare import main

    return run_command(main, prog, argv)


def configs(argv: list[str], prog: str = f"{PROG} configs") -> object:
    """``list`` the recipes, ``show NAME`` one, ``copy NAME [DEST]`` one into the working directory."""

    def run(args: list[str]) -> None:
        action, *names = args or ["list"]
        if action == "list":
            print("\n".join(list_recipes()))
        elif action == "show" and len(names) == 1:
            print(recipe_path(names[0]).read_text(), end="")
        elif action == "path" and len(names) == 1:
            print(recipe_path(names[0]))
        elif action == "copy" and len(names) in (1, 2):
            print(copy_recipe(names[0], names[1] if len(names) == 2 else Path.cwd()))
        else:
            raise ConfigError(
                f"unknown `configs` arguments: {' '.join(args)}",
                fix=f"{prog} list | show NAME | path NAME | copy NAME [DEST]",
            )

    return run_command(run, prog, argv)


COMMANDS: dict[str, Callable[[list[str]], object]] = {
    "train": train,
    "prune": prune,
    "demo": demo,
    "compare": compare,
    "configs": configs,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kp-lightning`` console script; returns the exit status (errors exit with 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(format_error_block(f"unknown command {command!r}", f"one of: {', '.join(COMMANDS)}"), file=sys.stderr)
        raise SystemExit(2)
    COMMANDS[command](rest)
    return 0


def _pop_option(argv: list[str], flag: str, default: str) -> tuple[str, list[str]]:
    value, rest, i = default, [], 0
    while i < len(argv):
        if argv[i] == flag and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith(flag + "="):
            value = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    return value, rest
