"""Embedding models from the command line: prune.py with the embedding recipes, train.py fit with CoFi, GMP and
QAT on unlabeled text, bad input refused before any work, and two gloo processes pruning like one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kp_lightning.cli import main as train_main
from kp_lightning.commands import prune
from kp_lightning.embedding.loading import load_embedding_model
from kp_lightning.embedding.pooling import model_pooling
from kp_lightning.prune_cli import main as prune_main
from tests.embedding_fixtures import random_sentences, save_st_model
from tests.helpers import needs_onnx
from tests.test_cli import REPO
from tests.test_command_errors import error_block
from tests.test_prune_cli import run_script
from tests.text_fixtures import save_tiny_model, write_sst2

needs_st = pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None,
    reason="needs sentence-transformers (pip install -e '.[embedding]')",
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedding_cli")
    model = save_st_model(root / "model")
    sentences = root / "sentences.txt"
    sentences.write_text("\n".join(random_sentences(120, seed=1)) + "\n")
    pairs = random_sentences(40, seed=2)
    sts = root / "sts.tsv"
    lines = ["sentence1\tsentence2\tscore"]
    lines += [f"{a}\t{b}\t{(i * 7) % 6:.1f}" for i, (a, b) in enumerate(zip(pairs[:20], pairs[20:], strict=True))]
    sts.write_text("\n".join(lines) + "\n")
    retrieval = root / "retrieval.tsv"
    docs = random_sentences(12, seed=3)
    rows = ["query\tdocument\trelevant"] + [f"q {i} {docs[i]}\t{docs[i]}\t1" for i in range(6)]
    rows += [f"q 0 {docs[0]}\t{d}\t0" for d in docs[6:]]
    retrieval.write_text("\n".join(rows) + "\n")
    data = ["--data.init_args.sentences", f"[{sentences}]", "--data.init_args.glue_dir", "null",
            "--data.init_args.sts_file", str(sts), "--data.init_args.retrieval", str(retrieval),
            "--data.init_args.min_chars", "1", "--data.init_args.cache_dir", str(root / "cache"),
            "--data.init_args.batch_size", "8", "--data.init_args.eval_batch_size", "16",
            "--data.init_args.max_length", "32"]  # fmt: skip
    prune = ["--model.init_args.model_name_or_path", str(model), *data, "--trainer.accelerator", "cpu",
             "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
             "--pruner.num_tokens", "400", "--pruner.batch_size", "8", "--pruner.progress", "false",
             "--latency_seconds", "0.05", "--latency_seq_len", "32"]  # fmt: skip
    return root, model, data, prune


def _embed(model, texts):
    from kp_lightning.embedding.pooling import sentence_embeddings
    from tests.text_fixtures import tiny_tokenizer

    inputs = dict(tiny_tokenizer()(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        return sentence_embeddings(model, model(**inputs), inputs["attention_mask"])


@needs_st
@pytest.mark.parametrize("method", ["kprune", "kwon"])
def test_prune_recipes_write_a_sentence_transformers_export(setup, tmp_path, method, monkeypatch):
    from sentence_transformers import SentenceTransformer

    root, model, _, prune = setup
    monkeypatch.chdir(REPO)  # the recipes' relative paths are from the repository root
    out = tmp_path / "export"
    config = f"configs/prune/{method}_embedding.yaml"
    extra = ["--pruner.num_samples", "64"] if method == "kwon" else []
    report = prune_main(["-c", config, *prune, *extra, "--pruner.flops_reduction", "0.5", "--output_dir", str(out)])
    assert report["flops_reduction_actual"] >= 0.5 - 1e-6
    assert report["metric_name"] == "val/sts/spearman"
    assert set(report["metrics_compressed"]) >= {"val/sts/spearman", "val/retrieval/ndcg10", "val/retrieval/recall1"}
    texts = random_sentences(4, seed=7)
    pruned = load_embedding_model(str(out)).eval()
    assert model_pooling(pruned) == model_pooling(load_embedding_model(str(model)))
    st = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    torch.testing.assert_close(st.encode(texts, convert_to_tensor=True), _embed(pruned, texts), atol=1e-5, rtol=0)


def test_bad_embedding_input_is_refused_before_any_work(setup, tmp_path, monkeypatch, capsys):
    root, model, data, prune_args = setup
    monkeypatch.chdir(REPO)
    out = tmp_path / "never"
    base = ["-c", "configs/prune/kprune_embedding.yaml", *prune_args, "--output_dir", str(out)]
    no_score = tmp_path / "noscore.tsv"
    no_score.write_text("sentence1\tsentence2\nabc def\tghi jkl\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    unmatched = tmp_path / "unmatched.tsv"
    unmatched.write_text("query\tdocument\trelevant\nwhere is it\tover there\t0\n")
    classifier = save_tiny_model(tmp_path / "classifier", "ForSequenceClassification")
    cases = [
        ([*base, "--data.init_args.sts_file", str(no_score)], "no column(s) ['score']"),
        ([*base, "--data.init_args.sentences", f"[{empty}]"], "none"),
        ([*base, "--data.init_args.retrieval", str(unmatched)], "no relevant document"),
        ([*base, "--model.init_args.model_name_or_path", str(classifier)], "trained for another task"),
        ([*base, "--pruner.embedding_loss", "mse"], "unknown embedding loss"),
    ]
    glue = write_sst2(tmp_path / "glue")  # the reverse: a classification task on an embedding model
    reverse = ["-c", "configs/prune/kprune.yaml", "-c", "configs/data/glue/sst2.yaml", "--data.init_args.data_dir",
               str(glue), "--model.init_args.model_name_or_path", str(model), "--output_dir", str(out),
               "--trainer.logger", "false", "--pruner.progress", "false"]  # fmt: skip
    cases.append((reverse, "newly initialised"))
    for args, expected in cases:
        block = error_block(prune, args, capsys)
        assert block[0].startswith("error:") and expected in block[0], block
        assert not out.exists()


def _fit(config: str, model: Path, data: list[str], tmp_path: Path, *extra: str):
    args = ["fit", "-c", str(REPO / config), "-c", str(REPO / "configs/data/embedding.yaml"),
            "--model.init_args.model_name_or_path", str(model),
            "--model.init_args.teacher_name_or_path", str(model), *data, "--trainer.accelerator", "cpu",
            "--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
            *extra]  # fmt: skip
    return train_main(args)


@needs_st
@pytest.mark.slow
def test_cofi_and_gmp_fit_on_unlabeled_text_write_sentence_transformers_folders(setup, tmp_path):
    from sentence_transformers import SentenceTransformer

    root, model, data, _ = setup
    texts = random_sentences(3, seed=11)
    cofi_out = tmp_path / "cofi"
    _fit("configs/cofi/embedding_cpu.yaml", model, data, tmp_path, "--trainer.callbacks.target_sparsity", "0.5",
         "--trainer.callbacks.warmup_steps", "3", "--trainer.callbacks.latency_seq_len", "16",
         "--trainer.callbacks.output_dir", str(cofi_out))  # fmt: skip
    gmp_out = tmp_path / "gmp"
    _fit("configs/pofa/embedding_gmp_cpu.yaml", model, data, tmp_path, "--trainer.callbacks.ramp_end_step", "4",
         "--trainer.callbacks.end_step", "4", "--trainer.callbacks.frequency", "2",
         "--trainer.callbacks.output_dir", str(gmp_out), "--trainer.callbacks+=callbacks.SaveBestPretrained",
         "--trainer.callbacks.dirpath", str(tmp_path / "best"))  # fmt: skip
    assert (tmp_path / "best" / "best_metric.json").is_file()
    for folder, remote in ((cofi_out, True), (gmp_out, False), (tmp_path / "best", False)):
        ours = load_embedding_model(str(folder)).eval()
        st = SentenceTransformer(str(folder), device="cpu", trust_remote_code=remote)
        torch.testing.assert_close(st.encode(texts, convert_to_tensor=True), _embed(ours, texts), atol=1e-5, rtol=0)
    weights = load_file(gmp_out / "model.safetensors")
    query = weights["encoder.layer.0.attention.self.query.weight"]
    assert abs(float((query == 0).float().mean()) - 0.9) < 0.02


@needs_onnx
@pytest.mark.slow
def test_qat_writes_an_int8_model_that_embeds_text(setup, tmp_path):
    from kp_lightning.quantization import load_int8

    root, model, data, _ = setup
    out = tmp_path / "int8"
    _fit("configs/pofa/embedding_qat_cpu.yaml", model, data, tmp_path, "--trainer.callbacks.output_dir", str(out))
    int8 = load_int8(out)
    texts = random_sentences(3, seed=5)
    embeddings = int8.encode(texts)
    dense = _embed(load_embedding_model(str(model)).eval(), texts)
    assert embeddings.shape == dense.shape
    assert torch.nn.functional.cosine_similarity(embeddings, dense).min() > 0.9


@pytest.mark.slow
def test_two_gloo_processes_prune_an_embedding_model_like_one(setup, tmp_path):
    root, model, data, prune = setup
    weights = {}
    for name, extra in (("one", []), ("two", ["--trainer.strategy", "ddp", "--trainer.devices", "2"])):
        args = ["-c", str(REPO / "configs/prune/kprune_embedding.yaml"), *prune, *extra,
                "--pruner.flops_reduction", "0.5", "--output_dir", str(tmp_path / name)]  # fmt: skip
        run_script("prune.py", args, tmp_path)
        weights[name] = load_file(tmp_path / name / "model.safetensors")
    assert weights["one"].keys() == weights["two"].keys()
    for key, value in weights["one"].items():
        torch.testing.assert_close(weights["two"][key], value, atol=1e-5, rtol=0, msg=key)
