"""Property tests of the softmax attention distillation (issue 13, item 2): `softmax_attention_profiles`,
`softmax_profile_distillation`, `softmax_attention_distillation` in continual_trainer/losses.py.

Maps are random [B, H, L, L] pre-softmax scores with padding (one sample padded at the end, one with holes in the
middle, as absent object crops give), entries with a padded query or key 0 as the model returns them. The comments
"old loss" give what the pre-softmax `profile_distillation(attention_profiles(...))` (default width pooling) gives on
the same tensors, to show what each test catches.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import make_config, make_inputs
from continual_trainer.losses import (
    attention_profiles,
    profile_distillation,
    softmax_attention_distillation,
    softmax_attention_profiles,
    softmax_profile_distillation,
)
from modeling_mspt import MSPTModel

B, H, L, D, LAYERS = 3, 4, 7, 8, 2
# (attention, pooling) pairs that are allowed; "probability" has only height (width of probabilities is 1).
KINDS = [("relative", "height"), ("relative", "both"), ("probability", "height")]


def _valid(length=L):
    valid = torch.zeros(B, length, dtype=torch.bool)
    valid[0, :L] = True
    valid[1, :4] = True
    valid[2, [0, 1, 3, 5]] = True  # holes: absent crops in the middle
    return valid


def _pair(valid):
    return (valid[:, :, None] & valid[:, None, :])[:, None]  # [B, 1, L, L]


def _maps(seed, valid, scale=3.0, garbage=False):
    """LAYERS random score maps; padded entries 0 (as the model returns them) or random garbage."""
    g, junk = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1000)
    length = valid.shape[1]
    out = []
    for _ in range(LAYERS):
        s = scale * torch.randn(B, H, length, length, generator=g)
        filler = 100 * torch.randn(s.shape, generator=junk) if garbage else torch.zeros_like(s)
        out.append(torch.where(_pair(valid), s, filler))
    return out


def _loss(student, teacher, valid, attention="relative", pooling="height"):
    return softmax_attention_distillation(student, teacher, valid, pooling, attention)


def _old(student, teacher):
    return profile_distillation(attention_profiles(student), attention_profiles(teacher))


def test_hand_computed_profiles_and_loss():
    # One sample, one head, L = 3, the last position padded. Row 0 scores (0, ln 2) -> R = (1/2, 1), row 1 (0, ln 4)
    # -> R = (1/4, 1). Width (per query): (3/2, 5/4, 0); height (per key): (3/4, 2, 0).
    valid = torch.tensor([[True, True, False]])
    s = torch.tensor([[[[0.0, math.log(2), 0.0], [0.0, math.log(4), 0.0], [0.0, 0.0, 0.0]]]])
    p = softmax_attention_profiles([s], valid, "both")
    torch.testing.assert_close(p, torch.tensor([[[[[1.5, 1.25, 0.0]], [[0.75, 2.0, 0.0]]]]]))
    # Probabilities: rows (1/3, 2/3), (1/5, 4/5) -> mass received per key (8/15, 22/15, 0).
    prob = softmax_attention_profiles([s], valid, "height", "probability")
    torch.testing.assert_close(prob, torch.tensor([[[[[8 / 15, 22 / 15, 0.0]]]]]))
    # Student height (1, 1, 0): lost 1 on key 1 -> 1² / (3/4)² + 2²) = 16/73; key 0 gained 1/4, free.
    student = torch.tensor([[[[[1.0, 1.0, 0.0]]]]])
    torch.testing.assert_close(softmax_profile_distillation(student, p[:, :, 1:]), torch.tensor(16 / 73))


@pytest.mark.parametrize("attention,pooling", KINDS)
def test_zero_when_student_equals_teacher(attention, pooling):
    valid = _valid()
    maps = _maps(0, valid)
    assert torch.equal(_loss(maps, [m.clone() for m in maps], valid, attention, pooling), torch.tensor(0.0))


@pytest.mark.parametrize("attention,pooling", KINDS)
def test_exactly_invariant_to_a_constant_added_to_a_row(attention, pooling):
    valid = _valid()
    teacher, student = _maps(1, valid), _maps(2, valid)
    g = torch.Generator().manual_seed(3)
    shifted = [torch.where(_pair(valid), s + 20 * torch.randn(B, H, L, 1, generator=g), 0.0) for s in student]
    before = _loss(student, teacher, valid, attention, pooling)
    after = _loss(shifted, teacher, valid, attention, pooling)
    assert before > 0.05
    assert (after - before).abs() <= 1e-6
    a, b = (softmax_attention_profiles(m, valid, pooling, attention) for m in (student, shifted))
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    # old loss: 0.76 before, 9.04 after: it charges a change the attention does not see.


def _scores_from_leaves(seed, valid, bias_shift=0.0):
    """S = Q K^T / sqrt(d) + B + mask from leaf tensors, as MSPTAttention builds it in an interaction layer (one
    shared key [H, L, d] for every sample, a bias [H, L, L]); padded entries set to 0 as the model returns them."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(LAYERS, B, H, L, D, generator=g).requires_grad_()
    k = torch.randn(LAYERS, H, L, D, generator=g).requires_grad_()
    b = torch.randn(LAYERS, H, L, L, generator=g).requires_grad_()
    mask = (~valid)[:, None, None, :] * torch.finfo(torch.float32).min
    maps = [
        (q[i] @ k[i].transpose(-1, -2) / math.sqrt(D) + (b[i] + bias_shift) + mask).masked_fill(~_pair(valid), 0.0)
        for i in range(LAYERS)
    ]
    return maps, (q, k, b)


