"""Pure loss and coefficient functions on hand-computed tensors (no Trainer)."""

import math

import pytest
import torch

from continual_trainer import (
    attention_distillation,
    continual_summary,
    entity_scores,
    ewc_penalty,
    lwf_loss,
    modality_scores,
    modulation_coefficients,
    reference_attention_distillation,
    relation_scores,
)


def test_modality_scores_sum_gold_probabilities_and_skip_ignored():
    text = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]))
    vision = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]]))
    scores = modality_scores(text, vision, torch.tensor([0, 1, -100]))
    torch.testing.assert_close(scores, torch.tensor([0.7 + 0.8, 0.5 + 0.2]))
    # NER layout [B, L, C] with -100 off word starts
    scores = modality_scores(text.unsqueeze(0), vision.unsqueeze(0), torch.tensor([[2, -100, 0]]))
    torch.testing.assert_close(scores, torch.tensor([0.1 + 0.3, 0.25 + 0.9]))


@pytest.mark.parametrize(
    "s_text, s_vision, alpha, k_text, k_vision",
    [
        (2.0, 3.0, 0.1, 1.0, 1 - math.tanh(0.1 * 1.5)),  # vision dominates: k_v = 1 - tanh(α ρ_v)
        (4.0, 1.0, 0.3, 1 - math.tanh(0.3 * 4.0), 1.0),  # text dominates: k_t = 1 - tanh(α / ρ_v)
        (2.0, 2.0, 0.1, 1 - math.tanh(0.1), 1.0),  # balance: the text branch fires, as in the reference (D29)
    ],
)
def test_modulation_coefficients_follow_the_formula(s_text, s_vision, alpha, k_text, k_vision):
    rho, kt, kv = modulation_coefficients(torch.tensor(s_text), torch.tensor(s_vision), alpha)
    assert rho.item() == pytest.approx(s_vision / s_text)
    assert kt.item() == pytest.approx(k_text) and kv.item() == pytest.approx(k_vision)


def _maps(seed, shape=(2, 3, 5, 5)):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=g) + 0.5 for _ in range(2)]


def test_asymmetric_distillation_is_zero_positive_zero():
    teacher = _maps(0)
    assert attention_distillation(teacher, teacher).item() == 0
    lost = [t.clone() for t in teacher]
    lost[0][0, 1, 2, :] -= 0.4  # the student lost attention the teacher had (query row 2, head 1, sample 0)
    assert attention_distillation(lost, teacher).item() > 1e-3
    added = [t.clone() for t in teacher]
    added[1][1, 0, :, 3] += 0.7  # the student only adds attention
    assert attention_distillation(added, teacher).item() == 0
    scaled = attention_distillation([2 * t for t in lost], [2 * t for t in teacher])
    torch.testing.assert_close(scaled, attention_distillation(lost, teacher))  # invariant to the maps' overall scale
    # Separate normalisation (POD, §4.4) counts added attention elsewhere as lost: the reason for the default.
    assert attention_distillation(added, teacher, normalisation="separate").item() > 1e-3


@pytest.mark.parametrize("pooling", ["width", "height", "both"])
def test_distillation_gradients_asymmetric_nonzero_reference_zero(pooling):
    teacher = _maps(1)
    student = [t.detach().clone().requires_grad_(True) for t in _maps(2)]
    attention_distillation(student, teacher, pooling).backward()
    assert sum(s.grad.abs().sum() for s in student) > 1e-3
    student = [s.detach().clone().requires_grad_(True) for s in student]
    value = reference_attention_distillation(student, teacher, pooling)
    value.backward()
    assert value.item() > 0
    assert max(s.grad.abs().max() for s in student) < 1e-6  # D2: the released loss has no gradient


def test_lwf_is_zero_for_identical_logits_and_positive_otherwise():
    logits = torch.randn(4, 6)
    assert lwf_loss(logits, logits, 2.0).item() == pytest.approx(0, abs=1e-6)
    assert lwf_loss(logits, logits.flip(-1), 2.0).item() > 0
    valid = torch.tensor([[True, False], [False, False]])
    seq = torch.randn(2, 2, 3)
    other = seq.clone()
    other[0, 1] += 5  # an ignored position
    assert lwf_loss(seq, other, 1.0, valid).item() == pytest.approx(0, abs=1e-6)


def test_ewc_penalty_by_hand():
    p, a, f = [torch.tensor([1.0, 2.0])], [torch.tensor([0.0, 2.5])], [torch.tensor([2.0, 4.0])]
    assert ewc_penalty(p, a, f).item() == pytest.approx(0.5 * (2 * 1 + 4 * 0.25))


def test_relation_scores_by_hand():
    # gold: 0 is None. Predictions: 2 correct non-None, 1 wrong non-None, 1 None missed.
    scores = relation_scores([1, 2, 3, 0, 0], [1, 2, 2, 3, 0], none_id=0)
    precision, recall = 2 / 3, 2 / 4
    assert scores["precision"] == pytest.approx(precision) and scores["recall"] == pytest.approx(recall)
    assert scores["micro_f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert relation_scores([0, 0], [0, 0], none_id=0)["micro_f1"] == 0.0


def test_entity_scores_with_type_filter():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "X"]]  # X is outside BIO: counts as O
    assert entity_scores(pred, gold)["precision"] == pytest.approx(1.0)
    assert entity_scores(pred, gold)["recall"] == pytest.approx(2 / 3)
    assert entity_scores(pred, gold, types={"PER"})["f1"] == pytest.approx(1.0)
    assert entity_scores(pred, gold, types={"LOC"})["f1"] == 0.0


def test_continual_summary_by_hand():
    matrix = [[0.9], [0.6, 0.8], [0.5, 0.7, 0.9]]
    summary = continual_summary(matrix, [0.9, 0.7, 0.6])
    assert summary["final_average"] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert summary["average_incremental"] == pytest.approx((0.9 + 0.7 + 0.6) / 3)
    assert summary["forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert summary["bwt"] == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)


def test_samples_without_image_do_not_count_in_modality_scores():
    text = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]))
    vision = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]]))
    scores = modality_scores(text, vision, torch.tensor([0, 1, 2]), image_mask=torch.tensor([1, 0, 1]))
    torch.testing.assert_close(scores, torch.tensor([0.7 + 0.4, 0.5 + 0.05]))
    ner = modality_scores(text.unsqueeze(0), vision.unsqueeze(0), torch.tensor([[2, -100, 0]]), torch.tensor([0]))
    assert ner.tolist() == [0.0, 0.0]
    # nothing scored (every sample without an image): no evidence, no modulation
    rho, k_text, k_vision = modulation_coefficients(ner[0], ner[1], 0.3)
    assert (rho.item(), k_text.item(), k_vision.item()) == (1.0, 1.0, 1.0)
