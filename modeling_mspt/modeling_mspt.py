"""MSPT: a BERT text stream and a CLIP-ViT vision stream run layer by layer; the last `num_interaction_layers` layers of
both streams replace their self-key by a learnable key shared by the two modalities plus a modality attention bias
(analysis §2). Heads for relation extraction (§2.4, MRE) and NER with a CRF (§2.4, MNER) return per-modality logits from
the split head weight for gradient modulation (§3.1, with the D6 fix).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput, logging

from .configuration_mspt import MSPTConfig
from .crf_mspt import MSPTCRF
from .loading_mspt import load_towers

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------- outputs
@dataclass
class MSPTInteractionAttentions(ModelOutput):
    r"""
    Pre-softmax attention maps `S = Q K^T / sqrt(d) + B + mask` of the interaction layers (analysis §2.3), per modality.

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
    vision_last_hidden_state (`[batch, vision_len, hidden]`): last vision-stream states (no post-LayerNorm).
    vision_pooler_output (`[batch, hidden]`): post-LayerNorm vision CLS, zeroed where `image_mask` is 0.
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


# -------------------------------------------------------------------------------------------------------- embeddings
class MSPTTextEmbeddings(nn.Module):
    """BERT embeddings: word + absolute position + token type, LayerNorm, dropout."""

    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        positions = self.position_embeddings.weight[: input_ids.shape[1]]  # [L, D]
        hidden_states = self.word_embeddings(input_ids) + positions + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.layer_norm(hidden_states))


class MSPTVisionEmbeddings(nn.Module):
    """CLIP embeddings of the whole image (CLS + patches, fixing D11) followed by optional object-crop patches with
    their own learned positions (the reference's aux crops, §2.1), then CLIP's pre-LayerNorm."""

    def __init__(self, config: MSPTConfig):
        super().__init__()
        v = config.vision_config
        self.patch_size = v.patch_size
        self.class_embedding = nn.Parameter(torch.empty(v.hidden_size))
        self.patch_embedding = nn.Conv2d(v.num_channels, v.hidden_size, v.patch_size, stride=v.patch_size, bias=False)
        self.position_embedding = nn.Embedding((v.image_size // v.patch_size) ** 2 + 1, v.hidden_size)
        num_aux_tokens = config.num_aux_images * (config.aux_image_size // v.patch_size) ** 2
        self.aux_position_embedding = nn.Embedding(num_aux_tokens, v.hidden_size) if num_aux_tokens else None
        self.pre_layernorm = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)

    def _patches(self, pixel_values):
        return self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # [N, patches, D]

    def forward(self, pixel_values, aux_pixel_values=None):
        batch = pixel_values.shape[0]
        cls = self.class_embedding.expand(batch, 1, -1)
        hidden_states = torch.cat([cls, self._patches(pixel_values)], dim=1) + self.position_embedding.weight
        if self.aux_position_embedding is not None:
            crops = self._patches(aux_pixel_values.flatten(0, 1))  # [B * num_aux, p, D]
            crops = crops.reshape(batch, -1, crops.shape[-1]) + self.aux_position_embedding.weight
            hidden_states = torch.cat([hidden_states, crops], dim=1)
        return self.pre_layernorm(hidden_states)


# ----------------------------------------------------------------------------------------------------------- layers
class MSPTAttention(nn.Module):
    """Multi-head self-attention. In an interaction layer there is no `k_proj`: the key comes from the shared bank."""

    def __init__(self, hidden_size, num_heads, dropout, interaction: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = None if interaction else nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _heads(self, x):
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, L, d]

    def forward(self, hidden_states, attention_bias, shared_key=None, return_scores=False):
        """hidden_states [B, L, D]; attention_bias additive, broadcastable to [B, H, L, L] (padding mask, plus the
        modality bias in interaction layers); shared_key [H, L, d] -> ([B, L, D], pre-softmax scores or None)."""
        batch, length, _ = hidden_states.shape
        q = self._heads(self.q_proj(hidden_states))
        if shared_key is None:
            k = self._heads(self.k_proj(hidden_states))
        else:
            k = shared_key.unsqueeze(0).expand(batch, -1, -1, -1)
        v = self._heads(self.v_proj(hidden_states))
        dropout = self.dropout if self.training else 0.0
        if return_scores:
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale + attention_bias  # [B, H, L, L]
            probs = F.dropout(scores.softmax(dim=-1), p=dropout, training=self.training)
            out = torch.matmul(probs, v)
        else:
            scores = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_bias, dropout_p=dropout, scale=self.scale)
        out = out.transpose(1, 2).reshape(batch, length, -1)
        return self.out_proj(out), scores


class MSPTMLP(nn.Module):
    def __init__(self, hidden_size, intermediate_size, act):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states):
        return self.fc2(self.act(self.fc1(hidden_states)))


