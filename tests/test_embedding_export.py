"""Every export of a sentence-embedding model is a sentence-transformers folder that pools as the model did.

One fresh interpreter (kp_lightning blocked from import, repository not on its path) loads every export directory
built here with ``SentenceTransformer`` and writes the embeddings; each test compares one directory's with the
masked / sparse model's own pooled embeddings of the same tokenization.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from kp_lightning import attach_masks, export_compact, export_dense
from kp_lightning.core.compaction import compact
from kp_lightning.embedding.loading import load_embedding_model
from kp_lightning.embedding.pooling import Pooling, model_pooling, pool, set_model_pooling
from kp_lightning.embedding.st_export import embedding_dimension, write_embedding_files
from kp_lightning.embedding.st_folder import MODULES_FILE, SBERT_CONFIG, read_sentence_transformers_dir
from kp_lightning.sparsity.masked_weights import MaskedWeights
from kp_lightning.sparsity.sparse_export import SPARSE_SUBDIR, write_sparse_model
from kp_lightning.sparsity.storage import load_sparse
from kp_lightning.sparsity.weight_selection import select_linear_names
from tests.helpers import PREFIX, all_removed_masks, edge_case_masks, needs_onnx, tiny_batch, tiny_model
from tests.text_fixtures import tiny_tokenizer

TEXTS = ["the movie was good", "A plot.", "nice cast, awful story!", "  dull  ", "the story was great, 10/10"]
MEAN = Pooling("mean", True, 64)
COMPACT_ST_ARCHS = ("bert", "roberta", "distilbert", "mpnet")  # mpnet: all-mpnet-base-v2's architecture


def embedding_model(arch: str, pooling: Pooling = MEAN, seed: int = 0):
    model = tiny_model(arch, "Model", seed=seed)
    set_model_pooling(model, pooling)
    return model


def tokenized(arch: str) -> dict:
    """What sentence-transformers feeds the model for TEXTS (one batch: padded to the longest text)."""
    batch = dict(tiny_tokenizer()([t.strip() for t in TEXTS], padding=True, return_tensors="pt"))
    if arch == "distilbert":
        batch.pop("token_type_ids")
    return batch


@torch.no_grad()
def pooled(model, arch: str, pooling: Pooling, masks=None) -> torch.Tensor:
    """The (masked) model's sentence embeddings of TEXTS; dims a hidden mask removed are left out (they are zero)."""
    batch = tokenized(arch)
    if masks is None:
        return pool(model.eval()(**batch).last_hidden_state, batch["attention_mask"], pooling)
    with attach_masks(model, masks):
        embeddings = pool(model.eval()(**batch).last_hidden_state, batch["attention_mask"], pooling)
    assert bool((embeddings[:, masks.hidden == 0] == 0).all())  # a removed hidden dim carries nothing
    return embeddings[:, masks.hidden != 0]


