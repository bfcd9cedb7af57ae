#!/usr/bin/env python
"""Throughput of the knowledge-graph pipeline on CPU: posts/s end to end and entity pairs/s in the RE stage.

    python benchmarks/kg_throughput.py                  # trained demo models if outputs/imner, outputs/imre exist,
                                                        # else tiny random models of the demo's size
    python benchmarks/kg_throughput.py --quick          # a few seconds
    python benchmarks/kg_throughput.py --ner_model DIR --re_model DIR --threads 4 --output kg_throughput.json

Measures, on the same machine in one run (synthetic posts, 32x32 images, every post with an image):
- end to end: NER on every post, RE on every ordered pair of the entities found; posts/s;
- RE stage alone: `--entities_per_post` entities given per post (`entity_spans`), so k(k-1) pairs per post; pairs/s,
  batched (`--re_batch_size`) and one pair per forward pass; their ratio is the gain of batching the pairs.
Throughput does not depend on what the weights learned, only on shapes, so random models give the same numbers
for the same configuration (the number of pairs end to end does depend on the entities found).
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch

from datasets_scripts.posts import synthetic_posts
from datasets_scripts.synthetic import label_of, task_grid
from modeling_mspt import (
    MSPTConfig,
    MSPTForRelationExtraction,
    MSPTForTokenClassification,
    MSPTKnowledgeGraphPipeline,
    MSPTProcessor,
)


def random_pipeline(posts, hidden=64, layers=2, image_size=32):
    """Tiny random NER and RE models of the demo's size (continual_trainer.experiment.build_model), task 0 labels."""
    cells = {flavour: [label_of(0, c, s, flavour) for c, s, j in task_grid(0, 3, flavour) if j is not None]
             for flavour in ("re", "ner")}  # fmt: skip
    ner_labels = ["O"] + [f"{p}-{t}" for t in cells["ner"] for p in ("B", "I")]
    words = {w for p in posts for w in p["text"].split()}
    models = []
    for model_class, labels, length in ((MSPTForTokenClassification, ner_labels, 128),
                                        (MSPTForRelationExtraction, ["None"] + cells["re"], 80)):  # fmt: skip
        processor = MSPTProcessor.from_word_vocabulary(sorted(words), image_size=image_size, max_length=length)
        stream = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 4,
                  "intermediate_size": 4 * hidden}  # fmt: skip
        config = MSPTConfig(
            text_config={**stream, "vocab_size": len(processor.tokenizer), "max_position_embeddings": 512},
            vision_config={**stream, "image_size": image_size, "patch_size": 8}, num_interaction_layers=layers,
            max_text_length=length, id2label=dict(enumerate(labels)),
        )  # fmt: skip
        models += [model_class(config), processor]
    ner, ner_processor, re_model, re_processor = models
    return MSPTKnowledgeGraphPipeline(model=ner, processor=ner_processor, re_model=re_model, re_processor=re_processor,
                                      device="cpu")  # fmt: skip


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ner_model", default="outputs/imner")
    parser.add_argument("--re_model", default="outputs/imre")
    parser.add_argument("--posts", type=int, default=512, help="synthetic posts per measurement")
    parser.add_argument("--entities_per_post", type=int, default=4, help="entities given per post in the RE stage")
    parser.add_argument("--batch_size", type=int, default=32, help="posts per NER forward pass")
    parser.add_argument("--re_batch_size", type=int, default=64, help="pairs per RE forward pass")
    parser.add_argument("--repeats", type=int, default=3, help="the median of this many runs is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="64 posts, 1 repeat")
    parser.add_argument("--output", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.posts, args.repeats = 64, 1
    torch.set_num_threads(args.threads)

    posts = synthetic_posts(args.posts, seed=0)
    trained = all(os.path.isfile(os.path.join(d, "config.json")) for d in (args.ner_model, args.re_model))
    pipe = (MSPTKnowledgeGraphPipeline(model=args.ner_model, re_model=args.re_model, device="cpu") if trained
            else random_pipeline(posts))  # fmt: skip
    plain = [{"id": p["id"], "text": p["text"], "image": p["image"]} for p in posts]
    k = args.entities_per_post
    given = [post | {"entity_spans": [[i, i + 1] for i in range(min(k, len(post["text"].split())))]} for post in plain]
    pairs = sum(len(g["entity_spans"]) * (len(g["entity_spans"]) - 1) for g in given)
    common = {"threshold": 0.0, "progress_bar": False}

    pipe(plain[:8], **common)  # warm-up
    results, end_to_end = timed(lambda: pipe(plain, batch_size=args.batch_size, re_batch_size=args.re_batch_size,
                                             **common), args.repeats)  # fmt: skip
    found_pairs = sum(len(r["entities"]) * (len(r["entities"]) - 1) for r in results)
    _, re_batched = timed(lambda: pipe(given, re_batch_size=args.re_batch_size, **common), args.repeats)
    few = given[: max(1, len(given) // 8)]  # one pair per forward pass is slow: an eighth of the posts
    few_pairs = sum(len(g["entity_spans"]) * (len(g["entity_spans"]) - 1) for g in few)
    _, re_single = timed(lambda: pipe(few, re_batch_size=1, **common), args.repeats)

    numbers = {
        "models": "trained (" + args.ner_model + ", " + args.re_model + ")" if trained else "random, demo size",
        "torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
        "posts": args.posts, "batch_size": args.batch_size, "re_batch_size": args.re_batch_size,
        "end_to_end_posts_per_s": args.posts / end_to_end, "end_to_end_pairs": found_pairs,
        "entities_found_per_post": sum(len(r["entities"]) for r in results) / args.posts,
        "re_pairs_per_s_batched": pairs / re_batched, "re_posts_per_s_batched": args.posts / re_batched,
        "re_pairs_per_s_one_pair_per_pass": few_pairs / re_single,
    }  # fmt: skip
    numbers["re_batching_speedup"] = numbers["re_pairs_per_s_batched"] / numbers["re_pairs_per_s_one_pair_per_pass"]
    width = max(map(len, numbers))
    for name, value in numbers.items():
        print(f"{name:<{width}}  {value:.1f}" if isinstance(value, float) else f"{name:<{width}}  {value}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(numbers, f, indent=2)


if __name__ == "__main__":
    main()
