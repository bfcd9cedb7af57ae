"""Forward/backward shapes, the shared key (bank vs reference, D1), the split head, masks and input validation."""

import pytest
import torch

from conftest import NER_LABELS, RE_LABELS, make_config, make_inputs
from modeling_mspt import MSPTConfig, MSPTForRelationExtraction, MSPTForTokenClassification, MSPTModel


def seeded(model_class, config, seed=0):
    torch.manual_seed(seed)
    return model_class(config)


def test_relation_extraction_shapes_loss_and_backward():
    config = make_config()
    model = seeded(MSPTForRelationExtraction, config)
    inputs = make_inputs(config)
    out = model(**inputs)
    assert out.loss is None
    assert out.logits.shape == out.text_logits.shape == out.vision_logits.shape == (3, len(RE_LABELS))
    out = model(**inputs, labels=torch.tensor([0, 3, 1]))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    for name in ("mspt.text_embeddings.word_embeddings.weight", "mspt.vision_embeddings.patch_embedding.weight",
                 "mspt.encoder.text_layers.0.attention.q_proj.weight", "classifier.weight"):  # fmt: skip
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_token_classification_shapes_loss_tags_and_backward():
    config = make_config(NER_LABELS)
    model = seeded(MSPTForTokenClassification, config)
    inputs = make_inputs(config)
    labels = torch.randint(0, len(NER_LABELS), (3, 7))
    labels[:, 0] = -100
    labels[1, 5:] = -100
    out = model(**inputs)
    assert out.loss is None and out.tags is None  # training mode: no decoding
    assert out.logits.shape == out.text_logits.shape == out.vision_logits.shape == (3, 7, len(NER_LABELS))
    out = model(**inputs, labels=labels)
    out.loss.backward()
    assert model.crf.transitions.grad.abs().sum() > 0
    assert model.mspt.vision_embeddings.class_embedding.grad.abs().sum() > 0
    model.eval()
    tags = model(**inputs, labels=labels).tags
    assert tags.shape == (3, 7)
    assert ((tags == -100) == (labels == -100)).all()
    assert ((tags[labels != -100] >= 0) & (tags[labels != -100] < len(NER_LABELS))).all()


def test_split_head_sums_to_the_joint_classifier():
    config = make_config()
    model = seeded(MSPTForRelationExtraction, config).eval()
    inputs = make_inputs(config)
    out = model(**inputs)
    base = model.mspt(**inputs)
    features = torch.cat([base.vision_pooler_output, base.text_last_hidden_state[:, 0]], dim=-1)
    torch.testing.assert_close(out.logits, model.classifier(features))
    torch.testing.assert_close(out.text_logits + out.vision_logits, out.logits)
    # Per-modality logits carry half the bias each (D6 fixed): o_v = W_v h_v + b/2.
    w_v = model.classifier.weight[:, : config.vision_config.hidden_size]
    torch.testing.assert_close(out.vision_logits, base.vision_pooler_output @ w_v.T + model.classifier.bias / 2)


def test_missing_image_gives_no_vision_evidence():
    config = make_config()
    model = seeded(MSPTForRelationExtraction, config).eval()
    inputs = make_inputs(config)
    inputs["image_mask"] = torch.tensor([1, 0, 1])
    out = model(**inputs)
    torch.testing.assert_close(out.vision_logits[1], model.classifier.bias / 2)
    assert not torch.allclose(out.vision_logits[0], model.classifier.bias / 2)


def _probabilities(maps, mask, sample):
    """Softmax over the valid keys of one sample's pre-softmax maps: [H, Lq, Lk]."""
    valid = mask[sample]
    return maps[sample][:, valid][:, :, valid].softmax(-1)


