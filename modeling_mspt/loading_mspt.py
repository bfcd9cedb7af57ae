"""Copy a pretrained BERT and a pretrained vision tower (CLIP vision, DINOv2 or ViT) into the two MSPT streams
(reference notes §2.1 "Initialisation": the reference renames every tensor and asserts all were matched; so do we, and
we also say which tensors are new), and refuse an MSPT checkpoint saved from another head before its weights are
loaded."""

import math
import re

import torch
import torch.nn.functional as F
from transformers import AutoConfig, BertModel, CLIPVisionModel, Dinov2Model, ViTModel
from transformers.utils import logging

from .configuration_mspt import MSPTConfig, unsupported_vision_message

logger = logging.get_logger(__name__)

# (checkpoint-name pattern, MSPTModel name); a None target means "not used by MSPT".
_TEXT_RULES = [
    (r"embeddings\.LayerNorm\.(\w+)", r"text_embeddings.layer_norm.\1"),
    (r"embeddings\.(word_embeddings|position_embeddings|token_type_embeddings)\.weight", r"text_embeddings.\1.weight"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.(\w+)", r"encoder.text_layers.\1.attention.q_proj.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.(\w+)", r"encoder.text_layers.\1.attention.k_proj.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.(\w+)", r"encoder.text_layers.\1.attention.v_proj.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(\w+)", r"encoder.text_layers.\1.attention.out_proj.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(\w+)", r"encoder.text_layers.\1.layer_norm1.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(\w+)", r"encoder.text_layers.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(\w+)", r"encoder.text_layers.\1.mlp.fc2.\2"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.(\w+)", r"encoder.text_layers.\1.layer_norm2.\2"),
    (r"pooler\..*", None),  # BERT's pooler: MSPT reads the raw [CLS] state (§2.4)
]
_CLIP_RULES = [
    (r"embeddings\.(class_embedding)", r"vision_embeddings.\1"),
    (r"embeddings\.(patch_embedding|position_embedding)\.weight", r"vision_embeddings.\1.weight"),
    (r"pre_layrnorm\.(\w+)", r"vision_embeddings.pre_layernorm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(\w+)\.(\w+)", r"encoder.vision_layers.\1.attention.\2.\3"),
    (r"encoder\.layers\.(\d+)\.(layer_norm1|layer_norm2|mlp\.fc1|mlp\.fc2)\.(\w+)", r"encoder.vision_layers.\1.\2.\3"),
    (r"post_layernorm\.(\w+)", r"vision_post_layernorm.\1"),
]


def _vit_rules(layer, norm1, norm2, fc1, fc2):
    """DINOv2 and ViT: the same embeddings and attention; `layer` matches a layer prefix, the others a sub-module.
    Attention under both namings: transformers >= 5.24 (`attention.q_proj` ... `attention.o_proj`) and the older
    one (`attention.attention.query` ... `attention.output.dense`) of checkpoints converted by hand."""
    to = r"encoder.vision_layers.\1."
    return [
        (r"embeddings\.cls_token", "vision_embeddings.class_embedding"),
        (r"embeddings\.position_embeddings", "vision_embeddings.position_embedding.weight"),
        (r"embeddings\.patch_embeddings\.projection\.(\w+)", r"vision_embeddings.patch_embedding.\1"),
        (r"embeddings\.mask_token", None),  # masked-image pre-training only
        (layer + r"(?:attention\.q_proj|attention\.attention\.query)\.(\w+)", to + r"attention.q_proj.\2"),
        (layer + r"(?:attention\.k_proj|attention\.attention\.key)\.(\w+)", to + r"attention.k_proj.\2"),
        (layer + r"(?:attention\.v_proj|attention\.attention\.value)\.(\w+)", to + r"attention.v_proj.\2"),
        (layer + r"(?:attention\.o_proj|attention\.output\.dense)\.(\w+)", to + r"attention.out_proj.\2"),
        (layer + norm1 + r"\.(\w+)", to + r"layer_norm1.\2"),
        (layer + norm2 + r"\.(\w+)", to + r"layer_norm2.\2"),
        (layer + fc1 + r"\.(\w+)", to + r"mlp.fc1.\2"),
        (layer + fc2 + r"\.(\w+)", to + r"mlp.fc2.\2"),
        (layer + r"layer_scale([12])\.lambda1", to + r"layer_scale\2"),  # DINOv2 only
        (r"layernorm\.(\w+)", r"vision_post_layernorm.\1"),
        (r"pooler\..*", None),  # ViT's dense+tanh pooler: MSPT pools the final-norm CLS, as CLIP and DINOv2 do
    ]


