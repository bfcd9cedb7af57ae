"""MSPT configuration: a BERT text stream, a vision stream (CLIP vision, DINOv2 or ViT), the interaction settings and
the label space."""

import difflib
import re
from dataclasses import fields

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.configuration_utils import SubConfigSpec

SHARED_KEY_MODES = ("bank", "additive", "reference")
RE_POOLINGS = ("cls", "entity")
KG_TASK = "multimodal-kg-construction"  # the task of pipeline_mspt.py, which this file does not import
# The vision tower families whose layers MSPT re-implements (layers_mspt.py, docs/vision-towers.md), by model_type.
VISION_MODEL_TYPES = ("clip_vision_model", "dinov2", "vit")

# Written into every saved config so that a checkpoint loads with any of the Auto classes in a fresh process
# (trust_remote_code=True) even when it was saved from one particular head.
AUTO_MAP = {
    "AutoConfig": "configuration_mspt.MSPTConfig",
    "AutoModel": "modeling_mspt.MSPTModel",
    "AutoModelForSequenceClassification": "modeling_mspt.MSPTForRelationExtraction",
    "AutoModelForTokenClassification": "modeling_mspt.MSPTForTokenClassification",
}


class MSPTConfig(PreTrainedConfig):
    r"""
    Configuration of an MSPT dual-stream model (Chen et al., IJCAI 2024; reference notes §2).

    Args:
        text_config (`BertConfig` or `dict`, *optional*):
            The text stream (BERT family). Defaults to `bert-base` sizes.
        vision_config (`CLIPVisionConfig`, `Dinov2Config`, `ViTConfig` or `dict`, *optional*):
            The vision stream: a CLIP vision tower (model_type `"clip_vision_model"`, the default, CLIP ViT-B/32
            sizes), DINOv2 (`"dinov2"`: layer-scale, no pre-LayerNorm) or ViT (`"vit"`). A dict picks the family by its
            `model_type`. `image_size` is the side the MSPT stream sees (the position table has that grid).
            Other vision models are refused: MSPT re-implements each family layer by layer, because its interaction
            layers run its own attention (docs/vision-towers.md).
        num_interaction_layers (`int`, *optional*, defaults to 3):
            How many of the last layers of each stream use the shared key and the modality attention biases
            ("hand-in-hand" interaction, reference notes §2.3). 0 gives two plain streams.
        shared_key_mode (`str`, *optional*, defaults to `"additive"`):
            `"additive"`: each stream keeps its own (pretrained) key projection and a per-position key bank
            `[heads, positions, head_dim]` shared by both streams is added to it; the bank and the biases start at
            zero, so the interaction layers start as the pretrained towers' layers. The default since the issue-13
            ablation (benchmarks/RESULTS.md: +0.12 RE / +0.11 NER final average over `"bank"`, 10 paired seeds).
            `"bank"`: the shared bank replaces the streams' own keys, so attention depends on the input only through
            the query (the fix of D1; the default before). Checkpoints record their mode in config.json.
            `"reference"`: the released code's single key vector per head broadcast over key positions; it cancels
            in the softmax (D1) and is kept for ablations only.
        max_text_length (`int`, *optional*, defaults to 80):
            Longest text sequence in sub-tokens (80 for IMRE, 128 for IMNER in the paper). Sizes the text attention
            bias; inputs may be shorter (dynamic padding) but never longer.
        num_aux_images (`int`, *optional*, defaults to 0):
            Object crops embedded next to the whole image (the reference uses 3, reference notes §2.1). Each crop adds
            `(aux_image_size / patch_size) ** 2` vision tokens with their own learned position embeddings.
        aux_image_size (`int`, *optional*, defaults to 128):
            Side of an object crop in pixels; a multiple of the vision patch size.
        re_pooling (`str`, *optional*, defaults to `"cls"`):
            Relation-extraction features: `"cls"` is the paper's `[h_v_cls ; h_t_cls]`; `"entity"` reads the text
            states at the `<s>` and `<o>` markers, `[h_v_cls ; h_t(<s>) ; h_t(<o>)]`.
        classifier_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the head's input features.
        id2label / label2id:
            The full label space over all tasks (relations for RE, BIO tags for NER), so that a checkpoint is
            self-describing: ids 0..n-1, unique names, at least one label.

    Raises:
        ValueError: naming the field, the value and the fix, for a value of the wrong type or out of range (also the
            tower sizes MSPT relies on: hidden sizes and heads, layers, vocabulary, image and patch size), and for
            an unknown key that looks like a field (`num_interaction_layer`) or is a tower field given at the top
            level (`image_size`): such a key would otherwise be ignored and the default used. Other unknown keys
            are kept as attributes, as transformers does.
    """

    model_type = "mspt"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
    }

    text_config: PreTrainedConfig | dict | None = None
    vision_config: PreTrainedConfig | dict | None = None
    num_interaction_layers: int = 3
    shared_key_mode: str = "additive"
    max_text_length: int = 80
    num_aux_images: int = 0
    aux_image_size: int = 128
    re_pooling: str = "cls"
    classifier_dropout: float = 0.1
    auto_map: dict | None = None

    def __post_init__(self, **kwargs):
        vision_type = getattr(self.vision_config, "model_type", None)
        if isinstance(self.vision_config, dict):
            vision_type = self.vision_config.get("model_type", "clip_vision_model")
        if vision_type is not None and vision_type not in VISION_MODEL_TYPES:  # before transformers tries to build it
            raise ValueError(unsupported_vision_message(vision_type))
        if self.id2label is None and self.label2id is not None:
            self.id2label = {int(i): name for name, i in self.label2id.items()}
        for key, spec in self.sub_configs_defaults.items():  # built here so that a bad tower value names its tower
            try:
                sub_config, kwargs = spec.create_subconfig(key, getattr(self, key), **kwargs)
            except StrictDataclassError as err:
                field = re.search(r"field '(\w+)'", str(err))
                raise ValueError(
                    f"`{key}.{field.group(1) if field else '?'}` is invalid: {err.__cause__ or err}; pass a value of "
                    "the documented type."
                ) from err
            setattr(self, key, sub_config)
        super().__post_init__(**kwargs)
        if self.label2id is None:
            self.label2id = {name: i for i, name in self.id2label.items()}
        self.auto_map = {**AUTO_MAP, **(self.auto_map or {})}
        self._drop_registered_pipelines()
        self.validate_architecture()

    def _drop_registered_pipelines(self):
        """An NER checkpoint names the knowledge-graph pipeline in `custom_pipelines`, for processes without the
        package (`pipeline(KG_TASK, model=<checkpoint>, trust_remote_code=True)`). Where the task is registered in this
        process (the package is imported), that entry would make `transformers.pipeline` demand `trust_remote_code`
        and run the checkpoint's copy of the code: it is dropped, so the registered pipeline serves the task (saving
        the NER head writes it again)."""
        pipelines = getattr(self, "custom_pipelines", None)
        if not pipelines or KG_TASK not in pipelines:
            return
        from transformers.pipelines import PIPELINE_REGISTRY

        if KG_TASK in PIPELINE_REGISTRY.get_supported_tasks():
            others = {task: spec for task, spec in pipelines.items() if task != KG_TASK}
            if others:
                self.custom_pipelines = others
            else:
                del self.custom_pipelines  # as if never saved: the config's dict does not change

    @property
    def vision_seq_length(self) -> int:
        """Vision tokens: CLS + patches of the whole image + patches of each object crop."""
        v = self.vision_config
        return 1 + (v.image_size // v.patch_size) ** 2 + self.num_aux_images * (self.aux_image_size // v.patch_size) ** 2

    def validate_architecture(self):
        """Every MSPT field and every tower field MSPT's layers read, in range and of the right type; raises a
        `ValueError` naming the field, the value and the fix. Run on construction and again when a model is built
        (values may have been changed in between, e.g. by `from_pretrained(..., max_text_length=...)`)."""
        super().validate_architecture()
        t, v = self.text_config, self.vision_config
        if t.model_type != "bert":
            raise ValueError(f"`text_config` must be a BERT-family config (model_type 'bert'), got {t.model_type!r}.")
        if v.model_type not in VISION_MODEL_TYPES:
            raise ValueError(unsupported_vision_message(v.model_type))
        _check_unknown_keys(self)
        towers = (("text_config", t, _TEXT_SIZES, _TEXT_PROBABILITIES),
                  ("vision_config", v, _VISION_SIZES[v.model_type], _VISION_PROBABILITIES[v.model_type]))  # fmt: skip
        for name, cfg, sizes, probabilities in towers:
            for field in sizes:
                _check_int(f"{name}.{field}", getattr(cfg, field), 1)
            for field in probabilities:
                _check_fraction(f"{name}.{field}", getattr(cfg, field))
            if not _is_number(cfg.layer_norm_eps) or cfg.layer_norm_eps <= 0:
                raise ValueError(f"`{name}.layer_norm_eps` must be a positive number, got {cfg.layer_norm_eps!r}.")
            if not isinstance(cfg.hidden_act, str) or cfg.hidden_act not in ACT2FN:
                raise ValueError(
                    f"`{name}.hidden_act` must name a transformers activation (e.g. 'gelu', 'quick_gelu', 'relu'), "
                    f"got {cfg.hidden_act!r}."
                )
            if cfg.hidden_size % cfg.num_attention_heads:
                raise ValueError(
                    f"`{name}.hidden_size` ({cfg.hidden_size}) must be divisible by `{name}.num_attention_heads` "
                    f"({cfg.num_attention_heads}); pick a head count that divides it."
                )
        if t.pad_token_id is not None and not (_is_int(t.pad_token_id) and 0 <= t.pad_token_id < t.vocab_size):
            raise ValueError(
                f"`text_config.pad_token_id` must be None or an id below `text_config.vocab_size` ({t.vocab_size}), "
                f"got {t.pad_token_id!r}."
            )
        if v.model_type == "dinov2":
            if not _is_number(v.mlp_ratio) or v.mlp_ratio <= 0 or int(v.hidden_size * v.mlp_ratio) < 1:
                raise ValueError(f"`vision_config.mlp_ratio` must be a positive number, got {v.mlp_ratio!r}.")
            if v.use_swiglu_ffn:
                raise ValueError(
                    "`vision_config.use_swiglu_ffn=True` (the SwiGLU feed-forward of DINOv2-giant) is not implemented "
                    "in MSPT's vision stream; use a DINOv2 with the plain MLP (dinov2-small/base/large)."
                )
        if v.patch_size > v.image_size or v.image_size % v.patch_size:
            raise ValueError(
                f"`vision_config.image_size` ({v.image_size}) must be a multiple of `vision_config.patch_size` "
                f"({v.patch_size}); set image_size to a multiple of patch_size."
            )

        if self.shared_key_mode not in SHARED_KEY_MODES:
            raise ValueError(f"`shared_key_mode` must be one of {SHARED_KEY_MODES}, got {self.shared_key_mode!r}.")
        if self.re_pooling not in RE_POOLINGS:
            raise ValueError(f"`re_pooling` must be one of {RE_POOLINGS}, got {self.re_pooling!r}.")
        depth = min(t.num_hidden_layers, v.num_hidden_layers)
        _check_int("num_interaction_layers", self.num_interaction_layers, 0)
        if self.num_interaction_layers > depth:
            raise ValueError(
                f"`num_interaction_layers` must be between 0 and the shallower stream's depth ({depth}), "
                f"got {self.num_interaction_layers}."
            )
        if self.num_interaction_layers > 0 and t.hidden_size != v.hidden_size:
            raise ValueError(
                "The shared key needs both streams to have the same `hidden_size` (the head counts may differ): "
                f"text_config has {t.hidden_size}, vision_config has {v.hidden_size}. Pick towers of the same width "
                "or set `num_interaction_layers=0`."
            )
        _check_int("max_text_length", self.max_text_length, 1)
        if self.max_text_length > t.max_position_embeddings:
            raise ValueError(
                f"`max_text_length` must be between 1 and `text_config.max_position_embeddings` "
                f"({t.max_position_embeddings}), got {self.max_text_length}."
            )
        _check_int("num_aux_images", self.num_aux_images, 0)
        if self.num_aux_images:
            _check_int("aux_image_size", self.aux_image_size, 1)
            if self.aux_image_size % v.patch_size:
                raise ValueError(
                    f"`aux_image_size` must be a positive multiple of `vision_config.patch_size` ({v.patch_size}), "
                    f"got {self.aux_image_size!r}."
                )
        if not _is_number(self.classifier_dropout) or not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"`classifier_dropout` must be a number in [0, 1), got {self.classifier_dropout!r}.")
        self._validate_labels()

    def _validate_labels(self):
        id2label = self.id2label
        if not id2label:
            raise ValueError(
                f"`id2label` must name at least one label, got {id2label!r}; pass the full label space over all "
                "tasks, e.g. id2label={0: 'None', 1: '/per/per/peer'}."
            )
        ids = sorted(id2label)
        if ids != list(range(len(ids))):
            raise ValueError(f"`id2label` ids must be 0..{len(ids) - 1} (one per label), got {ids}; renumber them.")
        seen = {}
        for i in ids:
            if id2label[i] in seen:
                raise ValueError(
                    f"`id2label` names {id2label[i]!r} twice (ids {seen[id2label[i]]} and {i}); label names must "
                    "be unique."
                )
            seen[id2label[i]] = i
        if self.label2id is not None and {int(i): n for n, i in self.label2id.items()} != id2label:
            raise ValueError("`label2id` is not the inverse of `id2label`; pass one of them or both consistently.")


