"""The building blocks of the two MSPT streams: embeddings, attention, layers, and the encoder whose last layers share
a key between the text and vision streams (reference notes §2.1-§2.3)."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN

from .configuration_mspt import MSPTConfig


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
    """Embeddings of the whole image (CLS + patches + learned positions, fixing D11) followed by optional object-crop
    patches with their own learned positions (the reference's aux crops, §2.1); then the tower family's own last step:
    CLIP's pre-LayerNorm, or the embedding dropout of DINOv2 and ViT (which have no pre-LayerNorm and a bias on the
    patch projection). One set of names for every family; loading_mspt.py maps each checkpoint onto it."""

    def __init__(self, config: MSPTConfig):
        super().__init__()
        v = config.vision_config
        clip = v.model_type == "clip_vision_model"
        self.patch_size = v.patch_size
        self.class_embedding = nn.Parameter(torch.empty(v.hidden_size))
        self.patch_embedding = nn.Conv2d(v.num_channels, v.hidden_size, v.patch_size, v.patch_size, bias=not clip)
        self.position_embedding = nn.Embedding((v.image_size // v.patch_size) ** 2 + 1, v.hidden_size)
        num_aux_tokens = config.num_aux_images * (config.aux_image_size // v.patch_size) ** 2
        self.aux_position_embedding = nn.Embedding(num_aux_tokens, v.hidden_size) if num_aux_tokens else None
        self.pre_layernorm = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps) if clip else None
        self.dropout = nn.Dropout(getattr(v, "hidden_dropout_prob", 0.0))

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
        if self.pre_layernorm is None:
            return self.dropout(hidden_states)
        return self.pre_layernorm(hidden_states)


# ----------------------------------------------------------------------------------------------------------- layers
class MSPTAttention(nn.Module):
    """Multi-head self-attention. Without `own_key` (interaction layers in the "bank" and "reference" modes) there is
    no `k_proj` and the key is the shared one; with it and a shared key ("additive" mode) the two are summed."""

    def __init__(self, hidden_size, num_heads, dropout, own_key: bool = True, qkv_bias: bool = True):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias) if own_key else None
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _heads(self, x):
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, L, d]

    def forward(self, hidden_states, attention_bias, shared_key=None, return_scores=False):
        """hidden_states [B, L, D]; attention_bias additive, broadcastable to [B, H, L, L] (padding mask, plus the
        modality bias in interaction layers); shared_key [H, L, d] -> ([B, L, D], pre-softmax scores or None)."""
        batch, length, _ = hidden_states.shape
        q = self._heads(self.q_proj(hidden_states))
        k = None if self.k_proj is None else self._heads(self.k_proj(hidden_states))  # [B, H, L, d]
        if shared_key is not None:
            shared = shared_key.unsqueeze(0)  # [1, H, L, d]
            k = shared.expand(batch, -1, -1, -1) if k is None else k + shared
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


def _drop_path(hidden_states, p: float, training: bool):
    """Stochastic depth: the residual branch dropped for whole samples with probability p (DINOv2's drop_path_rate)."""
    if not training or p == 0.0:
        return hidden_states
    keep = torch.rand(hidden_states.shape[0], 1, 1, device=hidden_states.device) >= p
    return hidden_states * keep.to(hidden_states.dtype) / (1 - p)


class MSPTLayer(nn.Module):
    """A transformer layer of the stream `stream_config` describes (its `model_type`): post-LayerNorm for BERT;
    pre-LayerNorm for the vision towers, with DINOv2's layer-scale (`layer_scale1` on the attention output,
    `layer_scale2` on the MLP output, and its stochastic depth) and ViT's dropout on both branches."""

    def __init__(self, stream_config, own_key: bool):
        super().__init__()
        c = stream_config
        kind = c.model_type
        attn_dropout = getattr(c, "attention_probs_dropout_prob", getattr(c, "attention_dropout", 0.0))
        intermediate = int(c.hidden_size * c.mlp_ratio) if kind == "dinov2" else c.intermediate_size
        self.pre_norm = kind != "bert"
        self.attention = MSPTAttention(c.hidden_size, c.num_attention_heads, attn_dropout, own_key,
                                       qkv_bias=getattr(c, "qkv_bias", True))  # fmt: skip
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = MSPTMLP(c.hidden_size, intermediate, c.hidden_act)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob if kind in ("bert", "vit") else 0.0)
        dinov2 = kind == "dinov2"
        self.layerscale_value = c.layerscale_value if dinov2 else None
        self.layer_scale1 = nn.Parameter(torch.empty(c.hidden_size)) if dinov2 else None
        self.layer_scale2 = nn.Parameter(torch.empty(c.hidden_size)) if dinov2 else None
        self.drop_path = c.drop_path_rate if dinov2 else 0.0

    def _residual(self, hidden_states, branch, scale):
        branch = self.dropout(branch) if scale is None else branch * scale
        return hidden_states + _drop_path(branch, self.drop_path, self.training)

    def forward(self, hidden_states, attention_bias, shared_key=None, return_scores=False):
        if self.pre_norm:
            attn, scores = self.attention(self.layer_norm1(hidden_states), attention_bias, shared_key, return_scores)
            hidden_states = self._residual(hidden_states, attn, self.layer_scale1)
            hidden_states = self._residual(hidden_states, self.mlp(self.layer_norm2(hidden_states)), self.layer_scale2)
        else:
            attn, scores = self.attention(hidden_states, attention_bias, shared_key, return_scores)
            hidden_states = self.layer_norm1(hidden_states + self.dropout(attn))
            hidden_states = self.layer_norm2(hidden_states + self.dropout(self.mlp(hidden_states)))
        return hidden_states, scores