@pytest.mark.parametrize("mode", ["bank", "reference"])
def test_shared_key_gradient_and_effect_on_attention(mode):
    config = make_config(shared_key_mode=mode)
    model = seeded(MSPTForRelationExtraction, config)
    model.config.classifier_dropout = 0.0
    model.dropout.p = 0.0
    inputs = make_inputs(config)
    out = model(**inputs, labels=torch.tensor([0, 3, 1]), output_interaction_attentions=True)
    out.loss.backward()
    shared = model.mspt.encoder.interaction[0]
    key_grad = shared.shared_key.grad.norm()
    bias_grad = shared.text_attention_bias.grad.norm() + shared.vision_attention_bias.grad.norm()

    model.eval()
    with torch.no_grad():
        before = model(**inputs, output_interaction_attentions=True).interaction_attentions
        shared.shared_key.add_(torch.randn_like(shared.shared_key))
        after = model(**inputs, output_interaction_attentions=True).interaction_attentions
    changes = []
    for modality in ("text", "vision"):
        mask = getattr(before, f"{modality}_mask")
        for sample in range(3):
            p0 = _probabilities(getattr(before, modality)[0], mask, sample)
            p1 = _probabilities(getattr(after, modality)[0], mask, sample)
            changes.append((p0 - p1).abs().max())
        # The perturbation did reach the pre-softmax maps in both modes.
        assert (getattr(before, modality)[0] - getattr(after, modality)[0]).abs().max() > 1e-3
    if mode == "bank":
        assert key_grad > 1e-3 * bias_grad and key_grad > 0
        assert min(changes) > 1e-3
    else:  # D1: a key constant along the key axis cancels in the softmax; no gradient, no effect.
        assert key_grad < 1e-4 * bias_grad
        assert max(changes) < 1e-5


def test_shared_key_is_one_parameter_used_by_both_streams():
    config = make_config(num_interaction_layers=2)
    model = seeded(MSPTModel, config)
    keys = [n for n, _ in model.named_parameters() if "shared_key" in n]
    assert len(keys) == 2  # one per interaction layer, none per stream
    inputs = make_inputs(config)
    g = torch.Generator().manual_seed(1)
    for stream in ("text_last_hidden_state", "vision_last_hidden_state"):
        model.zero_grad()
        hidden = getattr(model(**inputs), stream)
        (hidden * torch.randn(hidden.shape, generator=g)).sum().backward()
        for layer in model.encoder.interaction:
            assert layer.shared_key.grad is not None and layer.shared_key.grad.abs().sum() > 0, stream
        other = "vision" if stream.startswith("text") else "text"
        other_grad = model.encoder.interaction[0].get_parameter(f"{other}_attention_bias").grad
        assert other_grad is None or other_grad.abs().sum() == 0  # the streams meet only through the key


def test_interaction_maps_layout_and_padding():
    config = make_config(num_interaction_layers=2)
    model = seeded(MSPTModel, config).eval()
    inputs = make_inputs(config)
    maps = model(**inputs, output_interaction_attentions=True).interaction_attentions
    heads, len_v = config.text_config.num_attention_heads, config.vision_seq_length
    assert len(maps.text) == len(maps.vision) == 2
    assert maps.text[0].shape == (3, heads, 7, 7) and maps.vision[0].shape == (3, heads, len_v, len_v)
    assert maps.text_mask.tolist()[1] == [True] * 5 + [False] * 2
    # Padded queries and keys are zero in the returned maps; valid entries are not.
    assert (maps.text[0][1, :, 5:, :] == 0).all() and (maps.text[0][1, :, :, 5:] == 0).all()
    assert (maps.text[0][1, :, :5, :5] != 0).all()
    assert model(**inputs).interaction_attentions is None


def test_padding_does_not_change_the_valid_positions():
    config = make_config()
    model = seeded(MSPTForRelationExtraction, config).eval()
    inputs = make_inputs(config)
    short = {k: v[1:2] for k, v in inputs.items()}
    short["input_ids"], short["attention_mask"] = short["input_ids"][:, :5], short["attention_mask"][:, :5]
    torch.testing.assert_close(model(**short).logits[0], model(**inputs).logits[1], atol=1e-5, rtol=1e-5)