# The tower fields MSPT's own layers read (layers_mspt.py): a value out of range would fail deep inside torch.
_TEXT_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size")  # fmt: skip
_GRID = ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size", "num_channels")
_VISION_SIZES = {"clip_vision_model": (*_GRID, "intermediate_size"), "dinov2": _GRID,  # DINOv2: mlp_ratio instead
                 "vit": (*_GRID, "intermediate_size")}  # fmt: skip
_TEXT_PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob")
_VISION_PROBABILITIES = {
    "clip_vision_model": ("attention_dropout",),
    "dinov2": ("attention_probs_dropout_prob", "hidden_dropout_prob", "drop_path_rate"),
    "vit": ("attention_probs_dropout_prob", "hidden_dropout_prob"),
}
_VISION_EXTRA = {"clip_vision_model": (), "dinov2": ("mlp_ratio", "layerscale_value", "qkv_bias"), "vit": ("qkv_bias",)}
_TOWER_FIELDS = {
    "text_config": {*_TEXT_SIZES, *_TEXT_PROBABILITIES, "layer_norm_eps", "hidden_act"},
    **{f"vision_config:{kind}": {*_VISION_SIZES[kind], *_VISION_PROBABILITIES[kind], *_VISION_EXTRA[kind],
                                 "layer_norm_eps", "hidden_act"} for kind in VISION_MODEL_TYPES},
}  # fmt: skip
_OWN_FIELDS = ("text_config", "vision_config", "num_interaction_layers", "shared_key_mode", "max_text_length",
               "num_aux_images", "aux_image_size", "re_pooling", "classifier_dropout", "id2label", "label2id")


