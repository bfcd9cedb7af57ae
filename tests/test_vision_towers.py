"""The vision tower is a configuration option: CLIP vision, DINOv2 or ViT. A DINOv2 / ViT checkpoint made with
save_pretrained is copied exactly, so at initialisation the MSPT vision stream computes the tower's own output (also at
another image size, the position embeddings resampled once at load time); unmatched tensors and unsupported towers
raise clear errors; configs round-trip in-process and through trust_remote_code; the processor uses the tower's
normalisation."""

import dataclasses
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import (
    BertConfig,
    BertModel,
    BitImageProcessorPil,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTImageProcessorPil,
    ViTModel,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from conftest import HIDE_PACKAGE, RE_LABELS, TEXT, drop_checkpoint_tensor
from modeling_mspt import MSPTConfig, MSPTForRelationExtraction, MSPTModel, MSPTProcessor
from modeling_mspt.loading_mspt import _VISION_TOWERS, _rename

# Tiny towers: 3 layers against BERT's 2 (the streams align at the top), patch 4 on 16 px (4 x 4 patches).
DINOV2 = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=2, image_size=16, patch_size=4,
              layerscale_value=0.5)  # fmt: skip
VIT = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37, image_size=16,
           patch_size=4)  # fmt: skip
ATOL = 1e-5


