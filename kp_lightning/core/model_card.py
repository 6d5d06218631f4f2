"""The README.md model card written next to every export, with Hub-ready YAML front matter.

The front matter is built with ``huggingface_hub``'s :class:`~huggingface_hub.ModelCardData` and
:class:`~huggingface_hub.EvalResult`, so ``ModelCard.load(path / "README.md").data`` reads it back:

- ``base_model``: the source model, only when it is a Hub id (see :func:`hub_model_id`); a local directory is left
  out, since the Hub rejects a ``base_model`` that names no repository.
- ``library_name``: ``transformers``; ``sentence-transformers`` for a sentence-embedding model (one whose config
  records ``kp_pooling``; its export is a sentence-transformers folder), except the int8 export.
- ``pipeline_tag``: from the task kind or the model class (``text-classification``, ``question-answering``,
  ``fill-mask``, ``feature-extraction``); ``sentence-similarity`` for a sentence-embedding model.
- ``tags``: ``kp-lightning``, the method's tags (``k-prune``, ``cofi``, ``pruned``, ``int8``...) and the export kind's;
  ``sentence-transformers`` (not for int8), ``sentence-similarity`` and ``feature-extraction`` for a
  sentence-embedding model.
- ``model-index``: the compressed model's main metric (task type, dataset, metric name and value), when the report
  has one; ``datasets`` when the task's dataset is a known Hub dataset (GLUE, SQuAD).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..data.glue_tasks import GLUE_TASKS
from ..data.task_kinds import TASK_KIND_TABLE
from ..embedding.st_folder import MODULES_FILE, POOLING_DIR, read_sentence_transformers_dir
from ..errors import ModelLoadError

CARD_FILE = "README.md"
KINDS = ("compact", "dense", "sparse", "int8")
TASK_KIND_PIPELINES = {name: kind.pipeline_tag for name, kind in TASK_KIND_TABLE.items()}
CLASS_SUFFIX_PIPELINES = {
    **{kind.head: kind.pipeline_tag for kind in TASK_KIND_TABLE.values()},
    "Model": "feature-extraction",
}
METHOD_TAGS = {
    "kprune": ["k-prune", "pruned", "structured-pruning"],
    "kwon": ["kwon-et-al", "pruned", "structured-pruning"],
    "cofi": ["cofi", "pruned", "structured-pruning"],
    "magnitude": ["magnitude-pruning", "pruned", "structured-pruning"],
    "GradualMagnitudePruning": ["gradual-magnitude-pruning", "prune-once-for-all", "pruned", "sparse"],
    "PatternLock": ["pattern-lock", "prune-once-for-all", "pruned", "sparse"],
    "QuantizationAwareTraining": ["quantization-aware-training", "int8", "quantized"],
}
KIND_TAGS = {"compact": ["compact-export"], "dense": ["dense-export"], "sparse": ["sparse"], "int8": ["int8"]}
EMBEDDING_KIND = "embedding"
EMBEDDING_TAGS = ["sentence-transformers", "sentence-similarity", "feature-extraction"]
HF_METRIC_TYPES = {"mcc": "matthews_correlation", "pearson": "pearsonr", "spearman": "spearmanr"}
METRIC_TITLES = {
    "accuracy": "Accuracy",
    "f1": "F1",
    "mcc": "Matthews correlation",
    "pearson": "Pearson correlation",
    "spearman": "Spearman correlation",
    "exact_match": "Exact match",
    "perplexity": "Perplexity",
    "loss": "Loss",
}
SIZE_FIELDS = (
    ("sparse copy", ("storage", "sparse_file_bytes")),
    ("model.onnx", ("onnx_file_bytes",)),
    ("sparse int8 copy", ("sparse_int8_storage", "sparse_file_bytes")),
)
SQUAD_DATASETS = {"squad": ("rajpurkar/squad", "SQuAD v1.1"), "squad_v2": ("rajpurkar/squad_v2", "SQuAD v2.0")}


def _get(report: dict, *keys):
    for key in keys:
        report = report.get(key) if isinstance(report, dict) else None
    return report


def hub_model_id(name: str | None) -> str | None:
    """``name`` when it reads as a Hub model id (``bert-base-uncased``, ``org/model``), else ``None``.

    Left out: empty names, paths that exist on this machine (a local directory shadows a Hub id of the same
    spelling), absolute/relative/home paths (``/...``, ``./...``, ``~...``), names with more than one ``/`` and
    anything ``huggingface_hub``'s repo-id validator refuses. No network call is made.
    """
    if not name:
        return None
    name = str(name)
    if name.startswith(("/", ".", "~", "\\")) or Path(name).expanduser().exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def pipeline_tag_for(report: dict, task_kind: str | None = None, architecture: str | None = None) -> str | None:
    """The Hub ``pipeline_tag``: from ``task_kind`` (a :class:`~kp_lightning.data.task_spec.TaskSpec` kind), else
    the report's ``task_kind``, else the model class (``report["compressed"]["class"]`` or ``architecture``)."""
    kind = task_kind or report.get("task_kind")
    if kind in TASK_KIND_PIPELINES:
        return TASK_KIND_PIPELINES[kind]
    classes = [(report.get("compressed") or {}).get("class"), architecture, report.get("architecture")]
    for cls in filter(None, classes):
        for suffix, tag in CLASS_SUFFIX_PIPELINES.items():
            if cls.endswith(suffix):
                return tag
    return None


