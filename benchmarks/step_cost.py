#!/usr/bin/env python
"""Cost of one training step of each continual strategy, as `ContinualTrainer` runs it, and evaluation throughput.

    OMP_NUM_THREADS=1 python benchmarks/step_cost.py                    # tiny and paper shapes, RE and NER, CPU
    OMP_NUM_THREADS=1 python benchmarks/step_cost.py --quick            # seconds: tiny shape, few steps
    python benchmarks/step_cost.py --device cuda --shapes paper         # on a GPU

A step is what the Trainer's inner loop does per optimizer step (transformers 5.24 `Trainer._run_epoch`):
`ContinualTrainer.training_step` (forward, the strategy's extra terms, backward, gradient modulation), gradient
clipping (`accelerator.clip_grad_norm_`), `optimizer.step()`, `lr_scheduler.step()`, `zero_grad()`.
The batches are prepared in advance (random token ids and pixels of the shape's sizes), so data loading and the
processor are not timed; they cost the same for every strategy. The `mspt` step is measured in the state of task 2 or
later (`ContinualTrainer.prepare_task`): the frozen teacher is set and, as in a real run, its pooled attention profiles are cached
for the rows of the batches (`continual_trainer.teacher_cache`, one teacher forward per row per task, timed apart and
reported amortised over `--epochs`), so the step runs asymmetric attention distillation against the cache, the
modality scores and the modulation of the gradients; `mspt_live_teacher` runs the teacher forward in every step
instead (`cache_teacher_attention=False`, the state before the cache). A replay-mixed batch
(`replay_mode="interleave"`) has the same shape as any other batch: replay costs more steps per epoch, not more per
step (see RESULTS.md).

All variants live in one process and run alternately (ABC…, then …CBA), `--steps` steps each per round, for
`--rounds` rounds after `--warmup` steps each; the median over all timed steps is reported, with the 25th/75th
percentiles, in wall-clock time and in process CPU time (on a shared machine, CPU time is less disturbed by
other work waiting for the same cores; with one intra-op thread it is the compute the step needs).
Peak memory: on CUDA `torch.cuda.max_memory_allocated` over one step; on CPU the peak of the profiler's memory timeline
over one step (tensors live during the step: weights, gradients, optimizer state, teacher, activations), plus the
static bytes of parameters, gradients, optimizer state and teacher counted from the tensors. On CUDA, the places
where a step makes the host wait for the device are listed (`torch.cuda.set_sync_debug_mode`).

Output: `<output_dir>/step_cost.json` and `step_cost.md` (ratios to `finetune`). With `--profile`, one
`torch.profiler` table per variant (`profile_<shape>_<task>_<variant>.txt`, sorted by self time).
"""

import argparse
import copy
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine, markdown_table

from continual_trainer import ContinualTrainer, ContinualTrainingArguments
from continual_trainer.arguments import TASK_HYPERPARAMETERS
from continual_trainer.teacher_cache import ROW_INDEX
from modeling_mspt import MSPTConfig, MSPTForRelationExtraction, MSPTForTokenClassification

logger = logging.getLogger("step_cost")

# Model sizes. tiny = the offline demo model (examples/run_imre.py defaults); paper = BERT-base + CLIP ViT-B/32
# (random init), batch 8, image 224 (reference notes §7).
SHAPES = {
    "tiny": dict(
        text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=1000),
        vision=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, image_size=32,
                    patch_size=8),  # fmt: skip
        num_interaction_layers=2, batch=16,
    ),  # fmt: skip
    "paper": dict(
        text=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                  vocab_size=30526),  # bert-base-uncased + the 4 entity markers  # fmt: skip
        vision=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    image_size=224, patch_size=32, hidden_act="quick_gelu"),  # fmt: skip
        num_interaction_layers=3, batch=8,
    ),
}
TEXT_LENGTH = {"re": 80, "ner": 128}  # IMRE / IMNER max_seq (reference notes §7)
NUM_LABELS = {"re": 23, "ner": 9}  # MNRE relations incl. None; BIO over PER/LOC/ORG/MISC
ALPHA = {task: values["modulation_alpha"] for task, values in TASK_HYPERPARAMETERS.items()}
GAMMA = {task: values["distillation_weight"] for task, values in TASK_HYPERPARAMETERS.items()}