def unsupported_vision_message(model_type) -> str:
    """The error for a vision tower MSPT does not implement: what is supported, why, and what to do."""
    return (
        f"MSPT has no vision stream for model_type {model_type!r}; supported: "
        f"{', '.join(map(repr, VISION_MODEL_TYPES))} "
        "(a full 'clip' checkpoint is read for its vision tower). MSPT cannot run an arbitrary vision model as a black "
        "box: its last `num_interaction_layers` layers replace the tower's attention by MSPT's own (a key shared with "
        "the text stream, a modality bias, the pre-softmax maps returned for distillation), so each family is "
        "re-implemented layer by layer. Use a CLIP, DINOv2 or ViT checkpoint (e.g. facebook/dinov2-small), or add "
        "the family to layers_mspt.py and loading_mspt.py (docs/vision-towers.md)."
    )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name, value, low):
    if not _is_int(value) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"`{name}` must be {kind}, got {value!r}.")


def _check_fraction(name, value):
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a probability in [0, 1), got {value!r}.")


def _extra_keys(config) -> list[str]:
    """Public attributes that are not dataclass fields: keys a config dict carried that no field took."""
    known = {f.name for f in fields(config)} | {"model_type"}
    return [k for k in vars(config) if not k.startswith("_") and k not in known]


