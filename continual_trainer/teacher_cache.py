"""The frozen teacher's pooled attention profiles, computed once per task instead of at every step.

The teacher of task k is the model at the end of task k-1 in eval mode (§4.3, D8): for a given training row its
pre-softmax maps are the same at every step of every epoch, and attention distillation only uses their pooled
profiles (`losses.attention_profiles`). `TeacherProfiles.build` runs the teacher's encoder once over the rows the
task trains on (its own rows and the interleaved replay memory, each tagged with a `row_index` column) and
`TeacherProfiles.targets` hands the batch's profiles to `ContinualTrainer.compute_loss`, which then runs no teacher
forward at all. Padded positions are zero in every profile, so a row's profile cut or zero-padded to a batch's length
is the one the teacher would give inside that batch. This was the hot spot of the MSPT step (benchmarks/RESULTS.md §1).

"The one the teacher would give" holds up to rounding: the cache was computed in other batches, at other padded lengths,
so a profile may differ from the live teacher's by an ulp. The asymmetric loss ‖ReLU(t - s)‖ turns that into a full-size
update where the student equals the teacher, as at the first step of every task: its gradient (t - s)/‖t - s‖ has unit
norm however small t - s is, while the live teacher, bitwise equal to the student there, gives exactly zero.
`snap_to_student` removes such rounding-level violations. Building the cache draws no global random numbers (dropout
masks of the training loop are the live-teacher run's).
"""

import inspect

import torch
from torch.utils.data import DataLoader

from .losses import attention_profiles

ROW_INDEX = "row_index"
ROUNDING_ULPS = 16  # a cached profile is the live teacher's to within this many ulps of the teacher profile's norm
ENTRY_ULPS = 64  # ... of an entry, for profiles of post-softmax attention (sums of positive terms)


def _fit(profiles: torch.Tensor, length: int) -> torch.Tensor:
    """Cut or zero-pad the last dimension to `length`."""
    if profiles.shape[-1] >= length:
        return profiles[..., :length]
    return torch.nn.functional.pad(profiles, (0, length - profiles.shape[-1]))


def _concat(chunks: list[torch.Tensor]) -> torch.Tensor:
    length = max(c.shape[-1] for c in chunks)
    return torch.cat([_fit(c, length) for c in chunks])


class TeacherProfiles:
    """Per-row teacher profiles `[rows, layers, P, heads, L]` for the text and the vision stream (P: poolings)."""

    def __init__(self, text: torch.Tensor, vision: torch.Tensor):
        self.text, self.vision = text, vision

    @classmethod
    def build(cls, teacher, dataset, collator, profiles, batch_size: int, device) -> "TeacherProfiles":
        """Run `teacher`'s encoder over `dataset` in order (row i of the result is row i of `dataset`). `profiles`: a
        pooling name (the pre-softmax profiles of `losses.attention_profiles`) or a function of the encoder's
        `interaction_attentions` giving the (text, vision) profiles."""
        # A private generator: iterating a DataLoader draws its base seed from the global RNG otherwise.
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator, generator=torch.Generator())
        return cls.from_batches(teacher, loader, profiles, device)

    @classmethod
    @torch.no_grad()
    def from_batches(cls, teacher, batches, profiles, device) -> "TeacherProfiles":
        """Profiles of the rows of `batches` (collated model inputs; other keys are ignored), in order. `profiles` as in
        `build`."""
        if isinstance(profiles, str):
            pooling = profiles

            def profiles(maps):
                return attention_profiles(maps.text, pooling), attention_profiles(maps.vision, pooling)

        encoder = teacher.base_model
        accepted = set(inspect.signature(encoder.forward).parameters)
        text, vision = [], []
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k in accepted}
            t, v = profiles(encoder(**inputs, output_interaction_attentions=True).interaction_attentions)
            text.append(t)
            vision.append(v)
        return cls(_concat(text), _concat(vision))

    def gather(self, rows: torch.Tensor, text_length: int, vision_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The profiles of `rows`, fitted to the batch's padded text and vision lengths."""
        rows = rows.to(self.text.device)
        return _fit(self.text[rows], text_length), _fit(self.vision[rows], vision_length)

    def targets(self, rows: torch.Tensor, student_text: torch.Tensor, student_vision: torch.Tensor,
                rounding: str = "norm"):
        """The profiles of `rows` as distillation targets of the student's profiles: fitted to their lengths, with
        rounding-level differences removed (`snap_to_student`, `rounding` as there)."""
        text, vision = self.gather(rows, student_text.shape[-1], student_vision.shape[-1])
        return snap_to_student(text, student_text, rounding), snap_to_student(vision, student_vision, rounding)

    @property
    def nbytes(self) -> int:
        return self.text.nbytes + self.vision.nbytes


def snap_to_student(teacher: torch.Tensor, student: torch.Tensor, rounding: str = "norm") -> torch.Tensor:
    """Cached teacher profiles [B, layers, P, H, L] with every entry within rounding of the student's replaced by the
    student's (detached), so that the loss sees no violation there, as with the live teacher (module docstring).
    Rounding, `"norm"`: `ROUNDING_ULPS` ulps of the profile's norm over H·L, the scale the pre-softmax losses divide
    by (their entries are sums of scores of both signs, whose rounding follows the summands, not the sum). `"entry"`:
    `ENTRY_ULPS` ulps of the entry itself, for profiles that are sums of positive attention (`softmax_attention_
    profiles`): there the norm would be far coarser than an entry's rounding and would snap real differences."""
    student = student.detach()
    eps = torch.finfo(teacher.dtype).eps
    if rounding == "entry":
        tolerance = ENTRY_ULPS * eps * torch.maximum(teacher.abs(), student.abs())
    else:
        tolerance = ROUNDING_ULPS * eps * teacher.flatten(3).norm(dim=-1)[..., None, None]  # [B, layers, P, 1, 1]
    return torch.where((teacher - student).abs() <= tolerance, student, teacher)