# Each variant: ContinualTrainingArguments overrides. The ablations split mspt's extra cost into its parts.
VARIANTS = {
    "finetune": dict(strategy="finetune"),
    "mspt": dict(strategy="mspt"),
    "mspt_live_teacher": dict(strategy="mspt", cache_teacher_attention=False),  # the teacher forward in every step
    "mspt_no_distillation": dict(strategy="mspt", distillation_weight=0.0),  # modulation only, no teacher
    "mspt_no_modulation": dict(strategy="mspt", gradient_modulation=False),  # teacher + distillation only
    "lwf": dict(strategy="lwf"),
    "ewc": dict(strategy="ewc"),
}
EVAL = "eval"  # evaluation forward (inference_mode, eval mode), measured in the same rotation


def _labels(task):
    if task == "re":
        return {i: "None" if i == 0 else f"relation_{i}" for i in range(NUM_LABELS[task])}
    return {i: "O" if i == 0 else f"{'IB'[i % 2]}-TYPE{(i + 1) // 2}" for i in range(NUM_LABELS[task])}


def build_model(shape: str, task: str, seed: int, length: int | None = None):
    s = SHAPES[shape]
    length = length or TEXT_LENGTH[task]
    config = MSPTConfig(
        text_config=dict(s["text"], max_position_embeddings=512),
        vision_config=s["vision"],
        num_interaction_layers=s["num_interaction_layers"],
        max_text_length=length,
        id2label=_labels(task),
    )
    torch.manual_seed(seed)
    return (MSPTForRelationExtraction if task == "re" else MSPTForTokenClassification)(config)


def make_batch(config, task: str, batch: int, generator) -> dict:
    """Random inputs of the shape: text of `max_text_length` sub-tokens with per-sample padding (the first sample is
    full), whole images, labels; NER word starts on ~70% of the real positions (the rest are continuation pieces)."""
    length, vocab = config.max_text_length, config.text_config.vocab_size
    size = config.vision_config.image_size
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    lengths[0] = length
    positions = torch.arange(length).unsqueeze(0)
    attention_mask = (positions < lengths.unsqueeze(1)).long()
    input_ids = torch.randint(5, vocab, (batch, length), generator=generator) * attention_mask
    input_ids[:, 0] = 2  # [CLS]
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
        "pixel_values": torch.randn(batch, 3, size, size, generator=generator),
        "image_mask": torch.ones(batch, dtype=torch.long),
    }
    num_labels = config.num_labels
    if task == "re":
        out["labels"] = torch.randint(0, num_labels, (batch,), generator=generator)
    else:
        inner = (positions > 0) & (positions < lengths.unsqueeze(1) - 1)  # not [CLS] / [SEP] / padding
        starts = inner & (torch.rand(batch, length, generator=generator) < 0.7)
        starts[:, 1] = True
        out["word_start_mask"] = starts.long()
        out["labels"] = torch.randint(0, num_labels, (batch, length), generator=generator).masked_fill(~starts, -100)
    return out


def build_trainer(model, variant: str, task: str, batch: int, device: str, output_dir: str) -> ContinualTrainer:
    overrides = dict(VARIANTS[variant])
    overrides.setdefault("modulation_alpha", ALPHA[task])
    if overrides["strategy"] == "mspt":
        overrides.setdefault("distillation_weight", GAMMA[task])
    args = ContinualTrainingArguments(
        output_dir=os.path.join(output_dir, variant), per_device_train_batch_size=batch, learning_rate=3e-5,
        report_to="none", save_strategy="no", disable_tqdm=True, seed=0, use_cpu=device == "cpu", **overrides,
    )  # fmt: skip
    trainer = ContinualTrainer(model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=100_000)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which is bypassed here
    # The state of task 2: the frozen previous-task model if a component needs one (mspt, lwf), each component's
    # before_task (the paper schedule's coefficients, LwF's labels); the teacher cache is built in `measure`.
    trainer.prepare_task(1)
    if "ewc" in trainer.components:  # anchors and a diagonal Fisher per trainable parameter, from a few rows
        rows = make_batch(model.config, task, 8, torch.Generator().manual_seed(1))
        trainer.components["ewc"].consolidate([{k: v[i : i + 1].to(device) for k, v in rows.items()} for i in range(8)])
    return trainer


def train_step(trainer: ContinualTrainer, batch: dict):
    """One optimizer step, in the order of `Trainer._run_epoch` (no gradient accumulation)."""
    model = trainer.model
    trainer.training_step(model, batch)
    if trainer.args.max_grad_norm > 0:
        trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    model.zero_grad()
    trainer.state.global_step += 1