FRESH_PROCESS = """
import importlib.abc, json, sys

class NoKpLightning(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "kp_lightning":
            raise ImportError("kp_lightning must not be needed to load an export")

sys.meta_path.insert(0, NoKpLightning())
import torch
from sentence_transformers import SentenceTransformer

cases, texts = json.load(open("cases.json")), json.load(open("texts.json"))
results = {}
for name, case in cases.items():
    model = SentenceTransformer(case["dir"], trust_remote_code=case["remote"], device="cpu")
    results[name] = {
        "embeddings": model.encode(texts, convert_to_tensor=True).cpu(),
        "dimension": model.get_embedding_dimension(),
        "max_seq_length": model.max_seq_length,
        "class": type(model[0].auto_model).__name__,
        "modules": [type(m).__name__ for m in model],
    }
torch.save(results, "results.pt")
print("kp_lightning imported:", any(m.split(".")[0] == "kp_lightning" for m in sys.modules))
"""


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every export kind of several embedding models, loaded once by sentence-transformers in a fresh process.

    Returns ``{case: (directory, expected embeddings, sentence-transformers' results)}``.
    """
    root = tmp_path_factory.mktemp("embedding_exports")
    tokenizer = tiny_tokenizer()
    cases, expected = {}, {}

    def add(name: str, directory: Path, remote: bool, embeddings: torch.Tensor) -> None:
        cases[name] = {"dir": str(directory), "remote": remote}
        expected[name] = embeddings

    # compact exports of masked models: soft head/neuron/hidden masks, a layer without attention, one without FFN
    for seed, arch in enumerate(COMPACT_ST_ARCHS):
        model = embedding_model(arch, seed=seed)
        masks = edge_case_masks(model, seed=seed)
        out = export_compact(model, root / f"compact_{arch}", masks=masks, tokenizer=tokenizer, method="kprune")
        add(f"compact_{arch}", out, True, pooled(model, arch, MEAN, masks))
    for kind, pooling in (("attention", Pooling("cls", False, None)), ("ffn", Pooling("max", True, 32))):
        model = embedding_model("bert", pooling)
        masks = all_removed_masks(model, kind)
        out = export_compact(model, root / f"compact_no_{kind}", masks=masks, tokenizer=tokenizer)
        add(f"compact_no_{kind}", out, True, pooled(model, "bert", pooling, masks))

    # dense exports with zeros (stock architecture: no remote code)
    for arch in ("bert", "distilbert"):
        model = embedding_model(arch)
        masks = edge_case_masks(model, prune_hidden=False)
        out = export_dense(model, root / f"dense_{arch}", masks=masks, tokenizer=tokenizer)
        add(f"dense_{arch}", out, False, pooled(model, arch, MEAN, masks))

    # sparse exports (GMP / PatternLock writer): a stock model and a compact one, half their encoder weights zero
    sparse_pooling = Pooling("mean_sqrt_len", False, 48)
    model = embedding_model("roberta", sparse_pooling)
    masked = MaskedWeights(model, select_linear_names(model))
    masked.prune_to(0.5)
    write_sparse_model(model, root / "sparse_roberta", masked, tokenizer=tokenizer, extra={"method": "PatternLock"})
    add("sparse_roberta", root / "sparse_roberta", False, pooled(model, "roberta", sparse_pooling))
    model = compact(embedding_model("distilbert"), edge_case_masks(embedding_model("distilbert"), soft=False))
    masked = MaskedWeights(model, select_linear_names(model))
    masked.prune_to(0.5)
    write_sparse_model(model, root / "sparse_compact", masked, tokenizer=tokenizer, storage_values=None)
    add("sparse_compact", root / "sparse_compact", True, pooled(model, "distilbert", MEAN))

    (root / "cases.json").write_text(json.dumps(cases))
    (root / "texts.json").write_text(json.dumps(TEXTS))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf_home"))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FRESH_PROCESS)],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "kp_lightning imported: False" in proc.stdout
    results = torch.load(root / "results.pt")
    return {name: (Path(cases[name]["dir"]), expected[name], results[name]) for name in cases}


def check_same_embeddings(exports, name: str) -> dict:
    _, expected, loaded = exports[name]
    assert loaded["embeddings"].shape == expected.shape
    torch.testing.assert_close(loaded["embeddings"], expected, atol=1e-5, rtol=0)
    assert loaded["dimension"] == expected.shape[1]
    return loaded


@pytest.mark.parametrize("arch", COMPACT_ST_ARCHS)
def test_a_compact_export_embeds_in_sentence_transformers_as_the_masked_model(exports, arch):
    loaded = check_same_embeddings(exports, f"compact_{arch}")
    assert loaded["class"] == f"KP{PREFIX[arch]}Model"  # the code shipped in the folder, no kp_lightning
    assert loaded["modules"] == ["Transformer", "Pooling", "Normalize"]
    assert loaded["max_seq_length"] == 64
    directory = exports[f"compact_{arch}"][0]
    config = json.loads((directory / "config.json").read_text())
    width = config["dim" if arch == "distilbert" else "hidden_size"]
    assert loaded["dimension"] == config["kp_structure"]["hidden_size"] < width == 32  # the pruned width
    assert (directory / "tokenizer.json").is_file() and (directory / "modeling_kp.py").is_file()
    reloaded = load_embedding_model(str(directory))  # and back into kp_lightning, as a sentence-transformers folder
    assert model_pooling(reloaded) == MEAN
    torch.testing.assert_close(pooled(reloaded, arch, MEAN), exports[f"compact_{arch}"][1], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("name", "modules"),
    [("compact_no_attention", ["Transformer", "Pooling"]), ("compact_no_ffn", ["Transformer", "Pooling", "Normalize"])],
)
def test_cls_and_max_pooling_of_models_without_any_attention_or_ffn(exports, name, modules):
    loaded = check_same_embeddings(exports, name)
    assert loaded["modules"] == modules and loaded["dimension"] == 32
    sbert = json.loads((exports[name][0] / SBERT_CONFIG).read_text())
    if name == "compact_no_attention":  # no max_seq_length in the pooling: left out, sentence-transformers decides
        assert "max_seq_length" not in sbert
    else:
        assert sbert["max_seq_length"] == loaded["max_seq_length"] == 32


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_a_dense_export_with_zeros_loads_in_stock_sentence_transformers(exports, arch):
    loaded = check_same_embeddings(exports, f"dense_{arch}")
    assert loaded["class"] == {"bert": "BertModel", "distilbert": "DistilBertModel"}[arch]
    config = json.loads((exports[f"dense_{arch}"][0] / "config.json").read_text())
    assert "auto_map" not in config and config["kp_pooling"] == MEAN.to_dict()


def test_sparse_exports_load_in_sentence_transformers(exports):
    loaded = check_same_embeddings(exports, "sparse_roberta")
    assert loaded["class"] == "RobertaModel" and loaded["max_seq_length"] == 48
    directory = exports["sparse_roberta"][0]
    assert read_sentence_transformers_dir(directory).pooling == Pooling("mean_sqrt_len", False, 48)
    assert load_sparse(directory / SPARSE_SUBDIR).config.kp_pooling == Pooling("mean_sqrt_len", False, 48).to_dict()
    loaded = check_same_embeddings(exports, "sparse_compact")  # GMP on a pruned model: its code comes along
    assert loaded["class"] == "KPDistilBertModel"


def test_model_cards_of_embedding_exports(exports):
    compact_card = ModelCard.load(exports["compact_bert"][0] / "README.md")
    assert compact_card.data.pipeline_tag == "sentence-similarity"
    assert compact_card.data.library_name == "sentence-transformers"
    assert {"kp-lightning", "k-prune", "sentence-transformers", "sentence-similarity"} <= set(compact_card.data.tags)
    assert "from sentence_transformers import SentenceTransformer" in compact_card.text
    assert "SentenceTransformer(path, trust_remote_code=True)" in compact_card.text
    dimension = exports["compact_bert"][2]["dimension"]
    assert f"mean pooling, L2-normalized, dimension {dimension}, max_seq_length 64" in compact_card.text
    for name in ("dense_bert", "sparse_roberta"):  # stock architectures: no remote code
        card = ModelCard.load(exports[name][0] / "README.md")
        assert card.data.pipeline_tag == "sentence-similarity" and card.data.library_name == "sentence-transformers"
        assert "SentenceTransformer(path)" in card.text and "trust_remote_code" not in card.text
    sparse_compact = ModelCard.load(exports["sparse_compact"][0] / "README.md")
    assert "SentenceTransformer(path, trust_remote_code=True)" in sparse_compact.text


def test_a_model_without_pooling_gets_no_sentence_transformers_files(tmp_path):
    model = tiny_model("bert", "Model")
    assert not write_embedding_files(tmp_path, model)
    out = export_compact(model, tmp_path / "plain", masks=edge_case_masks(model))
    assert not (out / MODULES_FILE).exists()
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "feature-extraction"
    assert "SentenceTransformer" not in card.text


def test_embedding_dimension_of_models_and_configs():
    model = embedding_model("distilbert")
    small = compact(model, edge_case_masks(model))
    kept = int((edge_case_masks(model).hidden != 0).sum())
    assert embedding_dimension(model) == embedding_dimension(model.config) == 32
    assert embedding_dimension(small) == embedding_dimension(small.config) == kept < 32


def _quantized_embedding_model():
    """A compact (hidden dims pruned) BERT embedding model with fake quantization, observers calibrated."""
    from kp_lightning.quantization import FakeQuantizer, default_quantized_linears

    model = embedding_model("bert")
    small = compact(model, edge_case_masks(model, soft=False)).eval()
    quantizer = FakeQuantizer(small, default_quantized_linears(small), attach=True)
    small.train()
    with torch.no_grad():
        for i in range(3):
            small(**tiny_batch(seed=10 + i))
    return small.eval(), quantizer


@needs_onnx
def test_the_int8_model_of_an_embedding_model_embeds_text(tmp_path):
    from kp_lightning.quantization import convert_to_int8, load_int8, save_int8, strip_fake_quant

    fake, quantizer = _quantized_embedding_model()
    int8 = convert_to_int8(fake, quantizer)
    assert int8.meta["output_names"][0] == "last_hidden_state"
    save_int8(int8, tmp_path / "int8", tokenizer=tiny_tokenizer())
    loaded = load_int8(tmp_path / "int8")
    assert loaded.config.kp_pooling == MEAN.to_dict()

    expected = pooled(fake, "bert", MEAN)
    embeddings = loaded.encode(TEXTS)  # tokenized with the tokenizer saved next to the model
    float_model = copy.deepcopy(fake)
    strip_fake_quant(float_model)
    # as in tests/test_int8_model.py: same integer grids and qparams, only fp32 summation order differs
    assert embeddings.shape == expected.shape == (len(TEXTS), embedding_dimension(fake))
    assert (embeddings - expected).abs().max() < 1e-5
    assert (pooled(float_model, "bert", MEAN) - expected).abs().max() > 10 * (embeddings - expected).abs().max()
    torch.testing.assert_close(loaded.sentence_embeddings(**tokenized("bert")), embeddings, atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded.encode(TEXTS[1]), embeddings[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded.encode(TEXTS, batch_size=2), embeddings, atol=1e-5, rtol=0)

    directory = tmp_path / "int8"
    folder = read_sentence_transformers_dir(directory)
    assert folder.pooling == MEAN
    pooling_config = json.loads((directory / "1_Pooling" / "config.json").read_text())
    assert pooling_config["word_embedding_dimension"] == embedding_dimension(fake)
    card = ModelCard.load(directory / "README.md")
    assert card.data.pipeline_tag == "sentence-similarity" and "model.encode(" in card.text
    assert "sentence-transformers" not in card.data.tags  # sentence-transformers cannot run it


@needs_onnx
def test_the_plain_onnx_export_of_an_embedding_model_gives_its_token_states(tmp_path):
    from kp_lightning.core.onnx_export import export_onnx, output_names_of, run_onnx

    model = embedding_model("roberta")
    small = compact(model, edge_case_masks(model, soft=False)).eval()
    names = output_names_of(small)
    assert names[0] == "last_hidden_state"
    path = export_onnx(small, tmp_path / "model.onnx")
    batch = tokenized("roberta")
    hidden = torch.from_numpy(run_onnx(path, batch["input_ids"], batch["attention_mask"])[0])
    expected = pool(small(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state,
                    batch["attention_mask"], MEAN)  # fmt: skip
    torch.testing.assert_close(pool(hidden, batch["attention_mask"], MEAN), expected.detach(), atol=1e-5, rtol=0)