def test_absent_object_crops_are_masked_out():
    config = make_config(num_aux_images=2, aux_image_size=16)
    assert config.vision_seq_length == 1 + 16 + 2 * 4
    model = seeded(MSPTModel, config).eval()
    inputs = make_inputs(config)
    inputs["aux_pixel_values"] = torch.randn(3, 2, 3, 16, 16)
    inputs["aux_mask"] = torch.tensor([[1, 0], [1, 1], [0, 0]])
    base = model(**inputs).vision_pooler_output
    changed = dict(inputs, aux_pixel_values=inputs["aux_pixel_values"].clone())
    changed["aux_pixel_values"][0, 1] += 5.0  # an absent crop: no effect
    torch.testing.assert_close(model(**changed).vision_pooler_output, base)
    changed["aux_pixel_values"][0, 0] += 5.0  # a present crop: an effect
    assert not torch.allclose(model(**changed).vision_pooler_output[0], base[0])


def test_entity_pooling_reads_the_marker_states():
    config = make_config(re_pooling="entity")
    model = seeded(MSPTForRelationExtraction, config).eval()
    assert model.classifier.in_features == 3 * 32
    inputs = make_inputs(config)
    with pytest.raises(ValueError, match="entity_positions"):
        model(**inputs)
    a = model(**inputs, entity_positions=torch.tensor([[1, 3]] * 3)).logits
    b = model(**inputs, entity_positions=torch.tensor([[2, 3]] * 3)).logits
    assert not torch.allclose(a, b)


def test_bad_inputs_name_the_argument():
    config = make_config()
    model = seeded(MSPTForRelationExtraction, config)
    inputs = make_inputs(config)
    with pytest.raises(ValueError, match=r"`pixel_values` has batch size 2 but `input_ids` has 3"):
        model(**dict(inputs, pixel_values=inputs["pixel_values"][:2]))
    with pytest.raises(ValueError, match=r"`labels` contains 5 but the label space has 5 labels"):
        model(**inputs, labels=torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="max_text_length"):
        model(**dict(inputs, input_ids=torch.ones(3, 17, dtype=torch.long), attention_mask=None))
    with pytest.raises(ValueError, match="pixel_values"):
        model(**dict(inputs, pixel_values=torch.zeros(3, 3, 16, 16)))
    ner = seeded(MSPTForTokenClassification, make_config(NER_LABELS))
    labels = torch.zeros(3, 7, dtype=torch.long)
    labels[2, 3] = 9
    with pytest.raises(ValueError, match=r"`labels` contains 9"):
        ner(**inputs, labels=labels)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"shared_key_mode": "rowconstant"}, "shared_key_mode"),
        ({"re_pooling": "mean"}, "re_pooling"),
        ({"num_interaction_layers": 3}, "num_interaction_layers"),
        ({"max_text_length": 41}, "max_text_length"),
        ({"num_aux_images": 1, "aux_image_size": 12}, "aux_image_size"),
        ({"vision": {"hidden_size": 48}}, "hidden_size"),
        ({"text": {"model_type": "roberta"}}, "text_config"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_config(**kwargs)


def test_defaults_are_bert_base_and_clip_b32():
    config = MSPTConfig()
    assert (config.text_config.hidden_size, config.vision_config.patch_size, config.vision_seq_length) == (768, 32, 50)
    assert config.num_interaction_layers == 3 and config.shared_key_mode == "additive"


def test_label_mask_removes_unseen_labels_from_predictions():
    config = make_config()
    model = seeded(MSPTForRelationExtraction, config).eval()
    inputs = make_inputs(config)
    mask = torch.tensor([True, True, False, False, True])
    out = model(**inputs, label_mask=mask)
    assert mask[out.logits.argmax(-1)].all()
    torch.testing.assert_close(out.logits[:, mask], model(**inputs).logits[:, mask])
    ner = seeded(MSPTForTokenClassification, make_config(NER_LABELS)).eval()
    tags = ner(**inputs, label_mask=torch.tensor([True, True, True, False, False])).tags
    assert ((tags == -100) | (tags < 3)).all()
