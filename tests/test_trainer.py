"""ContinualTrainer on tiny models and the synthetic benchmark: presets, modulation, distillation teacher, replay,
label masking, and resume errors."""

import copy
import json

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from conftest import tiny_args, tiny_setup
from continual_trainer import (
    ContinualTrainer,
    MSPTDataCollator,
    ReplayMemory,
    modality_scores,
    modulation_coefficients,
)


def run(benchmark, tmp_path, strategy="mspt", callbacks=None, **kwargs):
    model, processor = tiny_setup(benchmark)
    trainer = ContinualTrainer(model=model, args=tiny_args(tmp_path / strategy, strategy, **kwargs),
                               processing_class=processor, callbacks=callbacks)  # fmt: skip
    return trainer, trainer.train_tasks(benchmark)


class CountTrainings(TrainerCallback):
    def __init__(self):
        self.count = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.count += 1


@pytest.mark.parametrize("strategy", ["finetune", "replay", "ewc", "lwf", "mspt", "joint"])
def test_every_preset_gives_a_three_by_three_matrix(synthetic_benchmarks, tmp_path, strategy):
    counter = CountTrainings()
    _, result = run(synthetic_benchmarks["re"], tmp_path, strategy, callbacks=[counter])
    assert [len(row) for row in result.matrix] == [1, 2, 3]
    assert all(0.0 <= v <= 1.0 for row in result.matrix for v in row)
    assert set(result.summary) == {"final_average", "average_incremental", "forgetting", "bwt"}
    assert len(result.cumulative) == 3 and result.summary["final_average"] == pytest.approx(np.mean(result.matrix[-1]))
    assert counter.count == (1 if strategy == "joint" else 3)
    saved = json.loads((tmp_path / strategy / "task-02" / "continual_state.json").read_text())
    assert saved["matrix"] == result.matrix and saved["completed_tasks"] == 3


def test_ner_mspt_run_and_entity_slices(synthetic_benchmarks, tmp_path):
    trainer, result = run(synthetic_benchmarks["ner"], tmp_path, "mspt", distillation_weight=0.1)
    assert [len(row) for row in result.matrix] == [1, 2, 3]
    metrics = result.task_metrics[-1]
    assert metrics["metric"] == "f1" and len(metrics["slice_metrics"]) == 3
    assert len(trainer.memory) > 0 and max(len(v) for v in trainer.memory.indices.values()) <= 6 * 4


def _batch(trainer, benchmark, n=16):
    rows = [benchmark.tasks[0].train[i] for i in range(n)]
    return trainer.data_collator(rows)


def test_modulation_scales_the_dominant_stream_only(synthetic_benchmarks, tmp_path):
    bench = synthetic_benchmarks["re"]
    grads = {}
    for modulate in (False, True):
        model, processor = tiny_setup(bench)
        for m in model.modules():  # deterministic forward passes
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        args = tiny_args(tmp_path / str(modulate), "finetune", gradient_modulation=modulate, modulation_alpha=0.5,
                         modulation_target="gradient")  # the update target: tests/test_strategies.py
        trainer = ContinualTrainer(model=model, args=args, processing_class=processor,
                                   data_collator=MSPTDataCollator(processor, "re"))  # fmt: skip
        trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test bypasses
        batch = _batch(trainer, bench)
        trainer.training_step(model, batch)
        grads[modulate] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        if modulate:
            with torch.no_grad():
                out = model(**batch)
            scores = modality_scores(out.text_logits, out.vision_logits, batch["labels"])
            rho, k_text, k_vision = modulation_coefficients(scores[0], scores[1], 0.5)
            recorded = trainer.components["modulation"].records[-1]
            torch.testing.assert_close(recorded[:3], torch.stack([rho, k_text, k_vision]), rtol=1e-4, atol=1e-6)
            k_text, k_vision = recorded[1], recorded[2]
    assert min(k_text, k_vision).item() < 1 and max(k_text, k_vision).item() == 1
    for name, g in grads[True].items():
        base = grads[False][name]
        if "text_embeddings" in name or "text_layers" in name or "text_attention_bias" in name:
            expected = k_text
        elif "vision_" in name:
            expected = k_vision
        else:  # shared key and head: never modulated
            expected = torch.tensor(1.0)
        torch.testing.assert_close(g, base * expected, atol=1e-7, rtol=1e-5, msg=name)


def test_paper_schedule_uses_the_previous_tasks_mean(synthetic_benchmarks, tmp_path):
    _, result = run(synthetic_benchmarks["re"], tmp_path, "mspt")
    first, second, third = result.modulation
    assert first["k_text_applied"] == first["k_text"] and first["k_vision_applied"] == first["k_vision"]
    assert second["k_text_applied"] == pytest.approx([first["k_text_mean"]] * len(second["k_text_applied"]))
    mean_vision = np.mean([first["k_vision_mean"], second["k_vision_mean"]])
    assert third["k_vision_applied"] == pytest.approx([mean_vision] * len(third["k_vision_applied"]))
    assert len(second["rho_vision"]) == len(second["k_text_applied"])  # the ratio is still recorded per step


def test_reference_schedule_modulates_per_step_in_every_task(synthetic_benchmarks, tmp_path):
    _, result = run(synthetic_benchmarks["re"], tmp_path, "mspt", modulation_schedule="reference")
    assert all(h["k_text_applied"] == h["k_text"] for h in result.modulation)


class TeacherWatch(TrainerCallback):
    def __init__(self):
        self.trainer, self.snapshots = None, []

    def on_step_end(self, args, state, control, **kwargs):
        teacher = self.trainer.teacher
        if teacher is not None:
            assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
            self.snapshots.append((id(teacher), torch.cat([p.flatten() for p in teacher.parameters()]).clone()))