def _slug(text: str) -> str:
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", text)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def card_tags(kind: str, method: str | None, embedding: bool = False) -> list[str]:
    """``kp-lightning``, then the method's tags, then the export kind's, then (a sentence-embedding model)
    :data:`EMBEDDING_TAGS`, less ``sentence-transformers`` for the int8 export, which sentence-transformers does not
    load (no duplicates, in that order)."""
    tags = ["kp-lightning", *(METHOD_TAGS.get(method, [_slug(method)]) if method else []), *KIND_TAGS.get(kind, [])]
    tags += [t for t in EMBEDDING_TAGS if kind != "int8" or t != "sentence-transformers"] if embedding else []
    return list(dict.fromkeys(t for t in tags if t))


def compressed_metric(report: dict) -> tuple[str | None, float | None]:
    """``(metric_name, value)`` of the compressed model: ``metric_compressed``, or for a report with
    ``metrics_int8`` (QAT) the int8 model's value of ``metric_name``. ``value`` is ``None`` when unknown/non-finite."""
    name = report.get("metric_name")
    value = report.get("metric_compressed")
    if value is None and name and isinstance(report.get("metrics_int8"), dict):
        value = report["metrics_int8"].get(name)
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return name, None
    return name, float(value)


def dataset_for(task: str | None, metric_name: str | None = None) -> dict:
    """``EvalResult`` dataset fields for a task name (GLUE and SQuAD map to their Hub datasets)."""
    if not task:
        return {"dataset_type": "unknown", "dataset_name": "unknown"}
    if task in GLUE_TASKS:
        split = "validation"
        if metric_name and task == "mnli":
            split = "validation_mismatched" if "/mismatched/" in metric_name else "validation_matched"
        glue = GLUE_TASKS[task]
        return {
            "dataset_type": "nyu-mll/glue",
            "dataset_name": f"GLUE {glue.folder}",
            "dataset_config": task,
            "dataset_split": split,
        }
    if task in SQUAD_DATASETS:
        hub, title = SQUAD_DATASETS[task]
        return {"dataset_type": hub, "dataset_name": title, "dataset_split": "validation"}
    return {"dataset_type": task, "dataset_name": task}


def eval_results(report: dict, pipeline_tag: str | None) -> list[EvalResult]:
    """The compressed model's main metric as one ``EvalResult`` (none when the report has no value)."""
    name, value = compressed_metric(report)
    if name is None or value is None:
        return []
    base = name.rsplit("/", 1)[-1]
    return [
        EvalResult(
            task_type=pipeline_tag or "other",
            **dataset_for(report.get("task"), name),
            metric_type=HF_METRIC_TYPES.get(base, base),
            metric_value=value,
            metric_name=METRIC_TITLES.get(base, base),
        )
    ]


def card_data(
    report: dict,
    kind: str,
    base_model: str | None = None,
    method: str | None = None,
    model_name: str | None = None,
    task_kind: str | None = None,
    architecture: str | None = None,
    embedding: bool = False,
) -> ModelCardData:
    """The card's metadata (see the module docstring for each field); ``embedding``: a sentence-embedding model."""
    method = method or report.get("method")
    if embedding:
        task_kind = EMBEDDING_KIND
    pipeline_tag = pipeline_tag_for(report, task_kind, architecture)
    results = eval_results(report, pipeline_tag)
    hub_base = hub_model_id(base_model)
    if model_name is None:
        stem = Path(str(base_model)).name if base_model else (report.get("compressed") or {}).get("class", "model")
        model_name = f"{stem}-{_slug(method) if method else kind}"
    dataset = dataset_for(report.get("task"))["dataset_type"] if results else None
    return ModelCardData(
        model_name=model_name,
        base_model=hub_base,
        library_name="sentence-transformers" if embedding and kind != "int8" else "transformers",
        pipeline_tag=pipeline_tag,
        tags=card_tags(kind, method, embedding),
        datasets=[dataset] if dataset and "/" in dataset else None,
        eval_results=results or None,
    )


