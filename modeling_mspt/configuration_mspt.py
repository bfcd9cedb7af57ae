"""MSPT configuration: a BERT text stream, a CLIP-ViT vision stream, the interaction settings and the label space."""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

SHARED_KEY_MODES = ("bank", "reference")
RE_POOLINGS = ("cls", "entity")

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
        vision_config (`CLIPVisionConfig` or `dict`, *optional*):
            The vision stream (CLIP vision tower). Defaults to CLIP ViT-B/32 sizes.
        num_interaction_layers (`int`, *optional*, defaults to 3):
            How many of the last layers of each stream use the shared key and the modality attention biases
            ("hand-in-hand" interaction, reference notes §2.3). 0 gives two plain streams.
        shared_key_mode (`str`, *optional*, defaults to `"bank"`):
            `"bank"`: a per-position key bank `[heads, positions, head_dim]` shared by both streams, so that
            attention depends on the input and the key learns (the fix of D1). `"reference"`: the released code's
            single key vector per head broadcast over key positions; it cancels in the softmax (D1) and is kept
            for ablations only.
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
            self-describing.
    """

    model_type = "mspt"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
    }

    text_config: PreTrainedConfig | dict | None = None
    vision_config: PreTrainedConfig | dict | None = None
    num_interaction_layers: int = 3
    shared_key_mode: str = "bank"
    max_text_length: int = 80
    num_aux_images: int = 0
    aux_image_size: int = 128
    re_pooling: str = "cls"
    classifier_dropout: float = 0.1
    auto_map: dict | None = None

    def __post_init__(self, **kwargs):
        if self.id2label is None and self.label2id is not None:
            self.id2label = {int(i): name for name, i in self.label2id.items()}
        super().__post_init__(**kwargs)
        if self.label2id is None:
            self.label2id = {name: i for i, name in self.id2label.items()}
        self.auto_map = {**AUTO_MAP, **(self.auto_map or {})}
        self.validate_mspt()

    @property
    def vision_seq_length(self) -> int:
        """Vision tokens: CLS + patches of the whole image + patches of each object crop."""
        v = self.vision_config
        return 1 + (v.image_size // v.patch_size) ** 2 + self.num_aux_images * (self.aux_image_size // v.patch_size) ** 2

    def validate_mspt(self):
        t, v = self.text_config, self.vision_config
        if t.model_type != "bert":
            raise ValueError(f"`text_config` must be a BERT-family config (model_type 'bert'), got {t.model_type!r}.")
        if v.model_type != "clip_vision_model":
            raise ValueError(
                f"`vision_config` must be a CLIP vision config (model_type 'clip_vision_model'), got {v.model_type!r}."
            )
        if self.shared_key_mode not in SHARED_KEY_MODES:
            raise ValueError(f"`shared_key_mode` must be one of {SHARED_KEY_MODES}, got {self.shared_key_mode!r}.")
        if self.re_pooling not in RE_POOLINGS:
            raise ValueError(f"`re_pooling` must be one of {RE_POOLINGS}, got {self.re_pooling!r}.")
        depth = min(t.num_hidden_layers, v.num_hidden_layers)
        if not 0 <= self.num_interaction_layers <= depth:
            raise ValueError(
                f"`num_interaction_layers` must be between 0 and the shallower stream's depth ({depth}), "
                f"got {self.num_interaction_layers}."
            )
        if self.num_interaction_layers > 0 and (
            t.hidden_size != v.hidden_size or t.num_attention_heads != v.num_attention_heads
        ):
            raise ValueError(
                "The shared key needs both streams to have the same `hidden_size` and `num_attention_heads`: "
                f"text_config has {t.hidden_size}/{t.num_attention_heads}, vision_config has "
                f"{v.hidden_size}/{v.num_attention_heads}. Pick matching towers or set `num_interaction_layers=0`."
            )
        for name, cfg in (("text_config", t), ("vision_config", v)):
            if cfg.hidden_size % cfg.num_attention_heads:
                raise ValueError(
                    f"`{name}.hidden_size` ({cfg.hidden_size}) must be divisible by "
                    f"`{name}.num_attention_heads` ({cfg.num_attention_heads})."
                )
        if not 1 <= self.max_text_length <= t.max_position_embeddings:
            raise ValueError(
                f"`max_text_length` must be between 1 and `text_config.max_position_embeddings` "
                f"({t.max_position_embeddings}), got {self.max_text_length}."
            )
        if v.image_size % v.patch_size:
            raise ValueError(
                f"`vision_config.image_size` ({v.image_size}) must be a multiple of `vision_config.patch_size` "
                f"({v.patch_size})."
            )
        if self.num_aux_images < 0:
            raise ValueError(f"`num_aux_images` must be >= 0, got {self.num_aux_images}.")
        if self.num_aux_images and (self.aux_image_size <= 0 or self.aux_image_size % v.patch_size):
            raise ValueError(
                f"`aux_image_size` ({self.aux_image_size}) must be a positive multiple of "
                f"`vision_config.patch_size` ({v.patch_size})."
            )
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"`classifier_dropout` must be in [0, 1), got {self.classifier_dropout}.")
        if self.label2id is not None and self.id2label is not None:
            if {int(i): n for n, i in self.label2id.items()} != self.id2label:
                raise ValueError("`label2id` is not the inverse of `id2label`; pass one of them or both consistently.")


__all__ = ["MSPTConfig"]
