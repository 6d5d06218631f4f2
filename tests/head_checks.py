"""Exactness of one task head on every architecture: masked == compact == reloaded (ours and stock transformers
in a fresh process), and the dense export."""

from __future__ import annotations

import json

import torch
import transformers
from safetensors.torch import save_file

from kp_lightning import attach_masks, compact, export_compact, export_dense, load_compressed
from kp_lightning.core.adapter import EncoderAdapter
from tests.helpers import ARCHS, PREFIX, edge_case_masks, tiny_model
from tests.test_export import make_tokenizer, run_fresh_python

ATOL = 1e-5


def check_compact_exports(tmp_path, task: str, batch: dict, auto_class: str) -> None:
    """For every architecture, with a layer of 0 heads, one of 0 neurons, soft values and hidden pruning."""
    tokenizer = make_tokenizer(tmp_path)
    for arch in ARCHS:
        model = tiny_model(arch, task)
        masks = edge_case_masks(model)
        with attach_masks(model, masks):
            masked = model(**batch).logits
        small = compact(model, masks).eval()
        shape = EncoderAdapter(small).shape()
        assert shape.heads[1] == 0 and shape.neurons[2] == 0 and shape.hidden_size < 32
        torch.testing.assert_close(small(**batch).logits, masked, atol=ATOL, rtol=0)
        out = export_compact(model, tmp_path / arch, masks=masks, tokenizer=tokenizer, method="unit")
        config = json.loads((out / "config.json").read_text())
        assert config["auto_map"][auto_class] == f"modeling_kp.KP{PREFIX[arch]}{task}"
        loaded = load_compressed(out).eval()
        assert type(loaded).__name__ == f"KP{PREFIX[arch]}{task}"
        torch.testing.assert_close(loaded(**batch).logits, masked, atol=ATOL, rtol=0)
        save_file({"expected": masked.contiguous(), **batch}, str(tmp_path / f"{arch}.safetensors"))
    stdout = run_fresh_python(
        f"""
        import sys, torch, transformers
        from safetensors.torch import load_file
        for arch in {list(ARCHS)!r}:
            io = load_file(arch + ".safetensors")
            model = transformers.{auto_class}.from_pretrained(arch, trust_remote_code=True).eval()
            logits = model(input_ids=io["input_ids"], attention_mask=io["attention_mask"]).logits
            print(arch, type(model).__name__, "maxdiff", (logits - io["expected"]).abs().max().item())
        print("imported", "kp_lightning" in sys.modules)
        """,
        tmp_path,
    )
    assert "imported False" in stdout
    for arch in ARCHS:
        line = next(row for row in stdout.splitlines() if row.startswith(arch + " "))
        assert line.split()[1] == f"KP{PREFIX[arch]}{task}"
        assert float(line.split("maxdiff ")[1]) < ATOL, line


def check_dense_exports(tmp_path, task: str, batch: dict) -> None:
    """The dense export (zeros for pruned units, a removed sublayer included) loads with the plain Auto class."""
    for arch in ARCHS:
        model = tiny_model(arch, task)
        masks = edge_case_masks(model, prune_hidden=False)
        with attach_masks(model, masks):
            masked = model(**batch).logits
        out = export_dense(model, tmp_path / f"dense-{arch}", masks=masks)
        auto = getattr(transformers, "AutoModel" + task)
        loaded = auto.from_pretrained(out).eval()
        assert type(loaded).__name__ == f"{PREFIX[arch]}{task}"
        torch.testing.assert_close(loaded(**batch).logits, masked, atol=ATOL, rtol=0)