def render_model_card(
    report: dict,
    kind: str,
    base_model: str | None = None,
    method: str | None = None,
    *,
    model_name: str | None = None,
    task_kind: str | None = None,
    architecture: str | None = None,
    embedding: dict | bool | None = None,
) -> ModelCard:
    """Model card with Hub metadata and a summary of ``report`` (see :func:`compression_report`).

    Args:
        report: The export's report (``compression_report.json``'s content).
        kind: ``compact``, ``dense`` (stock architecture, zeros in place), ``sparse`` or ``int8``.
        base_model: The source model's name or path; written as ``base_model`` only when it is a Hub id
            (:func:`hub_model_id`): local paths are left out of the metadata.
        method: The compression method (default: ``report["method"]``).
        model_name: ``model-index`` name (default ``<base model name>-<method or kind>``).
        task_kind: A TaskSpec kind for ``pipeline_tag`` (default: from the report or the model class).
        architecture: The model class name, for reports without ``compressed.class`` (int8 exports).
        embedding: A sentence-embedding model (the export is a sentence-transformers folder): its pooling and
            dimension (``{"mode", "normalize", "max_seq_length", "dimension"}``,
            :func:`~kp_lightning.embedding.st_export.embedding_card_info`) or True; the card then shows
            ``SentenceTransformer`` loading. Default: whether the task kind (or the report's) is ``embedding``.
    """
    method = method or report.get("method")
    if embedding is None:
        embedding = (task_kind or report.get("task_kind")) == EMBEDDING_KIND
    data = card_data(report, kind, base_model, method, model_name, task_kind, architecture, bool(embedding))
    small = report.get("compressed")
    title = small["class"] if small else architecture or "Model"
    lines = [
        f"# {title} compressed with kp_lightning",
        "",
        f"Export kind: **{kind}**" + (f", method: **{method}**" if method else "") + ".",
        "",
    ]
    if data.base_model:
        lines += [f"Source model: [`{data.base_model}`](https://huggingface.co/{data.base_model}).", ""]
    name, value = compressed_metric(report)
    dense_value = report.get("metric_dense")
    if name and (value is not None or dense_value is not None):
        task = f" on {report['task']}" if report.get("task") else ""
        shown = f"{value:.4f}" if value is not None else "–"
        dense = f" (dense: {dense_value:.4f})" if isinstance(dense_value, int | float) else ""
        lines += [f"`{name}`{task}: {shown}{dense}.", ""]
    if small:
        lines += ["| | compressed | reference |", "|---|---:|---:|"]
        ref = report.get("reference")
        rows = [
            ("parameters (total)", lambda r: f"{r['parameters']['total']:,}"),
            ("parameters (encoder layers)", lambda r: f"{r['parameters']['encoder']:,}"),
            ("non-zero parameters", lambda r: f"{r['parameters']['nonzero']:,}"),
            ("hidden size", lambda r: str(r["hidden_size"])),
            ("heads per layer", lambda r: str(r["heads_per_layer"])),
            ("FFN neurons per layer", lambda r: str(r["neurons_per_layer"])),
            (
                f"GFLOPs / sequence (n={small['flops']['seq_len']})",
                lambda r: f"{r['flops']['analytic']['total'] / 1e9:.4f}",
            ),
        ]
        for label, fmt in rows:
            lines.append(f"| {label} | {fmt(small)} | {fmt(ref) if ref else '–'} |")
        lines.append("")
    if isinstance(report.get("sparsity"), int | float):
        pattern = f", pattern `{report['pattern']}`" if report.get("pattern") else ""
        lines += [f"Zeros in the pruned Linear weights: {report['sparsity']:.1%}{pattern}.", ""]
    sizes = [(label, _get(report, *keys)) for label, keys in SIZE_FIELDS]
    sizes = [(label, size) for label, size in sizes if isinstance(size, int | float) and not isinstance(size, bool)]
    if sizes:
        lines += ["Size on disk: " + ", ".join(f"{label} {size / 1e6:.2f} MB" for label, size in sizes) + ".", ""]
    if isinstance(report.get("latency_speedup"), int | float):
        lines += [f"Measured latency speedup over the dense model: {report['latency_speedup']:.2f}×.", ""]
    if isinstance(embedding, dict):
        lines += [embedding_summary(embedding), ""]
    lines += ["## Loading", "", "```python"]
    if embedding:
        lines += embedding_loading(kind, str(title).startswith("KP"))
    elif kind == "compact":
        lines += [
            "from transformers import AutoModel",
            "",
            "# with kp_lightning installed: import kp_lightning; kp_lightning.load_compressed(path)",
            "model = AutoModel.from_pretrained(path, trust_remote_code=True)  # any AutoModelFor<Task> in auto_map",
        ]
    elif kind == "int8":
        lines += [
            "from kp_lightning.quantization import load_int8  # pip install 'kp_lightning[onnx]'",
            "",
            "model = load_int8(path)  # ONNX Runtime int8 kernels on CPU",
        ]
    elif kind == "sparse":
        remote = ", trust_remote_code=True" if str(title).startswith("KP") else ""  # a compact model, with its code
        lines += [
            "from transformers import AutoModel",
            "",
            f"model = AutoModel.from_pretrained(path{remote})  # pruned weights are zeros",
            "",
            "# the bitmask + non-zeros copy in sparse/ (when the export wrote one), with kp_lightning installed:",
            "# from kp_lightning.sparsity.storage import load_sparse; model = load_sparse(f'{path}/sparse')",
        ]
    else:
        lines += [
            "from transformers import AutoModel",
            "",
            "model = AutoModel.from_pretrained(path)  # stock architecture; pruned weights, if any, are zeros",
        ]
    lines += ["```", "", "Full numbers: `compression_report.json`."]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def embedding_summary(info: dict) -> str:
    """One line on the sentence embedding: pooling, normalization, dimension, max_seq_length."""
    parts = [f"{info.get('mode', 'mean')} pooling"]
    if info.get("normalize"):
        parts.append("L2-normalized")
    if info.get("dimension"):
        parts.append(f"dimension {info['dimension']}")
    if info.get("max_seq_length"):
        parts.append(f"max_seq_length {info['max_seq_length']}")
    return "Sentence embedding: " + ", ".join(parts) + "."


