"""Real int8 inference on CPU with ONNX Runtime for a model trained with :class:`FakeQuantizer`.

:func:`convert_to_int8` freezes the fake-quantized linears (:func:`int8_reference_model`), exports the model to ONNX
in QDQ form (int8 weight initializers with ``DequantizeLinear``; ``QuantizeLinear -> DequantizeLinear`` on every
quantized input and requantized output, with the scales and zero points of the observers) and opens it with ONNX
Runtime, whose graph optimizer fuses the QDQ patterns into integer GEMMs (``MatMulIntegerToFloat``, ``QGemm``).
Embeddings, LayerNorm, softmax, GELU and attention matmuls stay fp32 (ORT fuses them into its own kernels).

The result, :class:`Int8OnnxModel`, is called like the Hugging Face model (``input_ids``, ``attention_mask``,
``token_type_ids`` -> an output with ``.logits`` / ``.start_logits`` / ``.last_hidden_state`` as torch tensors).
A sentence-embedding model (a base encoder whose config records ``kp_pooling``) also embeds text:
:meth:`Int8OnnxModel.sentence_embeddings` pools the ``last_hidden_state`` of a tokenized batch with the stored
pooling, :meth:`Int8OnnxModel.encode` tokenizes texts first (as sentence-transformers does).

On x86 CPUs without VNNI (AVX2 only) ORT's uint8 x int8 GEMM adds pairs of products in saturating int16, which
makes rare outputs wrong; with ``unsigned_weights=True`` the same int8 grid is stored as uint8 + 128, which ORT runs
with an exact uint8 x uint8 kernel (about 15% slower there). By default the converting machine decides: signed with
VNNI, unsigned without.
"""

from __future__ import annotations

import inspect
import json
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers.utils import ModelOutput

from kp_lightning.core.export import REPORT_FILE, add_remote_code
from kp_lightning.core.model_card import write_model_card
from kp_lightning.core.onnx_export import example_ids_and_axes
from kp_lightning.embedding.pooling import model_pooling, pool
from kp_lightning.embedding.st_export import embedding_dimension, write_embedding_files
from kp_lightning.errors import ConfigError, MissingExtraError, MissingFileError
from kp_lightning.extras import ONNX_FIX, require_onnx

from .fake_quant import FakeQuantizer
from .int8_linear import Int8Linear, int8_reference_model, onnx_translation_table

ONNX_FILE = "model.onnx"
QUANT_CONFIG_FILE = "quantization.json"
FORMAT = "kp_lightning.int8.onnx/1"


class _Inputs(nn.Module):
    """Positional tensor inputs and a tuple of tensor outputs, as the ONNX export wants them."""

    def __init__(self, model: nn.Module, input_names: list[str], output_names: list[str]):
        super().__init__()
        self.model, self.input_names, self.output_names = model, input_names, output_names

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        out = self.model(**{k: inputs[k] for k in self.input_names})
        return tuple(out[name] for name in self.output_names)


def _input_names(model: nn.Module) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")
    return names


def export_int8_onnx(int8_reference: nn.Module, path: str | Path, seq_len: int = 16, batch_size: int = 2) -> dict:
    """Export a model built by :func:`int8_reference_model` to a QDQ ONNX file (dynamic batch, sequence and, for
    multiple choice, choices axes).

    Returns:
        ``{"input_names": [...], "output_names": [...]}``.
    """
    model = int8_reference.eval()
    input_names = _input_names(model)
    ids, axes = example_ids_and_axes(model, batch_size, seq_len)
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        out = model(**{k: example[k] for k in input_names})
    output_names = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")  # shared batch/seq dims
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        program = torch.onnx.export(
            _Inputs(model, input_names, output_names).eval(),
            tuple(example[k] for k in input_names),
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes={k: axes for k in input_names},
            custom_translation_table=onnx_translation_table(),
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))
    return {"input_names": input_names, "output_names": output_names}


