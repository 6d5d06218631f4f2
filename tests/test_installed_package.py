"""The package as a user installs it: a (non-editable) install into a fresh virtualenv, used from an empty folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv

import pytest

from tests.test_cli import REPO

ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": ""}
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", "outputs", "wandb",
                                     "lightning_logs", ".pytest_cache", ".ruff_cache", "results", ".work")  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A virtualenv (using this interpreter's packages for the dependencies) with kp_lightning installed from
    a copy of the checkout, and an empty working folder."""
    root = tmp_path_factory.mktemp("installed")
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=COPY_IGNORE)
    env_dir = root / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    install = [*pip, "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", str(source)]
    result = subprocess.run(install, capture_output=True, text=True, timeout=600, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    workdir = root / "empty"
    workdir.mkdir()
    return env_dir, workdir


def run(installed, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env_dir, workdir = installed
    env = {**os.environ, **ENV, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(list(args), cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_the_installed_command_runs_help_recipes_and_the_demo_from_an_empty_folder(installed):
    env_dir, workdir = installed
    where = run(installed, "python", "-c", "import kp_lightning; print(kp_lightning.__file__)").stdout
    assert where.strip().startswith(str(env_dir)), where  # the installed copy, not the checkout
    assert "commands:" in run(installed, "kp-lightning", "--help").stdout
    assert "--pruner.flops_reduction" in run(installed, "kp-lightning", "prune", "--help").stdout
    recipes = run(installed, "kp-lightning", "configs", "list").stdout.split()
    assert {"prune/kprune", "cofi/glue_cpu", "pofa/qat_glue_cpu", "demo"} <= set(recipes)
    run(installed, "kp-lightning", "configs", "copy", "kprune")
    assert (workdir / "kprune.yaml").read_text().startswith("# K-prune")

    result = run(installed, "kp-lightning", "demo")
    assert "val/accuracy: dense" in result.stdout and "measured CPU latency speedup" in result.stdout
    assert "LightningCLI's args parameter" not in result.stderr
    report = json.loads((workdir / "outputs/demo/pruned/compression_report.json").read_text())
    assert report["flops_reduction_actual"] == pytest.approx(0.6, abs=0.02)
    assert report["metric_dense"] > 0.75  # the demo model learned its task, so pruning has something to lose
    assert (workdir / "outputs/demo/pruned/structure.png").exists()
    assert sorted(p.name for p in workdir.iterdir()) == ["kprune.yaml", "outputs"]  # no stray config.yaml

    bad = run(installed, "kp-lightning", "prune", "-c", "kprune", "--pruner.flops_reduction", "1.5", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-3].startswith("error: ")