class MSPTLayer(nn.Module):
    """A transformer layer: post-LayerNorm for the BERT stream, pre-LayerNorm for the CLIP stream."""

    def __init__(self, stream_config, interaction: bool, pre_norm: bool):
        super().__init__()
        c = stream_config
        attn_dropout = getattr(c, "attention_probs_dropout_prob", getattr(c, "attention_dropout", 0.0))
        self.pre_norm = pre_norm
        self.attention = MSPTAttention(c.hidden_size, c.num_attention_heads, attn_dropout, interaction)
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = MSPTMLP(c.hidden_size, c.intermediate_size, c.hidden_act)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(getattr(c, "hidden_dropout_prob", 0.0))

    def forward(self, hidden_states, attention_bias, shared_key=None, return_scores=False):
        if self.pre_norm:
            attn, scores = self.attention(self.layer_norm1(hidden_states), attention_bias, shared_key, return_scores)
            hidden_states = hidden_states + attn
            hidden_states = hidden_states + self.mlp(self.layer_norm2(hidden_states))
        else:
            attn, scores = self.attention(hidden_states, attention_bias, shared_key, return_scores)
            hidden_states = self.layer_norm1(hidden_states + self.dropout(attn))
            hidden_states = self.layer_norm2(hidden_states + self.dropout(self.mlp(hidden_states)))
        return hidden_states, scores


class MSPTInteractionParameters(nn.Module):
    """One interaction layer's learnable key, shared by both streams, and its two modality attention biases.

    "bank" mode: one key row per position `[heads, max(Lt, Lv), head_dim]`, sliced to each stream's length, so the
    attention depends on the input and the key learns (fixes D1). "reference" mode: the released code's
    `[heads, 1, head_dim]` vector broadcast over key positions, which cancels in the softmax (D1; ablation only).
    """

    def __init__(self, config: MSPTConfig, heads: int, head_dim: int):
        super().__init__()
        len_t, len_v = config.max_text_length, config.vision_seq_length
        rows = max(len_t, len_v) if config.shared_key_mode == "bank" else 1
        self.shared_key = nn.Parameter(torch.empty(heads, rows, head_dim))
        self.text_attention_bias = nn.Parameter(torch.empty(heads, len_t, len_t))
        self.vision_attention_bias = nn.Parameter(torch.empty(heads, len_v, len_v))

    def key(self, length: int) -> torch.Tensor:
        """The key for a stream of `length` positions: [heads, length, head_dim]."""
        key = self.shared_key
        return key[:, :length] if key.shape[1] > 1 else key.expand(-1, length, -1)


