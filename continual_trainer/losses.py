"""Pure loss and coefficient functions of the continual trainer, each cited to the analysis (§) and unit-tested on
hand-computed tensors. Nothing here knows about `Trainer`."""

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------- gradient modulation (§3)
def modality_scores(text_logits, vision_logits, labels, image_mask=None):
    """s_m = Σ_i softmax(o^m_i)[y_i] over the batch (§3.1 step 2), vectorised.

    text_logits / vision_logits: [B, C] (RE) or [B, L, C] (NER); labels: [B] or [B, L] with -100 for positions that do
    not count (NER: only word starts count, D21 fixed). image_mask [B]: samples with 0 (no image) do not count in
    either score: their vision logits are only the bias, and counting them would make text look dominant (the
    reference scores every sample). Returns a tensor [2] = (s_text, s_vision), no gradient.
    """
    with torch.no_grad():
        valid = labels != -100
        if image_mask is not None:
            valid = valid & image_mask.bool().view(-1, *([1] * (labels.dim() - 1)))
        index = labels.clamp(min=0).unsqueeze(-1)
        scores = [
            (logits.float().softmax(-1).gather(-1, index).squeeze(-1) * valid).sum()
            for logits in (text_logits, vision_logits)
        ]
    return torch.stack(scores)


def modulation_coefficients(score_text, score_vision, alpha, eps=1e-12):
    """OGM-GE coefficients (§3.1 steps 3-4): ρ_v = s_v / s_t; the dominant modality gets k = 1 - tanh(α·ρ), the other 1.

    As in the reference, at exact balance (ρ_v = 1) the text branch fires (D29). When both scores are 0 (nothing was
    scored) every output is 1. Tensors in, tensors out (no host sync): returns (rho_vision, k_text, k_vision).
    """
    rho_v = score_vision / score_text.clamp_min(eps)
    vision_dominates = rho_v > 1
    one = torch.ones_like(rho_v)
    k_vision = torch.where(vision_dominates, 1 - torch.tanh(alpha * rho_v), one)
    k_text = torch.where(vision_dominates, one, 1 - torch.tanh(alpha / rho_v.clamp_min(eps)))
    # No sample counted (e.g. a step whose samples all lack an image, see `modality_scores`): no evidence, k = 1.
    empty = (score_text <= 0) & (score_vision <= 0)
    return torch.where(empty, one, rho_v), torch.where(empty, one, k_text), torch.where(empty, one, k_vision)


# ------------------------------------------------------------------------------------ attention distillation (§4)
def _poolings(pooling):
    return ("width", "height") if pooling == "both" else (pooling,)


def attention_profiles(maps, pooling="width"):
    """Pooled profiles of one modality's maps: a sequence (layers) of [B, H, L, L] (padded entries 0) ->
    [B, layers, P, H, L], P = 1 (`"width"`: sum over keys, `"height"`: over queries) or 2 (`"both"`). Padded positions
    stay 0, so profiles of different padded lengths compare after zero-padding (the trainer caches the teacher's)."""
    poolings = _poolings(pooling)
    return torch.stack([torch.stack([m.sum(dim=-1 if p == "width" else -2) for p in poolings], 1) for m in maps], 1)


def _paired_profiles(student_maps, teacher_maps, pooling):
    if len(student_maps) != len(teacher_maps):
        raise ValueError(f"{len(student_maps)} student layers but {len(teacher_maps)} teacher layers")
    return attention_profiles(student_maps, pooling), attention_profiles(teacher_maps, pooling)


def profile_distillation(student, teacher, normalisation="teacher"):
    """The loss of `attention_distillation` on pooled profiles [B, layers, P, H, L] (`attention_profiles`)."""
    s, t = student.flatten(3), teacher.flatten(3)  # [B, layers, P, H·L]
    if normalisation == "teacher":
        scale = t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        s, t = s / scale, t / scale
    else:
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    return F.relu(t - s).norm(dim=-1).mean(0).sum() / s.shape[1]  # mean over samples, sum over poolings, / layers


def attention_distillation(student_maps, teacher_maps, pooling="width", normalisation="teacher"):
    """Asymmetric pooled attention distillation (§4.4, after Pelosin et al. 2022).

    For each interaction layer and sample, pool the pre-softmax map over valid positions, then penalise
    ‖ReLU(teacher - student)‖₂: attention the teacher had and the student lost costs, attention the student adds is
    free. Mean over samples, then over layers; `pooling="both"` adds the width and height terms.

    normalisation="teacher" (default): both profiles are divided by the teacher profile's L2 norm, so the loss is
    scale-invariant and exactly asymmetric (zero whenever student >= teacher elementwise). "separate": teacher and
    student are L2-normalised separately, as in §4.4 and POD; then attention added elsewhere shrinks the student's
    normalised old entries and is penalised as if it were lost.

    student_maps / teacher_maps: sequences of [B, H, L, L] tensors, one per layer (one modality). Returns a scalar.
    Equal to `profile_distillation(attention_profiles(student_maps), attention_profiles(teacher_maps))`.
    """
    return profile_distillation(*_paired_profiles(student_maps, teacher_maps, pooling), normalisation)


def reference_attention_distillation(student_maps, teacher_maps, pooling="width"):
    """The released code's loss (§4.2): D = ReLU(a' - b'), each row of D L2-normalised, Frobenius norm of the whole
    matrix / 100, mean over layers. Its value is sqrt(#non-zero rows) / 100, so its gradient is zero (D2). Pooling
    uses our [B, H, L, L] layout over valid positions (D3, D4 fixed); the normalisation is the reference's. Ablation
    only."""
    return reference_profile_distillation(*_paired_profiles(student_maps, teacher_maps, pooling))


def reference_profile_distillation(student, teacher):
    """`reference_attention_distillation` on pooled profiles [B, layers, P, H, L] (`attention_profiles`)."""
    diff = F.relu(teacher - student).flatten(3).transpose(0, 2)  # [P, layers, B, H·L]
    return (torch.linalg.matrix_norm(F.normalize(diff, dim=-1)) / 100).sum() / student.shape[1]


# ------------------------------------------------------------------------------------------------------ baselines
def lwf_loss(student_logits, teacher_logits, temperature, valid=None):
    """Learning without Forgetting: T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the predictions.

    logits [B, C] or [B, L, C]; valid [B] or [B, L] bool selects the predictions that count (e.g. NER word starts);
    with none selected (a batch whose labels are all -100) the loss is 0 with zero gradients, not 0/0 = NaN.
    """
    log_p = F.log_softmax(student_logits / temperature, dim=-1)
    q = F.softmax(teacher_logits / temperature, dim=-1)
    kl = (q * (torch.log(q.clamp_min(1e-12)) - log_p)).sum(-1)
    if valid is None:
        return kl.mean() * temperature**2
    return kl[valid].sum() / valid.sum().clamp_min(1) * temperature**2


def ewc_penalty(params, anchors, fisher):
    """Elastic weight consolidation: ½ Σ_i F_i (θ_i - θ*_i)² over matching lists of tensors."""
    total = sum((f * (p - a).pow(2)).sum() for p, a, f in zip(params, anchors, fisher, strict=True))
    return 0.5 * total
