"""Bad input on the commands: one ``error:`` / ``fix:`` block, exit status 2, no traceback, nothing written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kp_lightning.command_errors import condense_argument_error, describe_user_error, format_error_block
from kp_lightning.commands import prune, train
from kp_lightning.errors import ConfigError, KPError
from tests.test_cli import REPO
from tests.text_fixtures import save_tiny_model, write_sst2

DEBUG_HINT = "(set KP_LIGHTNING_DEBUG=1 or pass --debug for the traceback)"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    model = save_tiny_model(root / "model", "ForSequenceClassification")
    glue = write_sst2(root / "glue", n_train=16, n_dev=8)
    return root, model, glue


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("KP_LIGHTNING_DEBUG", raising=False)


def test_the_commands_leave_sys_argv_for_the_ddp_relaunch(setup, tmp_path, capsys):
    root, model, glue = setup
    before = list(sys.argv)
    error_block(prune, prune_args(model, glue, tmp_path, "--pruner.flops_reduction", "1.5"), capsys)
    assert sys.argv == before  # Lightning's DDP launcher starts the other ranks from sys.argv


def prune_args(model: Path, glue: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["-c", "prune/kprune", "-c", str(REPO / "configs/data/glue/sst2.yaml"),
            "--model.init_args.model_name_or_path", str(model), "--data.init_args.data_dir", str(glue),
            "--data.init_args.cache_dir", "null", "--trainer.logger", "false", "--trainer.accelerator", "cpu",
            "--trainer.default_root_dir", str(tmp_path / "logs"), "--output_dir", str(tmp_path / "out"),
            "--pruner.num_tokens", "200", "--pruner.progress", "false", *extra]  # fmt: skip


def train_args(model: Path, glue: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", "-c", "finetune/glue", "-c", str(REPO / "configs/data/glue/sst2.yaml"),
            "--model.init_args.model_name_or_path", str(model), "--data.init_args.data_dir", str(glue),
            "--data.init_args.cache_dir", "null", "--trainer.logger", "false", "--trainer.accelerator", "cpu",
            "--trainer.default_root_dir", str(tmp_path / "logs"), "--trainer.max_steps", "1", *extra]  # fmt: skip


def error_block(command, args: list[str], capsys) -> list[str]:
    """Run ``command``; assert exit status 2 and return the block's lines (the end of stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        command(args, prog="kp-lightning test")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Given value" not in err and "Namespace(" not in err
    assert "LightningCLI's args parameter" not in err
    lines = err.strip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("error: "))
    block = lines[start:]
    assert block[-1] == DEBUG_HINT and len(block) <= 3, block
    return block


def test_a_flops_reduction_above_one_stops_before_the_model_loads(setup, tmp_path, capsys):
    root, model, glue = setup
    block = error_block(prune, prune_args(model, glue, tmp_path, "--pruner.flops_reduction", "1.5"), capsys)
    assert block[0].startswith("error: flops_reduction is the fraction of FLOPs to REMOVE") and "got 1.5" in block[0]
    assert block[1].startswith("fix: ") and "0.6" in block[1]
    assert not (tmp_path / "out").exists() and not (tmp_path / "logs").exists()


def test_a_missing_data_folder(setup, tmp_path, capsys):
    root, model, _ = setup
    block = error_block(prune, prune_args(model, tmp_path / "nowhere", tmp_path), capsys)
    assert block[0] == f"error: GLUE data_dir {tmp_path / 'nowhere'} does not exist"
    assert block[1].startswith("fix: point data_dir at the folder")
    assert not (tmp_path / "out").exists()


def test_a_malformed_tsv_row(setup, tmp_path, capsys):
    root, model, glue = setup
    bad = write_sst2(tmp_path / "glue", n_train=16, n_dev=8)
    dev = bad / "SST-2" / "dev.tsv"
    dev.write_text(dev.read_text() + "a row\twith\tthree fields\n")
    block = error_block(train, train_args(model, bad, tmp_path), capsys)
    assert block[0].startswith(f"error: {dev}, line 10: expected 2 tab-separated fields, found 3")
    assert "skip_malformed_rows" in block[1]