class MSPTEncoder(nn.Module):
    """Both streams, layer by layer, aligned at the top; the last `num_interaction_layers` layers of each stream share
    one key per layer (`shared_key`) and add a per-modality bias (`text_attention_bias` / `vision_attention_bias`).

    `S^m_l = Q^m_l K_l^T / sqrt(d) + B^m_l + mask` (SPEC §1). The reference computes the text map as
    `(Q K + B) / sqrt(d)` and the vision map as `(Q / sqrt(d)) K + B` (§2.3); we use one form for both streams, which
    only rescales the text bias.
    """

    def __init__(self, config: MSPTConfig):
        super().__init__()
        t, v = config.text_config, config.vision_config
        n = config.num_interaction_layers
        self.num_interaction_layers = n
        self.text_layers = nn.ModuleList(
            [MSPTLayer(t, i >= t.num_hidden_layers - n, pre_norm=False) for i in range(t.num_hidden_layers)]
        )
        self.vision_layers = nn.ModuleList(
            [MSPTLayer(v, i >= v.num_hidden_layers - n, pre_norm=True) for i in range(v.num_hidden_layers)]
        )
        heads, head_dim = t.num_attention_heads, t.hidden_size // t.num_attention_heads
        self.interaction = nn.ModuleList(
            [MSPTInteractionParameters(config, heads, head_dim) for _ in range(config.num_interaction_layers)]
        )

    def forward(self, text_states, text_bias, vision_states, vision_bias, return_scores=False):
        """text_states [B, Lt, D], text_bias [B, 1, 1, Lt] additive padding mask; vision likewise.
        Returns final states of both streams and the per-layer pre-softmax maps of the interaction layers."""
        text_depth, vision_depth = len(self.text_layers), len(self.vision_layers)
        depth = max(text_depth, vision_depth)
        first_interaction = depth - self.num_interaction_layers
        len_t, len_v = text_states.shape[1], vision_states.shape[1]
        text_maps, vision_maps = [], []
        for i in range(depth):
            j = i - first_interaction  # interaction index, < 0 below the interaction block
            ti, vi = i - (depth - text_depth), i - (depth - vision_depth)
            if j < 0:
                if vi >= 0:
                    vision_states, _ = self.vision_layers[vi](vision_states, vision_bias)
                if ti >= 0:
                    text_states, _ = self.text_layers[ti](text_states, text_bias)
                continue
            shared = self.interaction[j]
            v_bias = vision_bias + shared.vision_attention_bias
            vision_states, v_scores = self.vision_layers[vi](vision_states, v_bias, shared.key(len_v), return_scores)
            t_bias = text_bias + shared.text_attention_bias[:, :len_t, :len_t]
            text_states, t_scores = self.text_layers[ti](text_states, t_bias, shared.key(len_t), return_scores)
            if return_scores:
                text_maps.append(t_scores)
                vision_maps.append(v_scores)
        return text_states, vision_states, text_maps, vision_maps


# ------------------------------------------------------------------------------------------------------------ models
class MSPTPreTrainedModel(PreTrainedModel):
    config: MSPTConfig
    config_class = MSPTConfig
    base_model_prefix = "mspt"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MSPTVisionEmbeddings):
            init.normal_(module.class_embedding, std=module.class_embedding.shape[0] ** -0.5)
        elif isinstance(module, MSPTInteractionParameters):
            # xavier_uniform_ as the reference initialises its keys and biases (§2.3).
            for p in (module.shared_key, module.text_attention_bias, module.vision_attention_bias):
                init.xavier_uniform_(p)
        elif isinstance(module, MSPTCRF):
            for p in (module.start_transitions, module.end_transitions, module.transitions):
                init.uniform_(p, -0.1, 0.1)

    @classmethod
    def from_text_vision_pretrained(cls, text_model_name_or_path, vision_model_name_or_path, **kwargs):
        """Build a model whose streams are a BERT checkpoint and a CLIP (or CLIP-vision) checkpoint.

        Every tower tensor is copied and checked; tensors that are new (shared key, biases, crop positions, head,
        CRF, extra vocabulary rows for the RE markers) are logged. Keyword arguments go to `MSPTConfig`
        (`id2label`, `max_text_length`, ...); `vocab_size` larger than the checkpoint's grows the word embeddings.
        Raises `ValueError` if a checkpoint is not of the expected family or a tower tensor does not match.
        """
        return load_towers(cls, text_model_name_or_path, vision_model_name_or_path, **kwargs)


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
        batch, length = input_ids.shape
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

        text_valid = attention_mask.bool()
        vision_valid = torch.ones(batch, c.vision_seq_length, dtype=torch.bool, device=device)
        if c.num_aux_images:
            if aux_pixel_values is None:
                a = c.aux_image_size
                aux_pixel_values = pixel_values.new_zeros(batch, c.num_aux_images, c.vision_config.num_channels, a, a)
                aux_mask = torch.zeros(batch, c.num_aux_images, device=device)
            if aux_mask is not None:
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
        pooled = self.vision_post_layernorm(vision_states[:, 0]) * image_mask.to(vision_states.dtype).unsqueeze(1)

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