class Int8OnnxModel(nn.Module):
    """An int8 ONNX model run by ONNX Runtime on CPU, with the Hugging Face call interface.

    It is an ``nn.Module`` (``eval()``, ``train()`` and ``config`` work; a 0-element frozen parameter tells
    ``next(model.parameters())`` callers it lives on the CPU in float32) but has no trainable state.

    Args:
        onnx_model: The serialized ONNX model.
        config: The Hugging Face config of the original model.
        meta: The quantization description (see ``quantization.json``).
        num_threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).
        tokenizer: What :meth:`encode` tokenizes with, or the directory to load it from when first needed
            (:func:`load_int8` passes its directory).
    """

    def __init__(self, onnx_model: bytes, config, meta: dict, num_threads: int | None = None, tokenizer=None):
        super().__init__()
        self.onnx_model, self.config, self.meta = onnx_model, config, meta
        self.num_threads = num_threads
        self.tokenizer = tokenizer
        self._device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self.session = self._session()

    def _session(self):
        try:
            import onnxruntime
        except ImportError as err:  # onnxruntime is an optional dependency
            raise MissingExtraError(
                f"the int8 model runs on onnxruntime, which is not installed ({err})", fix=ONNX_FIX
            ) from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        return onnxruntime.InferenceSession(self.onnx_model, options, providers=["CPUExecutionProvider"])

    @property
    def input_names(self) -> list[str]:
        return self.meta["input_names"]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **kwargs) -> ModelOutput:
        """Outputs of the int8 model as CPU torch tensors; ``labels`` is accepted but no loss is computed."""
        unsupported = [k for k, v in kwargs.items() if v is not None and v is not False and k != "return_dict"]
        if unsupported:
            raise TypeError(f"the int8 model does not support {unsupported}")
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if given["attention_mask"] is None:
            given["attention_mask"] = torch.ones_like(input_ids)
        if given["token_type_ids"] is None:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        elif "token_type_ids" not in self.input_names and bool((token_type_ids != 0).any()):
            raise ConfigError("this model has no token type embeddings, but non-zero token_type_ids were given")
        feeds = {k: given[k].detach().cpu().to(torch.int64).numpy() for k in self.input_names}
        outputs = self.session.run(self.meta["output_names"], feeds)
        return ModelOutput(**{k: torch.from_numpy(v) for k, v in zip(self.meta["output_names"], outputs)})

    def sentence_embeddings(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs) -> torch.Tensor:
        """``[batch, dim]`` sentence embeddings of a tokenized batch: the int8 model's ``last_hidden_state``
        pooled with the pooling its config records (``kp_pooling``), as the float model pooled.

        Raises:
            ConfigError: the model is not a sentence-embedding model (no pooling settings, or no
                ``last_hidden_state`` output).
        """
        pooling = model_pooling(self)
        if "last_hidden_state" not in self.meta["output_names"]:
            raise ConfigError(
                f"this int8 model outputs {self.meta['output_names']}, not last_hidden_state: it is not a base "
                "encoder, so there are no token states to pool",
                fix="quantize the base model (AutoModel) of the sentence-embedding model",
            )
        outputs = self(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return pool(outputs["last_hidden_state"], attention_mask.detach().cpu(), pooling)

    def _tokenizer(self, tokenizer):
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ConfigError(
                "this int8 model has no tokenizer to encode text with",
                fix="pass tokenizer=..., or save the int8 model with its tokenizer (save_int8(..., tokenizer=...))",
            )
        if isinstance(tokenizer, str | Path):
            try:
                loaded = transformers.AutoTokenizer.from_pretrained(str(tokenizer))
            except (OSError, ValueError) as err:
                raise MissingFileError(f"{tokenizer} has no tokenizer that loads ({err})") from None
            if tokenizer == self.tokenizer:
                self.tokenizer = loaded
            tokenizer = loaded
        return tokenizer

    @torch.no_grad()
    def encode(
        self, texts: str | list[str], tokenizer=None, batch_size: int = 32, max_seq_length: int | None = None
    ) -> torch.Tensor:
        """Sentence embeddings of ``texts`` (``[len(texts), dim]``, or ``[dim]`` for one string), tokenized as
        sentence-transformers does (stripped, padded per batch, truncated at ``max_seq_length``).

        Args:
            texts: One text or a list of texts.
            tokenizer: Default: the one saved with the model (:func:`load_int8`) or given when it was built.
            batch_size: Texts per ONNX Runtime call.
            max_seq_length: Tokens per text; default: the pooling's ``max_seq_length``, else the smaller of the
                tokenizer's ``model_max_length`` and the model's ``max_position_embeddings``.

        Raises:
            ConfigError: not a sentence-embedding model, or no tokenizer.
        """
        pooling = model_pooling(self)
        tokenizer = self._tokenizer(tokenizer)
        single = isinstance(texts, str)
        texts = [texts] if single else [str(t) for t in texts]
        if max_seq_length is None:
            max_seq_length = pooling.max_seq_length
        if max_seq_length is None:  # sentence-transformers' default
            limits = (getattr(self.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", 0))
            max_seq_length = min((v for v in limits if isinstance(v, int) and v > 0), default=None)
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                [t.strip() for t in texts[start : start + batch_size]],
                padding=True,
                truncation="longest_first",
                max_length=max_seq_length,
                return_tensors="pt",
            )
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            if "token_type_ids" not in self.input_names:
                inputs.pop("token_type_ids", None)
            chunks.append(self.sentence_embeddings(**inputs))
        if not chunks:
            return torch.empty(0, embedding_dimension(self.config))
        embeddings = torch.cat(chunks)
        return embeddings[0] if single else embeddings

    def kernel_counts(self) -> dict[str, int]:
        """Operator types of the graph ONNX Runtime runs after its optimizations (fused integer kernels included)."""
        import onnx
        import onnxruntime

        with tempfile.TemporaryDirectory() as tmp:
            options = onnxruntime.SessionOptions()
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            options.log_severity_level = 3  # no warning about hardware-specific optimized models
            onnxruntime.InferenceSession(self.onnx_model, options, providers=["CPUExecutionProvider"])
            graph = onnx.load(options.optimized_model_filepath).graph
        return dict(Counter(node.op_type for node in graph.node).most_common())

    def __getstate__(self):
        return {**self.__dict__, "session": None}

    def __setstate__(self, state):
        super().__setstate__(state)
        self.session = self._session()


def _meta(reference: nn.Module, quantizer: FakeQuantizer, io: dict, unsigned_weights: bool) -> dict:
    import onnxruntime

    linears = {
        name: {"weight_scale": m.weight_scale, "input": m.input_qparams, "output": m.output_qparams}
        for name, m in reference.named_modules()
        if isinstance(m, Int8Linear)
    }
    return {
        "format": FORMAT,
        "unsigned_weights": unsigned_weights,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        **io,
        "no_output_quant": list(quantizer.no_output_quant),
        "linears": linears,
    }


def cpu_has_vnni() -> bool:
    """Whether this CPU has x86 VNNI/AMX int8 dot products (exact uint8 x int8 GEMMs); False if it cannot be told."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_vnni", " avx_vnni", " amx_int8"))


def convert_to_int8(
    model: nn.Module, quantizer: FakeQuantizer, unsigned_weights: bool | None = None, num_threads: int | None = None
) -> Int8OnnxModel:
    """Convert a fake-quantized model into an :class:`Int8OnnxModel` (``model`` itself is left unchanged).

    Args:
        model: The model ``quantizer`` observes (attached or not).
        quantizer: Its observers; every one must have seen training data.
        unsigned_weights: Store the weights as uint8 (+128): exact on CPUs without VNNI, but slower. Default: only
            when this CPU has no VNNI (see :func:`cpu_has_vnni`).
        num_threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).
    """
    if unsigned_weights is None:
        unsigned_weights = not cpu_has_vnni()
    reference = int8_reference_model(model, quantizer, unsigned_weights)
    require_onnx("converting to an int8 ONNX model")
    with tempfile.TemporaryDirectory() as tmp:
        io = export_int8_onnx(reference, Path(tmp) / ONNX_FILE)
        onnx_model = (Path(tmp) / ONNX_FILE).read_bytes()
    return Int8OnnxModel(onnx_model, reference.config, _meta(reference, quantizer, io, unsigned_weights), num_threads)


def int8_report(model: Int8OnnxModel, report: dict | None = None) -> dict:
    """The ``compression_report.json`` of an int8 export: ``report``'s fields (metrics, model summaries, sizes)
    with ``export: "int8"``, the method (``QuantizationAwareTraining`` unless given), the number of int8 linears and
    the size of ``model.onnx``."""
    report = {"export": "int8", **(report or {})}
    report.setdefault("method", "QuantizationAwareTraining")
    report.setdefault("quantized_linears", len(model.meta.get("linears", {})))
    report["unsigned_weights"] = model.meta.get("unsigned_weights")
    report["onnx_file_bytes"] = len(model.onnx_model)
    return report


def save_int8(
    model: Int8OnnxModel, out_dir: str | Path, tokenizer=None, report: dict | None = None, base_model: str | None = None
) -> Path:
    """Write ``model.onnx``, ``config.json``, ``quantization.json`` (and the tokenizer) to ``out_dir``, then
    ``compression_report.json`` (:func:`int8_report` of ``report``) and the ``README.md`` model card (kind
    ``int8``; ``base_model`` defaults to ``report["base_model"]``).

    The config of a compact model (``kp_bert``...) comes with the compact code and an ``auto_map``, so
    ``AutoConfig.from_pretrained(out_dir, trust_remote_code=True)`` reads it without kp_lightning. The files are
    written into ``out_dir`` as they come: write into a staging directory (``kp_lightning.core.export.staging_dir``)
    for an all-or-nothing directory.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ONNX_FILE).write_bytes(model.onnx_model)
    model.config.save_pretrained(out_dir)
    add_remote_code(out_dir, model.config)
    (out_dir / QUANT_CONFIG_FILE).write_text(json.dumps(model.meta, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    write_embedding_files(out_dir, model.config)  # a sentence-embedding model: its pooling in the ST layout too
    full = int8_report(model, report)
    (out_dir / REPORT_FILE).write_text(json.dumps(full, indent=2, default=str))
    architecture = (getattr(model.config, "architectures", None) or [None])[0]
    kwargs = {"base_model": base_model} if base_model is not None else {}
    write_model_card(out_dir, full, "int8", architecture=architecture, **kwargs)
    return out_dir


def load_int8(path: str | Path, num_threads: int | None = None) -> Int8OnnxModel:
    """Load a model written by :func:`save_int8`."""
    path = Path(path)
    meta_file = path / QUANT_CONFIG_FILE
    if not meta_file.is_file() or not (path / ONNX_FILE).is_file():
        raise MissingFileError(f"{path} is not an int8 export: it needs {ONNX_FILE} and {QUANT_CONFIG_FILE}")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{meta_file} has format {meta.get('format')!r}, expected {FORMAT!r}")
    config = transformers.AutoConfig.from_pretrained(path)
    tokenizer = path if (path / "tokenizer_config.json").is_file() else None  # loaded when encode() first needs it
    return Int8OnnxModel((path / ONNX_FILE).read_bytes(), config, meta, num_threads, tokenizer=tokenizer)
