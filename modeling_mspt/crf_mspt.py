"""A linear-chain CRF, vectorised over the batch and the tags (the reference uses torchcrf, reference notes §2.4).

Sequences are given with a left-aligned boolean mask: position t of sample b is real iff `mask[b, t]`, and the real
positions of a sample come first. A sample with no real position has log-likelihood 0 and an empty path.
"""

import torch
from torch import nn


class MSPTCRF(nn.Module):
    def __init__(self, num_tags: int):
        super().__init__()
        self.num_tags = num_tags
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))  # [from, to]
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.uniform_(self.start_transitions, -0.1, 0.1)
        nn.init.uniform_(self.end_transitions, -0.1, 0.1)
        nn.init.uniform_(self.transitions, -0.1, 0.1)

    def log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p(tags | emissions) per sample.

        emissions [B, T, C] float, tags [B, T] long (any value where masked), mask [B, T] bool left-aligned -> [B].
        """
        return self._path_score(emissions, tags, mask) - self._log_partition(emissions, mask)

    def _path_score(self, emissions, tags, mask):
        tags = tags.masked_fill(~mask, 0)
        maskf = mask.to(emissions.dtype)
        lengths = mask.sum(dim=1)  # [B]
        has_any = (lengths > 0).to(emissions.dtype)
        emit = emissions.gather(2, tags.unsqueeze(-1)).squeeze(-1)  # [B, T]
        score = (emit * maskf).sum(dim=1)
        score = score + self.start_transitions[tags[:, 0]] * has_any
        trans = self.transitions[tags[:, :-1], tags[:, 1:]]  # [B, T-1]
        score = score + (trans * maskf[:, 1:]).sum(dim=1)
        last = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        return score + self.end_transitions[last] * has_any

    def _log_partition(self, emissions, mask):
        alpha = self.start_transitions + emissions[:, 0]  # [B, C]
        for t in range(1, emissions.shape[1]):
            step = torch.logsumexp(alpha.unsqueeze(2) + self.transitions + emissions[:, t].unsqueeze(1), dim=1)
            alpha = torch.where(mask[:, t].unsqueeze(1), step, alpha)
        log_z = torch.logsumexp(alpha + self.end_transitions, dim=1)
        return log_z * mask[:, 0].to(emissions.dtype)

    @torch.no_grad()
    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """p(tag_t = c | emissions) by forward-backward: emissions [B, T, C], mask [B, T] left-aligned -> [B, T, C]
        (each real step sums to 1; 0 where masked)."""
        batch, steps, _ = emissions.shape
        end = self.end_transitions.expand(batch, -1)
        alphas = [self.start_transitions + emissions[:, 0]]  # log-sum over paths ending in c at t
        for t in range(1, steps):
            step = torch.logsumexp(alphas[-1].unsqueeze(2) + self.transitions + emissions[:, t].unsqueeze(1), dim=1)
            alphas.append(torch.where(mask[:, t].unsqueeze(1), step, alphas[-1]))
        betas = [end]  # log-sum over the continuations from c at t; the last real step sees only the end transition
        for t in range(steps - 2, -1, -1):
            step = torch.logsumexp(self.transitions + (emissions[:, t + 1] + betas[-1]).unsqueeze(1), dim=2)
            betas.append(torch.where(mask[:, t + 1].unsqueeze(1), step, end))
        alpha, beta = torch.stack(alphas, dim=1), torch.stack(betas[::-1], dim=1)  # [B, T, C]
        log_z = torch.logsumexp(alphas[-1] + self.end_transitions, dim=1)  # alphas carry over padded steps
        return (alpha + beta - log_z[:, None, None]).exp() * mask.unsqueeze(-1).to(emissions.dtype)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Viterbi paths: emissions [B, T, C], mask [B, T] left-aligned -> tags [B, T] long (0 where masked)."""
        batch, steps, _ = emissions.shape
        score = self.start_transitions + emissions[:, 0]  # [B, C]
        backpointers = []
        for t in range(1, steps):
            candidates = score.unsqueeze(2) + self.transitions  # [B, from, to]
            best, best_from = candidates.max(dim=1)
            step = best + emissions[:, t]
            valid = mask[:, t].unsqueeze(1)
            score = torch.where(valid, step, score)
            # A finished sequence keeps its own tag at padded steps, so the backtrack passes through unchanged.
            keep = torch.arange(self.num_tags, device=emissions.device).expand(batch, -1)
            backpointers.append(torch.where(valid, best_from, keep))
        tag = (score + self.end_transitions).argmax(dim=1)  # [B]
        path = [tag]
        for pointers in reversed(backpointers):
            tag = pointers.gather(1, tag.unsqueeze(1)).squeeze(1)
            path.append(tag)
        path = torch.stack(path[::-1], dim=1)
        return path.masked_fill(~mask, 0)


__all__ = ["MSPTCRF"]
