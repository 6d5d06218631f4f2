"""The README's support matrix (architecture × check), generated from the tests' own parametrization.

Every cell lists the task heads for which a collected test runs that check on that architecture, read from the
test ids (``pytest --collect-only``): a test whose parameters name the head (``ForMaskedLM``) or the task kind
(``question_answering``) counts for that head; a test parametrized by architecture only counts for the heads its
body builds, given next to it in :data:`CHECKS`. Nothing here says that a test passes: CI runs them.

    python -m tests.support_matrix           # print the table
    python -m tests.support_matrix --write   # replace the table in README.md
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import ARCHS, PREFIX

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- support-matrix:begin -->", "<!-- support-matrix:end -->"
HEADS = {
    "Model": "M",
    "ForSequenceClassification": "SC",
    "ForQuestionAnswering": "QA",
    "ForTokenClassification": "TC",
    "ForMultipleChoice": "MC",
    "ForMaskedLM": "MLM",
}
KINDS = {
    "classification": "ForSequenceClassification",
    "regression": "ForSequenceClassification",
    "question_answering": "ForQuestionAnswering",
    "token_classification": "ForTokenClassification",
    "multiple_choice": "ForMultipleChoice",
    "masked_lm": "ForMaskedLM",
    "embedding": "Model",
}


@dataclass(frozen=True)
class Check:
    """One matrix column and a test that performs it.

    Attributes:
        column: Column title.
        test: ``<file>::<function>`` under ``tests/``.
        heads: Heads the test body builds, when its parameters name none.
        token: Only test ids holding this parameter count (one function testing several methods).
    """

    column: str
    test: str
    heads: tuple[str, ...] = ()
    token: str | None = None


M, SC, QA, TC, MC, MLM = HEADS  # the head class suffixes, in the legend's order
CHECKS = (
    Check("masked = compact", "test_masking_and_compaction.py::test_masked_equals_compacted_with_edge_cases"),
    Check(
        "removed sublayer LN(x+b), pre-LN x+b",
        "test_removed_sublayer.py::test_removed_sublayers_keep_bias_and_layernorm_in_masked_and_compact_models",
        (M,),
    ),
    Check(
        "one unit: masks = gates = GMP = compact",
        "test_unit_slices.py::test_one_unit_zeroed_through_every_path_gives_the_same_outputs",
        (M,),
    ),
    Check("reload (our API)", "test_export.py::test_compact_export_reloads_through_our_api"),
    Check(
        "stock AutoModel, fresh process",
        "test_export.py::test_compact_export_loads_with_stock_auto_class_in_fresh_process",
        (M, SC, QA, TC, MLM),
    ),
    Check(
        "FLOPs = FlopCounterMode",
        "test_flops_latency_onnx.py::test_analytic_flops_match_flop_counter_dense_and_compact",
    ),
    Check("FLOPs = FlopCounterMode", "test_multiple_choice.py::test_flops_are_counted_per_flattened_sequence", (MC,)),
    Check("ONNX = onnxruntime", "test_flops_latency_onnx.py::test_onnx_export_of_compact_model_matches_onnxruntime"),
    Check("K-prune", "test_kprune.py::test_kprune_meets_the_budget_and_the_export_reloads_exactly"),
    Check(
        "K-prune",
        "test_multiple_choice.py::test_retraining_free_pruning_on_choices_meets_the_budget_and_reloads_exactly",
        (MC,),
        token="kprune",
    ),
    Check(
        "K-prune",
        "test_embedding_models.py::test_retraining_free_pruning_meets_its_budget_on_embedding_models",
        (M,),
        token="kprune",
    ),
    Check("Kwon", "test_kwon.py::test_kwon_meets_the_budget_and_folds_its_scales_into_the_compact_model"),
    Check(
        "Kwon",
        "test_embedding_models.py::test_retraining_free_pruning_meets_its_budget_on_embedding_models",
        (M,),
        token="kwon",
    ),
    Check(
        "Kwon",
        "test_multiple_choice.py::test_retraining_free_pruning_on_choices_meets_the_budget_and_reloads_exactly",
        (MC,),
        token="kwon",
    ),
    Check("CoFi gates", "test_cofi.py::test_masked_compacted_and_reloaded_models_agree", (SC, QA, TC)),
    Check(
        "GMP / QAT weights",
        "test_masked_weights.py::test_default_selection_is_the_six_encoder_linears_per_layer",
        (SC,),
    ),
    Check("QAT → int8 = fake quant", "test_int8_model.py::test_int8_model_matches_fake_quant", (SC,)),
    Check("sentence-transformers", "test_embedding_models.py::test_pooling_equals_sentence_transformers_encode", (M,)),
    Check(
        "prune.py → train.py validate",
        "test_architecture_commands.py::test_prune_py_kprune_exports_a_model_that_validates_to_its_reported_score",
        (SC,),
    ),
)


def collected_ids(files: list[str]) -> list[str]:
    """Test ids pytest collects from ``files`` (paths under ``tests/``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *(f"tests/{f}" for f in files)],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"pytest --collect-only failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return [line.strip() for line in result.stdout.splitlines() if line.startswith("tests/")]


def _parameters(test_id: str) -> tuple[str | None, list[str]]:
    """The architecture and the other parameter tokens of a test id (``…[True-ForMaskedLM-xlm-roberta]``)."""
    match = re.search(r"\[(.*)\]$", test_id)
    if not match:
        return None, []
    params = f"-{match.group(1)}-"
    for arch in sorted(ARCHS, key=len, reverse=True):  # xlm-roberta before roberta
        if f"-{arch}-" in params:
            rest = params.replace(f"-{arch}-", "-", 1)
            return arch, [t for t in rest.split("-") if t]
    return None, [t for t in params.split("-") if t]


def matrix(test_ids: list[str]) -> dict[str, dict[str, set[str]]]:
    """``{column: {architecture: heads}}`` covered by ``test_ids``."""
    cells: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for test_id in test_ids:
        name = test_id.split("[", 1)[0].removeprefix("tests/")
        arch, tokens = _parameters(test_id)
        if arch is None:
            continue
        for check in CHECKS:
            if check.test != name or (check.token and check.token not in tokens):
                continue
            named = {t for t in tokens if t in HEADS} | {KINDS[t] for t in tokens if t in KINDS}
            cells[check.column][arch] |= named or set(check.heads)
    return cells


def render(cells: dict[str, dict[str, set[str]]]) -> str:
    """The markdown table, with its legend."""
    columns = list(dict.fromkeys(check.column for check in CHECKS))
    lines = ["| architecture | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for arch in ARCHS:
        row = [" ".join(HEADS[h] for h in HEADS if h in cells[c][arch]) or "–" for c in columns]
        lines.append(f"| {PREFIX[arch]} | " + " | ".join(row) + " |")
    legend = ", ".join(f"{short} = `{head}`" for head, short in HEADS.items())
    return "\n".join([*lines, "", f"Heads: {legend}. Generated by `python -m tests.support_matrix --write`."])


def current_table() -> str:
    files = sorted({check.test.split("::")[0] for check in CHECKS})
    return render(matrix(collected_ids(files)))


def readme_table(readme: Path = REPO / "README.md") -> str:
    """The table between the markers in ``readme``."""
    text = readme.read_text()
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args(argv)
    table = current_table()
    if not args.write:
        print(table)
        return
    readme = REPO / "README.md"
    text = readme.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    readme.write_text(text[:start] + "\n" + table + "\n" + text[end:])


if __name__ == "__main__":
    main()
