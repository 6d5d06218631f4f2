"""Configs of compact (physically pruned) encoders: the stock config plus ``kp_structure``.

Copied into every compact export; imports only transformers. ``kp_structure`` holds the kept sizes:
``{"hidden_size": int, "heads": [int per layer], "intermediate": [int per layer]}``. The stock fields
(``hidden_size``, ``num_attention_heads``, ...) keep the values of the original model, so the head size and
attention scaling stay what they were.
"""

from __future__ import annotations

import transformers

from .layouts import LAYOUTS, EncoderLayout


def _compact_config_class(layout: EncoderLayout) -> type:
    base = getattr(transformers, layout.config_class)

    def __init__(self, kp_structure: dict | None = None, **kwargs):
        kwargs.pop("model_type", None)
        self.kp_structure = kp_structure
        base.__init__(self, **kwargs)

    name = "KP" + base.__name__
    return type(name, (base,), {"model_type": layout.compact_model_type, "__init__": __init__, "__module__": __name__})


COMPACT_CONFIG_CLASSES: dict[str, type] = {}
for _layout in LAYOUTS.values():
    _cls = _compact_config_class(_layout)
    globals()[_cls.__name__] = _cls
    COMPACT_CONFIG_CLASSES[_layout.model_type] = _cls