# model_type -> (tower class, renaming rules). ViT's layers are `layers.N` since transformers 5.24, `encoder.layer.N`
# with `intermediate.dense` / `output.dense` before.
_VISION_TOWERS = {
    "clip": (CLIPVisionModel, _CLIP_RULES),
    "clip_vision_model": (CLIPVisionModel, _CLIP_RULES),
    "dinov2": (Dinov2Model, _vit_rules(r"encoder\.layer\.(\d+)\.", "norm1", "norm2", r"mlp\.fc1", r"mlp\.fc2")),
    "vit": (ViTModel, _vit_rules(r"(?:layers|encoder\.layer)\.(\d+)\.", "layernorm_before", "layernorm_after",
                                 r"(?:mlp\.fc1|intermediate\.dense)", r"(?:mlp\.fc2|output\.dense)")),
}  # fmt: skip
_TOWER_PREFIXES = ("text_embeddings.", "encoder.text_layers.", "vision_embeddings.", "encoder.vision_layers.",
                   "vision_post_layernorm.")  # fmt: skip


# The class each MSPT checkpoint kind loads with, its Auto class and what it does.
HEADS = {
    "MSPTModel": ("AutoModel", "the shared encoder"),
    "MSPTForRelationExtraction": ("AutoModelForSequenceClassification", "relation extraction"),
    "MSPTForTokenClassification": ("AutoModelForTokenClassification", "named-entity recognition"),
}


def check_architecture(model_class: str, model_type, architectures, id2label, source) -> None:
    """Refuse to load a checkpoint into `model_class` when it was saved from another head (or is not MSPT at all):
    `from_pretrained` would fill the new head with the other head's weights and labels, with only a load report to
    say so. `MSPTModel` loads the encoder of any MSPT checkpoint and a head may start from an `MSPTModel` checkpoint
    (its new weights are reported by transformers); a checkpoint without `architectures` is not checked."""
    saved = list(architectures or [])
    if model_type not in (None, "mspt"):
        raise ValueError(
            f"{str(source)!r} holds a {model_type!r} checkpoint ({', '.join(saved) or 'no architectures'}), not an "
            f"MSPT one. Build an MSPT model from a BERT and a vision (CLIP, DINOv2, ViT) checkpoint with "
            f"`{model_class}.from_text_vision_pretrained(text_path, vision_path)`."
        )
    if not saved or model_class in saved or model_class == "MSPTModel" or saved == ["MSPTModel"]:
        return
    got = saved[0]
    auto, task = HEADS.get(got, (None, None))
    labels = list((id2label or {}).values())
    shown = ", ".join(map(str, labels[:6])) + (", ..." if len(labels) > 6 else "")
    what = f" ({task}; labels {shown})" if task else ""
    loader = f"`{got}.from_pretrained` or `{auto}.from_pretrained`" if auto else f"`{got}`"
    raise ValueError(
        f"{str(source)!r} holds a {got} checkpoint{what}, not a {model_class} one: its weights and labels would fill "
        f"the wrong head. Load it with {loader}. To reuse only its encoder under a new {HEADS[model_class][1]} head, "
        f"build `{model_class}(config)` with your labels and load `MSPTModel.from_pretrained(path).state_dict()` into "
        "its `.mspt`."
    )


def _rename(name, rules):
    for pattern, target in rules:
        if re.fullmatch(pattern, name):
            return None if target is None else re.sub(pattern, target, name)
    raise KeyError(name)


def _load_tower(path, model_class, role):
    tower, info = model_class.from_pretrained(path, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if not k.startswith(("pooler.", "embeddings.mask_token"))]
    if missing or info.get("mismatched_keys"):
        raise ValueError(
            f"{role} checkpoint {str(path)!r} does not hold a complete {model_class.__name__}: "
            f"missing {sorted(missing)[:10]}, mismatched {sorted(info.get('mismatched_keys') or [])[:10]}."
        )
    state = {k.removeprefix("vision_model."): v for k, v in tower.state_dict().items()}
    return tower.config, state


