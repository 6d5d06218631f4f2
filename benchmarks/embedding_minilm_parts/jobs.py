"""The list of runs and the runs file every finished run is stored in."""

from __future__ import annotations

import json

from harness import RESULTS

from kp_lightning.embedding.losses import DEFAULT_EMBEDDING_LOSS

from .settings import RUNS


def kprune_name(rate: float, loss: str = DEFAULT_EMBEDDING_LOSS) -> str:
    suffix = "" if loss == DEFAULT_EMBEDDING_LOSS else f"[{loss}]"
    return f"kprune-{round(rate * 100)}{suffix}"


def job_list() -> list[dict]:
    """Every run, most important first (dense, K-prune/Kwon 50 and 70 %, model2vec, int8, other rates, losses)."""
    jobs = [{"name": "dense", "kind": "dense"}]

    def kp(rate: float, loss: str = DEFAULT_EMBEDDING_LOSS) -> dict:
        return {"name": kprune_name(rate, loss), "kind": "kprune", "rate": rate, "loss": loss}

    def kw(rate: float) -> dict:
        return {"name": f"kwon-{round(rate * 100)}", "kind": "kwon", "rate": rate}

    jobs += [kp(0.5), kp(0.7), kw(0.5), kw(0.7)]
    jobs += [{"name": "model2vec", "kind": "model2vec"}]
    jobs += [{"name": "kprune-50+int8", "kind": "int8", "source": "kprune-50"}]
    jobs += [{"name": "dense+int8", "kind": "int8", "source": "dense"}]
    jobs += [kp(r) for r in (0.3, 0.4, 0.6, 0.8)] + [kw(r) for r in (0.3, 0.4, 0.6, 0.8)]
    jobs += [kp(r, loss) for r in (0.5, 0.7) for loss in ("similarity_kl", "cosine_mse")]
    return jobs


def load_runs() -> dict[str, dict]:
    return json.loads(RUNS.read_text()) if RUNS.exists() else {}


def save_run(run: dict) -> dict[str, dict]:
    runs = load_runs()
    runs[run["name"]] = run
    order = [j["name"] for j in job_list()]
    runs = dict(sorted(runs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    RESULTS.mkdir(exist_ok=True)
    RUNS.write_text(json.dumps(runs, indent=1) + "\n")
    return runs
