"""Real int8 inference on CPU with ONNX Runtime for a model trained with :class:`FakeQuantizer`.

:func:`convert_to_int8` freezes the fake-quantized linears (:func:`int8_reference_model`), exports the model to ONNX
in QDQ form (int8 weight initializers with ``DequantizeLinear``; ``QuantizeLinear -> DequantizeLinear`` on every
quantized input and requantized output, with the scales and zero points of the observers) and opens it with ONNX
Runtime, whose graph optimizer fuses the QDQ patterns into integer GEMMs (``MatMulIntegerToFloat``, ``QGemm``).
Embeddings, LayerNorm, softmax, GELU and attention matmuls stay fp32 (ORT fuses them into its own kernels).

The result, :class:`Int8OnnxModel`, is called like the Hugging Face model (``input_ids``, ``attention_mask``,
``token_type_ids`` -> an output with ``.logits`` / ``.start_logits`` / ``.last_hidden_state`` as torch tensors).

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
    """

    def __init__(self, onnx_model: bytes, config, meta: dict, num_threads: int | None = None):
        super().__init__()
        self.onnx_model, self.config, self.meta = onnx_model, config, meta
        self.num_threads = num_threads
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
    return Int8OnnxModel((path / ONNX_FILE).read_bytes(), config, meta, num_threads)
