"""How the commands report bad input: one ``error:`` / ``fix:`` block on stderr and exit status 2.

A traceback is for bugs. Errors caused by what the user gave (a :class:`~kp_lightning.errors.KPError`
anywhere in the exception chain, or a jsonargparse argument error) print a short block instead;
``KP_LIGHTNING_DEBUG=1`` or ``--debug`` re-raises them with the full traceback.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator

from kp_lightning.errors import KPError

DEBUG_ENV = "KP_LIGHTNING_DEBUG"
DEBUG_FLAG = "--debug"
USAGE_ERROR_STATUS = 2
_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _is_argument_error(exc: BaseException) -> bool:
    from jsonargparse import ArgumentError

    return isinstance(exc, ArgumentError)


def _type_name(match: re.Match) -> str:
    return match.group(1).rsplit(".", 1)[-1]


def condense_argument_error(message: str) -> str:
    """jsonargparse's message without the union-subtype dump: ``<key>: <the reasons that matter>``."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    key = None
    if lines and (match := re.match(r'Parser key "([^"]+)":\s*(.*)', lines[0])):
        key, lines = match.group(1), [match.group(2), *lines[1:]]
    reasons = []
    for line in lines:
        line = line.removeprefix("- ").strip()
        if not line or line.startswith(_NOISE) or line == "Expected a <class 'NoneType'>":
            continue
        line = re.sub(r"<class '([\w.]+)'>", _type_name, line).replace("typing.", "")
        line = re.sub(r"^Problem with given class_path '([\w.]+)':$", lambda m: f"{_type_name(m)}:", line)
        reasons.append(line)
    text = " ".join(reasons) or message.strip()
    return f"{key}: {text}" if key else text


def describe_user_error(exc: BaseException, prog: str) -> tuple[str, str | None] | None:
    """``(what, fix)`` for an error caused by the user's input, ``None`` for anything else (a bug)."""
    for link in _chain(exc):
        if isinstance(link, KPError):
            return link.message, link.fix
    for link in _chain(exc):
        if _is_argument_error(link) or (isinstance(link, ValueError) and str(link).startswith(_NOISE[0])):
            return condense_argument_error(str(link)), f"see `{prog} --help` for the accepted arguments"
    return None


def format_error_block(what: str, fix: str | None) -> str:
    """The block the commands print: ``error: ...``, then ``fix: ...`` when there is one."""
    lines = [f"error: {what.strip()}"]
    if fix:
        lines.append(f"fix: {fix.strip()}")
    lines.append(f"(set {DEBUG_ENV}=1 or pass {DEBUG_FLAG} for the traceback)")
    return "\n".join(lines)


def debug_requested(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def run_command(
    main: Callable[[list[str]], object],
    prog: str,
    argv: list[str],
    prepare: Callable[[list[str]], list[str]] | None = None,
) -> object:
    """Run ``main(prepare(argv))`` (``--debug`` removed); report user errors as one block.

    ``sys.argv`` is left as it is: Lightning's DDP launcher starts the other ranks by re-running it.
    ``prepare`` (e.g. recipe names to paths) runs inside the error handling.

    Raises:
        SystemExit: Status 2 after printing the block, for a user error without debugging.
    """
    debug = debug_requested(argv)
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    try:
        return main(prepare(argv) if prepare else argv)
    except Exception as exc:
        described = None if debug else describe_user_error(exc, prog)
        if described is None:
            raise
        print(format_error_block(*described), file=sys.stderr)
        raise SystemExit(USAGE_ERROR_STATUS) from None
