"""The sparse (GMP / PatternLock), int8 (QAT) and best-model exports write ``compression_report.json`` and a
Hub-ready ``README.md``; ``kp-lightning compare`` reads them; every exporting callback can push its finished export.

Real (tiny) training runs. No network: ``huggingface_hub.HfApi`` is replaced by a recorder where ``push_to_hub``
imports it (as in tests/test_hub_push.py), and offline mode is lifted only where a push is meant to get through.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import transformers
from huggingface_hub import ModelCard

from callbacks import CoFi, GradualMagnitudePruning, PatternLock, QuantizationAwareTraining, SaveBestPretrained
from callbacks.export_info import push_export
from kp_lightning import hub_push
from kp_lightning.compare import compare_exports, load_report
from kp_lightning.data.evaluation import evaluate_model
from kp_lightning.datamodules import GlueDataModule
from kp_lightning.errors import ConfigError
from kp_lightning.modules import DistillationModule, TaskModule
from kp_lightning.modules.model_loading import accepted_inputs
from kp_lightning.quantization import load_int8, strip_fake_quant
from tests.helpers import needs_onnx
from tests.text_fixtures import save_tiny_model, write_stsb

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
METRIC = "val/pearson"  # STS-B: a continuous metric, so equal values mean the same model was scored


class RecordingApi:
    """Stands in for ``huggingface_hub.HfApi``: records the calls and what the folder held at upload time."""

    calls: list = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        listing = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        self.calls.append(("upload_folder", kwargs, listing))


def go_online(mp: pytest.MonkeyPatch) -> type[RecordingApi]:
    """Lift offline mode for huggingface_hub and record the Hub calls instead of making them."""
    for name in hub_push.OFFLINE_VARIABLES:
        mp.delenv(name, raising=False)
    mp.setattr(hub_push.constants, "HF_HUB_OFFLINE", False)
    RecordingApi.calls = []
    mp.setattr(hub_push, "HfApi", RecordingApi)
    return RecordingApi


def uploads(calls: list) -> dict[str, tuple[dict, dict, list[str]]]:
    """repo id -> (create_repo kwargs, upload_folder kwargs, folder listing at upload)."""
    created = {call[1]: call[2] for call in calls if call[0] == "create_repo"}
    pushed = [call for call in calls if call[0] == "upload_folder"]
    return {upload["repo_id"]: (created[upload["repo_id"]], upload, listing) for _, upload, listing in pushed}


def fit(module, data, root: Path, callbacks: list, **kwargs) -> pl.Trainer:
    options = {"accelerator": "cpu", "max_steps": 6, "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
               "default_root_dir": str(root), **kwargs}  # fmt: skip
    trainer = pl.Trainer(callbacks=callbacks, **options)
    trainer.fit(module, datamodule=data)
    return trainer


def glue_data(glue: Path, tokenizer: Path) -> GlueDataModule:
    return GlueDataModule("stsb", data_dir=str(glue), tokenizer=str(tokenizer), batch_size=8, cache_dir=None)


def load_card(directory: Path) -> ModelCard:
    card = ModelCard.load(directory / "README.md")
    assert card.data.library_name == "transformers" and card.data.tags[0] == "kp-lightning"
    return card


def no_staging_left(directory: Path) -> None:
    assert not [p.name for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}.")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_reports")
    student = save_tiny_model(root / "student", "ForSequenceClassification", num_labels=1, **NO_DROPOUT)
    teacher = save_tiny_model(root / "teacher", "ForSequenceClassification", seed=1, num_labels=1)
    glue = write_stsb(root / "glue", n_train=32, n_dev=20)
    return root, student, teacher, glue


@pytest.fixture(scope="module")
def sparse_run(setup):
    """GMP while distilling, with SaveBestPretrained; both push their export (to the recorder)."""
    root, student, teacher, glue = setup
    out = root / "sparse_run"
    with pytest.MonkeyPatch.context() as mp:
        api = go_online(mp)
        data = glue_data(glue, student)
        module = DistillationModule(str(student), str(teacher), task_spec=data.task_spec, learning_rate=1e-3,
                                    warmup_ratio=0.0)  # fmt: skip
        gmp = GradualMagnitudePruning(0.5, ramp_end_step=4, frequency=2, output_dir=str(out / "sparse"),
                                      push_to_hub="org/tiny-gmp")  # fmt: skip
        best = SaveBestPretrained(dirpath=str(out / "best"), push_to_hub="org/tiny-best", hub_private=True)
        fit(module, data, out, [gmp, best])
        calls = list(api.calls)
    return out, module, data, calls


@pytest.fixture(scope="module")
def int8_run(setup, sparse_run):
    """Pattern-locked QAT of the sparse export (Prune Once for All's last step), without a teacher; the int8
    export is pushed. PatternLock exports while the fake quantization is still attached."""
    sparse = sparse_run[0] / "sparse"
    out = setup[0] / "int8_run"
    with pytest.MonkeyPatch.context() as mp:
        api = go_online(mp)
        data = glue_data(setup[3], sparse)
        module = TaskModule(str(sparse), task_spec=data.task_spec, learning_rate=1e-3, warmup_ratio=0.0)
        lock = PatternLock(output_dir=str(out / "locked"), storage_values=None)
        qat = QuantizationAwareTraining(output_dir=str(out / "int8"), push_to_hub="org/tiny-int8", hub_private=True)
        fit(module, data, out, [lock, qat], max_steps=4)
        calls = list(api.calls)
    return out / "int8", module, data, qat, calls


def scored(model, data, module) -> float:
    return evaluate_model(model, data.val_dataloader(), module.task, accepted_inputs(model))[METRIC]


def test_the_sparse_export_has_a_compression_report_with_the_compare_keys(sparse_run, setup):
    _, student, teacher, _ = setup
    out, module, data, _ = sparse_run
    export = out / "sparse"
    report = load_report(export)
    assert report["export"] == "sparse" and report["method"] == "GradualMagnitudePruning"
    assert (report["base_model"], report["task"], report["task_kind"]) == (str(student), "stsb", "regression")
    assert report["metric_name"] == METRIC
    # metric_dense: the teacher's score; metric_compressed: the exported model's, re-measured from the directory
    assert report["metric_dense_source"] == "teacher"
    assert report["metric_dense"] == pytest.approx(scored(module.teacher, data, module), abs=1e-6)
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(export).eval()
    assert report["metric_compressed"] == pytest.approx(scored(exported, data, module), abs=1e-6)
    assert report["metric_compressed"] != pytest.approx(report["metric_dense"], abs=1e-4)  # two different models
    assert report["metrics_compressed"][METRIC] == report["metric_compressed"]
    # zeros in place: same totals, half the encoder Linear weights gone from the non-zero count
    assert report["params_dense"] == report["params_compressed"] == exported.num_parameters()
    nonzero = sum(int((p != 0).sum()) for p in exported.parameters())
    assert report["nonzero_params_compressed"] == report["compressed"]["parameters"]["nonzero"] == nonzero
    assert report["nonzero_params_dense"] == report["reference"]["parameters"]["nonzero"] > nonzero
    assert report["sparsity"] == pytest.approx(0.5) and report["pattern"] == "unstructured"
    assert report["storage"]["sparse_file_bytes"] == (export / "sparse" / "sparse_model.safetensors").stat().st_size
    assert report["latency_speedup"] is None and report["ratios"]["encoder_flops_kept"] == 1.0
    # the sparsity report other code reads is still there, with the same numbers
    sparsity = json.loads((export / "sparsity_report.json").read_text())
    assert sparsity["sparsity"] == report["sparsity"] and sparsity["storage"] == report["storage"]
    assert hub_push.check_export_dir(export) == export
    no_staging_left(export)


def test_the_sparse_export_card_parses_with_hub_metadata(sparse_run):
    export = sparse_run[0] / "sparse"
    report = load_report(export)
    card = load_card(export)
    data = card.data
    assert data.pipeline_tag == "text-classification"
    assert {"gradual-magnitude-pruning", "prune-once-for-all", "pruned", "sparse"} <= set(data.tags)
    assert data.base_model is None  # a local directory is not a Hub id
    (result,) = data.eval_results
    assert (result.dataset_type, result.dataset_config, result.metric_type) == ("nyu-mll/glue", "stsb", "pearsonr")
    assert result.metric_value == pytest.approx(report["metric_compressed"])
    assert "Zeros in the pruned Linear weights: 50.0%" in card.text and "load_sparse" in card.text


def test_save_best_pretrained_writes_a_complete_export(sparse_run, setup):
    out = sparse_run[0] / "best"
    record = json.loads((out / "best_metric.json").read_text())
    report = load_report(out)
    assert report["export"] == "dense" and report["base_model"] == str(setup[1])
    assert (report["metric_name"], report["metric_compressed"]) == (record["monitor"], record["value"])
    assert report["compressed"]["class"] == "BertForSequenceClassification"
    data = load_card(out).data
    assert data.pipeline_tag == "text-classification" and data.eval_results[0].metric_value == record["value"]
    assert hub_push.check_export_dir(out) == out


def test_the_sparse_and_best_exports_are_pushed_once_complete(sparse_run):
    out, _, _, calls = sparse_run
    pushed = uploads(calls)
    assert set(pushed) == {"org/tiny-gmp", "org/tiny-best"}
    created, upload, listing = pushed["org/tiny-gmp"]
    assert created == {"private": False, "exist_ok": True, "repo_type": "model"}
    assert upload["folder_path"] == str(out / "sparse") and "GradualMagnitudePruning" in upload["commit_message"]
    assert {"README.md", "compression_report.json", "config.json", "model.safetensors", "sparsity_report.json",
            "sparse"} <= set(listing)  # fmt: skip
    created, upload, listing = pushed["org/tiny-best"]
    assert created["private"] is True and upload["folder_path"] == str(out / "best")
    assert {"README.md", "compression_report.json", "best_metric.json", "model.safetensors"} <= set(listing)


@needs_onnx
def test_the_int8_export_has_a_compression_report_with_the_int8_metric(int8_run, sparse_run):
    export, module, data, qat, _ = int8_run
    report = load_report(export)
    quant = json.loads((export / "quantization_report.json").read_text())  # still written, as before
    assert report["export"] == "int8" and report["method"] == "QuantizationAwareTraining"
    assert (report["base_model"], report["task"], report["metric_name"]) == (
        str(sparse_run[0] / "sparse"), "stsb", METRIC,
    )  # fmt: skip
    assert report["metric_compressed_source"] == "int8"
    assert report["metric_compressed"] == quant["metrics_int8"][METRIC] == report["metrics_int8"][METRIC]
    assert report["metric_compressed"] == pytest.approx(scored(load_int8(export), data, module), abs=1e-6)
    # no teacher: the dense reference is the trained float weights without fake quantization
    float_model = copy.deepcopy(module.model)
    assert strip_fake_quant(float_model) == len(qat.quantizer.module_names)
    assert report["metric_dense_source"] == "float_model"
    assert report["metric_dense"] == pytest.approx(scored(float_model, data, module), abs=1e-6)
    assert report["metric_dense"] != pytest.approx(report["metric_compressed"], abs=1e-6)  # quantization moved it
    assert report["metrics_fake_quant"] == quant["metrics_fake_quant"]
    assert report["params_dense"] == report["params_compressed"] == float_model.num_parameters()
    # pattern-locked: the float weights the int8 model came from are PatternLock's export, zeros included
    locked = load_report(export.parent / "locked")
    assert report["nonzero_params_compressed"] == locked["nonzero_params_compressed"]
    assert report["nonzero_params_compressed"] < 0.8 * report["params_compressed"]
    assert report["sparse_int8_storage"] == quant["sparse_int8_storage"]
    assert report["onnx_file_bytes"] == (export / "model.onnx").stat().st_size
    assert report["quantized_linears"] == quant["quantized_linears"] == len(qat.quantizer.module_names)
    assert qat.compression_report == report
    assert hub_push.check_export_dir(export) == export
    no_staging_left(export)


@needs_onnx
def test_pattern_lock_reports_the_float_model_it_exports_while_fake_quantization_is_attached(int8_run):
    export, module, data, qat, _ = int8_run
    locked = export.parent / "locked"
    report = load_report(locked)
    assert report["export"] == "sparse" and report["method"] == "PatternLock"
    assert report["locked_sparsity"] == pytest.approx(report["sparsity"]) and report["sparsity"] > 0.3
    assert report["metric_dense"] is None and report["metric_dense_source"] is None  # no teacher: not measured
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(locked).eval()
    assert report["metric_compressed"] == pytest.approx(scored(exported, data, module), abs=1e-6)
    # the float model, not the fake-quantized one (which QAT scored in the same run)
    fake = load_report(export)["metrics_fake_quant"][METRIC]
    assert report["metric_compressed"] != pytest.approx(fake, abs=1e-6)
    with torch.no_grad():  # the fake quantization is still attached to the trained model, and left there
        inputs = {"input_ids": torch.randint(5, 70, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
        assert not torch.equal(module.model.eval()(**inputs).logits, exported(**inputs).logits)
    assert load_card(locked).data.eval_results[0].metric_value == report["metric_compressed"]


@needs_onnx
def test_the_int8_card_parses_with_hub_metadata(int8_run):
    export = int8_run[0]
    card = load_card(export)
    assert card.data.pipeline_tag == "text-classification"
    assert {"quantization-aware-training", "int8", "quantized"} <= set(card.data.tags)
    (result,) = card.data.eval_results
    assert result.metric_value == pytest.approx(load_report(export)["metric_compressed"])
    assert "load_int8(path)" in card.text and "model.onnx" in card.text


@needs_onnx
def test_the_int8_export_is_pushed_once_complete(int8_run):
    export, *_, calls = int8_run
    ((repo, (created, upload, listing)),) = uploads(calls).items()
    assert repo == "org/tiny-int8" and created["private"] is True and upload["folder_path"] == str(export)
    assert {"README.md", "compression_report.json", "config.json", "model.onnx", "quantization.json",
            "quantization_report.json", "sparse_int8"} <= set(listing)  # fmt: skip


@needs_onnx
def test_compare_puts_the_sparse_and_int8_exports_in_one_table(sparse_run, int8_run):
    sparse, int8 = sparse_run[0] / "sparse", int8_run[0]
    markdown = compare_exports([sparse, int8])
    lines = [line for line in markdown.splitlines() if line.startswith("| ")][1:]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split(" | ")] for line in lines)}
    assert list(rows) == ["sparse", "int8"]
    s, q = load_report(sparse), load_report(int8)
    assert rows["sparse"][1:4] == ["GradualMagnitudePruning", "stsb", "pearson"]
    assert rows["sparse"][4] == f"{s['metric_dense']:.4f} → {s['metric_compressed']:.4f}"
    assert rows["sparse"][7] == f"{s['nonzero_params_dense']:,} → {s['nonzero_params_compressed']:,} non-zero"
    assert rows["sparse"][9] == f"{s['storage']['sparse_file_bytes'] / 1e3:.2f} kB"
    assert rows["int8"][1:4] == ["QuantizationAwareTraining", "stsb", "pearson"]
    assert rows["int8"][4] == f"{q['metric_dense']:.4f} → {q['metric_compressed']:.4f}"
    assert rows["int8"][7] == f"{q['params_dense']:,} → {q['params_compressed']:,}"
    assert rows["int8"][9] == f"{q['sparse_int8_storage']['sparse_file_bytes'] / 1e3:.2f} kB"
    assert "Not plotted, no measured latency speedup: sparse, int8." in markdown


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda **kw: SaveBestPretrained(**kw), id="SaveBestPretrained"),
        pytest.param(lambda **kw: GradualMagnitudePruning(0.5, **kw), id="GradualMagnitudePruning"),
        pytest.param(lambda **kw: PatternLock(**kw), id="PatternLock"),
        pytest.param(lambda **kw: CoFi(0.5, **kw), id="CoFi"),
        pytest.param(lambda **kw: QuantizationAwareTraining(**kw), id="QuantizationAwareTraining", marks=needs_onnx),
    ],
)
def test_a_push_that_cannot_succeed_is_refused_when_the_callback_is_built(build, monkeypatch):
    RecordingApi.calls = []
    monkeypatch.setattr(hub_push, "HfApi", RecordingApi)
    for bad in ("no-namespace", "a/b/c", "org/bad--name"):
        with pytest.raises(ConfigError, match="namespace/name|not valid") as info:
            build(push_to_hub=bad)
        assert "namespace/name" in info.value.fix
    with pytest.raises(ConfigError, match="offline mode") as info:  # tests/conftest.py sets HF_HUB_OFFLINE=1
        build(push_to_hub="org/name")
    assert "HF_HUB_OFFLINE" in info.value.fix
    assert build().push_to_hub is None and RecordingApi.calls == []


def test_a_failed_upload_keeps_the_export_and_says_how_to_retry(sparse_run, monkeypatch):
    class FailingApi(RecordingApi):
        def upload_folder(self, **kwargs):
            raise OSError("connection reset")

    export = sparse_run[0] / "sparse"
    with pytest.MonkeyPatch.context() as mp:
        go_online(mp)
        mp.setattr(hub_push, "HfApi", FailingApi)
        with pytest.raises(OSError, match="connection reset") as info:
            push_export("GradualMagnitudePruning", export, "org/tiny-gmp")
    assert any("is complete" in note and "push_to_hub" in note for note in info.value.__notes__)
    assert hub_push.check_export_dir(export) == export


def test_cofi_pushes_its_compact_export(setup, tmp_path):
    _, student, teacher, glue = setup
    with pytest.MonkeyPatch.context() as mp:
        api = go_online(mp)
        data = glue_data(glue, student)
        module = DistillationModule(str(student), str(teacher), task_spec=data.task_spec, alpha_ce=0.0, alpha_kd=0.1,
                                    learning_rate=1e-3)  # fmt: skip
        cofi = CoFi(0.5, prepruning_steps=1, warmup_steps=2, reg_learning_rate=0.2, latency_seconds=0,
                    latency_seq_len=32, output_dir=str(tmp_path / "cofi"), push_to_hub="org/tiny-cofi")  # fmt: skip
        fit(module, data, tmp_path, [cofi], max_steps=4)
        calls = list(api.calls)
    ((repo, (created, upload, listing)),) = uploads(calls).items()
    assert repo == "org/tiny-cofi" and upload["folder_path"] == str(tmp_path / "cofi")
    assert {"README.md", "compression_report.json", "config.json", "model.safetensors", "structure.png"} <= set(listing)
    assert "cofi" in upload["commit_message"] and load_report(tmp_path / "cofi")["method"] == "cofi"