def _perturbed(tower):
    """Every parameter moved off its init (zero biases, unit LayerNorms and constant layer-scales would hide a tensor
    copied to the wrong place): the lambdas become random vectors, so layer-scale matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return tower.eval()


@pytest.fixture
def towers(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    BertModel(BertConfig(**TEXT)).save_pretrained(tmp_path / "bert")
    tiny_tokenizer.save_pretrained(tmp_path / "bert")
    dinov2 = _perturbed(Dinov2Model(Dinov2Config(**DINOV2)))
    dinov2.save_pretrained(tmp_path / "dinov2")
    vit = _perturbed(ViTModel(ViTConfig(**VIT)))
    vit.save_pretrained(tmp_path / "vit")
    return tmp_path, dinov2, vit


def _pixels(size, seed=0):
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _mspt_vision(model, pixels):
    """MSPT's vision outputs as the tower reports them: all tokens after the final LayerNorm, and the pooled CLS."""
    input_ids = torch.randint(5, TEXT["vocab_size"], (pixels.shape[0], 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixels)
        return model.vision_post_layernorm(out.vision_last_hidden_state), out.vision_pooler_output


@pytest.mark.parametrize("image_size", [16, 24], ids=["own-size", "resampled-positions"])
def test_dinov2_stream_is_the_tower_at_initialisation(towers, image_size):
    """With the additive key (bank and biases at zero) and 2 interaction layers, the MSPT vision stream is exactly
    Dinov2Model: at the checkpoint's 16 px, and at 24 px where MSPT resampled the 4 x 4 position grid to 6 x 6 once
    at load time and Dinov2Model resamples it at every forward (the same bicubic call in float32, so the same
    tolerance holds)."""
    root, dinov2, _ = towers
    model, info = MSPTModel.from_text_vision_pretrained(
        root / "bert", root / "dinov2", shared_key_mode="additive", num_interaction_layers=2, max_text_length=16,
        image_size=image_size, output_loading_info=True,
    )  # fmt: skip
    model.eval()
    assert model.config.vision_config.model_type == "dinov2"
    assert model.config.vision_seq_length == 1 + (image_size // 4) ** 2
    resampled = ["embeddings.position_embeddings: 4x4 -> 6x6 patches (bicubic)"]
    assert info["resampled_keys"] == ([] if image_size == 16 else resampled)
    assert "embeddings.mask_token" in info["unused_keys"]
    pixels = _pixels(image_size)
    states, pooled = _mspt_vision(model, pixels)
    with torch.no_grad():
        reference = dinov2(pixel_values=pixels)
    torch.testing.assert_close(states, reference.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, reference.pooler_output, atol=ATOL, rtol=0)
    # Layer-scale is live: without it the stream would not match.
    layer = model.encoder.vision_layers[0]
    with torch.no_grad():
        layer.layer_scale1.fill_(1.0)
    assert (_mspt_vision(model, pixels)[1] - reference.pooler_output).abs().max() > 1e-2


@pytest.mark.parametrize("image_size", [16, 24], ids=["own-size", "resampled-positions"])
def test_vit_stream_is_the_tower_at_initialisation(towers, image_size):
    """ViT: the same layers without layer-scale. Its pooler (dense + tanh) is not MSPT's: MSPT pools the final-norm
    CLS, compared here with the tower's normed CLS."""
    root, _, vit = towers
    model = MSPTModel.from_text_vision_pretrained(root / "bert", root / "vit", shared_key_mode="additive",
                                                  num_interaction_layers=2, max_text_length=16,
                                                  image_size=image_size).eval()  # fmt: skip
    pixels = _pixels(image_size, seed=1)
    states, pooled = _mspt_vision(model, pixels)
    with torch.no_grad():
        reference = vit(pixel_values=pixels, interpolate_pos_encoding=image_size != 16).last_hidden_state
    torch.testing.assert_close(states, reference, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, reference[:, 0], atol=ATOL, rtol=0)


def test_both_dinov2_attention_namings_map_to_the_same_tensors():
    """transformers >= 5.24 names (`attention.q_proj`, `attention.o_proj`) and the older ones
    (`attention.attention.query`, `attention.output.dense`) of hand-converted checkpoints."""
    rules = _VISION_TOWERS["dinov2"][1]
    pairs = [("q_proj", "attention.query", "q_proj"), ("k_proj", "attention.key", "k_proj"),
             ("v_proj", "attention.value", "v_proj"), ("o_proj", "output.dense", "out_proj")]  # fmt: skip
    for new, old, ours in pairs:
        want = f"encoder.vision_layers.2.attention.{ours}.bias"
        assert _rename(f"encoder.layer.2.attention.{new}.bias", rules) == want
        assert _rename(f"encoder.layer.2.attention.{old}.bias", rules) == want
    assert _rename("encoder.layer.0.layer_scale2.lambda1", rules) == "encoder.vision_layers.0.layer_scale2"
    assert _rename("layernorm.weight", rules) == "vision_post_layernorm.weight"
    with pytest.raises(KeyError):
        _rename("encoder.layer.0.mlp.weights_in.weight", rules)  # SwiGLU: no place for it


def test_missing_dinov2_tensor_fails_and_names_it(towers):
    root = towers[0]
    drop_checkpoint_tensor(root / "dinov2", "encoder.layer.1.layer_scale2.lambda1")
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.layer_scale2\.lambda1"):
        MSPTModel.from_text_vision_pretrained(root / "bert", root / "dinov2", max_text_length=16,
                                              num_interaction_layers=2)


def test_unsupported_vision_towers_are_refused_with_the_reason(towers):
    root = towers[0]
    with pytest.raises(ValueError, match=r"'siglip_vision_model'.*supported: 'clip_vision_model', 'dinov2', 'vit'.*"
                                         r"layer by layer.*docs/vision-towers\.md"):
        MSPTConfig(vision_config={"model_type": "siglip_vision_model"}, id2label=RE_LABELS)
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**DINOV2, num_register_tokens=2)).save_pretrained(root / "reg")
    with pytest.raises(ValueError, match=r"Vision checkpoint .* has model_type 'dinov2_with_registers'.*supported"):
        MSPTModel.from_text_vision_pretrained(root / "bert", root / "reg", max_text_length=16, num_interaction_layers=2)
    with pytest.raises(ValueError, match="use_swiglu_ffn"):
        MSPTConfig(vision_config=dict(DINOV2, model_type="dinov2", use_swiglu_ffn=True), id2label=RE_LABELS)