def embedding_loading(kind: str, compact: bool) -> list[str]:
    """The ``## Loading`` snippet of a sentence-embedding export."""
    if kind == "int8":
        return [
            "from kp_lightning.quantization import load_int8  # pip install 'kp_lightning[onnx]'",
            "",
            "model = load_int8(path)  # ONNX Runtime int8 kernels on CPU",
            'embeddings = model.encode(["A sentence to embed.", "Another one."])  # pooled as the model was trained',
        ]
    remote = ", trust_remote_code=True" if compact else ""
    note = "  # a compact model: its code ships in the folder" if compact else ""
    lines = [
        "from sentence_transformers import SentenceTransformer",
        "",
        f"model = SentenceTransformer(path{remote}){note}",
        'embeddings = model.encode(["A sentence to embed.", "Another one."])',
    ]
    if kind == "sparse":
        lines += ["", "# pruned weights are zeros; the bitmask + non-zeros copy (if written) is in sparse/"]
    return lines


def embedding_info_of(directory: Path, config: dict | None) -> dict | None:
    """:func:`render_model_card`'s ``embedding`` for an export directory that is a sentence-transformers folder
    (its pooling and ``1_Pooling`` dimension), else None."""
    if not (directory / MODULES_FILE).is_file():
        return None
    try:
        pooling = read_sentence_transformers_dir(directory).pooling
    except ModelLoadError:  # a folder we cannot read back: the config's own settings
        pooling = None
    info = pooling.to_dict() if pooling is not None else dict((config or {}).get("kp_pooling") or {})
    pooling_config = directory / POOLING_DIR / "config.json"
    if pooling_config.is_file():
        info["dimension"] = json.loads(pooling_config.read_text()).get("word_embedding_dimension")
    return info


def write_model_card(directory: str | Path, report: dict, kind: str, **kwargs) -> Path:
    """Write ``README.md`` into an export ``directory`` (see :func:`render_model_card` for ``kwargs``).

    Without an ``architecture`` and without ``report["compressed"]``, the class is read from the directory's
    ``config.json`` (``architectures[0]``), for the ``pipeline_tag``. Without ``embedding``, a directory that is a
    sentence-transformers folder (``modules.json``, written for a model with ``kp_pooling``) gets the
    sentence-embedding card.
    """
    directory = Path(directory)
    config = directory / "config.json"
    config_data = json.loads(config.read_text()) if config.is_file() else None
    if kwargs.get("architecture") is None and not report.get("compressed") and config_data is not None:
        kwargs["architecture"] = (config_data.get("architectures") or [None])[0]
    if kwargs.get("embedding") is None:
        kwargs["embedding"] = embedding_info_of(directory, config_data)
    kwargs.setdefault("base_model", report.get("base_model"))
    path = directory / CARD_FILE
    render_model_card(report, kind, **kwargs).save(path)
    return path