@pytest.mark.parametrize("attention,pooling", KINDS)
def test_exactly_invariant_to_a_constant_added_to_every_bias(attention, pooling):
    valid = _valid()
    teacher = [m.detach() for m in _scores_from_leaves(4, valid)[0]]
    before = _loss(_scores_from_leaves(5, valid)[0], teacher, valid, attention, pooling)
    after = _loss(_scores_from_leaves(5, valid, bias_shift=7.0)[0], teacher, valid, attention, pooling)
    assert before > 0.05
    assert (after - before).abs() <= 1e-6
    # old loss: 0.96 before, 0.0 after: one positive constant on every bias switches it off, logits unchanged.


def _add_where_teacher_had_little(teacher, valid):
    """In every valid row, raise the valid key the teacher attended least halfway up to the row's top score."""
    out = []
    for t in teacher:
        masked = t.masked_fill(~valid[:, None, None, :], float("inf"))
        low = masked.argmin(-1, keepdim=True)  # [B, H, L, 1]
        top = t.masked_fill(~valid[:, None, None, :], float("-inf")).amax(-1, keepdim=True)
        raised = t.gather(-1, low) + 0.5 * (top - t.gather(-1, low))
        out.append(torch.where(_pair(valid), t.scatter(-1, low, raised), 0.0))
    return out


def test_adding_attention_where_the_teacher_had_little_is_free():
    valid = _valid()
    teacher = _maps(6, valid)
    student = _add_where_teacher_had_little(teacher, valid)
    probs = [F.softmax(s.masked_fill(~valid[:, None, None, :], float("-inf")), -1) for s in (teacher[0], student[0])]
    gained = (probs[1] - probs[0]).nan_to_num().amax()
    assert gained > 0.05  # the student really added attention
    for pooling in ("height", "width", "both"):
        assert torch.equal(_loss(student, teacher, valid, "relative", pooling), torch.tensor(0.0)), pooling
    # Probabilities sum to 1 per row: what was added was taken from every other key, so the asymmetric loss on
    # probability profiles charges it (this is why "relative" is the default).
    assert _loss(student, teacher, valid, "probability", "height") > 2e-4  # squared share lost: 1.3e-3 here
    # old loss: 0.0 here too, but it also gives 0 when every score rises, attended keys included.


def test_moving_attention_away_from_attended_keys_is_penalised():
    valid = _valid()
    teacher = _maps(7, valid, scale=4.0)
    student = [t.clone() for t in teacher]
    # Sample 2 (holes), head 1, query 3: roll its valid scores by one valid key.
    keys = valid[2].nonzero().squeeze(1)
    student[0][2, 1, 3, keys] = teacher[0][2, 1, 3, keys.roll(1)]
    p_t, p_s = (F.softmax(m[0][2, 1, 3, keys], -1) for m in (teacher, student))
    assert (p_t - p_s).abs().max() > 0.1  # the attention of that row changed
    assert _loss(student, teacher, valid, "relative", "height") > 1e-3
    assert _loss(student, teacher, valid, "relative", "both") > 1e-3
    assert _loss(student, teacher, valid, "probability", "height") > 1e-3
    # Width pooling alone (1 / max p per query) does not see which keys are attended: blind to the permutation.
    assert _loss(student, teacher, valid, "relative", "width") <= 1e-6
    # old loss: 0.0 here (the width-pooled sum of a row's scores is permutation invariant).


@pytest.mark.parametrize("attention,pooling", KINDS)
def test_gradients_reach_queries_key_and_biases(attention, pooling):
    valid = _valid()
    teacher = [m.detach() for m in _scores_from_leaves(8, valid)[0]]
    student, leaves = _scores_from_leaves(9, valid)
    for s in student:
        s.retain_grad()
    _loss(student, teacher, valid, attention, pooling).backward()
    for name, leaf in zip(("queries", "key", "biases"), leaves):
        assert leaf.grad is not None and leaf.grad.abs().amax() > 1e-4, name
    for s in student:
        padded = ~_pair(valid).expand_as(s)
        assert torch.equal(s.grad[padded], torch.zeros_like(s.grad[padded]))  # padded scores get no gradient
        # Blind to a row constant, so the gradient has no component along one: each row's gradient sums to 0.
        assert s.grad.sum(-1).abs().max() <= 1e-6
    assert leaves[2].grad.sum(-1).abs().max() <= 1e-6  # no push on a common bias shift


