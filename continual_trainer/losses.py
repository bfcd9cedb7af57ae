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


# ------------------------------------------------------------- attention distillation on softmax attention (§4.4)
ATTENTION_KINDS = ("relative", "probability")


def _relative_attention(scores, valid):
    """R = exp(S - max over valid keys): each valid row's softmax numerator, p_qk / max_k' p_qk' in (0, 1], exactly
    invariant to a constant added to the row. scores [B, H, L, L] pre-softmax, valid [B, L] bool -> [B, H, L, L], 0 on
    padded keys and on padded query rows (so their scores reach neither the value nor the gradient)."""
    key = valid[:, None, None, :]
    pair = key & valid[:, None, :, None]
    top = scores.masked_fill(~key, torch.finfo(scores.dtype).min).amax(-1, keepdim=True)  # [B, H, L, 1]
    return (scores - top).masked_fill(~pair, float("-inf")).exp()


def softmax_attention_profiles(maps, valid, pooling="height", attention="relative"):
    """Pooled profiles of what one modality's attention does: a sequence (layers) of pre-softmax maps [B, H, L, L] and
    the valid positions valid [B, L] (bool; `MSPTInteractionAttentions.text_mask` / `.vision_mask`) ->
    [B, layers, P, H, L], P = 1 or 2 (`pooling="both"`: width then height). Zero at padded positions, so profiles of
    the same rows padded to different lengths agree after cutting / zero-padding the last dimension (the contract of
    `teacher_cache.TeacherProfiles`). Scores at padded entries are ignored, whatever they are.

    Softmax sees a row of scores only up to a constant, so the scores are first turned into attention:
    `attention="relative"` (default): R_qk = p_qk / max_k' p_qk' = exp(S_qk - max_k' S_qk'), the softmax numerator;
    `"probability"`: p_qk itself (softmax over the valid keys). Both are exactly invariant to a constant added to a row
    (so to one added to every bias), unlike pre-softmax scores.

    Pooling (POD, Douillard et al. 2020): `"height"` sums over queries, giving per key the attention it receives
    (for probabilities: its attention mass). It is what distinguishes which keys are attended: moving a row's attention
    to other keys (permuting the row) changes it. `"width"` sums over keys, giving per query Σ_k R_qk = 1 / max_k p_qk,
    the breadth of its attention (number of keys it effectively attends); it is blind to which keys those are (a
    permuted row keeps it), so it only complements height. Width pooling of probabilities is 1 on every valid row,
    carries nothing, and is refused.

    Why "relative" by default: a row's probabilities sum to 1, so attention a student adds to a key is taken, in
    proportion, from every other key, and ReLU(teacher - student) on probabilities charges every addition as a loss
    of the same size: on probability profiles the asymmetric loss is not asymmetric. Relative attention keeps the
    teacher's keys where they were when the student adds attention elsewhere below its row's top key, so that is free,
    while attention moved away from a key the teacher attended, or a new key overtaking the teacher's top, costs. The
    price is the other side of the same coin: raising every key to its row's top (uniform attention) is free too.
    """
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention={attention!r}; use one of {ATTENTION_KINDS}.")
    if attention == "probability" and pooling != "height":
        raise ValueError(f"pooling={pooling!r} with attention='probability': width pooling of probabilities is 1 on "
                         "every valid query row and carries nothing; use pooling='height'.")  # fmt: skip
    if pooling not in ("width", "height", "both"):
        raise ValueError(f"pooling={pooling!r}; use 'height', 'width' or 'both'.")
    valid = valid.bool()
    profiles = []
    for scores in maps:
        if scores.dim() != 4 or scores.shape[0] != valid.shape[0] or scores.shape[-1] != valid.shape[-1]:
            raise ValueError(f"maps are [B, H, L, L] and valid [B, L]; got {list(scores.shape)} and "
                             f"{list(valid.shape)}.")  # fmt: skip
        a = _relative_attention(scores, valid)
        if attention == "probability":
            a = a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
        profiles.append(torch.stack([a.sum(-1 if p == "width" else -2) for p in _poolings(pooling)], 1))
    return torch.stack(profiles, 1)


def softmax_profile_distillation(student, teacher, sample_mask=None):
    """Asymmetric distillation on profiles [B, layers, P, H, L] (`softmax_attention_profiles`): per sample, layer and
    pooling, the squared share of the teacher's attention the student lost, Σ_{h,k} ReLU(t - s)² / Σ_{h,k} t², in
    [0, 1]; attention the student has beyond the teacher's is free. Mean over samples (those with sample_mask [B] true,
    if given: e.g. `image_mask` for the vision stream; none counting gives 0 with zero gradients), then over layers,
    summed over poolings. Zero when student == teacher or student >= teacher; gradient -2 ReLU(t - s) / Σ t².

    Squared, not Σ ReLU(t - s) / Σ t: that one's gradient is 1 / Σ t on every violated entry however small the
    violation, so rounding-level differences (a cached teacher computed at another padded length) would get full-size
    gradients, which AdamW turns into full steps; here a violation's gradient shrinks with it.
    """
    lost = F.relu(teacher - student).pow(2).flatten(3).sum(-1)  # [B, layers, P]
    per = lost / teacher.pow(2).flatten(3).sum(-1).clamp_min(torch.finfo(teacher.dtype).tiny)
    if sample_mask is None:
        per = per.mean(0)
    else:
        w = sample_mask.to(per.dtype)[:, None, None]
        per = (per * w).sum(0) / w.sum().clamp_min(1)
    return per.mean(0).sum()


def softmax_attention_distillation(student_maps, teacher_maps, valid, pooling="height", attention="relative",
                                   sample_mask=None):  # fmt: skip
    """Asymmetric attention distillation on what attention does (issue 13 item 2; §4.4 with `maps=post_softmax`).

    student_maps / teacher_maps: sequences (interaction layers) of pre-softmax maps [B, H, L, L] of one modality for the
    same batch; valid [B, L] bool, the valid positions (`MSPTInteractionAttentions.text_mask` / `.vision_mask`).
    Returns a scalar: `softmax_profile_distillation` of the two `softmax_attention_profiles`.
    """
    if len(student_maps) != len(teacher_maps):
        raise ValueError(f"{len(student_maps)} student layers but {len(teacher_maps)} teacher layers")
    student = softmax_attention_profiles(student_maps, valid, pooling, attention)
    teacher = softmax_attention_profiles(teacher_maps, valid, pooling, attention)
    return softmax_profile_distillation(student, teacher, sample_mask)


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
