"""MSPT: a BERT text stream and a vision stream (CLIP vision, DINOv2 or ViT) run layer by layer; the last
`num_interaction_layers` layers of both streams replace their self-key by a learnable key shared by the two modalities
plus a modality attention bias (reference notes §2). Heads for relation extraction (§2.4, MRE) and NER with a CRF
(§2.4, MNER) return per-modality logits from the split head weight for gradient modulation (§3.1, with the D6 fix).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_mspt import MSPTConfig
from .crf_mspt import MSPTCRF
from .layers_mspt import MSPTEncoder, MSPTInteractionParameters, MSPTLayer, MSPTTextEmbeddings, MSPTVisionEmbeddings
from .loading_mspt import check_architecture, load_towers

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------- outputs
@dataclass
class MSPTInteractionAttentions(ModelOutput):
    r"""
    Pre-softmax attention maps `S = Q K^T / sqrt(d) + B + mask` of the interaction layers (reference notes §2.3), per modality.

    text (`tuple(torch.FloatTensor)`, one per interaction layer, each `[batch, heads, text_len, text_len]`):
        Text maps. Entries whose query or key is padding are set to 0, so sums over a row or column run over
        valid positions only (D4).
    vision (`tuple(torch.FloatTensor)`, each `[batch, heads, vision_len, vision_len]`):
        Vision maps; entries of absent object crops are set to 0 likewise.
    text_mask (`torch.BoolTensor` of shape `[batch, text_len]`): valid text positions.
    vision_mask (`torch.BoolTensor` of shape `[batch, vision_len]`): valid vision positions.
    """

    text: tuple[torch.Tensor, ...] | None = None
    vision: tuple[torch.Tensor, ...] | None = None
    text_mask: torch.Tensor | None = None
    vision_mask: torch.Tensor | None = None


@dataclass
class MSPTModelOutput(ModelOutput):
    r"""
    text_last_hidden_state (`[batch, text_len, hidden]`): last text-stream states.
    vision_last_hidden_state (`[batch, vision_len, hidden]`): last vision-stream states, before the tower's final
        LayerNorm (CLIP's `post_layernorm`, DINOv2's and ViT's `layernorm`; for DINOv2/ViT the tower's own
        `last_hidden_state` is this with that norm applied: `model.vision_post_layernorm(vision_last_hidden_state)`).
    vision_pooler_output (`[batch, hidden]`): the final LayerNorm of the vision CLS, zeroed where `image_mask` is 0
        (CLIP's and DINOv2's `pooler_output`; ViT's pooler, a dense+tanh layer, is not used).
    interaction_attentions ([`MSPTInteractionAttentions`]): with `output_interaction_attentions=True`.
    """

    text_last_hidden_state: torch.Tensor | None = None
    vision_last_hidden_state: torch.Tensor | None = None
    vision_pooler_output: torch.Tensor | None = None
    interaction_attentions: MSPTInteractionAttentions | None = None


@dataclass
class MSPTRelationExtractionOutput(ModelOutput):
    r"""
    loss (scalar): cross-entropy, when `labels` are given.
    logits (`[batch, num_labels]`): `vision_logits + text_logits`.
    text_logits / vision_logits (`[batch, num_labels]`): per-modality logits `W_m h_m + b/2` (§3.1, D6 fixed).
    interaction_attentions ([`MSPTInteractionAttentions`]): with `output_interaction_attentions=True`.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    text_logits: torch.Tensor | None = None
    vision_logits: torch.Tensor | None = None
    interaction_attentions: MSPTInteractionAttentions | None = None


@dataclass
class MSPTTokenClassificationOutput(ModelOutput):
    r"""
    loss (scalar): mean CRF negative log-likelihood over the batch, when `labels` are given.
    logits (`[batch, text_len, num_labels]`): CRF emissions, `vision_logits + text_logits`.
    text_logits / vision_logits (`[batch, text_len, num_labels]`): per-modality emissions.
    tags (`[batch, text_len]`): Viterbi tag ids at word-start positions, -100 elsewhere (eval mode only).
    interaction_attentions ([`MSPTInteractionAttentions`]): with `output_interaction_attentions=True`.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    text_logits: torch.Tensor | None = None
    vision_logits: torch.Tensor | None = None
    tags: torch.Tensor | None = None
    interaction_attentions: MSPTInteractionAttentions | None = None


# ------------------------------------------------------------------------------------------------------------ models
PARAMETER_ROLES = ("text", "vision", "shared_key", "text_bias", "vision_bias", "head")
STREAM_OF_ROLE = {"text": "text", "text_bias": "text", "vision": "vision", "vision_bias": "vision"}  # modulated


class MSPTPreTrainedModel(PreTrainedModel):
    config: MSPTConfig
    config_class = MSPTConfig
    base_model_prefix = "mspt"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")

    def __init__(self, config: MSPTConfig, *args, **kwargs):
        if isinstance(config, MSPTConfig):  # fields may have changed since the config was built
            config.validate_architecture()
        super().__init__(config, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """`PreTrainedModel.from_pretrained`, after checking that the checkpoint was saved from this head (or is an
        `MSPTModel` one): a relation-extraction checkpoint never fills an NER head, nor the reverse."""
        if isinstance(config, PreTrainedConfig):  # e.g. from the Auto classes, which read config.json first
            saved = {k: getattr(config, k, None) for k in ("model_type", "architectures", "id2label")}
        elif config is not None or pretrained_model_name_or_path is not None:
            hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
            saved, _ = PreTrainedConfig.get_config_dict(config or pretrained_model_name_or_path, **hub)
        else:
            saved = {}
        check_architecture(cls.__name__, saved.get("model_type"), saved.get("architectures"), saved.get("id2label"),
                           pretrained_model_name_or_path or config)  # fmt: skip
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MSPTVisionEmbeddings):
            init.normal_(module.class_embedding, std=module.class_embedding.shape[0] ** -0.5)
        elif isinstance(module, MSPTLayer) and module.layer_scale1 is not None:  # DINOv2's layer-scale
            init.constant_(module.layer_scale1, module.layerscale_value)
            init.constant_(module.layer_scale2, module.layerscale_value)
        elif isinstance(module, MSPTInteractionParameters):
            module.reset_parameters()  # zeros in "additive" mode, else xavier_uniform_ as the reference (§2.3)
        elif isinstance(module, MSPTCRF):
            for p in (module.start_transitions, module.end_transitions, module.transitions):
                init.uniform_(p, -0.1, 0.1)

    def parameter_roles(self) -> dict[str, str]:
        """The role of every parameter, by name as `named_parameters()` gives it: `"text"` / `"vision"` (the two
        streams: embeddings, layers, the vision post-norm), `"shared_key"` (the interaction layers' key shared by both
        streams), `"text_bias"` / `"vision_bias"` (the modality attention biases), `"head"` (classifier, CRF:
        everything outside the base model). Found from the modules themselves, not from their names: a base-model
        parameter that none of them holds raises instead of silently taking a role (the continual trainer modulates
        and groups the optimizer by these roles)."""
        base = self.base_model
        encoder = base.encoder
        owners = {"text": (base.text_embeddings, encoder.text_layers),
                  "vision": (base.vision_embeddings, encoder.vision_layers, base.vision_post_layernorm)}  # fmt: skip
        role_of = {}
        for role, modules in owners.items():
            role_of.update({id(p): role for module in modules for p in module.parameters()})
        for shared in encoder.interaction:
            role_of[id(shared.shared_key)] = "shared_key"
            role_of[id(shared.text_attention_bias)] = "text_bias"
            role_of[id(shared.vision_attention_bias)] = "vision_bias"
        in_base = {id(p) for p in base.parameters()}
        roles = {}
        for name, param in self.named_parameters():
            if id(param) in role_of:
                roles[name] = role_of[id(param)]
            elif id(param) in in_base:
                raise RuntimeError(f"{type(self).__name__}.parameter_roles: the base-model parameter {name!r} belongs "
                                   "to no stream, key or bias; give its module a role in parameter_roles.")  # fmt: skip
            else:
                roles[name] = "head"
        return roles

    @classmethod
    def from_text_vision_pretrained(cls, text_model_name_or_path, vision_model_name_or_path, **kwargs):
        """Build a model whose streams are a BERT checkpoint and a vision checkpoint: CLIP (or CLIP-vision), DINOv2
        or ViT, the family read from its config.json.

        Every tower tensor is copied and checked; tensors that are new (shared key, biases, crop positions, head,
        CRF, extra vocabulary rows for the RE markers) are logged. Keyword arguments go to `MSPTConfig`
        (`id2label`, `max_text_length`, ...); `vocab_size` larger than the checkpoint's grows the word embeddings;
        `image_size` (default: the checkpoint's) is the side the vision stream sees: when its patch grid differs from
        the checkpoint's, the position embeddings are resampled once here (bicubic, as `Dinov2Model` does at every
        forward) and the load report says so.
        Raises `ValueError` if a checkpoint is not of a supported family or a tower tensor does not match.
        """
        return load_towers(cls, text_model_name_or_path, vision_model_name_or_path, **kwargs)


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def _additive_mask(valid: torch.Tensor, dtype) -> torch.Tensor:
    """valid [B, L] bool -> additive key mask [B, 1, 1, L]."""
    return (~valid)[:, None, None, :].to(dtype) * torch.finfo(dtype).min


class MSPTModel(MSPTPreTrainedModel):
    def __init__(self, config: MSPTConfig):
        super().__init__(config)
        self.text_embeddings = MSPTTextEmbeddings(config.text_config)
        self.vision_embeddings = MSPTVisionEmbeddings(config)
        self.encoder = MSPTEncoder(config)
        self.vision_post_layernorm = nn.LayerNorm(
            config.vision_config.hidden_size, eps=config.vision_config.layer_norm_eps
        )
        self.post_init()

    def get_input_embeddings(self):
        return self.text_embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.text_embeddings.word_embeddings = value

    def _check_inputs(self, input_ids, attention_mask, pixel_values, image_mask, aux_pixel_values, aux_mask):
        c = self.config
        if input_ids is None or input_ids.dim() != 2:
            raise ValueError("`input_ids` must be a [batch, length] tensor.")
        if input_ids.is_floating_point():
            raise ValueError(f"`input_ids` must hold integer token ids, got dtype {input_ids.dtype}.")
        batch, length = input_ids.shape
        if batch == 0:
            raise ValueError("`input_ids` is an empty batch (0 rows); skip empty batches before calling the model.")
        if length == 0:
            raise ValueError("`input_ids` has no tokens (length 0); each row needs [CLS] at least (use MSPTProcessor).")
        if length > c.max_text_length:
            raise ValueError(
                f"`input_ids` has length {length} but config.max_text_length is {c.max_text_length}; "
                "truncate in the processor (`max_length`)."
            )
        for name, tensor in (("attention_mask", attention_mask), ("pixel_values", pixel_values),
                             ("image_mask", image_mask), ("aux_pixel_values", aux_pixel_values),
                             ("aux_mask", aux_mask)):  # fmt: skip
            if tensor is not None and tensor.shape[0] != batch:
                raise ValueError(f"`{name}` has batch size {tensor.shape[0]} but `input_ids` has {batch}.")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"`attention_mask` has shape {list(attention_mask.shape)} but `input_ids` has "
                             f"{list(input_ids.shape)}.")  # fmt: skip
        if image_mask is not None and image_mask.dim() != 1:
            raise ValueError(f"`image_mask` must be [batch] (1: an image, 0: none), got {list(image_mask.shape)}.")
        size = c.vision_config.image_size
        if pixel_values is not None and tuple(pixel_values.shape[1:]) != (c.vision_config.num_channels, size, size):
            raise ValueError(
                f"`pixel_values` must be [batch, {c.vision_config.num_channels}, {size}, {size}], "
                f"got {list(pixel_values.shape)}; use MSPTProcessor to resize images."
            )
        if c.num_aux_images and aux_pixel_values is not None:
            want = (c.num_aux_images, c.vision_config.num_channels, c.aux_image_size, c.aux_image_size)
            if tuple(aux_pixel_values.shape[1:]) != want:
                raise ValueError(f"`aux_pixel_values` must be [batch, {', '.join(map(str, want))}], "
                                 f"got {list(aux_pixel_values.shape)}.")  # fmt: skip
        if not c.num_aux_images and aux_pixel_values is not None:
            raise ValueError("`aux_pixel_values` given but config.num_aux_images is 0.")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        aux_pixel_values: torch.Tensor | None = None,
        aux_mask: torch.Tensor | None = None,
        output_interaction_attentions: bool = False,
    ) -> MSPTModelOutput:
        r"""
        input_ids (`[batch, text_len]`), attention_mask (`[batch, text_len]`), token_type_ids (`[batch, text_len]`).
        pixel_values (`[batch, 3, image_size, image_size]`): the whole image; `None` means no image for any sample.
        image_mask (`[batch]`): 0 for a sample without an image (its pixels are zeros); its vision features are
            zeroed in `vision_pooler_output`, so the heads see no vision evidence for it.
        aux_pixel_values (`[batch, num_aux_images, 3, aux_image_size, aux_image_size]`): object crops (zeros if absent).
        aux_mask (`[batch, num_aux_images]`): 0 for an absent crop; its tokens are masked out as keys.
        output_interaction_attentions (`bool`): return the pre-softmax maps of the interaction layers.
        """
        self._check_inputs(input_ids, attention_mask, pixel_values, image_mask, aux_pixel_values, aux_mask)
        c = self.config
        batch, device = input_ids.shape[0], input_ids.device
        dtype = self.vision_embeddings.class_embedding.dtype
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if pixel_values is None:
            size = c.vision_config.image_size
            pixel_values = torch.zeros(batch, c.vision_config.num_channels, size, size, device=device, dtype=dtype)
            image_mask = torch.zeros(batch, device=device)
        if image_mask is None:
            image_mask = torch.ones(batch, device=device)
        # Absent images and crops are selected away, never multiplied by 0: NaN * 0 is NaN.
        has_image = image_mask.bool()
        pixel_values = torch.where(has_image[:, None, None, None], pixel_values, 0.0)

        text_valid = attention_mask.bool()
        vision_valid = torch.ones(batch, c.vision_seq_length, dtype=torch.bool, device=device)
        if c.num_aux_images:
            if aux_pixel_values is None:
                a = c.aux_image_size
                aux_pixel_values = pixel_values.new_zeros(batch, c.num_aux_images, c.vision_config.num_channels, a, a)
                aux_mask = torch.zeros(batch, c.num_aux_images, device=device)
            if aux_mask is not None:
                aux_pixel_values = torch.where(aux_mask.bool()[:, :, None, None, None], aux_pixel_values, 0.0)
                tokens_per_crop = (c.aux_image_size // c.vision_config.patch_size) ** 2
                crop_valid = aux_mask.bool().repeat_interleave(tokens_per_crop, dim=1)
                vision_valid = torch.cat([vision_valid[:, : -crop_valid.shape[1]], crop_valid], dim=1)

        text_states = self.text_embeddings(input_ids, token_type_ids)
        vision_states = self.vision_embeddings(pixel_values.to(dtype), aux_pixel_values)
        text_states, vision_states, text_maps, vision_maps = self.encoder(
            text_states,
            _additive_mask(text_valid, text_states.dtype),
            vision_states,
            _additive_mask(vision_valid, vision_states.dtype),
            return_scores=output_interaction_attentions,
        )
        pooled = torch.where(has_image[:, None], self.vision_post_layernorm(vision_states[:, 0]), 0.0)

        interaction = None
        if output_interaction_attentions:
            t_pair = (text_valid.unsqueeze(2) & text_valid.unsqueeze(1)).unsqueeze(1)  # [B, 1, L, L]
            v_pair = (vision_valid.unsqueeze(2) & vision_valid.unsqueeze(1)).unsqueeze(1)
            interaction = MSPTInteractionAttentions(
                text=tuple(s.masked_fill(~t_pair, 0.0) for s in text_maps),
                vision=tuple(s.masked_fill(~v_pair, 0.0) for s in vision_maps),
                text_mask=text_valid,
                vision_mask=vision_valid,
            )
        return MSPTModelOutput(
            text_last_hidden_state=text_states,
            vision_last_hidden_state=vision_states,
            vision_pooler_output=pooled,
            interaction_attentions=interaction,
        )


def _split_head(classifier: nn.Linear, vision_features, text_features):
    """Per-modality logits from the split head weight: o_v = W_v h_v + b/2, o_t = W_t h_t + b/2 (§3.1, D6 fixed).
    Their sum is exactly the joint logits W [h_v ; h_t] + b."""
    dim_v = vision_features.shape[-1]
    half_bias = classifier.bias / 2
    vision_logits = F.linear(vision_features, classifier.weight[:, :dim_v], half_bias)
    text_logits = F.linear(text_features, classifier.weight[:, dim_v:], half_bias)
    return vision_logits, text_logits


def _mask_labels(logits, label_mask):
    return logits if label_mask is None else logits.masked_fill(~label_mask.bool(), -1e4)


def _fail_if(bad: torch.Tensor, message: str):
    """Raise `ValueError(message)` if any of `bad` is set; on CUDA a device-side assert instead (no host sync)."""
    if bad.device.type == "cuda":
        torch._assert_async(~bad.any(), message)
    elif bad.any():
        raise ValueError(message)


def _check_labels(labels, num_labels, valid):
    bad = valid & ((labels < 0) | (labels >= num_labels))
    if labels.device.type == "cuda":  # no host sync in the training step: a device-side assert, raised asynchronously
        torch._assert_async(~bad.any(), "`labels` has ids outside the label space (config.id2label); use -100 to ignore")
        return
    if bad.any():
        raise ValueError(
            f"`labels` contains {labels[bad][0].tolist()} but the label space has {num_labels} labels "
            f"(config.id2label); use -100 for positions to ignore."
        )


class MSPTForRelationExtraction(MSPTPreTrainedModel):
    """Relation classifier on `[h_v_cls ; h_t_cls]` (paper, `re_pooling="cls"`) or `[h_v_cls ; h_t(<s>) ; h_t(<o>)]`
    (`re_pooling="entity"`), cross-entropy over the full label space (§2.4).

    It classifies one marked (head, tail) pair, so `pipeline("text-classification", model=<RE checkpoint>)` is
    meaningful only on text that carries the markers, `"<s> Ada </s> meets <o> Ben </o>"` (the checkpoint's tokenizer
    reads them as the marker tokens), and only with `re_pooling="cls"`: that pipeline passes the tokens alone, and the
    `"entity"` pooling needs `entity_positions`, which it cannot give, so `forward` raises naming the
    "multimodal-kg-construction" pipeline (entities found or given, every pair marked and classified). Guessing the
    marker positions here would need the tokenizer's marker ids, which the model does not have."""

    def __init__(self, config: MSPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mspt = MSPTModel(config)
        text_dim = config.text_config.hidden_size * (2 if config.re_pooling == "entity" else 1)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.vision_config.hidden_size + text_dim, config.num_labels)
        self.post_init()

    def get_input_embeddings(self):
        return self.mspt.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.mspt.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        aux_pixel_values: torch.Tensor | None = None,
        aux_mask: torch.Tensor | None = None,
        entity_positions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        label_mask: torch.Tensor | None = None,
        output_interaction_attentions: bool = False,
    ) -> MSPTRelationExtractionOutput:
        r"""
        entity_positions (`[batch, 2]`): token positions of `<s>` and `<o>`; required with `re_pooling="entity"`.
        labels (`[batch]`): relation ids in `[0, num_labels)`, or -100 to ignore.
        label_mask (`[num_labels]` bool): labels that may be predicted (e.g. those seen so far in a continual run);
            the others get a logit of -1e4 in `logits` (the per-modality logits are left as they are).
        Other arguments as in [`MSPTModel.forward`].
        """
        self.mspt._check_inputs(input_ids, attention_mask, pixel_values, image_mask, aux_pixel_values, aux_mask)
        if labels is not None:
            _check_labels(labels, self.num_labels, labels != -100)
            if labels.shape[0] != input_ids.shape[0]:
                raise ValueError(f"`labels` has batch size {labels.shape[0]} but `input_ids` has {input_ids.shape[0]}.")
        if self.config.re_pooling == "entity" and entity_positions is None:
            raise ValueError(
                "`entity_positions` is required with config.re_pooling='entity': MSPTProcessor gives it with "
                "`head_spans`/`tail_spans`. The 'text-classification' pipeline passes only the tokens, so it cannot "
                "run this model; for raw posts use pipeline(\"multimodal-kg-construction\", model=<NER checkpoint>, "
                "re_model=<this checkpoint>, trust_remote_code=True)."
            )
        out = self.mspt(input_ids, attention_mask, token_type_ids, pixel_values, image_mask, aux_pixel_values,
                        aux_mask, output_interaction_attentions)  # fmt: skip
        text = out.text_last_hidden_state
        if self.config.re_pooling == "entity":
            text_features = text.gather(1, entity_positions.unsqueeze(-1).expand(-1, -1, text.shape[-1])).flatten(1)
        else:
            text_features = text[:, 0]
        vision_logits, text_logits = _split_head(
            self.classifier, self.dropout(out.vision_pooler_output), self.dropout(text_features)
        )
        logits = _mask_labels(vision_logits + text_logits, label_mask)
        loss = None
        if labels is not None:  # mean over the labelled rows; 0 (and zero gradients) when none is, never 0/0 = NaN
            loss = F.cross_entropy(logits, labels, reduction="sum") / (labels != -100).sum().clamp_min(1)
        return MSPTRelationExtractionOutput(
            loss=loss,
            logits=logits,
            text_logits=text_logits,
            vision_logits=vision_logits,
            interaction_attentions=out.interaction_attentions,
        )