def eval_step(model, batch: dict):
    model.eval()
    with torch.inference_mode():
        model(**{k: v for k, v in batch.items() if k not in ("labels", ROW_INDEX)})


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _static_bytes(trainer) -> dict:
    def size(tensors):
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    model = trainer.model
    state = trainer.optimizer.state.values() if trainer.optimizer is not None else []
    out = {
        "parameters": size(model.parameters()),
        "gradients": size(p for p in model.parameters() if p.requires_grad),
        "optimizer_state": size(v for s in state for v in s.values() if torch.is_tensor(v)),
        "teacher": size(trainer.teacher.parameters()) if trainer.teacher is not None else 0,
        "ewc": size([*ewc.anchors, *ewc.fisher]) if (ewc := trainer.components.get("ewc")) is not None else 0,
    }
    out["total"] = sum(out.values())
    return out


def peak_memory(fn, device) -> int | None:
    """Peak bytes of tensors alive during one call of fn."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "timeline.json")
        try:
            prof.export_memory_timeline(path, device="cpu")
        except Exception as err:  # a private profiler feature; never fail the benchmark on it
            logger.warning("memory timeline unavailable: %s", err)
            return None
        with open(path, encoding="utf-8") as f:
            _, sizes = json.load(f)
    return int(max(sum(row) for row in sizes)) if sizes else None


class StepParts:
    """Time of the parts of a step, measured by wrapping the trainer's own callables on this trainer instance (no
    library code changes): student and teacher forward, distillation loss, backward, gradient modulation, clipping and
    norm, optimizer step; `other` is the rest (modality scores, LwF / EWC terms, scheduler, zero_grad, Python).
    CPU: process time; CUDA: wall time with a synchronisation around each part (so only for the breakdown phase)."""

    PARTS = ("student_forward", "teacher_forward", "distillation", "backward", "modulation", "clip_and_norm",
             "optimizer_step")  # fmt: skip

    def __init__(self, trainer, device):
        self.device, self.current, self.steps = device, {}, []
        trainer.model.forward = self._wrap("student_forward", trainer.model.forward)
        if trainer.teacher is not None:
            trainer.teacher.forward = self._wrap("teacher_forward", trainer.teacher.forward)
        components = trainer.components
        if "distillation" in components:
            components["distillation"].distillation = self._wrap("distillation", components["distillation"].distillation)
        if "modulation" in components:
            components["modulation"].before_optimizer_step = self._wrap(
                "modulation", components["modulation"].before_optimizer_step)
        trainer.accelerator.backward = self._wrap("backward", trainer.accelerator.backward)
        trainer.accelerator.clip_grad_norm_ = self._wrap("clip_and_norm", trainer.accelerator.clip_grad_norm_)
        trainer.optimizer.step = self._wrap("optimizer_step", trainer.optimizer.step)

    def clock(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()

    def _wrap(self, name, fn):
        def timed(*args, **kwargs):
            start = self.clock()
            out = fn(*args, **kwargs)
            self.current[name] = self.current.get(name, 0.0) + self.clock() - start
            return out

        return timed

    def run(self, step):
        self.current = {}
        start = self.clock()
        step()
        total = self.clock() - start
        self.steps.append({**self.current, "other": total - sum(self.current.values()), "total": total})

    def medians(self) -> dict:
        names = [*self.PARTS, "other", "total"]
        return {n: statistics.median(s.get(n, 0.0) for s in self.steps) for n in names}


def host_syncs(fn) -> list[str]:
    """CUDA only: the places (file:line) where one call of fn made the host wait for the device."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return [f"{os.path.relpath(w.filename)}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]


def profile_table(fn, path, device, rows=40):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        fn()
        _sync(device)
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    with open(path, "w", encoding="utf-8") as f:
        f.write(prof.key_averages().table(sort_by=sort, row_limit=rows))
        f.write("\n\nBy input-free stack (top-level ops):\n")
        f.write(prof.key_averages(group_by_stack_n=0).table(sort_by="cpu_time_total", row_limit=rows))


