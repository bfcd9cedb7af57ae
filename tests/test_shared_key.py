"""shared_key_mode="additive" (issue 13, item 3): the interaction layers keep each stream's own content key and add
the shared, zero-initialised bank, so a model built from pretrained towers starts as exactly those towers, and the
bank then learns from both streams. "bank" and "reference" are covered in test_modeling.py."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel

from conftest import HIDE_PACKAGE, TEXT, VISION, make_config, make_inputs
from modeling_mspt import MSPTConfig, MSPTModel


@pytest.fixture
def towers(tmp_path):
    torch.manual_seed(0)
    bert = BertModel(BertConfig(**TEXT)).eval()
    bert.save_pretrained(tmp_path / "bert")
    clip_vision = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
    clip_vision.save_pretrained(tmp_path / "clip_vision")
    return tmp_path, bert, clip_vision


def _additive_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return MSPTModel(make_config(shared_key_mode="additive", num_interaction_layers=2, **kwargs))


@pytest.mark.parametrize("mode", ["additive", "bank"])
def test_additive_mode_starts_as_the_pretrained_towers(towers, mode):
    root, bert, clip_vision = towers
    # Both layers are interaction layers, as in the demo model: in "bank" mode no layer attends by content.
    model, info = MSPTModel.from_text_vision_pretrained(
        root / "bert", root / "clip_vision", shared_key_mode=mode, num_interaction_layers=2, max_text_length=16,
        output_loading_info=True,
    )  # fmt: skip
    model.eval()
    inputs = make_inputs(model.config)
    with torch.no_grad():
        ours = model(**inputs)
        text = bert(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        vision = clip_vision(pixel_values=inputs["pixel_values"])
    valid = inputs["attention_mask"].bool()
    pairs = [(ours.text_last_hidden_state[valid], text[valid]),
             (ours.vision_last_hidden_state, vision.last_hidden_state),  # both before CLIP's post-LayerNorm
             (ours.vision_pooler_output, vision.pooler_output)]  # fmt: skip
    key_names = {"encoder.layer.1.attention.self.key.weight", "encoder.layers.1.self_attn.k_proj.weight"}
    if mode == "additive":
        for got, want in pairs:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        # The interaction layers' key projections are the towers' ones, and only MSPT's own tensors are new.
        state = model.state_dict()
        torch.testing.assert_close(state["encoder.text_layers.1.attention.k_proj.weight"],
                                   bert.encoder.layer[1].attention.self.key.weight, rtol=0, atol=0)  # fmt: skip
        torch.testing.assert_close(state["encoder.vision_layers.1.attention.k_proj.bias"],
                                   clip_vision.encoder.layers[1].self_attn.k_proj.bias, rtol=0, atol=0)
        assert all(k.startswith("pooler.") for k in info["unused_keys"]), info["unused_keys"]
        assert sorted(info["new_keys"]) == sorted(f"encoder.interaction.{i}.{name}" for i in range(2)
                                                  for name in ("shared_key", "text_attention_bias",
                                                               "vision_attention_bias"))  # fmt: skip
    else:  # the same comparison fails when the bank replaces the keys: the test can tell the modes apart
        for got, want in pairs:
            assert (got - want).abs().max() > 1e-4  # 10x the tolerance above
        assert key_names <= set(info["unused_keys"])


def test_additive_bank_and_biases_start_at_zero_and_other_modes_do_not():
    model = _additive_model()
    for shared in model.encoder.interaction:
        for p in (shared.shared_key, shared.text_attention_bias, shared.vision_attention_bias):
            assert torch.count_nonzero(p) == 0
    assert all(layer.attention.k_proj is not None for layer in (*model.encoder.text_layers,
                                                                 *model.encoder.vision_layers))  # fmt: skip
    torch.manual_seed(0)
    bank = MSPTModel(make_config(shared_key_mode="bank", num_interaction_layers=2))
    assert bank.encoder.interaction[0].shared_key.abs().min() > 0
    # In "bank" mode the interaction layers have no key projection: with 2 of 2 layers, no content attention at all.
    assert all(layer.attention.k_proj is None for layer in (*bank.encoder.text_layers, *bank.encoder.vision_layers))


def test_additive_bank_learns_from_both_streams():
    model = _additive_model().eval()  # no dropout: the two single-stream gradients must add up exactly
    inputs = make_inputs(model.config)
    g = torch.Generator().manual_seed(1)
    weights = {s: torch.randn(getattr(model(**inputs), s).shape, generator=g)
               for s in ("text_last_hidden_state", "vision_last_hidden_state")}  # fmt: skip

    def loss(streams):
        out = model(**inputs)
        return sum((getattr(out, s) * weights[s]).sum() for s in streams)

    grads = {}
    for streams in (["text_last_hidden_state"], ["vision_last_hidden_state"], list(weights)):
        model.zero_grad()
        loss(streams).backward()
        grads[len(streams), streams[0]] = [shared.shared_key.grad.clone() for shared in model.encoder.interaction]
    len_t = inputs["input_ids"].shape[1]
    for layer in range(2):
        text, vision = grads[1, "text_last_hidden_state"][layer], grads[1, "vision_last_hidden_state"][layer]
        # Each stream alone sends a gradient into the same shared rows (those both streams are long enough to use).
        assert text[:, :len_t].norm() > 1e-6
        assert vision[:, :len_t].norm() > 1e-6
        assert text[:, len_t:].abs().sum() == 0  # rows beyond the text length are the vision stream's alone
        torch.testing.assert_close(grads[2, "text_last_hidden_state"][layer], text + vision)

    # One optimizer step on the two-stream loss moves the bank and the biases off zero and changes the outputs.
    before = model(**inputs).text_last_hidden_state.detach()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    model.zero_grad()
    loss(list(weights)).backward()
    optimizer.step()
    for shared in model.encoder.interaction:
        for p in (shared.shared_key, shared.text_attention_bias, shared.vision_attention_bias):
            assert p.abs().max() > 0
    assert (model(**inputs).text_last_hidden_state - before).abs().max() > 1e-4


def test_additive_bank_changes_attention_probabilities():
    """Unlike the reference key (D1), a bank added to content keys varies along the key axis and is not cancelled
    by the softmax."""
    model = _additive_model().eval()
    inputs = make_inputs(model.config)
    with torch.no_grad():
        before = model(**inputs, output_interaction_attentions=True).interaction_attentions
        model.encoder.interaction[0].shared_key.normal_()
        after = model(**inputs, output_interaction_attentions=True).interaction_attentions
    for modality in ("text", "vision"):
        valid = getattr(before, f"{modality}_mask")[0]
        p0 = getattr(before, modality)[0][0][:, valid][:, :, valid].softmax(-1)
        p1 = getattr(after, modality)[0][0][:, valid][:, :, valid].softmax(-1)
        assert (p0 - p1).abs().max() > 1e-2, modality


def test_shared_key_mode_is_validated():
    with pytest.raises(ValueError, match=r"`shared_key_mode` must be one of .*'additive'.*got 'additve'"):
        make_config(shared_key_mode="additve")


REMOTE_SCRIPT = HIDE_PACKAGE + textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoModel

    root, inputs = sys.argv[1], torch.load(sys.argv[2], weights_only=True)
    model = AutoModel.from_pretrained(root, trust_remote_code=True).eval()
    assert model.config.shared_key_mode == "additive", model.config.shared_key_mode
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    with torch.no_grad():
        out = model(**inputs)
    torch.save({"text": out.text_last_hidden_state, "vision": out.vision_last_hidden_state}, sys.argv[3])
    """
)


