"""The trainer's loss terms against their definitions: the per-task teacher cache gives the live teacher's
distillation loss, LwF distils the previously seen labels only, EWC's Fisher is per example, and the NER teacher
skips its Viterbi decode."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import tiny_args, tiny_setup
from continual_trainer import ContinualTrainer, MSPTDataCollator, lwf_loss
from continual_trainer.teacher_cache import ROW_INDEX, TeacherProfiles


def _trainer(benchmark, tmp_path, strategy, **kwargs):
    model, processor = tiny_setup(benchmark)
    trainer = ContinualTrainer(model=model, args=tiny_args(tmp_path, strategy, **kwargs), processing_class=processor)
    trainer.benchmark = benchmark
    trainer.data_collator = MSPTDataCollator(processor, benchmark.task_type)
    return trainer


def _diverge(trainer):
    """Frozen teacher = the model now; then move the student away from it (eval mode: no dropout)."""
    trainer.snapshot_teacher()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    trainer.model.eval()


@pytest.mark.parametrize("kind", ["re", "ner"])
@pytest.mark.parametrize("pooling", ["width", "both"])
def test_cached_teacher_profiles_give_the_live_teachers_loss(synthetic_benchmarks, tmp_path, kind, pooling):
    bench = synthetic_benchmarks[kind]
    trainer = _trainer(bench, tmp_path, "mspt", distillation_pooling=pooling)
    _diverge(trainer)
    dataset = bench.tasks[0].train.add_column(ROW_INDEX, np.arange(len(bench.tasks[0].train)))
    # built in batches of 32, used in batches of 5 rows: other padded lengths than at build time
    pooled = trainer.components["distillation"].pooled  # what the distillation compares (default: attention)
    profiles = TeacherProfiles.build(trainer.teacher, dataset, trainer.data_collator, pooled, 32, "cpu")
    rows = [dataset[i] for i in (7, 0, 33, 12, 41)]
    batch = trainer.data_collator(rows)
    assert batch[ROW_INDEX].tolist() == [7, 0, 33, 12, 41]

    distillation = trainer.components["distillation"]
    distillation.profiles = None
    live = trainer.compute_loss(trainer.model, dict(batch))
    live_term = trainer._metrics["distillation_loss"][-1]
    distillation.profiles = profiles
    teacher, trainer.teacher = trainer.teacher, _NoCall(trainer.teacher)  # the cached path runs no teacher forward
    cached = trainer.compute_loss(trainer.model, dict(batch))
    trainer.teacher = teacher
    cached_term = trainer._metrics["distillation_loss"][-1]
    assert live_term > 1e-3
    torch.testing.assert_close(cached_term, live_term, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached, live, rtol=1e-5, atol=1e-6)


class _NoCall(torch.nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.inner = teacher

    def forward(self, *args, **kwargs):
        raise AssertionError("the teacher ran although its profiles are cached")


def test_a_task_caches_the_profiles_of_its_rows_and_memory(synthetic_benchmarks, tmp_path):
    bench = synthetic_benchmarks["re"]
    trainer = _trainer(bench, tmp_path, "mspt")
    trainer.train_tasks(bench)
    replay = trainer.components["replay"]
    rows = len(bench.tasks[2].train) + len(replay.memory_dataset()) - len(trainer.memory.indices.get(2, []))
    assert trainer.components["distillation"].profiles.text.shape[0] == rows  # task 3's rows and the memory of 1-2
    off = _trainer(bench, tmp_path / "off", "mspt", cache_teacher_attention=False)
    off.train_tasks(bench)
    assert off.components["distillation"].profiles is None


def test_lwf_distils_the_previously_seen_labels_only(synthetic_benchmarks, tmp_path):
    bench = synthetic_benchmarks["re"]
    trainer = _trainer(bench, tmp_path, "lwf")
    _diverge(trainer)
    lwf = trainer.components["lwf"]
    lwf.before_task(bench.tasks[1], None)
    old = {bench.label_names[0], *bench.seen_labels(0)}
    assert [bench.label_names[i] for i in lwf.old_labels.tolist()] == [n for n in bench.label_names if n in old]
    batch = trainer.data_collator([bench.tasks[1].train[i] for i in range(8)])
    trainer.compute_loss(trainer.model, dict(batch))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        student, teacher = trainer.model(**inputs).logits, trainer.teacher(**inputs).logits
    expected = lwf_loss(student[:, lwf.old_labels], teacher[:, lwf.old_labels], 2.0)
    torch.testing.assert_close(trainer._metrics["lwf_loss"][-1], expected)
    assert not torch.allclose(expected, lwf_loss(student, teacher, 2.0))
    lwf.before_task(bench.tasks[0], None)
    assert lwf.old_labels is None


def test_ewc_fisher_is_the_mean_of_per_example_squared_gradients(synthetic_benchmarks, tmp_path):
    bench = synthetic_benchmarks["re"]
    trainer = _trainer(bench, tmp_path, "ewc", ewc_fisher_samples=100)
    rows = bench.tasks[0].train.select(range(12))
    trainer.components["ewc"].after_task(SimpleNamespace(train=rows), None)
    model = trainer.model
    params = [p for p in model.parameters() if p.requires_grad]
    per_example = [torch.zeros_like(p) for p in params]
    model.eval()
    for i in range(len(rows)):
        model.zero_grad()
        model(**trainer.data_collator([rows[i]])).loss.backward()
        for f, p in zip(per_example, params):
            if p.grad is not None:
                f.add_(p.grad**2 / len(rows))
    model.zero_grad()
    model(**trainer.data_collator([rows[i] for i in range(len(rows))])).loss.backward()
    batch_mean = [p.grad**2 if p.grad is not None else torch.zeros_like(p) for p in params]
    fisher = trainer.components["ewc"].fisher
    for f, expected in zip(fisher, per_example):
        torch.testing.assert_close(f, expected, rtol=1e-4, atol=1e-10)
    total, squared_mean = sum(f.sum() for f in fisher), sum(b.sum() for b in batch_mean)
    # The square of the batch-mean gradient is several times smaller (>= 1 by Jensen). Over 5 data x init seeds, with
    # 1 and 2 threads (identical): ratio min 2.63, median 3.57 (issue 11); the bar sits below the worst case.
    assert total > 2 * squared_mean


def test_ner_teacher_skips_the_viterbi_decode(synthetic_benchmarks):
    model, processor = tiny_setup(synthetic_benchmarks["ner"])
    batch = MSPTDataCollator(processor, "ner")([synthetic_benchmarks["ner"].tasks[0].train[i] for i in range(4)])
    model.eval()
    with torch.no_grad():
        assert model(**batch).tags is not None and model(**batch, return_tags=False).tags is None
        train_mode = copy.deepcopy(model).train()
        assert train_mode(**batch, return_tags=True).tags is not None