def measure(shape, task, variants, args) -> dict:
    device = args.device
    base = build_model(shape, task, seed=0, length=args.text_length)
    config = base.config
    batch_size = SHAPES[shape]["batch"]
    generator = torch.Generator().manual_seed(0)
    batches = [make_batch(config, task, batch_size, generator) for _ in range(4)]
    for i, b in enumerate(batches):  # the trainer's teacher cache finds a batch's rows by this column
        b[ROW_INDEX] = torch.arange(i * batch_size, (i + 1) * batch_size)
    gpu_batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    tmp = tempfile.mkdtemp(prefix="step_cost_")
    trainers = {}
    for variant in variants:
        model = base if variant == variants[-1] else copy.deepcopy(base)  # same initial weights for every variant
        trainers[variant] = build_trainer(model, variant, task, batch_size, device, tmp)
    cache_s = {}
    for variant, trainer in trainers.items():  # the per-task cache pass, as a task's fit starts it
        if "distillation" in trainer.components and trainer.args.cache_teacher_attention:
            _sync(device)
            start = time.perf_counter()
            trainer.components["distillation"].cache(gpu_batches)
            _sync(device)
            cache_s[variant] = (time.perf_counter() - start) / len(batches)
    eval_model = copy.deepcopy(base).to(device).eval()

    def run_one(name, i):
        b = gpu_batches[i % len(gpu_batches)]
        if name == EVAL:
            eval_step(eval_model, b)
        else:
            train_step(trainers[name], b)

    names = [*variants, EVAL]
    for name in names:  # warm-up, also creates the optimizer state
        for i in range(args.warmup):
            run_one(name, i)
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            for i in range(args.steps):
                _sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                run_one(name, i)
                _sync(device)
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
        logger.info("%s/%s round %d/%d done", shape, task, r + 1, args.rounds)

    result = {"shape": shape, "task": task, "batch": batch_size, "text_length": config.max_text_length,
              "image_size": config.vision_config.image_size, "device": device,
              "num_parameters": sum(p.numel() for p in base.parameters()), "variants": {}}  # fmt: skip
    for name in names:
        t = sorted(times[name])
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
        entry = {"median_s": statistics.median(t), "p25_s": q[0], "p75_s": q[2], "n": len(t),
                 "cpu_median_s": statistics.median(cpu_times[name])}
        if name == EVAL:
            entry["examples_per_s"] = batch_size / entry["median_s"]
            entry["peak_bytes"] = None if args.no_memory else peak_memory(lambda: run_one(EVAL, 0), device)
        else:
            entry["static_bytes"] = _static_bytes(trainers[name])
            if name in cache_s:  # one teacher pass over the task's rows, spread over the task's epochs
                entry["cache_build_s_per_batch"] = cache_s[name]
                entry["cache_bytes_per_row"] = trainers[name].components["distillation"].profiles.nbytes / (len(batches) * batch_size)
                entry["amortised_median_s"] = entry["median_s"] + cache_s[name] / args.epochs
            entry["peak_bytes"] = None if args.no_memory else peak_memory(lambda n=name: run_one(n, 0), device)
        if device == "cuda":
            entry["host_syncs"] = host_syncs(lambda n=name: run_one(n, 0))
        result["variants"][name] = entry
    if args.breakdown_steps:  # last: the wrappers stay on the trainers
        parts = {name: StepParts(trainers[name], device) for name in variants}
        for r in range(args.breakdown_steps):
            for name in variants if r % 2 == 0 else variants[::-1]:
                parts[name].run(lambda n=name, i=r: run_one(n, i))
        for name in variants:
            result["variants"][name]["parts_s"] = parts[name].medians()
    ft = result["variants"].get("finetune")
    for name, entry in result["variants"].items():
        if ft and name != EVAL:
            entry["time_ratio_to_finetune"] = entry["median_s"] / ft["median_s"]
            if "amortised_median_s" in entry:
                entry["amortised_ratio_to_finetune"] = entry["amortised_median_s"] / ft["median_s"]
            entry["cpu_time_ratio_to_finetune"] = entry["cpu_median_s"] / ft["cpu_median_s"]
            if entry["peak_bytes"] and ft["peak_bytes"]:
                entry["peak_ratio_to_finetune"] = entry["peak_bytes"] / ft["peak_bytes"]
    if args.profile:
        for name in names:
            path = os.path.join(args.output_dir, f"profile_{shape}_{task}_{name}.txt")
            profile_table(lambda n=name: run_one(n, 0), path, device)
    return result


def _mib(n):
    return "–" if n is None else f"{n / 2**20:,.1f}"