def test_a_cofi_target_of_zero(setup, tmp_path, capsys):
    root, model, glue = setup
    args = ["fit", "-c", "cofi/glue_cpu", "-c", str(REPO / "configs/data/glue/sst2.yaml"),
            "--model.init_args.model_name_or_path", str(model), "--model.init_args.teacher_name_or_path", str(model),
            "--data.init_args.data_dir", str(glue), "--trainer.logger", "false", "--trainer.default_root_dir",
            str(tmp_path / "logs"), "--trainer.callbacks.target_sparsity", "0"]  # fmt: skip
    block = error_block(train, args, capsys)
    assert (
        block[0] == "error: target_sparsity must be in (0, 1) (the fraction of encoder parameters to remove), got 0.0"
    )
    assert block[1].startswith("fix: a fraction such as 0.6")
    assert not (tmp_path / "logs").exists()


def test_a_hub_name_while_offline(setup, tmp_path, capsys, monkeypatch):
    root, model, glue = setup
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    block = error_block(prune, prune_args("kp-test/no-such-model", glue, tmp_path), capsys)
    assert block[0].startswith("error: cannot load ") and "'kp-test/no-such-model'" in block[0]
    assert block[1].startswith("fix: HF_HUB_OFFLINE is set")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--pruner.flops_reduction", "abc"], "error: pruner.flops_reduction: Expected a float. Got value: abc"),
        (
            ["--model.init_args.no_such_option", "1"],
            "error: model: TaskModule: Option 'no_such_option' is not accepted",
        ),
        (["--pruner.sample_draw", "mine"], "error: pruner.sample_draw: Expected a Literal['ours', 'reference']"),
    ],
)
def test_argument_validation_errors_are_one_block(setup, tmp_path, capsys, extra, expected):
    root, model, glue = setup
    block = error_block(prune, prune_args(model, glue, tmp_path, *extra), capsys)
    assert block[0].startswith(expected), block
    assert block[1] == "fix: see `kp-lightning test --help` for the accepted arguments"


def test_an_unknown_recipe_name(setup, tmp_path, capsys):
    root, model, glue = setup
    args = prune_args(model, glue, tmp_path)
    args[1] = "prune/kprun"
    block = error_block(prune, args, capsys)
    assert block[0] == "error: config 'prune/kprun' is neither a file nor a shipped recipe"
    assert "kp-lightning configs list" in block[1]


def test_debug_shows_the_traceback(setup, tmp_path, monkeypatch):
    root, model, glue = setup
    args = prune_args(model, glue, tmp_path, "--pruner.flops_reduction", "1.5")
    with pytest.raises(KPError, match="fraction of FLOPs to REMOVE"):
        prune([*args, "--debug"], prog="prune.py")
    monkeypatch.setenv("KP_LIGHTNING_DEBUG", "1")
    with pytest.raises(KPError, match="fraction of FLOPs to REMOVE"):
        prune(args, prog="prune.py")


def test_bugs_keep_their_traceback():
    assert describe_user_error(RuntimeError("a bug"), "prog") is None
    assert describe_user_error(KeyError("x"), "prog") is None
    wrapped = ValueError("wrapper")
    wrapped.__cause__ = ConfigError("what", fix="how")
    assert describe_user_error(wrapped, "prog") == ("what", "how")


def test_condensed_union_message_keeps_only_the_reason():
    message = (
        'Parser key "data":\n  Does not validate against any of the Union subtypes\n  Subtypes: [<class '
        "'lightning.pytorch.core.datamodule.LightningDataModule'>, <class 'NoneType'>]\n  Errors:\n    - Problem "
        "with given class_path 'kp_lightning.datamodules.GlueDataModule':\n        Option 'x' is not accepted\n"
        "    - Expected a <class 'NoneType'>\n  Given value type: <class 'dict'>\n  Given value: {'x': 1}"
    )
    assert condense_argument_error(message) == "data: GlueDataModule: Option 'x' is not accepted"
    assert format_error_block("what", None) == f"error: what\n{DEBUG_HINT}"


def test_a_bad_push_target_is_refused_before_the_model_loads(setup, tmp_path, capsys):
    root, model, glue = setup
    block = error_block(prune, prune_args(model, glue, tmp_path, "--push_to_hub", "no-namespace"), capsys)
    assert "namespace/name" in " ".join(block) and not (tmp_path / "out").exists()