REMOTE_SCRIPT = HIDE_PACKAGE + textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    inputs = torch.load(sys.argv[2], weights_only=True)
    with torch.no_grad():
        torch.save(model(**inputs).vision_pooler_output, sys.argv[3])
    """
)


def test_dinov2_checkpoint_round_trips_in_process_and_through_remote_code(towers):
    root = towers[0]
    model = MSPTForRelationExtraction.from_text_vision_pretrained(root / "bert", root / "dinov2", max_text_length=16,
                                                                  num_interaction_layers=2, id2label=RE_LABELS,
                                                                  image_size=24).eval()  # fmt: skip
    model.save_pretrained(root / "saved")
    inputs = dict(input_ids=torch.randint(5, TEXT["vocab_size"], (3, 7)), pixel_values=_pixels(24),
                  image_mask=torch.tensor([1, 0, 1]))  # fmt: skip
    loaded = MSPTForRelationExtraction.from_pretrained(root / "saved").eval()
    assert loaded.config.vision_config.model_type == "dinov2" and loaded.config.vision_config.image_size == 24
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
        expected = model.mspt(**inputs).vision_pooler_output
    torch.save(inputs, root / "inputs.pt")
    (root / "load.py").write_text(REMOTE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(root / "load.py"), str(root / "saved"), str(root / "inputs.pt"),
                             str(root / "out.pt")],
                            cwd=root, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(root / "out.pt", weights_only=True), expected, rtol=0, atol=0)


def test_processor_of_a_bare_dinov2_folder_uses_imagenet_normalisation(towers):
    root = towers[0]
    processor = MSPTProcessor.from_text_vision_pretrained(root / "bert", root / "dinov2", max_length=16)
    assert processor.image_size == 16
    batch = processor([["the", "cat"]], images=[Image.new("RGB", (40, 30), (255, 0, 0))])
    want = torch.tensor([(1 - m) / s if c == 0 else -m / s
                         for c, (m, s) in enumerate(zip(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))])  # fmt: skip
    torch.testing.assert_close(batch["pixel_values"][0, :, 8, 8], want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"\(vit\) has no preprocessor_config\.json"):
        MSPTProcessor.from_text_vision_pretrained(root / "bert", root / "vit")


def test_processor_with_a_vit_image_processor_has_no_crop_and_still_sizes_the_images(tiny_tokenizer):
    processor = MSPTProcessor(ViTImageProcessorPil(size={"height": 16, "width": 16}), tiny_tokenizer, max_length=16)
    assert processor.image_processor.crop_size is None and processor.image_size == 16
    batch = processor([["the", "cat"], ["a", "dog"]], images=[Image.new("RGB", (40, 30)), None])
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["image_mask"].tolist() == [1, 0]


def test_build_model_takes_a_dinov2_folder_at_its_processors_image_size(towers):
    """`--vision_model <DINOv2 dir>`: the family comes from config.json, the image size from the saved image processor
    (16 px here, the checkpoint's 24 px grid resampled), and the model runs on the processor's output."""
    from continual_trainer.experiment import ModelArguments, build_model

    root = towers[0]
    Dinov2Model(Dinov2Config(**dict(DINOV2, image_size=24))).save_pretrained(root / "dinov2_24")
    BitImageProcessorPil(size={"shortest_edge": 18}, crop_size={"height": 16, "width": 16},
                         image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD,
                         ).save_pretrained(root / "dinov2_24")  # fmt: skip
    args = ModelArguments(text_model=str(root / "bert"), vision_model=str(root / "dinov2_24"), num_interaction_layers=1)
    benchmark = SimpleNamespace(task_type="re", label_names=list(RE_LABELS.values()))
    model, processor = build_model(args, benchmark, max_text_length=16)
    assert model.config.vision_config.model_type == "dinov2" and model.config.vision_config.image_size == 16
    batch = processor([["the", "cat", "sat"]], images=[Image.new("RGB", (20, 20))], head_spans=[(0, 1)],
                      tail_spans=[(1, 2)])  # fmt: skip
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_mask")}
        logits = model.eval()(**inputs).logits
    assert logits.shape == (1, len(RE_LABELS)) and torch.isfinite(logits).all()


@pytest.mark.parametrize("mode", ["additive", "bank"])
def test_streams_with_different_head_counts_share_one_key_in_model_space(towers, mode):
    """MiniLM (384 = 12 x 32) with DINOv2-S (384 = 6 x 64): here BERT 4 x 8 with a DINOv2 of 2 x 16. Each stream splits
    the same key vector per position by its own heads; the vision stream alone sends gradient to the shared key; in
    "additive" mode the vision stream still starts as the tower."""
    root = towers[0]
    dinov2 = _perturbed(Dinov2Model(Dinov2Config(**dict(DINOV2, num_attention_heads=2))))
    dinov2.save_pretrained(root / "dinov2_2heads")
    model = MSPTModel.from_text_vision_pretrained(root / "bert", root / "dinov2_2heads", shared_key_mode=mode,
                                                  num_interaction_layers=2, max_text_length=16).eval()  # fmt: skip
    shared = model.encoder.interaction[0]
    assert shared.shared_key.shape == (4, 17, 8) and shared.vision_attention_bias.shape == (2, 17, 17)
    with torch.no_grad():
        shared.shared_key.normal_()
        text_key, vision_key = shared.key(17, 4), shared.key(17, 2)  # [4, 17, 8], [2, 17, 16]
        torch.testing.assert_close(vision_key.transpose(0, 1).reshape(17, 32), text_key.transpose(0, 1).reshape(17, 32))
        if mode == "additive":
            shared.shared_key.zero_()
            expected = dinov2(pixel_values=_pixels(16)).pooler_output
            torch.testing.assert_close(_mspt_vision(model, _pixels(16))[1], expected, atol=ATOL, rtol=0)
    input_ids = torch.randint(5, TEXT["vocab_size"], (3, 7))
    out = model(input_ids=input_ids, pixel_values=_pixels(16), output_interaction_attentions=True)
    assert out.interaction_attentions.text[0].shape == (3, 4, 7, 7)
    assert out.interaction_attentions.vision[0].shape == (3, 2, 17, 17)
    out.vision_pooler_output.square().sum().backward()
    assert shared.shared_key.grad.abs().sum() > 0 and shared.vision_attention_bias.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["re", "ner"])
def test_mspt_trains_continually_with_a_dinov2_stream_of_other_head_count(kind, synthetic_benchmarks, tmp_path):
    """The continual trainer runs MSPT on a DINOv2 stream with half the text stream's heads: the teacher cache and the
    attention distillation take each stream's own head count (the distillation term is logged and positive in task 2),
    and the modulation scores the vision stream."""
    from conftest import tiny_args

    from continual_trainer import ContinualTrainer
    from modeling_mspt import MSPTForTokenClassification

    full = synthetic_benchmarks[kind]
    bench = dataclasses.replace(full, tasks=full.tasks[:2])
    processor = MSPTProcessor.from_word_vocabulary(bench.vocabulary(), image_size=32, max_length=24)
    config = MSPTConfig(text_config=dict(TEXT, vocab_size=len(processor.tokenizer)),
                        vision_config=dict(DINOV2, model_type="dinov2", num_attention_heads=2, image_size=32,
                                           patch_size=8),
                        id2label=dict(enumerate(bench.label_names)), num_interaction_layers=1, max_text_length=24)  # fmt: skip
    torch.manual_seed(0)
    model = (MSPTForRelationExtraction if kind == "re" else MSPTForTokenClassification)(config)
    trainer = ContinualTrainer(model=model, args=tiny_args(tmp_path, "mspt"), processing_class=processor)
    result = trainer.train_tasks(bench)
    distillation = [float(log["distillation_loss"]) for log in trainer.state.log_history if "distillation_loss" in log]
    assert distillation and max(distillation) > 0
    assert result.modulation[0]["k_vision_mean"] < 1 or result.modulation[0]["k_text_mean"] < 1


def test_dinov2_layer_scales_are_not_decayed(tmp_path):
    """AdamW's decoupled decay shrinks a decayed tensor even when its gradient is zero: after one step with zero
    gradients, DINOv2's layer-scale vectors keep their value while the stream's dense weights shrink."""
    from conftest import tiny_args

    from continual_trainer import ContinualTrainer

    config = MSPTConfig(text_config=dict(TEXT, vocab_size=50), vision_config=dict(DINOV2, model_type="dinov2"),
                        id2label=dict(enumerate(RE_LABELS)), num_interaction_layers=1, max_text_length=24)  # fmt: skip
    model = MSPTForRelationExtraction(config)
    args = dataclasses.replace(tiny_args(tmp_path, "finetune"), weight_decay=0.5)
    trainer = ContinualTrainer(model=model, args=args)
    optimizer = trainer.create_optimizer()
    params = dict(model.named_parameters())
    scales = [n for n in params if "layer_scale" in n]
    dense = [n for n in params if n.startswith("mspt.encoder.vision_layers") and n.endswith("fc1.weight")]
    assert scales and dense
    before = {n: params[n].detach().clone() for n in scales + dense}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for n in scales:
        torch.testing.assert_close(params[n], before[n], rtol=0, atol=0, msg=n)
    for n in dense:
        assert params[n].abs().sum() < before[n].abs().sum(), n