class MSPTForTokenClassification(MSPTPreTrainedModel):
    """NER: emissions from `[h_v_cls + P_i ; h_t_i]` (P_i = text position embedding i, §2.4) and a CRF over the
    word-start positions (first sub-token of each word), so the tag set is plain BIO.

    Its checkpoint is the one `transformers.pipeline("multimodal-kg-construction", model=...)` takes (the RE model
    goes in `re_model=`): `save_pretrained` ships the pipeline with it."""

    def __init__(self, config: MSPTConfig):
        super().__init__(config)
        if config.text_config.hidden_size != config.vision_config.hidden_size:
            raise ValueError(
                "MSPTForTokenClassification adds the vision CLS to text position embeddings, so "
                "`text_config.hidden_size` must equal `vision_config.hidden_size` "
                f"({config.text_config.hidden_size} != {config.vision_config.hidden_size})."
            )
        self.num_labels = config.num_labels
        self.mspt = MSPTModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(2 * config.text_config.hidden_size, config.num_labels)
        self.crf = MSPTCRF(config.num_labels)
        self.post_init()

    def get_input_embeddings(self):
        return self.mspt.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.mspt.set_input_embeddings(value)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with the knowledge-graph pipeline: config.json gets `custom_pipelines`,
        and `pipeline_mspt.py` (imported below, so copied with this file's other relative imports) lands next to the
        model code. A process without the package can then run `transformers.pipeline("multimodal-kg-construction",
        model=<this directory or its Hub repo>, re_model=<RE checkpoint>, trust_remote_code=True)`. The model's own
        config is left as it was (a continual run compares it with the one it started with)."""
        from .pipeline_mspt import kg_custom_pipelines  # not at the top: pipeline_mspt imports this module

        before = getattr(self.config, "custom_pipelines", None)
        self.config.custom_pipelines = {**(before or {}), **kg_custom_pipelines()}
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            if before is None:
                del self.config.custom_pipelines
            else:
                self.config.custom_pipelines = before

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        aux_pixel_values: torch.Tensor | None = None,
        aux_mask: torch.Tensor | None = None,
        word_start_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        label_mask: torch.Tensor | None = None,
        output_interaction_attentions: bool = False,
        return_tags: bool | None = None,
    ) -> MSPTTokenClassificationOutput:
        r"""
        word_start_mask (`[batch, text_len]`): 1 at the first sub-token of each word (MSPTProcessor gives it). The CRF
            runs over these positions. Without it: `labels != -100` when labels are given, else `attention_mask`.
        labels (`[batch, text_len]`): tag ids at word starts, -100 elsewhere. A row that is -100 everywhere is left out
            of the loss (the loss is the mean over labelled rows; 0 with zero gradients if none is); a labelled row
            needs a tag at every word start, since the CRF scores the whole chain.
        label_mask (`[num_labels]` bool): tags that may be predicted; the others get an emission of -1e4.
        return_tags (`bool`, *optional*): run the Viterbi decode and return `tags`; default: in eval mode only.
        Other arguments as in [`MSPTModel.forward`].
        """
        self.mspt._check_inputs(input_ids, attention_mask, pixel_values, image_mask, aux_pixel_values, aux_mask)
        for name, tensor in (("word_start_mask", word_start_mask), ("labels", labels)):
            if tensor is not None and tensor.shape != input_ids.shape:
                raise ValueError(f"`{name}` has shape {list(tensor.shape)} but `input_ids` has {list(input_ids.shape)}.")
        if word_start_mask is None:
            word_start_mask = (labels != -100) if labels is not None else attention_mask
            if word_start_mask is None:
                word_start_mask = torch.ones_like(input_ids)
        words = word_start_mask.bool()
        if labels is not None:
            tagged = labels != -100
            labelled_rows = (tagged & words).any(dim=1)  # [B]; rows with no tag at all are left out of the loss
            _fail_if(words & ~tagged & labelled_rows[:, None],
                     "`labels` is -100 at a word start of a row that has other tags; the CRF tags every word start "
                     "of a row, so give that word a tag, or set it to 0 in `word_start_mask`, or set the whole row "
                     "to -100 to leave it out of the loss.")  # fmt: skip
            _check_labels(labels, self.num_labels, words & labelled_rows[:, None])
        out = self.mspt(input_ids, attention_mask, token_type_ids, pixel_values, image_mask, aux_pixel_values,
                        aux_mask, output_interaction_attentions)  # fmt: skip
        text = out.text_last_hidden_state  # [B, L, D]
        positions = self.mspt.text_embeddings.position_embeddings.weight[: text.shape[1]]  # [L, D]
        vision = out.vision_pooler_output.unsqueeze(1) + positions  # [B, L, D]
        vision_logits, text_logits = _split_head(self.classifier, self.dropout(vision), self.dropout(text))
        logits = _mask_labels(vision_logits + text_logits, label_mask)

        # Left-pack the word-start positions (a stable sort keeps their order) so the CRF sees contiguous sequences.
        order = torch.argsort((~words).to(torch.int8), dim=1, stable=True)  # [B, L]
        packed_mask = words.gather(1, order)
        packed_logits = logits.gather(1, order.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        loss = None
        if labels is not None:
            packed_labels = labels.gather(1, order)
            scored = packed_mask & labelled_rows[:, None]  # an unlabelled row has no real position: log-likelihood 0
            log_likelihood = self.crf.log_likelihood(packed_logits, packed_labels, scored)  # [B]
            loss = -log_likelihood.sum() / labelled_rows.sum().clamp_min(1)
        tags = None
        if (not self.training) if return_tags is None else return_tags:
            packed_tags = self.crf.decode(packed_logits, packed_mask).masked_fill(~packed_mask, -100)
            tags = torch.full_like(input_ids, -100).scatter(1, order, packed_tags)
        return MSPTTokenClassificationOutput(
            loss=loss,
            logits=logits,
            text_logits=text_logits,
            vision_logits=vision_logits,
            tags=tags,
            interaction_attentions=out.interaction_attentions,
        )


MSPTConfig.register_for_auto_class()
MSPTModel.register_for_auto_class("AutoModel")
MSPTForRelationExtraction.register_for_auto_class("AutoModelForSequenceClassification")
MSPTForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")

__all__ = [
    "PARAMETER_ROLES",
    "STREAM_OF_ROLE",
    "MSPTModel",
    "MSPTPreTrainedModel",
    "MSPTForRelationExtraction",
    "MSPTForTokenClassification",
    "MSPTModelOutput",
    "MSPTInteractionAttentions",
    "MSPTRelationExtractionOutput",
    "MSPTTokenClassificationOutput",
]
