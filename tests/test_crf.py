"""The CRF against brute-force enumeration of every tag path, and the NER head's use of it on word starts."""

import itertools

import pytest
import torch

from conftest import NER_LABELS, make_config, make_inputs
from modeling_mspt import MSPTCRF, MSPTForTokenClassification


def brute_force(crf, emissions, length):
    """log Z and the best path for one sequence of `length` steps, by enumerating all num_tags ** length paths."""
    scores = {}
    for path in itertools.product(range(crf.num_tags), repeat=length):
        s = crf.start_transitions[path[0]] + crf.end_transitions[path[-1]]
        s = s + sum(emissions[t, path[t]] for t in range(length))
        s = s + sum(crf.transitions[path[t - 1], path[t]] for t in range(1, length))
        scores[path] = s
    log_z = torch.logsumexp(torch.stack(list(scores.values())), dim=0)
    return log_z, scores, max(scores, key=lambda p: scores[p].item())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_likelihood_and_viterbi_match_enumeration(seed):
    g = torch.Generator().manual_seed(seed)
    crf = MSPTCRF(3)
    with torch.no_grad():
        for p in crf.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    lengths = [4, 2, 1, 3]
    steps = max(lengths)
    emissions = torch.randn(len(lengths), steps, 3, generator=g)
    mask = torch.arange(steps).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    tags = torch.randint(0, 3, (len(lengths), steps), generator=g)
    llh = crf.log_likelihood(emissions, tags, mask)
    decoded = crf.decode(emissions, mask)
    for b, n in enumerate(lengths):
        log_z, scores, best = brute_force(crf, emissions[b], n)
        expected = scores[tuple(tags[b, :n].tolist())] - log_z
        torch.testing.assert_close(llh[b], expected, atol=1e-5, rtol=1e-5)
        assert tuple(decoded[b, :n].tolist()) == best
        assert (decoded[b, n:] == 0).all()


def test_empty_sequence_has_zero_log_likelihood_and_gradients_flow():
    crf = MSPTCRF(4)
    emissions = torch.randn(2, 5, 4, requires_grad=True)
    mask = torch.tensor([[True] * 5, [False] * 5])
    llh = crf.log_likelihood(emissions, torch.zeros(2, 5, dtype=torch.long), mask)
    assert llh[1] == 0 and llh[0] < 0
    llh.sum().backward()
    assert emissions.grad[0].abs().sum() > 0 and (emissions.grad[1] == 0).all()
    assert crf.transitions.grad.abs().sum() > 0


def test_ner_head_decodes_only_word_starts():
    torch.manual_seed(0)
    config = make_config(NER_LABELS)
    model = MSPTForTokenClassification(config).eval()
    inputs = make_inputs(config)
    word_start_mask = torch.tensor([[0, 1, 0, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]])
    out = model(**inputs, word_start_mask=word_start_mask)
    assert (out.tags[word_start_mask == 0] == -100).all()
    for b in range(2):
        positions = word_start_mask[b].nonzero().squeeze(1)
        _, _, best = brute_force(model.crf, out.logits[b, positions].detach(), len(positions))
        assert out.tags[b, positions].tolist() == list(best)


@pytest.mark.parametrize("seed", [0, 1])
def test_marginals_match_enumeration(seed):
    g = torch.Generator().manual_seed(seed)
    crf = MSPTCRF(3)
    with torch.no_grad():
        for p in crf.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    lengths = [4, 1, 3, 0]
    emissions = torch.randn(len(lengths), 4, 3, generator=g)
    mask = torch.arange(4).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    marginals = crf.marginals(emissions, mask)
    for b, n in enumerate(lengths):
        expected = torch.zeros(4, 3)
        if n:
            log_z, scores, _ = brute_force(crf, emissions[b], n)
            for path, score in scores.items():
                expected[torch.arange(n), torch.tensor(path)] += (score - log_z).exp()
        torch.testing.assert_close(marginals[b], expected, atol=1e-5, rtol=1e-5)
