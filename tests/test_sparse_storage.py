"""Sparse on-disk storage: exact round trips, lossy value dtypes, sizes, and refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from kp_lightning.sparsity.patterns import magnitude_mask
from kp_lightning.sparsity.storage import (
    REPORT_FILE,
    SPARSE_FILE,
    SparseStorageError,
    load_sparse,
    pack_bits,
    save_sparse,
    sparse_state_dict,
    unpack_bits,
)
from tests.helpers import tiny_batch, tiny_model


def sparse_model(arch: str = "bert", task: str = "ForSequenceClassification", sparsity: float = 0.9):
    """A tiny model whose encoder Linear weights have their smallest ``sparsity`` fraction set to exact zero."""
    model = tiny_model(arch, task)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layer." in name:
                module.weight.mul_(magnitude_mask(module.weight, sparsity))
    return model


def stored_encodings(path) -> dict[str, str]:
    with safe_open(path / SPARSE_FILE, framework="pt") as handle:
        metadata = handle.metadata()
    return {name: json.loads(text)["encoding"] for name, text in metadata.items() if name.count(".")}


def sparse_names(model) -> list[str]:
    return [
        name for name, tensor in model.state_dict().items() if tensor.dim() == 2 and (tensor == 0).float().mean() > 0.8
    ]


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (32, 37), (37, 32), (4, 8)])
def test_bit_packing_round_trips_any_element_count(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_bits(packed, list(shape)), mask)


@pytest.mark.parametrize(
    ("arch", "task"),
    [
        ("bert", "ForSequenceClassification"),
        ("roberta", "ForSequenceClassification"),
        ("distilbert", "ForSequenceClassification"),
        ("bert", "ForMaskedLM"),
    ],
)
def test_float32_round_trip_is_bit_exact(tmp_path, arch, task):
    model = sparse_model(arch, task)
    report = save_sparse(model, tmp_path / "out")
    loaded = load_sparse(tmp_path / "out")
    assert type(loaded) is type(model) and not loaded.training
    original = model.state_dict()
    assert original.keys() == loaded.state_dict().keys()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    batch = tiny_batch()
    with torch.no_grad():  # config.json does not keep the attention implementation: sdpa by default
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=1e-6, rtol=0)
        loaded.set_attn_implementation(model.config._attn_implementation)
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    encodings = stored_encodings(tmp_path / "out")
    assert sorted(name for name, kind in encodings.items() if kind == "bitmask") == sorted(sparse_names(model))
    assert report["sparse_tensors"] == len(sparse_names(model)) > 0
    assert report == json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    if task == "ForMaskedLM":  # tied decoder stored once, re-tied at load
        assert encodings["cls.predictions.decoder.weight"] == "tied"
        with safe_open(tmp_path / "out" / SPARSE_FILE, framework="pt") as handle:
            stored_names = handle.keys()
        assert "cls.predictions.decoder.weight" not in stored_names
        assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight


def test_sparse_weights_are_much_smaller_than_dense(tmp_path):
    model = sparse_model("bert", "ForMaskedLM")
    report = save_sparse(model, tmp_path / "out")
    assert report["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert report["sparse_stored_bytes"] <= 0.25 * 4 * report["sparse_elements"]
    state = model.state_dict()
    tied_once = sum(t.numel() * 4 for n, t in state.items() if n != "cls.predictions.decoder.weight")
    assert report["dense_fp32_bytes"] == tied_once - 4 * state["cls.predictions.bias"].numel()
    assert report["sparse_file_bytes"] == (tmp_path / "out" / SPARSE_FILE).stat().st_size
    assert report["ratio"] == report["sparse_file_bytes"] / report["dense_fp32_bytes"] < 1
    smaller = save_sparse(model, tmp_path / "int8", values="int8", others="int8")
    assert smaller["sparse_file_bytes"] < 0.6 * report["sparse_file_bytes"]  # tiny file: the header weighs


def test_float16_values_equal_half_precision_weights(tmp_path):
    model = sparse_model("roberta")
    save_sparse(model, tmp_path / "out", values="float16")
    state, original = sparse_state_dict(tmp_path / "out"), model.state_dict()
    assert state.keys() == original.keys()
    sparse = sparse_names(model)
    for name, tensor in original.items():
        expected = tensor.half().float() if name in sparse else tensor
        assert torch.equal(state[name], expected) and state[name].dtype == tensor.dtype, name
        assert torch.equal(state[name] == 0, tensor == 0) or name not in sparse


def test_int8_values_use_given_scales_exactly_and_keep_the_mask(tmp_path):
    model = sparse_model("distilbert")
    sparse = sparse_names(model)
    given = sparse[0]
    scale = 0.0123
    weight = model.state_dict()[given]
    with torch.no_grad():  # a QAT fake-quantized weight: exactly q * scale, plus one non-zero that rounds to 0
        fake_quant = torch.clamp(torch.round(weight / scale), -128, 127) * torch.tensor(scale)
        weight.copy_(torch.where(weight != 0, fake_quant, weight))
        index = (weight != 0).nonzero()[0].tolist()
        weight[index[0], index[1]] = 1e-6
    save_sparse(model, tmp_path / "out", values="int8", weight_scales={given: scale})
    state = sparse_state_dict(tmp_path / "out")
    expected = weight.clone()
    expected[index[0], index[1]] = 0
    assert torch.equal(state[given], expected)
    with safe_open(tmp_path / "out" / SPARSE_FILE, framework="pt") as handle:
        mask = unpack_bits(handle.get_tensor(f"{given}/mask"), list(weight.shape))
        assert torch.equal(mask, weight != 0) and handle.get_tensor(f"{given}/values").dtype == torch.int8
    other = model.state_dict()[sparse[1]]
    own_scale = torch.tensor(other.abs().max().item() / 127, dtype=torch.float32)
    assert torch.equal(state[sparse[1]], torch.clamp(torch.round(other / own_scale), -128, 127) * own_scale)
    assert all(torch.equal(state[n], t) for n, t in model.state_dict().items() if n not in sparse)


def test_int8_others_are_per_row(tmp_path):
    model = sparse_model("bert")
    save_sparse(model, tmp_path / "out", others="int8")
    state, original = sparse_state_dict(tmp_path / "out"), model.state_dict()
    embeddings = original["bert.embeddings.word_embeddings.weight"]
    row_scale = embeddings.abs().amax(dim=1, keepdim=True) / 127
    assert (state["bert.embeddings.word_embeddings.weight"] - embeddings).abs().le(row_scale / 2 + 1e-7).all()
    norm = "bert.embeddings.LayerNorm.weight"
    assert torch.equal(state[norm], original[norm].half().float())
    loaded = load_sparse(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**tiny_batch()).logits, model(**tiny_batch()).logits, atol=0.05, rtol=0)


def test_weights_below_min_sparsity_stay_dense(tmp_path):
    model = sparse_model("bert", sparsity=0.4)
    report = save_sparse(model, tmp_path / "default")
    assert report["sparse_tensors"] == 0 and set(stored_encodings(tmp_path / "default").values()) == {"dense"}
    report = save_sparse(model, tmp_path / "low", min_sparsity=0.3)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layer." in n]
    assert report["sparse_tensors"] == len(linears) == 18
    encodings = stored_encodings(tmp_path / "low")
    assert encodings["classifier.weight"] == "dense" and encodings["bert.pooler.dense.weight"] == "dense"
    assert encodings["bert.embeddings.word_embeddings.weight"] == "dense"  # an Embedding, not a Linear


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"values": "int4"}, "values='int4'"),
        ({"others": "bfloat16"}, "others='bfloat16'"),
        ({"min_sparsity": 1.5}, "min_sparsity"),
        ({"weight_scales": {"classifier.weight": 0.1}, "values": "int8"}, "not weights stored sparse"),
        ({"weight_scales": {"bert.encoder.layer.0.output.dense.weight": 0.0}, "values": "int8"}, "positive"),
        ({"weight_scales": {"bert.encoder.layer.0.output.dense.weight": float("nan")}, "values": "int8"}, "positive"),
        ({"weight_scales": {"bert.encoder.layer.0.output.dense.weight": 0.1}}, "values='int8'"),
    ],
)
def test_bad_options_are_refused_and_write_nothing(tmp_path, options, message):
    with pytest.raises(SparseStorageError, match=message):
        save_sparse(sparse_model("bert"), tmp_path / "out", **options)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_directory(tmp_path):
    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_sparse(sparse_model("bert"), tmp_path / "out", tokenizer=BrokenTokenizer())
    assert list(tmp_path.iterdir()) == []


def test_non_empty_output_dir_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    model = sparse_model("bert")
    with pytest.raises(SparseStorageError, match="not empty"):
        save_sparse(model, out)
    assert (out / "keep.txt").read_text() == "mine"
    save_sparse(model, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", SPARSE_FILE, REPORT_FILE])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_load_refuses_unknown_architecture_and_foreign_files(tmp_path):
    save_sparse(sparse_model("bert"), tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    config["architectures"] = ["NoSuchModel"]
    (tmp_path / "out" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SparseStorageError, match="NoSuchModel"):
        load_sparse(tmp_path / "out")
    tiny_model("bert", "ForSequenceClassification").save_pretrained(tmp_path / "dense")
    with pytest.raises(SparseStorageError, match="does not exist"):
        sparse_state_dict(tmp_path / "dense")
    with pytest.raises(SparseStorageError, match="not a version-1 sparse file"):
        sparse_state_dict(tmp_path / "dense" / "model.safetensors")