def _check_unknown_keys(config):
    """A key that looks like a field but is not one would be kept as a plain attribute and ignored, so the model
    would be built with the default instead (e.g. `num_interaction_layer` in a hand-edited config.json)."""
    for key in _extra_keys(config):
        towers = sorted({name.split(":")[0] for name, known in _TOWER_FIELDS.items() if key in known})
        if towers:
            raise ValueError(
                f"`{key}` is a field of {' and '.join(f'`{n}`' for n in towers)}, not of MSPTConfig, and would be "
                f"ignored here; pass it inside the sub-config, e.g. {towers[0]}={{'{key}': ...}}."
            )
        close = difflib.get_close_matches(key, _OWN_FIELDS, n=1, cutoff=0.8)
        if close:
            raise ValueError(f"`{key}` is not an MSPTConfig field (it would be ignored); did you mean `{close[0]}`?")
    for name in ("text_config", "vision_config"):
        known = _TOWER_FIELDS[name if name == "text_config" else f"{name}:{config.vision_config.model_type}"]
        for key in _extra_keys(getattr(config, name)):
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
            if close:
                raise ValueError(
                    f"`{name}.{key}` is not a field of {type(getattr(config, name)).__name__} (it would be ignored); "
                    f"did you mean `{name}.{close[0]}`?"
                )


__all__ = ["MSPTConfig", "VISION_MODEL_TYPES", "unsupported_vision_message"]
