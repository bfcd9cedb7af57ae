"""Copy a pretrained BERT and a pretrained CLIP vision tower into the two MSPT streams (reference notes §2.1 "Initialisation":
the reference renames every tensor and asserts all were matched; so do we, and we also say which tensors are new), and
refuse an MSPT checkpoint saved from another head before its weights are loaded."""

import re

import torch
from transformers import AutoConfig, BertModel, CLIPVisionModel
from transformers.utils import logging

from .configuration_mspt import MSPTConfig

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
_VISION_RULES = [
    (r"embeddings\.(class_embedding)", r"vision_embeddings.\1"),
    (r"embeddings\.(patch_embedding|position_embedding)\.weight", r"vision_embeddings.\1.weight"),
    (r"pre_layrnorm\.(\w+)", r"vision_embeddings.pre_layernorm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(\w+)\.(\w+)", r"encoder.vision_layers.\1.attention.\2.\3"),
    (r"encoder\.layers\.(\d+)\.(layer_norm1|layer_norm2|mlp\.fc1|mlp\.fc2)\.(\w+)", r"encoder.vision_layers.\1.\2.\3"),
    (r"post_layernorm\.(\w+)", r"vision_post_layernorm.\1"),
]
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
            f"MSPT one. Build an MSPT model from a BERT and a CLIP checkpoint with "
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


def _load_tower(path, model_class, expected_types, role):
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in expected_types:
        raise ValueError(
            f"{role} checkpoint {str(path)!r} has model_type {model_type!r}; expected one of {expected_types}."
        )
    tower, info = model_class.from_pretrained(path, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if not k.startswith("pooler.")]
    if missing or info.get("mismatched_keys"):
        raise ValueError(
            f"{role} checkpoint {str(path)!r} does not hold a complete {model_class.__name__}: "
            f"missing {sorted(missing)[:10]}, mismatched {sorted(info.get('mismatched_keys') or [])[:10]}."
        )
    state = {k.removeprefix("vision_model."): v for k, v in tower.state_dict().items()}
    return tower.config, state


def load_towers(cls, text_path, vision_path, output_loading_info=False, **config_kwargs):
    text_config, text_state = _load_tower(text_path, BertModel, ("bert",), "Text")
    vision_config, vision_state = _load_tower(vision_path, CLIPVisionModel, ("clip", "clip_vision_model"), "Vision")
    text_dict = text_config.to_dict()
    if "vocab_size" in config_kwargs:
        text_dict["vocab_size"] = max(config_kwargs.pop("vocab_size"), text_config.vocab_size)
    config = MSPTConfig(text_config=text_dict, vision_config=vision_config.to_dict(), **config_kwargs)
    model = cls(config)

    target = model.base_model.state_dict(keep_vars=True)
    filled, unused, errors, new = set(), [], [], []
    for source, rules in ((text_state, _TEXT_RULES), (vision_state, _VISION_RULES)):
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
    logger.info("MSPT towers loaded; new tensors (trained from scratch): %s; unused checkpoint tensors: %s", new, unused)
    if output_loading_info:
        return model, {"new_keys": new, "unused_keys": unused}
    return model


__all__ = ["HEADS", "check_architecture", "load_towers"]
