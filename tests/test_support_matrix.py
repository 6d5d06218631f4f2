"""The README's support matrix is the one the tests' parametrization gives."""

from __future__ import annotations

from tests.support_matrix import CHECKS, current_table, matrix, readme_table, render


def test_readme_support_matrix_is_generated_from_the_tests():
    assert readme_table() == current_table(), "regenerate it: python -m tests.support_matrix --write"


def test_cells_come_from_test_ids():
    """Heads named in the ids count; an architecture-only test counts for the heads its check declares; an id of
    another method's test does not count."""
    ids = [
        "tests/test_masking_and_compaction.py::test_masked_equals_compacted_with_edge_cases[True-ForMaskedLM-xlm-roberta]",
        "tests/test_kprune.py::test_kprune_meets_the_budget_and_the_export_reloads_exactly[roberta-question_answering]",
        "tests/test_cofi.py::test_masked_compacted_and_reloaded_models_agree[mpnet]",
        "tests/test_embedding_models.py::test_retraining_free_pruning_meets_its_budget_on_embedding_models[kwon-bert]",
    ]
    cells = matrix(ids)
    assert cells["masked = compact"] == {"xlm-roberta": {"ForMaskedLM"}}  # not roberta
    assert cells["K-prune"] == {"roberta": {"ForQuestionAnswering"}}
    cofi = next(c for c in CHECKS if c.column == "CoFi gates")
    assert cells["CoFi gates"] == {"mpnet": set(cofi.heads)}
    assert cells["Kwon"] == {"bert": {"Model"}}
    table = render(cells)
    assert "| XLMRoberta | MLM |" in table and "| Roberta | – |" in table