def _load_vision_tower(path, image_size):
    """The vision checkpoint's config (at `image_size` when given) and its state, ready for the renaming rules:
    DINOv2/ViT's `[1, 1, D]` CLS and `[1, N, D]` position tensors as MSPT's `[D]` and `[N, D]`, the position table
    resampled to the new patch grid if `image_size` changes it. Returns (config, state, rules, resampled)."""
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in _VISION_TOWERS:
        raise ValueError(f"Vision checkpoint {str(path)!r} has model_type {model_type!r}. "
                         + unsupported_vision_message(model_type))  # fmt: skip
    model_class, rules = _VISION_TOWERS[model_type]
    config, state = _load_tower(path, model_class, "Vision")
    clip = model_class is CLIPVisionModel
    positions = "embeddings.position_embedding.weight" if clip else "embeddings.position_embeddings"
    if not clip:  # [1, 1, D] -> [D], [1, N, D] -> [N, D]
        state["embeddings.cls_token"] = state["embeddings.cls_token"].flatten()
        state[positions] = state[positions].flatten(0, -2)
    resampled = []
    if image_size is not None and image_size != config.image_size:
        if not isinstance(image_size, int) or image_size < config.patch_size or image_size % config.patch_size:
            raise ValueError(f"`image_size` must be a positive multiple of the vision patch size "
                             f"({config.patch_size}), got {image_size!r}.")  # fmt: skip
        old, new = config.image_size // config.patch_size, image_size // config.patch_size
        state[positions] = resample_positions(state[positions], new)
        config.image_size = image_size
        resampled.append(f"{positions}: {old}x{old} -> {new}x{new} patches (bicubic)")
    return config, state, rules, resampled


def resample_positions(table: torch.Tensor, grid: int) -> torch.Tensor:
    """table [1 + g*g, D] (CLS row first) -> [1 + grid*grid, D]: the patch rows resampled bicubically in float32, as
    `Dinov2Model.interpolate_pos_encoding` does at every forward (here once, at load time); the CLS row kept."""
    cls, patches = table[:1], table[1:]
    old, dim = math.isqrt(patches.shape[0]), patches.shape[1]
    if old * old != patches.shape[0]:
        raise ValueError(f"the position table has {patches.shape[0]} patch rows, not a square grid: no resampling.")
    patches = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=(grid, grid), mode="bicubic", align_corners=False).to(table.dtype)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(grid * grid, dim)])


def load_towers(cls, text_path, vision_path, output_loading_info=False, image_size=None, **config_kwargs):
    text_type = AutoConfig.from_pretrained(text_path).model_type
    if text_type != "bert":
        raise ValueError(f"Text checkpoint {str(text_path)!r} has model_type {text_type!r}; expected 'bert'.")
    text_config, text_state = _load_tower(text_path, BertModel, "Text")
    vision_config, vision_state, vision_rules, resampled = _load_vision_tower(vision_path, image_size)
    text_dict = text_config.to_dict()
    if "vocab_size" in config_kwargs:
        text_dict["vocab_size"] = max(config_kwargs.pop("vocab_size"), text_config.vocab_size)
    config = MSPTConfig(text_config=text_dict, vision_config=vision_config.to_dict(), **config_kwargs)
    model = cls(config)

    target = model.base_model.state_dict(keep_vars=True)
    filled, unused, errors, new = set(), [], [], []
    for source, rules in ((text_state, _TEXT_RULES), (vision_state, vision_rules)):
        for name, tensor in source.items():
            try:
                dest = _rename(name, rules)
            except KeyError:
                errors.append(f"{name}: no place for it in MSPT")
                continue
            if dest is None or (dest not in target and dest.endswith(("k_proj.weight", "k_proj.bias"))):
                unused.append(name)  # pooler, or a self-key replaced by the shared key ("bank", "reference" modes)
                continue
            if dest not in target:
                errors.append(f"{name} -> {dest}: not in the model")
                continue
            param = target[dest]
            rows = tensor.shape[0]
            if dest == "text_embeddings.word_embeddings.weight" and param.shape[0] > rows:
                new.append(f"{dest}[{rows}:{param.shape[0]}]")  # extra vocabulary, e.g. the RE entity markers
            elif param.shape != tensor.shape:
                errors.append(f"{name} -> {dest}: shape {list(tensor.shape)} vs {list(param.shape)}")
                continue
            with torch.no_grad():
                param[:rows].copy_(tensor)
            filled.add(dest)
    not_filled = [n for n in target if n.startswith(_TOWER_PREFIXES) and n not in filled]
    errors += [f"{n}: no checkpoint tensor" for n in not_filled if "aux_position_embedding" not in n]
    if errors:
        raise ValueError(
            f"Loading towers from {str(text_path)!r} and {str(vision_path)!r} failed for {len(errors)} tensor(s): "
            + "; ".join(errors[:10])
        )
    prefix = f"{model.base_model_prefix}." if model.base_model is not model else ""
    new += not_filled
    new += [n for n in target if not n.startswith(_TOWER_PREFIXES)]
    new += [n for n in model.state_dict() if prefix and not n.startswith(prefix)]
    logger.info("MSPT towers loaded; new tensors (trained from scratch): %s; unused checkpoint tensors: %s; position "
                "embeddings resampled: %s", new, unused, resampled or "none")  # fmt: skip
    if output_loading_info:
        return model, {"new_keys": new, "unused_keys": unused, "resampled_keys": resampled}
    return model


__all__ = ["HEADS", "check_architecture", "load_towers", "resample_positions"]
