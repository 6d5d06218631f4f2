"""The model2vec run (distilled in a separate virtualenv), its latency texts and its timing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from harness import GLUE_DIR, median_ms, minilm_dir

from .context import Context
from .evaluation import evaluate_texts
from .settings import CACHE, PCA_DIMS

M2V_DISTILL = textwrap.dedent(
    """
    import json, sys, time, resource
    from model2vec.distill import distill
    tick = time.perf_counter(); cpu = time.process_time()
    model = distill(model_name=sys.argv[1], pca_dims=int(sys.argv[3]))
    seconds = time.perf_counter() - tick
    model.save_pretrained(sys.argv[2])
    import model2vec, transformers
    print(json.dumps({"distill_seconds": seconds, "distill_cpu_seconds": time.process_time() - cpu,
                      "model2vec": model2vec.__version__, "transformers": transformers.__version__}))
    """
)


def m2v_python(args) -> str | None:
    try:
        import model2vec.distill  # noqa: F401

        return sys.executable
    except ImportError:
        return str(args.m2v_python) if Path(args.m2v_python).exists() else None


def run_model2vec(ctx: Context, job: dict, args) -> dict:
    python = m2v_python(args)
    base = {"method": "model2vec", "embedding_loss": None, "sample": "vocabulary only (no sentences)"}
    try:
        from model2vec import StaticModel
    except ImportError as err:
        return {**base, "not_run": True, "note": f"not run: model2vec is not installed here ({err})"}
    if python is None:
        return {**base, "not_run": True, "note": f"not run: no model2vec[distill] (tried {args.m2v_python})"}
    out = CACHE / f"model2vec-pca{PCA_DIMS}"
    proc = subprocess.run(
        [python, "-c", M2V_DISTILL, minilm_dir(), str(out), str(PCA_DIMS)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return {**base, "not_run": True, "note": f"not run: distill failed: {proc.stderr.strip()[-400:]}"}
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    model = StaticModel.from_pretrained(str(out))
    metrics = evaluate_texts(lambda texts: model.encode(texts, show_progress_bar=False), ctx.dm)
    weights = out / "model.safetensors"
    return {
        **base,
        **metrics,
        "params": int(model.embedding.size),
        "size_bytes": weights.stat().st_size if weights.exists() else None,
        "compress_seconds": info["distill_seconds"],
        "distill": info,
        "embedding_dim": int(model.embedding.shape[1]),
        "note": f"static embeddings, pca_dims {PCA_DIMS} (distilled in a venv: model2vec[distill] pins "
        "transformers<5.4)",
        "model_path": str(out),
    }


def m2v_texts(tokenizer, num: int, tokens: int) -> list[str]:
    """``num`` texts of ``tokens`` tokens (with [CLS]/[SEP]) cut from STS-B/QNLI dev sentences."""
    dm_texts = [ln.split("\t")[-1] for ln in (GLUE_DIR / "QNLI" / "dev.tsv").read_text().splitlines()[1:]]
    words, texts = " ".join(dm_texts).split(), []
    position = 0
    for _ in range(num):
        ids = tokenizer(" ".join(words[position : position + 2 * tokens]), add_special_tokens=False)["input_ids"]
        texts.append(tokenizer.decode(ids[: tokens - 2]))
        position += 2 * tokens
    return texts


def m2v_ms(model, texts: list[str]) -> float:
    """Median ms of ``model.encode(texts)`` (tokenization included: it is the whole model)."""
    return median_ms(lambda: model.encode(texts, show_progress_bar=False), 2.0)
