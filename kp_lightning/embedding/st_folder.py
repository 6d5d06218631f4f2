"""Read and write sentence-transformers model folders (``modules.json`` + one directory per module).

Supported: a Transformer module, one Pooling module (mean, CLS, max or mean-sqrt-len; the classic
``pooling_mode_*_tokens`` keys or the newer ``pooling_mode`` key) and an optional Normalize module. Written
folders use the classic layout (``sentence_transformers.models.*`` types, ``sentence_bert_config.json`` with
``max_seq_length``), which every sentence-transformers version from 2.x on loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kp_lightning.embedding.pooling import Pooling
from kp_lightning.errors import ConfigError, ModelLoadError

MODULES_FILE = "modules.json"
POOLING_DIR = "1_Pooling"
NORMALIZE_DIR = "2_Normalize"
SBERT_CONFIG = "sentence_bert_config.json"
ST_CONFIG = "config_sentence_transformers.json"
_CLASSIC_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_ALL_CLASSIC = (*_CLASSIC_MODES, "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


@dataclass(frozen=True)
class SentenceTransformerFolder:
    """What a sentence-transformers folder holds.

    Attributes:
        root: The folder.
        transformer_dir: Where the Transformer module's HF model and tokenizer are (often ``root`` itself).
        pooling: Pooling mode, normalization and ``max_seq_length``.
    """

    root: Path
    transformer_dir: Path
    pooling: Pooling


def is_sentence_transformers_dir(path: str | Path) -> bool:
    return (Path(path) / MODULES_FILE).is_file()


def _module_kind(entry: dict) -> str:
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ModelLoadError(f"{path.parent} has no {path.name}: the {what} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path} is not valid JSON ({error})") from None


def _pooling_mode(config: dict, where: Path) -> str:
    if "pooling_mode" in config:  # sentence-transformers >= 6 writes one mode name
        mode = config["pooling_mode"]
        mode = mode[0] if isinstance(mode, list) and len(mode) == 1 else mode
        names = {"mean": "mean", "cls": "cls", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len"}
        if isinstance(mode, str) and mode in names:
            return names[mode]
        raise ModelLoadError(f"{where}: pooling mode {mode!r} is not supported", fix="use mean, cls or max pooling")
    chosen = [key for key in _ALL_CLASSIC if config.get(key)]
    if len(chosen) != 1 or chosen[0] not in _CLASSIC_MODES:
        raise ModelLoadError(
            f"{where}: pooling {chosen or 'none'} is not supported (exactly one of mean, CLS, max or mean-sqrt-len)"
        )
    return _CLASSIC_MODES[chosen[0]]


def read_sentence_transformers_dir(path: str | Path) -> SentenceTransformerFolder:
    """Interpret ``modules.json`` and the module folders of ``path``.

    Raises:
        ModelLoadError: a module we cannot reproduce (Dense, a second Transformer...), or a missing file.
    """
    root = Path(path)
    modules = _read_json(root / MODULES_FILE, "module list")
    if not isinstance(modules, list):
        raise ModelLoadError(f"{root / MODULES_FILE} must be a list of modules")
    kinds = [_module_kind(m) for m in modules]
    unsupported = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unsupported or kinds.count("Transformer") != 1 or kinds.count("Pooling") != 1:
        raise ModelLoadError(
            f"{root} has the modules {kinds}; kp_lightning compresses Transformer + Pooling (+ Normalize) models",
            fix="a model with Dense or other extra modules is not supported yet; use its Transformer folder "
            "with --model.init_args.pooling to compress the encoder alone",
        )
    entries = {k: m for k, m in zip(kinds, modules, strict=True)}
    transformer_dir = root / entries["Transformer"].get("path", "")
    pooling_dir = root / entries["Pooling"].get("path", POOLING_DIR)
    mode = _pooling_mode(_read_json(pooling_dir / "config.json", "pooling configuration"), pooling_dir)
    max_len = None
    sbert = transformer_dir / SBERT_CONFIG
    if sbert.is_file():
        max_len = _read_json(sbert, "Transformer configuration").get("max_seq_length")
    if not (transformer_dir / "config.json").is_file():
        raise ModelLoadError(f"{transformer_dir} has no config.json: the Transformer module's model is missing")
    return SentenceTransformerFolder(root, transformer_dir, Pooling(mode, "Normalize" in kinds, max_len))


def write_sentence_transformers_files(directory: str | Path, pooling: Pooling, dimension: int) -> None:
    """Add the sentence-transformers files around an HF model saved in ``directory`` (the Transformer module
    is the folder itself), so ``SentenceTransformer(directory)`` loads it with this pooling."""
    root = Path(directory)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
    ]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": NORMALIZE_DIR, "type": "sentence_transformers.models.Normalize"})
        (root / NORMALIZE_DIR).mkdir(exist_ok=True)
    (root / MODULES_FILE).write_text(json.dumps(modules, indent=2) + "\n")
    (root / POOLING_DIR).mkdir(exist_ok=True)
    config = {"word_embedding_dimension": dimension, **{key: False for key in _ALL_CLASSIC}}
    config[next(k for k, v in _CLASSIC_MODES.items() if v == pooling.mode)] = True
    (root / POOLING_DIR / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    sbert = {"do_lower_case": False}
    if pooling.max_seq_length:
        sbert = {"max_seq_length": pooling.max_seq_length, **sbert}
    (root / SBERT_CONFIG).write_text(json.dumps(sbert, indent=2) + "\n")
    (root / ST_CONFIG).write_text(json.dumps({"similarity_fn_name": "cosine", "prompts": {}}, indent=2) + "\n")


def check_pooling_options(mode: str | None, normalize: bool | None) -> None:
    """Refuse pooling options given for a model that is not loaded as an embedding model."""
    if mode is not None or normalize is not None:
        raise ConfigError(
            "pooling and normalize apply to embedding tasks only",
            fix="remove --model.init_args.pooling / normalize, or use an embedding data module",
        )
