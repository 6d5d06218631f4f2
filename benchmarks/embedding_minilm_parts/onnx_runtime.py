"""ONNX Runtime helpers: a CPU session, an embedder over it, its timing, and counts of graph nodes."""

from __future__ import annotations

from pathlib import Path

import torch
from harness import median_ms

from kp_lightning.embedding.pooling import pool

from .settings import THREADS


def ort_session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_embedder(session, pooling):
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    hidden = outputs.index("last_hidden_state") if "last_hidden_state" in outputs else 0

    def embed(batch):
        feeds = {k: batch[k].to(torch.int64).numpy() for k in names}
        states = torch.from_numpy(session.run(None, feeds)[hidden])
        return pool(states, batch["attention_mask"], pooling)

    return embed


def ort_timer(session, batch: int, seq: int, vocab: int) -> float:
    """Median ms of ``session.run`` on random ids (``blocked_autorange`` over 2 s, after a warm-up)."""
    ids = torch.randint(0, vocab, (batch, seq))
    feeds = {"input_ids": ids.numpy(), "attention_mask": torch.ones_like(ids).numpy()}
    feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
    return median_ms(lambda: session.run(None, feeds), 2.0)


def onnx_op_count(path: Path, op: str) -> int:
    import onnx

    return sum(node.op_type == op for node in onnx.load(str(path)).graph.node)


def runtime_weight_matmuls(path: Path) -> int:
    """MatMul nodes whose weight (B) is computed in the graph from initializers (not an initializer itself)."""
    import onnx

    graph = onnx.load(str(path)).graph
    inits = {i.name for i in graph.initializer}
    made_by = {out: node for node in graph.node for out in node.output}

    def from_initializers(name: str, depth: int = 0) -> bool:
        if name in inits:
            return True
        node = made_by.get(name)
        return node is not None and depth < 4 and all(from_initializers(i, depth + 1) for i in node.input if i)

    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] not in inits]
    return sum(from_initializers(n.input[1]) for n in matmuls)
