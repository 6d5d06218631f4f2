import pytest
import torch
import transformers

from kp_lightning import EncoderAdapter, UnsupportedModelError
from kp_lightning.compact_model.layouts import supported_classes
from tests.helpers import ARCHS, PREFIX, tiny_config, tiny_model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "task",
    ["ForSequenceClassification", "ForQuestionAnswering", "ForMaskedLM", "ForTokenClassification", "ForMultipleChoice",
     "Model"],
)  # fmt: skip
def test_adapter_reads_every_supported_class(arch, task):
    model = tiny_model(arch, task)
    adapter = EncoderAdapter(model)
    shape = adapter.shape()
    assert shape.hidden_size == 32
    assert shape.head_size == 8
    assert shape.heads == (4, 4, 4)
    assert shape.neurons == (37, 37, 37)
    assert adapter.task == task
    view = adapter.layers[1]  # layer 0 of a pre-LN encoder may have an identity pre-norm
    (first, blocks), *_ = view.head_projection_blocks
    assert first.out_features == 32 * blocks and view.attention_out.in_features == 32
    assert view.ffn_up.out_features == 37 * adapter.layout.neuron_row_blocks and view.ffn_down.in_features == 37
    assert isinstance(view.attention_norm, torch.nn.LayerNorm) and isinstance(view.ffn_norm, torch.nn.LayerNorm)
    assert adapter.hidden_size == 32 and isinstance(adapter.embedding_norm, torch.nn.LayerNorm)
    if arch == "electra":  # embedding_size 24: the stream starts at the projection to the hidden width
        assert adapter.stream_start is adapter.embedding_projection and adapter.embedding_norm.normalized_shape == (24,)
    else:
        assert adapter.stream_start is adapter.embedding_norm and adapter.embedding_norm.normalized_shape == (32,)


def test_bert_pretraining_heads_are_supported():
    model = transformers.BertForPreTraining(tiny_config("bert")).eval()
    adapter = EncoderAdapter(model)
    assert adapter.task == "ForPreTraining"
    assert adapter.head.lm_decoder == "cls.predictions.decoder"
    assert adapter.pooler is model.bert.pooler.dense


def test_unsupported_architecture_names_class_and_lists_supported():
    model = transformers.GPT2Model(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError) as err:
        EncoderAdapter(model)
    message = str(err.value)
    assert "GPT2Model" in message
    assert "BertForSequenceClassification" in message and "DistilBertForMaskedLM" in message


def test_unsupported_head_of_supported_architecture():
    model = transformers.BertForNextSentencePrediction(tiny_config("bert"))
    with pytest.raises(UnsupportedModelError, match="BertForNextSentencePrediction.*not this task head"):
        EncoderAdapter(model)


def test_plain_module_is_rejected():
    with pytest.raises(UnsupportedModelError, match="Linear"):
        EncoderAdapter(torch.nn.Linear(2, 2))


def test_decoder_configuration_is_rejected():
    config = tiny_config("bert")
    config.is_decoder = True
    with pytest.raises(UnsupportedModelError, match="decoder"):
        EncoderAdapter(transformers.BertModel(config))


def test_supported_class_list_covers_all_architectures():
    names = supported_classes()
    for arch in ARCHS:
        for task in ("ForSequenceClassification", "ForTokenClassification", "ForMultipleChoice"):
            assert PREFIX[arch] + task in names
