"""Register the compact model classes with the transformers Auto classes (in-library loading)."""

from __future__ import annotations

import transformers

from .configuration_kp import COMPACT_CONFIG_CLASSES
from .layouts import LAYOUTS
from .modeling_kp import COMPACT_MODEL_CLASSES

AUTO_CLASS_FOR_TASK = {
    "Model": "AutoModel",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "ForMultipleChoice": "AutoModelForMultipleChoice",
    "ForMaskedLM": "AutoModelForMaskedLM",
    "ForPreTraining": "AutoModelForPreTraining",
}


def register_compact_models() -> None:
    """Make ``AutoConfig``/``AutoModelFor*`` resolve ``kp_*`` model types (idempotent)."""
    for model_type, config_cls in COMPACT_CONFIG_CLASSES.items():
        compact_type = LAYOUTS[model_type].compact_model_type
        transformers.AutoConfig.register(compact_type, config_cls, exist_ok=True)
    for (model_type, task), model_cls in COMPACT_MODEL_CLASSES.items():
        auto = getattr(transformers, AUTO_CLASS_FOR_TASK[task])
        auto.register(COMPACT_CONFIG_CLASSES[model_type], model_cls, exist_ok=True)


def auto_map(model_type: str) -> dict[str, str]:
    """``auto_map`` for a compact export's config.json (remote-code loading without kp_lightning)."""
    layout = LAYOUTS[model_type]
    mapping = {"AutoConfig": f"configuration_kp.{COMPACT_CONFIG_CLASSES[model_type].__name__}"}
    for task in layout.heads:
        mapping[AUTO_CLASS_FOR_TASK[task]] = f"modeling_kp.{COMPACT_MODEL_CLASSES[(model_type, task)].__name__}"
    return mapping