def test_additive_mode_round_trips_through_save_and_auto_remote_code(tmp_path):
    model = _additive_model()
    with torch.no_grad():  # trained-looking values, so that a reinitialised bank or bias would show
        for shared in model.encoder.interaction:
            for p in (shared.shared_key, shared.text_attention_bias, shared.vision_attention_bias):
                p.normal_()
    model.eval().save_pretrained(tmp_path / "ckpt")
    inputs = make_inputs(model.config)
    assert MSPTConfig.from_pretrained(tmp_path / "ckpt").shared_key_mode == "additive"
    loaded = MSPTModel.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with torch.no_grad():
        expected = model(**inputs)
        torch.testing.assert_close(loaded(**inputs).text_last_hidden_state, expected.text_last_hidden_state,
                                   rtol=0, atol=0)  # fmt: skip
        auto = AutoModel.from_pretrained(tmp_path / "ckpt").eval()
        torch.testing.assert_close(auto(**inputs).vision_last_hidden_state, expected.vision_last_hidden_state,
                                   rtol=0, atol=0)  # fmt: skip

    torch.save(inputs, tmp_path / "inputs.pt")
    script = tmp_path / "load.py"
    script.write_text(REMOTE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ckpt"), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    torch.testing.assert_close(out["text"], expected.text_last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(out["vision"], expected.vision_last_hidden_state, rtol=0, atol=0)