def test_teacher_is_frozen_during_a_task_and_distillation_is_active(synthetic_benchmarks, tmp_path):
    bench = synthetic_benchmarks["re"]
    model, processor = tiny_setup(bench)
    watch = TeacherWatch()
    trainer = ContinualTrainer(model=model, args=tiny_args(tmp_path, "mspt", logging_steps=1),
                               processing_class=processor, callbacks=[watch])  # fmt: skip
    watch.trainer = trainer
    logged = []
    trainer.add_callback(type("Logs", (TrainerCallback,), {"on_log": lambda s, a, st, c, logs=None, **k: logged.append(logs)}))
    trainer.train_tasks(bench)
    by_teacher = {}
    for key, params in watch.snapshots:
        by_teacher.setdefault(key, []).append(params)
    assert len(by_teacher) == 2  # tasks 2 and 3 each distil from their own teacher
    for snapshots in by_teacher.values():
        assert all(torch.equal(snapshots[0], s) for s in snapshots)
    assert any(log.get("distillation_loss", 0) > 0 for log in logged)


def test_mask_unseen_labels_predicts_only_seen_labels(synthetic_benchmarks, tmp_path):
    bench = synthetic_benchmarks["re"]
    trainer, _ = run(bench, tmp_path, "finetune", mask_unseen_labels=True)
    trainer._begin_task(bench.tasks[0], None)
    predictions, _, _ = trainer._predict(bench.tasks[0].test)
    seen = {bench.label_names.index(n) for n in bench.seen_labels(0)}
    assert set(predictions.tolist()) <= seen


def test_parameter_groups_get_their_learning_rates(synthetic_benchmarks, tmp_path):
    model, processor = tiny_setup(synthetic_benchmarks["re"])
    args = tiny_args(tmp_path, "mspt", learning_rate=1e-3, key_learning_rate=1e-5, bias_learning_rate=2e-3,
                     head_learning_rate=5e-2)  # fmt: skip
    trainer = ContinualTrainer(model=model, args=args, processing_class=processor)
    optimizer = trainer.create_optimizer()
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["mspt.encoder.interaction.0.shared_key"])] == 1e-5
    assert lr_of[id(named["mspt.encoder.interaction.0.text_attention_bias"])] == 2e-3
    assert lr_of[id(named["classifier.weight"])] == 5e-2
    assert lr_of[id(named["mspt.encoder.vision_layers.0.mlp.fc1.weight"])] == 1e-3
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)


def test_replay_memory_per_label_cap_determinism_and_state():
    buckets = [0] * 10 + [1] * 3 + [2] * 8
    a, b, c = ReplayMemory(4, seed=1), ReplayMemory(4, seed=1), ReplayMemory(4, seed=2)
    chosen = a.add_task(0, buckets)
    assert chosen == b.add_task(0, buckets) and chosen != c.add_task(0, buckets)
    counts = np.bincount(np.asarray(buckets)[chosen])
    assert counts.tolist() == [4, 3, 4]
    assert a.add_task(1, buckets) != chosen  # another task draws with another stream
    restored = ReplayMemory.from_state_dict(json.loads(json.dumps(a.state_dict())))
    assert restored.indices == a.indices and len(restored) == len(a) == 22


def test_resume_refuses_other_benchmarks_corrupt_state_and_empty_dirs(synthetic_benchmarks, tmp_path):
    bench_re, bench_ner = synthetic_benchmarks["re"], synthetic_benchmarks["ner"]
    model, processor = tiny_setup(bench_re)
    with pytest.raises(ValueError, match="holds no continual run"):
        ContinualTrainer(model=model, args=tiny_args(tmp_path / "empty"), processing_class=processor).train_tasks(
            bench_re, resume_from_checkpoint=True
        )
    run(bench_re, tmp_path, "finetune")
    other = copy.copy(bench_re)
    other.label_names = bench_re.label_names[:-1] + ["/t9/other"]
    trainer = ContinualTrainer(model=model, args=tiny_args(tmp_path / "finetune", "finetune"), processing_class=processor)
    with pytest.raises(ValueError, match=r"differs from the one given in \['label_names'"):
        trainer.train_tasks(other, resume_from_checkpoint=True)
    with pytest.raises(ValueError, match="holds a `finetune` run"):
        ContinualTrainer(model=model, args=tiny_args(tmp_path / "finetune", "replay"),
                         processing_class=processor).train_tasks(bench_re, resume_from_checkpoint=True)  # fmt: skip
    (tmp_path / "finetune" / "task-02" / "continual_state.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"task-02/continual_state.json is unreadable or corrupt"):
        trainer.train_tasks(bench_re, resume_from_checkpoint=True)
    assert bench_ner.task_type == "ner"


class RecordEpochs(TrainerCallback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.calls.append((args.output_dir.rsplit("/", 2)[-2:], args.num_train_epochs))


def test_separate_replay_phase_runs_after_each_task_from_the_second(synthetic_benchmarks, tmp_path):
    recorder = RecordEpochs()
    trainer, result = run(synthetic_benchmarks["re"], tmp_path, "replay", callbacks=[recorder],
                          replay_mode="separate_phase", replay_epochs=2)  # fmt: skip
    epochs = [e for _, e in recorder.calls]
    places = [p[-1] if p[-1] == "replay" else p[-1][:4] for p, _ in recorder.calls]
    assert places == ["task", "task", "replay", "task", "replay"] and epochs == [1, 1, 2, 1, 2]
    assert trainer.args.num_train_epochs == 1 and trainer.args.output_dir == str(tmp_path / "replay")
    assert [len(r) for r in result.matrix] == [1, 2, 3]
