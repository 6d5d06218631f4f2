import json

import pytest
import torch

from kp_lightning import EncoderAdapter, EncoderStructure, StructuralMasks, StructureError, compact
from tests.helpers import edge_case_masks, tiny_model


@pytest.fixture
def shape():
    return EncoderAdapter(tiny_model("bert", "ForSequenceClassification")).shape()


def test_json_round_trip(tmp_path, shape):
    structure = EncoderStructure(
        shape, heads=[[0, 2], [], [1, 2, 3]], neurons=[[5, 1], list(range(37)), []], hidden=[0, 3, 7]
    )
    path = tmp_path / "structure.json"
    structure.save(path)
    loaded = EncoderStructure.load(path)
    assert loaded == structure
    data = json.loads(path.read_text())
    assert data["attention_kept"] == [True, False, True]
    assert data["ffn_kept"] == [True, True, False]
    assert data["kept"] == {"hidden_size": 3, "heads": [2, 0, 3], "intermediate": [2, 37, 0]}
    assert loaded.neurons[0] == [1, 5]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("heads", [[0], [1]], "lists 2 layers but the model has 3"),
        ("heads", [[0], [4], [1]], r"heads\[1\]' has indices \[4\]"),
        ("neurons", [[0, 0], [1], [2]], "repeats an index"),
        ("hidden", [], "keeps no dimension"),
        ("hidden", [-1, 3], "outside 0..31"),
    ],
)
def test_malformed_structures_are_rejected(shape, field, value, message):
    kwargs = {"heads": [[0]] * 3, "neurons": [[0]] * 3, "hidden": [0, 1]}
    kwargs[field] = value
    with pytest.raises(StructureError, match=message):
        EncoderStructure(shape, **kwargs)


def test_structure_for_another_model_is_rejected(shape):
    other = EncoderAdapter(tiny_model("bert", "ForSequenceClassification", layers=2)).shape()
    with pytest.raises(StructureError, match="made for a model of shape"):
        compact(tiny_model("bert", "ForSequenceClassification", layers=2), EncoderStructure.full(shape))
    masks = StructuralMasks.ones(other)
    masks.head[0] = torch.ones(5)
    with pytest.raises(StructureError, match="mask 'head\\[0\\]' has shape"):
        masks.validate(other)


def test_inconsistent_record_is_rejected(shape):
    data = EncoderStructure.full(shape).to_dict()
    data["attention_kept"] = [True, False, True]
    with pytest.raises(StructureError, match="attention_kept"):
        EncoderStructure.from_dict(data)
    with pytest.raises(StructureError, match="not a kp_lightning structure record"):
        EncoderStructure.from_dict({"heads": []})


def test_masks_and_structure_agree(shape):
    model = tiny_model("bert", "ForSequenceClassification")
    masks = edge_case_masks(model)
    structure = masks.to_structure(shape)
    assert structure.heads[1] == [] and structure.neurons[2] == []
    binary = StructuralMasks.from_structure(structure)
    assert binary.to_structure(shape) == structure
    assert torch.equal(binary.hidden != 0, masks.hidden != 0)


def test_compose_maps_back_to_original_indices(shape):
    outer = EncoderStructure(shape, heads=[[1, 3], [0, 1, 2], [2]], neurons=[[4, 8, 9]] * 3, hidden=list(range(5, 20)))
    inner = EncoderStructure(outer.compacted_shape(), heads=[[1], [0, 2], []], neurons=[[0, 2]] * 3, hidden=[0, 14])
    composed = outer.compose(inner)
    assert composed.heads == [[3], [0, 2], []]
    assert composed.neurons == [[4, 9]] * 3
    assert composed.hidden == [5, 19]