@pytest.mark.parametrize("attention,pooling", KINDS)
def test_padded_positions_do_not_influence_the_loss(attention, pooling):
    valid = _valid()
    clean_t, clean_s = _maps(10, valid), _maps(11, valid)
    dirty_t, dirty_s = _maps(10, valid, garbage=True), _maps(11, valid, garbage=True)
    assert not torch.equal(clean_s[0], dirty_s[0])
    clean = _loss(clean_s, clean_t, valid, attention, pooling)
    assert torch.equal(clean, _loss(dirty_s, dirty_t, valid, attention, pooling))
    profiles = softmax_attention_profiles(dirty_s, valid, pooling, attention)
    assert torch.equal(profiles, softmax_attention_profiles(clean_s, valid, pooling, attention))
    padded = (~valid)[:, None, None, None, :].expand_as(profiles)
    assert torch.equal(profiles[padded], torch.zeros_like(profiles[padded]))  # zero on padded positions


@pytest.mark.parametrize("attention,pooling", KINDS)
def test_cached_profiles_compare_across_padded_lengths(attention, pooling):
    """The teacher cache's contract: a row's profile computed at padded length L + 3, cut to L, is the one computed at
    L; computed at L and zero-padded to L + 3, it is the one computed at L + 3."""
    valid, longer = _valid(), _valid(L + 3)
    short_maps = _maps(12, valid)
    long_maps = [F.pad(m, (0, 3, 0, 3)) for m in short_maps]
    g = torch.Generator().manual_seed(13)
    long_maps = [torch.where(_pair(longer), m, 50 * torch.randn(m.shape, generator=g)) for m in long_maps]
    short = softmax_attention_profiles(short_maps, valid, pooling, attention)
    long = softmax_attention_profiles(long_maps, longer, pooling, attention)
    assert long.shape[-1] == L + 3
    torch.testing.assert_close(long[..., :L], short, rtol=0, atol=1e-6)
    torch.testing.assert_close(F.pad(short, (0, 3)), long, rtol=0, atol=1e-6)
    # The loss against cached (longer) teacher profiles cut to the batch's length is the live one.
    student = _maps(14, valid)
    live = _loss(student, short_maps, valid, attention, pooling)
    cached = softmax_profile_distillation(softmax_attention_profiles(student, valid, pooling, attention), long[..., :L])
    assert (live - cached).abs() <= 1e-6


def test_sample_mask_and_argument_errors():
    valid = _valid()
    teacher, student = _maps(15, valid), _maps(16, valid)
    s, t = (softmax_attention_profiles(m, valid) for m in (student, teacher))
    keep = torch.tensor([True, False, True])
    torch.testing.assert_close(softmax_profile_distillation(s, t, keep), softmax_profile_distillation(s[keep], t[keep]))
    none = softmax_profile_distillation(s.requires_grad_(), t, torch.zeros(B, dtype=torch.bool))
    none.backward()
    assert none == 0 and torch.equal(s.grad, torch.zeros_like(s))
    with pytest.raises(ValueError, match="width pooling of probabilities"):
        softmax_attention_profiles(student, valid, "both", "probability")
    with pytest.raises(ValueError, match="attention="):
        softmax_attention_profiles(student, valid, "height", "logits")
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        softmax_attention_profiles(student, valid[:, :5])


def test_model_maps_a_constant_on_every_bias_changes_nothing():
    """On the tiny MSPT model: adding 5 to every interaction-layer attention bias leaves the states unchanged; the
    loss between the shifted model (student) and the original (teacher) stays at rounding level, with the masks the
    model returns (`interaction_attentions.text_mask` / `.vision_mask`)."""
    config = make_config(num_interaction_layers=2)
    torch.manual_seed(0)
    teacher = MSPTModel(config).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for layer in student.encoder.interaction:
            layer.text_attention_bias.add_(5.0)
            layer.vision_attention_bias.add_(5.0)
        inputs = make_inputs(config)
        t, s = (m(**inputs, output_interaction_attentions=True) for m in (teacher, student))
    torch.testing.assert_close(s.text_last_hidden_state, t.text_last_hidden_state, rtol=0, atol=1e-4)
    a, b = s.interaction_attentions, t.interaction_attentions
    assert not a.text_mask.all()  # one padded sample
    for maps_s, maps_t, valid in ((a.text, b.text, a.text_mask), (a.vision, b.vision, a.vision_mask)):
        for attention, pooling in KINDS:
            assert softmax_attention_distillation(maps_s, maps_t, valid, pooling, attention) <= 1e-6
        assert _old(maps_s, maps_t) == 0  # old loss: switched off by the shift
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        other.encoder.text_layers[0].attention.q_proj.weight.mul_(-1.0)  # a change attention does see
        c = other(**inputs, output_interaction_attentions=True).interaction_attentions
    assert softmax_attention_distillation(c.text, b.text, c.text_mask) > 1e-5  # squared share lost