def _check_labels(labels, num_labels, valid):
    bad = valid & ((labels < 0) | (labels >= num_labels))
    if bad.any():
        raise ValueError(
            f"`labels` contains {labels[bad][0].tolist()} but the label space has {num_labels} labels "
            f"(config.id2label); use -100 for positions to ignore."
        )


class MSPTForRelationExtraction(MSPTPreTrainedModel):
    """Relation classifier on `[h_v_cls ; h_t_cls]` (paper, `re_pooling="cls"`) or `[h_v_cls ; h_t(<s>) ; h_t(<o>)]`
    (`re_pooling="entity"`), cross-entropy over the full label space (§2.4)."""

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
        if labels is not None:
            _check_labels(labels, self.num_labels, labels != -100)
            if labels.shape[0] != input_ids.shape[0]:
                raise ValueError(f"`labels` has batch size {labels.shape[0]} but `input_ids` has {input_ids.shape[0]}.")
        if self.config.re_pooling == "entity" and entity_positions is None:
            raise ValueError("`entity_positions` is required with config.re_pooling='entity' (MSPTProcessor gives it).")
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
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return MSPTRelationExtractionOutput(
            loss=loss,
            logits=logits,
            text_logits=text_logits,
            vision_logits=vision_logits,
            interaction_attentions=out.interaction_attentions,
        )


class MSPTForTokenClassification(MSPTPreTrainedModel):
    """NER: emissions from `[h_v_cls + P_i ; h_t_i]` (P_i = text position embedding i, §2.4) and a CRF over the
    word-start positions (first sub-token of each word), so the tag set is plain BIO."""

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
    ) -> MSPTTokenClassificationOutput:
        r"""
        word_start_mask (`[batch, text_len]`): 1 at the first sub-token of each word (MSPTProcessor gives it). The CRF
            runs over these positions. Without it: `labels != -100` when labels are given, else `attention_mask`.
        labels (`[batch, text_len]`): tag ids at word starts, -100 elsewhere.
        label_mask (`[num_labels]` bool): tags that may be predicted; the others get an emission of -1e4.
        Other arguments as in [`MSPTModel.forward`].
        """
        if word_start_mask is None:
            word_start_mask = (labels != -100) if labels is not None else attention_mask
            if word_start_mask is None:
                word_start_mask = torch.ones_like(input_ids)
        words = word_start_mask.bool()
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"`labels` has shape {list(labels.shape)} but `input_ids` has {list(input_ids.shape)}.")
            _check_labels(labels, self.num_labels, words)
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
            loss = -self.crf.log_likelihood(packed_logits, packed_labels, packed_mask).mean()
        tags = None
        if not self.training:
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
    "MSPTModel",
    "MSPTPreTrainedModel",
    "MSPTForRelationExtraction",
    "MSPTForTokenClassification",
    "MSPTModelOutput",
    "MSPTInteractionAttentions",
    "MSPTRelationExtractionOutput",
    "MSPTTokenClassificationOutput",
]
