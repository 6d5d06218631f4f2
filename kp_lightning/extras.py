"""Optional dependencies (``pip install 'kp_lightning[<extra>]'``): found without importing them, refused early."""

from __future__ import annotations

import importlib.util
import sys

from kp_lightning.errors import MissingExtraError

ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")
ONNX_FIX = "pip install 'kp_lightning[onnx]'"


def module_available(name: str) -> bool:
    """Whether ``import name`` can find the module, without importing it.

    A ``None`` entry in ``sys.modules`` (which makes ``import name`` fail) counts as missing, as does a name that
    ``importlib.util.find_spec`` cannot resolve (it raises ``ValueError`` for a module without ``__spec__``).
    """
    if name in sys.modules:
        module = sys.modules[name]
        return module is not None and getattr(module, "__spec__", True) is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_onnx_modules() -> list[str]:
    """The modules of the ``[onnx]`` extra that are not installed (``onnx``, ``onnxruntime``, ``onnxscript``)."""
    return [name for name in ONNX_MODULES if not module_available(name)]


def require_onnx(what: str) -> None:
    """Refuse ``what`` (a sentence subject: "QuantizationAwareTraining's int8 export") without the ``[onnx]`` extra.

    Raises:
        MissingExtraError: one of :data:`ONNX_MODULES` is not installed.
    """
    missing = missing_onnx_modules()
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise MissingExtraError(
            f"{what} needs the [onnx] extra (onnx, onnxruntime, onnxscript), but {', '.join(missing)} {verb} not "
            "installed",
            fix=ONNX_FIX,
        )
