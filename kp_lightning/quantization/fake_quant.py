"""Quantization-aware training of ``nn.Linear`` layers with fake quantization (Q8BERT / Prune Once for All recipe).

* weights: int8 symmetric per tensor in [-128, 127], ``scale = max|w| / 127.5`` recomputed from the current weight at
  every forward (torch ``MinMaxObserver``, ``qint8``, ``per_tensor_symmetric``); a zero weight stays exactly zero;
* inputs: uint8 asymmetric per tensor in [0, 255], moving-average min/max (torch ``MovingAverageMinMaxObserver``:
  the first observation sets min/max, later ones move them by ``averaging_constant``); the ranges are only updated
  while the linear module is in training mode and observers are enabled, validation uses the stored ranges; with a
  token mask set (:attr:`FakeQuantizer.token_mask`, the batch's ``attention_mask``) per-token inputs and outputs are
  observed at real tokens only, so padding does not widen the ranges;
* outputs: fake-quantized to uint8 as well (own observer) except for modules whose name contains one of
  ``no_output_quant`` (by default, from the layout table: the layers feeding a residual sum, value projections
  (a fused QKV as a whole), and task heads);
* gradients: straight-through with clipping (``torch.fake_quantize_per_tensor_affine``).

The model's parameters, buffers and ``state_dict()`` keys are untouched: :meth:`FakeQuantizer.attach` replaces
``forward`` on each listed ``nn.Linear`` *instance* (an entry in its ``__dict__``), :meth:`FakeQuantizer.detach`
deletes it again. Observers live in the :class:`FakeQuantizer` (an ``nn.Module`` owned by the caller); its
``state_dict()`` is the part of a training checkpoint that quantization adds.

An observer that has never seen a training batch passes its tensor through unquantized (with one warning), so an
evaluation before the first training step gives float results for the activations (weights are still quantized).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..compact_model.layouts import LAYOUTS

#: Task-head outputs kept in float (their logits are the model's output).
_HEAD_OUTPUTS = ("classifier", "qa_outputs", "pre_classifier", "decoder")


def _float_output_paths() -> tuple[str, ...]:
    """Per-layer paths, from every layout entry, of the Linear layers whose output is not requantized: the output
    projections (they feed a residual sum) and the value projection (or the fused QKV holding it)."""
    paths: dict[str, None] = {}
    for layout in LAYOUTS.values():
        for path in (layout.attention_out, layout.ffn_down, layout.qkv or layout.value):
            paths[path] = None
    return tuple(paths)


#: Substrings of module names whose output is not requantized (every layout's residual inputs and value
#: projections, and the task heads).
DEFAULT_NO_OUTPUT_QUANT: tuple[str, ...] = _float_output_paths() + _HEAD_OUTPUTS
ACT_QMIN, ACT_QMAX = 0, 255
WEIGHT_QMIN, WEIGHT_QMAX = -128, 127
EPS = torch.finfo(torch.float32).eps
_UNINITIALIZED = (
    "fake quantization: an activation observer has not seen a training batch yet; its tensor passes through "
    "unquantized (run a training forward, or load observer state, before evaluating)"
)


def default_quantized_linears(model: nn.Module, exclude: Iterable[str] = ()) -> list[str]:
    """Names of all ``nn.Linear`` modules of ``model`` except those whose name contains a substring in ``exclude``
    and those whose weight is an embedding's (an MLM decoder tied to the word embeddings stays float: quantizing
    it would quantize the embedding matrix too, and the int8 export keeps embeddings float)."""
    exclude = tuple(exclude)
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not any(s in name for s in exclude) and id(module.weight) not in tied
    ]


def weight_qparams(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 ``(scale, zero_point=0)`` of a weight, as 0-dim float32 / int32 tensors."""
    amax = weight.detach().abs().amax().float()
    scale = torch.clamp(amax / ((WEIGHT_QMAX - WEIGHT_QMIN) / 2), min=EPS)
    return scale, torch.zeros((), dtype=torch.int32, device=weight.device)


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded to the int8 grid of :func:`weight_qparams` (straight-through gradient)."""
    scale, zero_point = weight_qparams(weight)
    return torch.fake_quantize_per_tensor_affine(weight, scale, zero_point, WEIGHT_QMIN, WEIGHT_QMAX)


def activation_qparams_from_range(min_val: torch.Tensor, max_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 affine ``(scale, zero_point)`` of a range, exactly as torch's ``MinMaxObserver`` (range widened to 0)."""
    min_neg = torch.clamp(min_val, max=0.0)
    max_pos = torch.clamp(max_val, min=0.0)
    scale = torch.clamp((max_pos - min_neg) / float(ACT_QMAX - ACT_QMIN), min=EPS)
    zero_point = torch.clamp(ACT_QMIN - torch.round(min_neg / scale).to(torch.int32), ACT_QMIN, ACT_QMAX)
    return scale, zero_point.to(torch.int32)


