"""The shipped YAML recipes (``configs/`` in a checkout, ``kp_lightning/recipes`` once installed).

``-c kprune`` or ``-c prune/kprune`` names a recipe; a path that exists is always used as it is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kp_lightning.errors import ConfigError, MissingFileError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
CONFIG_FLAGS = ("-c", "--config")


def list_recipes() -> list[str]:
    """Every recipe as its name relative to the recipe folder, without ``.yaml`` (``prune/kprune``)."""
    return sorted(p.relative_to(RECIPES_DIR).with_suffix("").as_posix() for p in RECIPES_DIR.rglob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The file of recipe ``name``: a full name (``prune/kprune``) or a unique last part (``kprune``).

    Raises:
        MissingFileError: No recipe has that name.
        ConfigError: The last part is shared by several recipes (``glue``): give the full name.
    """
    name = name.removesuffix(".yaml").strip("/")
    names = list_recipes()
    if name in names:
        return RECIPES_DIR / f"{name}.yaml"
    matches = [n for n in names if n.rsplit("/", 1)[-1] == name]
    if len(matches) == 1:
        return RECIPES_DIR / f"{matches[0]}.yaml"
    if matches:
        raise ConfigError(f"recipe name {name!r} is ambiguous: {', '.join(matches)}", fix="use the full name")
    raise MissingFileError(
        f"config {name!r} is neither a file nor a shipped recipe",
        fix="check the path, or run `kp-lightning configs list` for the recipe names",
    )


def resolve_config_args(argv: list[str]) -> list[str]:
    """``argv`` with every ``-c NAME`` / ``--config NAME`` / ``--config=NAME`` that is not a file replaced
    by the recipe's path."""

    def resolve(value: str) -> str:
        if Path(value).exists() or value.lstrip().startswith(("{", "[")) or ":" in value:
            return value  # a file, or an inline YAML/JSON config
        return str(recipe_path(value))

    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in CONFIG_FLAGS and i + 1 < len(argv):
            out += [arg, resolve(argv[i + 1])]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + resolve(arg.split("=", 1)[1])
        out.append(arg)
        i += 1
    return out


def copy_recipe(name: str, destination: str | Path) -> Path:
    """Copy recipe ``name`` to ``destination`` (a file, or a folder to copy it into); never overwrites.

    Raises:
        ConfigError: The destination file exists.
    """
    source = recipe_path(name)
    destination = Path(destination)
    if destination.is_dir():
        destination = destination / source.name
    if destination.exists():
        raise ConfigError(f"{destination} already exists", fix="choose another destination or delete it first")
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    return destination