def report(results: list[dict]) -> str:
    rows = []
    for res in results:
        for name, e in res["variants"].items():
            if name == EVAL:
                continue
            rows.append([res["shape"], res["task"], name, f"{e['median_s'] * 1e3:,.1f}",
                         f"{e['p25_s'] * 1e3:,.1f}–{e['p75_s'] * 1e3:,.1f}",
                         f"{e.get('time_ratio_to_finetune', float('nan')):.2f}×",
                         f"{e['amortised_ratio_to_finetune']:.2f}×" if "amortised_ratio_to_finetune" in e else "–",
                         f"{e['cpu_median_s'] * 1e3:,.1f}",
                         f"{e.get('cpu_time_ratio_to_finetune', float('nan')):.2f}×", _mib(e["peak_bytes"]),
                         f"{e['peak_ratio_to_finetune']:.2f}×" if "peak_ratio_to_finetune" in e else "–",
                         _mib(e["static_bytes"]["teacher"])])  # fmt: skip
    header = ["shape", "task", "variant", "step ms (median)", "p25–p75 ms", "time / finetune",
              "with cache pass / finetune", "CPU ms (median)",
              "CPU time / finetune", "peak MiB",
              "peak / finetune", "teacher MiB"]  # fmt: skip
    evals = [[r["shape"], r["task"], r["batch"], f"{r['variants'][EVAL]['median_s'] * 1e3:,.1f}",
              f"{r['variants'][EVAL]['examples_per_s']:,.1f}", _mib(r["variants"][EVAL]["peak_bytes"])]
             for r in results]  # fmt: skip
    text = (markdown_table(header, rows) + "\n\nEvaluation (eval mode, `torch.inference_mode`, same batches):\n\n"
            + markdown_table(["shape", "task", "batch", "forward ms (median)", "examples/s", "peak MiB"], evals))
    part_rows = [[r["shape"], r["task"], name, *(f"{e['parts_s'][p] * 1e3:,.1f}" for p in (*StepParts.PARTS, "other",
                                                                                          "total"))]
                 for r in results for name, e in r["variants"].items() if "parts_s" in e]  # fmt: skip
    if part_rows:
        text += ("\n\nWhere the time goes (median ms per part over the breakdown steps; CPU: process time):\n\n"
                 + markdown_table(["shape", "task", "variant", *StepParts.PARTS, "other", "total"], part_rows))
    syncs = [f"- {r['shape']}/{r['task']}/{name}: {', '.join(e['host_syncs']) or 'none'}"
             for r in results for name, e in r["variants"].items() if "host_syncs" in e]  # fmt: skip
    if syncs:
        text += "\n\nHost-device synchronisations in one step (file:line):\n\n" + "\n".join(syncs)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "paper"], choices=list(SHAPES))
    parser.add_argument("--tasks", nargs="+", default=["re", "ner"], choices=["re", "ner"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=6, help="Alternation rounds (each variant once per round).")
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per variant per round.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps per variant before the first round.")
    parser.add_argument("--text-length", type=int, default=None, help="Sub-tokens per text (default: RE 80, NER 128).")
    parser.add_argument("--epochs", type=float, default=10,
                        help="Epochs per task over which the teacher cache pass is amortised (10: the paper configs).")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: OMP_NUM_THREADS).")
    parser.add_argument("--no-memory", action="store_true", help="Skip the peak-memory step (it is slow on CPU).")
    parser.add_argument("--breakdown-steps", type=int, default=4,
                        help="Extra steps per variant timed part by part (StepParts); 0 to skip.")
    parser.add_argument("--profile", action="store_true", help="Write a torch.profiler table per variant.")
    parser.add_argument("--output-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--tag", default="", help="Output names step_cost_<tag>.json / .md.")
    parser.add_argument("--quick", action="store_true",
                        help="Smoke run in seconds: tiny shape, text length 24, 2 rounds of 1 step.")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.rounds, args.steps, args.warmup, args.text_length = ["tiny"], 2, 1, 1, 24
        args.breakdown_steps = 2
        args.variants = ["finetune", "mspt", "mspt_live_teacher"]
    if "finetune" not in args.variants:
        args.variants.insert(0, "finetune")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    for name in ("transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.makedirs(args.output_dir, exist_ok=True)

    env = machine()
    started = time.time()
    suffix = "_quick" if args.quick else (f"_{args.tag}" if args.tag else "")
    settings = {k: v for k, v in vars(args).items() if k != "output_dir"}
    results = []
    for shape in args.shapes:
        for task in args.tasks:
            results.append(measure(shape, task, args.variants, args))
            gc.collect()
            env["loadavg_end"] = list(os.getloadavg())
            env["wall_s"] = time.time() - started
            out = {"machine": env, "settings": settings, "results": results}
            table = report(results)
            with open(os.path.join(args.output_dir, f"step_cost{suffix}.json"), "w", encoding="utf-8") as f:
                json.dump(out, f, indent=1)  # after each shape and task, so a killed run keeps what it measured
            with open(os.path.join(args.output_dir, f"step_cost{suffix}.md"), "w", encoding="utf-8") as f:
                f.write(f"Device {args.device} ({env['cuda'] or env['cpu']}), {env['torch_threads']} torch thread(s), "
                        f"load average {env['loadavg'][0]:.2f} → {env['loadavg_end'][0]:.2f}.\n\n{table}\n")  # fmt: skip
    print(table)
    return out


if __name__ == "__main__":
    main()