def all_reduce_range(min_val: torch.Tensor, max_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The range over all processes (the min of the mins, the max of the maxes) when ``torch.distributed`` is
    initialized with more than one process, else ``(min_val, max_val)`` unchanged.

    A collective of the default group (the data-parallel group: DDP and FSDP2 without tensor parallelism): every
    process must observe the same number of times, as training forwards do. Each process then moves its moving
    average with the range of the global batch, so the ranges are identical on every rank and equal to one process
    fed the whole global batch (for padding-free statistics: padded positions are observed like any other).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return min_val, max_val
    if torch.distributed.get_world_size() <= 1:
        return min_val, max_val
    both = torch.stack([-min_val, max_val])  # one MAX all-reduce: max(-min) = -(min of the mins)
    torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
    return -both[0], both[1]


class TokenMask:
    """The current batch's token mask, shared by a quantizer's observers (``value``: None, or 1/0 per token)."""

    value: torch.Tensor | None = None


def _observed_range(x: torch.Tensor, tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x``, over the real tokens when ``tokens`` has one entry per row of ``x`` (per-token
    activations); a per-sequence tensor (a pooled classifier input) is observed whole."""
    x = x.detach().float()
    if tokens is None or x.dim() < 2 or tokens.numel() != x[..., 0].numel():
        return torch.aminmax(x)
    real = tokens.reshape(x.shape[:-1]).unsqueeze(-1).to(device=x.device, dtype=torch.bool)
    return x.masked_fill(~real, float("inf")).amin(), x.masked_fill(~real, float("-inf")).amax()


class ActivationObserver(nn.Module):
    """Moving-average min/max of a tensor and its uint8 fake quantization.

    State (``state_dict``): ``min_val`` and ``max_val`` (``+inf`` / ``-inf`` until the first observation).
    In a distributed run (DDP, FSDP2) each observation takes the range over all processes
    (:func:`all_reduce_range`), so every rank keeps the same ranges, those of one process on the global batch.
    """

    def __init__(self, averaging_constant: float = 0.01):
        super().__init__()
        self.averaging_constant = averaging_constant
        self.enabled = True
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self._initialized = False  # mirrors ``isfinite(min_val)`` without a device sync

    @property
    def initialized(self) -> bool:
        return self._initialized

    @torch.no_grad()
    def observe(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> None:
        """Update the moving min/max with ``x`` (the first observation sets them), at the real ``tokens`` only when
        given."""
        if self.min_val.device != x.device:
            self.min_val, self.max_val = self.min_val.to(x.device), self.max_val.to(x.device)
        cur_min, cur_max = all_reduce_range(*_observed_range(x, tokens))
        c = self.averaging_constant
        first = torch.isinf(self.min_val)
        self.min_val.copy_(torch.where(first, cur_min, self.min_val + c * (cur_min - self.min_val)))
        self.max_val.copy_(torch.where(first, cur_max, self.max_val + c * (cur_max - self.max_val)))
        self._initialized = True

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Current ``(scale, zero_point)`` tensors; only meaningful once :attr:`initialized`."""
        return activation_qparams_from_range(self.min_val, self.max_val)

    def forward(
        self, x: torch.Tensor, training: bool, quantize: bool = True, tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        if training and self.enabled:
            self.observe(x, tokens)
        if not quantize:
            return x
        if not self._initialized:
            warnings.warn(_UNINITIALIZED, RuntimeWarning, stacklevel=2)
            return x
        scale, zero_point = self.qparams()
        scale, zero_point = scale.to(x.device), zero_point.to(x.device)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, ACT_QMIN, ACT_QMAX)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._initialized = bool(torch.isfinite(self.min_val).item())

    def extra_repr(self) -> str:
        return f"averaging_constant={self.averaging_constant}, enabled={self.enabled}"


class LinearQuantizer(nn.Module):
    """Observers of one ``nn.Linear``: ``input`` and, when the output is requantized, ``output``."""

    def __init__(self, output_quant: bool, averaging_constant: float = 0.01, tokens: TokenMask | None = None):
        super().__init__()
        self.input = ActivationObserver(averaging_constant)
        self.output = ActivationObserver(averaging_constant) if output_quant else None
        self.fake_quant_enabled = True
        self.tokens = tokens or TokenMask()

    def linear(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantized ``module(x)``: quantized input, quantized weight, optionally quantized output."""
        on, tokens = self.fake_quant_enabled, self.tokens.value
        x = self.input(x, module.training, quantize=on, tokens=tokens)
        y = F.linear(x, fake_quantize_weight(module.weight) if on else module.weight, module.bias)
        if self.output is not None:
            y = self.output(y, module.training, quantize=on, tokens=tokens)
        return y


class _FakeQuantForward:
    """Callable installed as ``forward`` on one ``nn.Linear`` instance (picklable, survives ``deepcopy``)."""

    def __init__(self, module: nn.Linear, quant: LinearQuantizer):
        self.module = module
        self.quant = quant

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        return self.quant.linear(self.module, input)


def _key(name: str) -> str:
    return name.replace(".", "/")


def is_fake_quantized(module: nn.Module) -> bool:
    """Whether ``module`` currently runs a fake-quantized forward."""
    return isinstance(module.__dict__.get("forward"), _FakeQuantForward)


def strip_fake_quant(model: nn.Module) -> int:
    """Remove every fake-quant forward from ``model`` (e.g. a ``deepcopy``); returns how many were removed."""
    count = 0
    for module in model.modules():
        if is_fake_quantized(module):
            del module.__dict__["forward"]
            count += 1
    return count


class FakeQuantizer(nn.Module):
    """Observers for the listed ``nn.Linear`` modules of ``model`` and the switch that fake-quantizes them.

    Args:
        model: The model to quantize; it is referenced, not registered as a submodule, so ``state_dict()`` of the
            quantizer holds only observer ranges (keys ``linears.<name with / for .>.{input,output}.{min,max}_val``).
        module_names: Names (as in ``model.named_modules()``) of the ``nn.Linear`` modules to quantize, see
            :func:`default_quantized_linears`.
        no_output_quant: Modules whose name contains one of these substrings keep a float output.
        averaging_constant: EMA constant of the activation observers.
        attach: Install the fake-quant forwards immediately.

    In a distributed run (DDP, FSDP2) the observers all-reduce every batch's range (:func:`all_reduce_range`): the
    ranges are identical on every rank and equal to one process's on the same global batch. Register the quantizer
    as a submodule of the LightningModule (``pl_module.add_module(...)``) so its ranges move to the device and are
    checkpointed. Under FSDP2 the hooks see the unsharded weights (FSDP2's pre-forward unshards the layer), so the
    weight scales are those of the full weights.
    """

    def __init__(
        self,
        model: nn.Module,
        module_names: Sequence[str],
        no_output_quant: Sequence[str] = DEFAULT_NO_OUTPUT_QUANT,
        averaging_constant: float = 0.01,
        attach: bool = False,
    ):
        super().__init__()
        self.__dict__["model"] = model  # a plain reference: not a submodule, not in state_dict
        self.module_names = list(module_names)
        self.no_output_quant = tuple(no_output_quant)
        self.tokens = TokenMask()
        for name in self.module_names:
            if not isinstance(model.get_submodule(name), nn.Linear):
                raise TypeError(f"{name} is a {type(model.get_submodule(name)).__name__}, not an nn.Linear")
        self.linears = nn.ModuleDict(
            {
                _key(name): LinearQuantizer(self.output_quantized(name), averaging_constant, self.tokens)
                for name in self.module_names
            }
        )
        if attach:
            self.attach()

    def output_quantized(self, name: str) -> bool:
        return not any(s in name for s in self.no_output_quant)

    def quantizer(self, name: str) -> LinearQuantizer:
        return self.linears[_key(name)]

    def named_quantizers(self):
        for name in self.module_names:
            yield name, self.quantizer(name)

    def observers(self):
        for _, quant in self.named_quantizers():
            yield quant.input
            if quant.output is not None:
                yield quant.output

    def rebind(self, model: nn.Module) -> FakeQuantizer:
        """A quantizer of the same layers of ``model`` (e.g. a gathered, unsharded copy of the model this one
        observes) holding a copy of these observers' ranges and switches, on ``model``'s device, attached when this
        one is."""
        averaging = next(iter(self.observers())).averaging_constant if self.module_names else 0.01
        quant = FakeQuantizer(model, self.module_names, self.no_output_quant, averaging)
        device = next(iter(model.parameters())).device
        quant.to(device)
        quant.load_state_dict({k: v.detach().to(device) for k, v in self.state_dict().items()})
        for (_, mine), (_, theirs) in zip(self.named_quantizers(), quant.named_quantizers(), strict=True):
            theirs.fake_quant_enabled = mine.fake_quant_enabled
            theirs.input.enabled = mine.input.enabled
            if mine.output is not None:
                theirs.output.enabled = mine.output.enabled
        if self.attached:
            quant.attach()
        return quant

    # -- attach / detach ------------------------------------------------------------------------------------------
    def attach(self) -> FakeQuantizer:
        """Fake-quantize the listed modules (idempotent)."""
        for name, quant in self.named_quantizers():
            module = self.model.get_submodule(name)
            current = module.__dict__.get("forward")
            if isinstance(current, _FakeQuantForward) and current.quant is quant:
                continue
            if current is not None:
                raise RuntimeError(f"{name} already has an instance-level forward ({current!r}); cannot attach")
            module.forward = _FakeQuantForward(module, quant)
        return self

    def detach(self) -> None:
        """Restore the plain ``nn.Linear`` forwards (the observers keep their state)."""
        for name, quant in self.named_quantizers():
            module = self.model.get_submodule(name)
            current = module.__dict__.get("forward")
            if isinstance(current, _FakeQuantForward) and current.quant is quant:
                del module.__dict__["forward"]

    @property
    def attached(self) -> bool:
        modules = (self.model.get_submodule(n).__dict__.get("forward") for n in self.module_names)
        return all(getattr(f, "quant", None) is q for f, (_, q) in zip(modules, self.named_quantizers()))

    # -- switches --------------------------------------------------------------------------------------------------
    @property
    def token_mask(self) -> torch.Tensor | None:
        """The token mask the observers read (the training batch's ``attention_mask``; None: every position)."""
        return self.tokens.value

    @token_mask.setter
    def token_mask(self, value: torch.Tensor | None) -> None:
        self.tokens.value = value

    @property
    def observers_enabled(self) -> bool:
        return all(obs.enabled for obs in self.observers())

    @observers_enabled.setter
    def observers_enabled(self, value: bool) -> None:
        for obs in self.observers():
            obs.enabled = bool(value)

    @property
    def fake_quant_enabled(self) -> bool:
        """When False the modules run in float while enabled observers keep calibrating (a calibration phase)."""
        return all(q.fake_quant_enabled for _, q in self.named_quantizers())

    @fake_quant_enabled.setter
    def fake_quant_enabled(self, value: bool) -> None:
        for _, quant in self.named_quantizers():
            quant.fake_quant_enabled = bool(value)

    @property
    def initialized(self) -> bool:
        """Whether every observer has seen at least one training batch (or was loaded)."""
        return all(obs.initialized for obs in self.observers())

    # -- inspection ------------------------------------------------------------------------------------------------
    def activation_qparams(self) -> dict[str, dict]:
        """``{name: {"input": (scale, zp), "output": (scale, zp) | None, "output_quantized": bool}}``.

        A pair is ``None`` while its observer is uninitialized; ``output`` is always ``None`` without output quant.
        """

        def pair(obs: ActivationObserver | None):
            if obs is None or not obs.initialized:
                return None
            scale, zero_point = obs.qparams()
            return float(scale), int(zero_point)

        return {
            name: {"input": pair(q.input), "output": pair(q.output), "output_quantized": q.output is not None}
            for name, q in self.named_quantizers()
        }

    def weight_scales(self) -> dict[str, float]:
        """``{f"{name}.weight": scale}`` the fake quantization uses for each weight now."""
        return {f"{n}.weight": float(weight_qparams(self.model.get_submodule(n).weight)[0]) for n in self.module_names}
