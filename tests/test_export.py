"""Export directories: both loading paths give the masked model's outputs; only safetensors/JSON on disk."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers

from kp_lightning import (
    EncoderAdapter,
    ExportError,
    StructuralMasks,
    attach_masks,
    export_compact,
    export_dense,
    load_compressed,
)
from tests.helpers import ARCHS, PREFIX, TASKS, edge_case_masks, main_output, tiny_batch, tiny_model

AUTO = {
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "ForMaskedLM": "AutoModelForMaskedLM",
    "Model": "AutoModel",
}
ALLOWED_SUFFIXES = {".safetensors", ".json", ".py", ".md", ".txt"}


def make_tokenizer(tmp_path: Path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    return transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))


def masked_reference(model, masks, batch):
    with attach_masks(model, masks):
        out = main_output(model(**batch))
    return out if out.dim() < 3 or "Model" not in type(model).__name__ else out[..., masks.hidden != 0]


def run_fresh_python(code: str, tmp_path: Path) -> str:
    """Run ``code`` in a new interpreter that cannot import kp_lightning (repo not on its path)."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH"}}
    env["HF_HOME"] = str(tmp_path / "hf_home")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("task", TASKS)
def test_compact_export_reloads_through_our_api(tmp_path, arch, task):
    model = tiny_model(arch, task)
    masks = edge_case_masks(model)
    batch = tiny_batch()
    expected = masked_reference(model, masks, batch)
    out = export_compact(model, tmp_path / "export", masks=masks, tokenizer=make_tokenizer(tmp_path), method="unit")
    files = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "README.md",
        "compression_report.json",
        "modeling_kp.py",
        "configuration_kp.py",
        "layouts.py",
        "layout_fields.py",
        "fused_attention.py",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= files
    assert all(Path(f).suffix in ALLOWED_SUFFIXES for f in files), files
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == f"kp_{arch}"
    assert config["kp_structure"]["heads"][1] == 0 and config["kp_structure"]["intermediate"][2] == 0
    assert config["auto_map"][AUTO[task]].startswith("modeling_kp.KP")
    report = json.loads((out / "compression_report.json").read_text())
    assert report["method"] == "unit" and report["export"] == "compact"
    assert report["ratios"]["encoder_flops_kept"] < 1
    assert "kp_lightning" in (out / "README.md").read_text()

    loaded = load_compressed(out).eval()
    assert type(loaded).__name__ == f"KP{PREFIX[arch]}{task}"
    torch.testing.assert_close(main_output(loaded(**batch)), expected, atol=1e-5, rtol=0)


STOCK_HEADS = ("Model", "ForSequenceClassification", "ForQuestionAnswering", "ForTokenClassification", "ForMaskedLM")


@pytest.mark.parametrize("arch", ARCHS)
def test_compact_export_loads_with_stock_auto_class_in_fresh_process(tmp_path, arch):
    """Every head's compact export loads with ``AutoModel[For<Task>].from_pretrained(dir, trust_remote_code=True)``
    in a process that never imports kp_lightning, and gives the masked model's outputs."""
    from safetensors.torch import save_file

    batch = tiny_batch()
    for head in STOCK_HEADS:
        model = tiny_model(arch, head)
        masks = edge_case_masks(model)
        expected = masked_reference(model, masks, batch)  # a bare model's: the kept hidden dims
        export_compact(model, tmp_path / f"export_{head}", masks=masks)
        save_file({"expected": expected.contiguous(), **batch}, str(tmp_path / f"io_{head}.safetensors"))
    stdout = run_fresh_python(
        f"""
        import sys, torch, transformers
        from safetensors.torch import load_file
        for head in {list(STOCK_HEADS)!r}:
            io = load_file(f"io_{{head}}.safetensors")
            auto = getattr(transformers, "AutoModel" + ("" if head == "Model" else head))
            model = auto.from_pretrained(f"export_{{head}}", trust_remote_code=True)
            output = model.eval()(input_ids=io["input_ids"], attention_mask=io["attention_mask"])[0]
            print(head, "maxdiff", (output - io["expected"]).abs().max().item(), type(model).__name__)
        print("imported", "kp_lightning" in sys.modules)
        """,
        tmp_path,
    )
    assert "imported False" in stdout
    for head in STOCK_HEADS:
        line = next(line for line in stdout.splitlines() if line.startswith(f"{head} maxdiff"))
        _, _, diff, name = line.split()
        assert float(diff) < 1e-5, line
        assert name == f"KP{PREFIX[arch]}{head}"


@pytest.mark.parametrize("arch", ARCHS)
def test_dense_export_loads_with_plain_auto_model(tmp_path, arch):
    model = tiny_model(arch, "ForSequenceClassification")
    masks = edge_case_masks(model, prune_hidden=False)  # layer 1 loses its attention, layer 2 its FFN
    batch = tiny_batch()
    expected = masked_reference(model, masks, batch)
    out = export_dense(model, tmp_path / "dense", masks=masks)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == arch and "auto_map" not in config
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(loaded).__name__ == f"{PREFIX[arch]}ForSequenceClassification"
    torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-5, rtol=0)
    view = EncoderAdapter(loaded).layers[0]
    pruned = (masks.neuron[0] == 0).nonzero().flatten()
    assert torch.all(view.ffn_down.weight[:, pruned] == 0)
    assert json.loads((out / "compression_report.json").read_text())["export"] == "dense"


def test_dense_export_refuses_what_a_stock_model_cannot_express(tmp_path):
    model = tiny_model("bert", "ForSequenceClassification")
    with pytest.raises(ExportError, match="hidden-dimension"):
        export_dense(model, tmp_path / "a", masks=edge_case_masks(model))
    assert not (tmp_path / "a").exists()


def test_export_refuses_non_empty_directory_and_overwrites_on_request(tmp_path):
    model = tiny_model("bert", "ForSequenceClassification")
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(ExportError, match="not empty"):
        export_compact(model, target)
    assert (target / "keep.txt").exists()
    export_compact(model, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").exists()


def test_failed_export_leaves_no_directory_behind(tmp_path):
    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise RuntimeError("disk full")

    model = tiny_model("bert", "ForSequenceClassification")
    with pytest.raises(RuntimeError, match="disk full"):
        export_compact(model, tmp_path / "out", tokenizer=BrokenTokenizer())
    assert list(tmp_path.iterdir()) == []


def test_load_compressed_rejects_a_non_export(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ExportError, match="needs config.json and model.safetensors"):
        load_compressed(tmp_path)


def test_unmasked_compact_export_of_dense_model_is_identical(tmp_path):
    model = tiny_model("roberta", "ForMaskedLM")
    batch = tiny_batch()
    loaded = load_compressed(export_compact(model, tmp_path / "e")).eval()
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=1e-6, rtol=0)
    assert EncoderAdapter(loaded).shape() == EncoderAdapter(model).shape()
    ones = StructuralMasks.ones(EncoderAdapter(model).shape())
    assert ones.to_structure(EncoderAdapter(model).shape()).kept_counts()["heads"] == [4, 4, 4]
