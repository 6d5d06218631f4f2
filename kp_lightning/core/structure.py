"""The JSON record of what a pruned encoder keeps: heads, FFN neurons and hidden dimensions per layer."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from kp_lightning.errors import KPError

from .adapter import EncoderShape

FORMAT = "kp_lightning.structure/1"


class StructureError(KPError, ValueError):
    """Raised for a structure that is malformed or does not fit the model it is applied to."""


@dataclass
class EncoderStructure:
    """Kept units of an encoder whose sizes are ``shape``.

    A sublayer with no kept unit is removed: it keeps only its output bias and LayerNorm, ``LN(x + b)``.

    Attributes:
        shape: Sizes of the model this record refers to.
        heads: Kept head indices, per layer.
        neurons: Kept FFN neuron indices, per layer.
        hidden: Kept hidden dimensions.
    """

    shape: EncoderShape
    heads: list[list[int]]
    neurons: list[list[int]]
    hidden: list[int]

    def __post_init__(self) -> None:
        self.heads = [sorted(int(i) for i in layer) for layer in self.heads]
        self.neurons = [sorted(int(i) for i in layer) for layer in self.neurons]
        self.hidden = sorted(int(i) for i in self.hidden)
        self.validate()

    @classmethod
    def full(cls, shape: EncoderShape) -> EncoderStructure:
        """Everything kept."""
        return cls(
            shape=shape,
            heads=[list(range(h)) for h in shape.heads],
            neurons=[list(range(n)) for n in shape.neurons],
            hidden=list(range(shape.hidden_size)),
        )

    def validate(self, shape: EncoderShape | None = None) -> None:
        """Check the record is internally consistent and, if given, that it refers to ``shape``.

        Raises:
            StructureError: with what is wrong and where.
        """
        if shape is not None and shape != self.shape:
            raise StructureError(
                f"structure was made for a model of shape {self.shape} but the model has shape {shape}"
            )
        n_layers = self.shape.num_layers
        for name, kept, sizes in (
            ("heads", self.heads, self.shape.heads),
            ("neurons", self.neurons, self.shape.neurons),
        ):
            if len(kept) != n_layers:
                raise StructureError(f"'{name}' lists {len(kept)} layers but the model has {n_layers}")
            for layer, (indices, size) in enumerate(zip(kept, sizes, strict=True)):
                _check_indices(indices, size, f"{name}[{layer}]")
        _check_indices(self.hidden, self.shape.hidden_size, "hidden")
        if not self.hidden:
            raise StructureError("'hidden' keeps no dimension; at least one hidden dimension must stay")

    @property
    def attention_kept(self) -> list[bool]:
        return [bool(h) for h in self.heads]

    @property
    def ffn_kept(self) -> list[bool]:
        return [bool(n) for n in self.neurons]

    def kept_counts(self) -> dict:
        """Sizes of the compacted model, as stored in ``config.kp_structure``."""
        return {
            "hidden_size": len(self.hidden),
            "heads": [len(h) for h in self.heads],
            "intermediate": [len(n) for n in self.neurons],
        }

    def compacted_shape(self) -> EncoderShape:
        """Shape of the model after compaction to this structure."""
        return replace(
            self.shape,
            hidden_size=len(self.hidden),
            heads=tuple(len(h) for h in self.heads),
            neurons=tuple(len(n) for n in self.neurons),
        )

    def compose(self, inner: EncoderStructure) -> EncoderStructure:
        """Express ``inner`` (a structure of the model compacted to ``self``) relative to ``self.shape``."""
        inner.validate(self.compacted_shape())
        return EncoderStructure(
            shape=self.shape,
            heads=[[outer[i] for i in kept] for outer, kept in zip(self.heads, inner.heads, strict=True)],
            neurons=[[outer[i] for i in kept] for outer, kept in zip(self.neurons, inner.neurons, strict=True)],
            hidden=[self.hidden[i] for i in inner.hidden],
        )

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "shape": {
                "hidden_size": self.shape.hidden_size,
                "head_size": self.shape.head_size,
                "heads": list(self.shape.heads),
                "neurons": list(self.shape.neurons),
                **_architecture_fields(self.shape),
            },
            "kept": self.kept_counts(),
            "attention_kept": self.attention_kept,
            "ffn_kept": self.ffn_kept,
            "heads": self.heads,
            "neurons": self.neurons,
            "hidden": self.hidden,
        }

    @classmethod
    def from_dict(cls, data: dict) -> EncoderStructure:
        """Inverse of :meth:`to_dict`.

        Raises:
            StructureError: the dict is not a structure record or its parts disagree.
        """
        if data.get("format") != FORMAT:
            raise StructureError(
                f"not a kp_lightning structure record (expected format '{FORMAT}', got {data.get('format')!r})"
            )
        try:
            s = data["shape"]
            extra = {
                name: type(default)(s[name]) if not isinstance(default, tuple) else tuple(s[name])
                for name, default in _ARCHITECTURE_DEFAULTS.items()
                if name in s
            }
            shape = EncoderShape(
                int(s["hidden_size"]), int(s["head_size"]), tuple(s["heads"]), tuple(s["neurons"]), **extra
            )
            record = cls(shape=shape, heads=data["heads"], neurons=data["neurons"], hidden=data["hidden"])
        except (KeyError, TypeError) as err:
            raise StructureError(f"structure record is missing or mistypes a field: {err}") from err
        for key, derived in (("attention_kept", record.attention_kept), ("ffn_kept", record.ffn_kept)):
            if key in data and list(data[key]) != derived:
                raise StructureError(f"'{key}' disagrees with the kept units: {data[key]} vs {derived}")
        return record

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> EncoderStructure:
        return cls.from_dict(json.loads(Path(path).read_text()))


_ARCHITECTURE_DEFAULTS = {
    f.name: f.default for f in fields(EncoderShape) if f.name not in ("hidden_size", "head_size", "heads", "neurons")
}


def _architecture_fields(shape: EncoderShape) -> dict:
    """The shape's architecture-specific sizes (relative positions, gating, biases, LayerNorms), written only where
    they differ from a BERT layer's."""
    out = {}
    for name, default in _ARCHITECTURE_DEFAULTS.items():
        value = getattr(shape, name)
        if value != default:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _check_indices(indices: list[int], size: int, where: str) -> None:
    if len(set(indices)) != len(indices):
        raise StructureError(f"'{where}' repeats an index")
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
        raise StructureError(f"'{where}' has indices {bad[:5]} outside 0..{size - 1}")