class MSPTInteractionParameters(nn.Module):
    """One interaction layer's learnable key, shared by both streams, and its two modality attention biases.

    "bank" mode: one key row per position `[heads, max(Lt, Lv), head_dim]`, sliced to each stream's length, replaces
    the streams' own keys, so the attention depends on the input and the key learns (fixes D1). "reference" mode: the
    released code's `[heads, 1, head_dim]` vector broadcast over key positions, which cancels in the softmax (D1;
    ablation only). Both start from xavier_uniform_, as the reference (§2.3).

    "additive" mode: each stream keeps its own (pretrained) key projection and the bank is added to it,
    `K^m_l = W^m_K h^m + bank_l[:L_m]`, so `S^m_l = Q^m (W^m_K h^m)^T / sqrt(d) + Q^m bank_l[:L_m]^T / sqrt(d) + B^m_l`:
    content attention as in the towers plus a query-dependent term through key directions shared by the two
    modalities. The bank and both biases start at zero, so an interaction layer starts as exactly the pretrained
    layer. Why this design: the bank alone carries no content (`q_i . bank_j` depends on the input only through the
    query) and throws away the towers' trained keys; one key projection shared by both streams would discard one
    tower's key at initialisation; extra shared key slots (memory tokens) would change the map shape from `L x L`,
    which the biases and the attention distillation rely on (§2.3). Adding a shared term keeps all three: the
    pretrained content attention, a key space both streams write to (the bank's gradient is the sum of both streams'
    key gradients at each position), and `L x L` maps. A zero start does not freeze it: the gradient of the bank at
    row j is `sum_i dL/dS_ij q_i / sqrt(d)` summed over both streams, non-zero from the first step. The biases are
    kept rather than left out (the continual trainer gives them their own role and learning rate) and start at zero
    for the same reason: any non-zero start would change the pretrained layer.

    Streams with different head counts (MiniLM: 12 x 32, DINOv2-S: 6 x 64; same width): the key is stored split by the
    text stream's heads and the vision stream reads the same vector per position in model space, split by its own
    heads (`key`), just as each stream splits its own `k_proj` output. Each modality bias has its stream's heads.
    """

    def __init__(self, config: MSPTConfig):
        super().__init__()
        t, v = config.text_config, config.vision_config
        len_t, len_v = config.max_text_length, config.vision_seq_length
        self.mode = config.shared_key_mode
        rows = 1 if self.mode == "reference" else max(len_t, len_v)
        heads = t.num_attention_heads
        self.shared_key = nn.Parameter(torch.empty(heads, rows, t.hidden_size // heads))
        self.text_attention_bias = nn.Parameter(torch.empty(heads, len_t, len_t))
        self.vision_attention_bias = nn.Parameter(torch.empty(v.num_attention_heads, len_v, len_v))

    def reset_parameters(self):
        """Initialise the key and the biases: zeros in "additive" mode (the layer starts as the pretrained one),
        xavier_uniform_ otherwise (as the reference, §2.3). Uses `transformers.initialization`, which leaves tensors
        loaded from a checkpoint untouched; `MSPTPreTrainedModel._init_weights` calls it."""
        fill = init.zeros_ if self.mode == "additive" else init.xavier_uniform_
        for p in (self.shared_key, self.text_attention_bias, self.vision_attention_bias):
            fill(p)

    def key(self, length: int, heads: int) -> torch.Tensor:
        """The key for a stream of `length` positions and `heads` heads (replacing or added to its own key):
        [heads, length, width // heads]."""
        key = self.shared_key  # [H_text, rows, d_text]
        if heads != key.shape[0]:  # the same vector per position, split by this stream's heads
            rows, width = key.shape[1], key.shape[0] * key.shape[2]
            key = key.transpose(0, 1).reshape(rows, heads, width // heads).transpose(0, 1)
        return key[:, :length] if key.shape[1] > 1 else key.expand(-1, length, -1)


class MSPTEncoder(nn.Module):
    """Both streams, layer by layer, aligned at the top; the last `num_interaction_layers` layers of each stream share
    one key per layer (`shared_key`: instead of their own keys, or added to them in "additive" mode, see
    `MSPTInteractionParameters`) and add a per-modality bias (`text_attention_bias` / `vision_attention_bias`).

    `S^m_l = Q^m_l K_l^T / sqrt(d) + B^m_l + mask` (SPEC §1). The reference computes the text map as
    `(Q K + B) / sqrt(d)` and the vision map as `(Q / sqrt(d)) K + B` (§2.3); we use one form for both streams, which
    only rescales the text bias.
    """

    def __init__(self, config: MSPTConfig):
        super().__init__()
        t, v = config.text_config, config.vision_config
        n = config.num_interaction_layers
        self.num_interaction_layers = n
        keep = config.shared_key_mode == "additive"  # interaction layers keep their own key projection
        self.text_layers = nn.ModuleList(
            [MSPTLayer(t, keep or i < t.num_hidden_layers - n) for i in range(t.num_hidden_layers)]
        )
        self.vision_layers = nn.ModuleList(
            [MSPTLayer(v, keep or i < v.num_hidden_layers - n) for i in range(v.num_hidden_layers)]
        )
        self.heads = (t.num_attention_heads, v.num_attention_heads)
        self.interaction = nn.ModuleList([MSPTInteractionParameters(config) for _ in range(n)])

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
            v_key, t_key = shared.key(len_v, self.heads[1]), shared.key(len_t, self.heads[0])
            vision_states, v_scores = self.vision_layers[vi](vision_states, v_bias, v_key, return_scores)
            t_bias = text_bias + shared.text_attention_bias[:, :len_t, :len_t]
            text_states, t_scores = self.text_layers[ti](text_states, t_bias, t_key, return_scores)
            if return_scores:
                text_maps.append(t_scores)
                vision_maps.append(v_scores)
        return text_states, vision_states, text_maps, vision_maps


__all__ = ["MSPTEncoder", "MSPTInteractionParameters", "MSPTLayer", "MSPTTextEmbeddings", "MSPTVisionEmbeddings"]
