#!/usr/bin/env python
"""(text, image) posts -> entities (MSPT-NER) -> relations between entity pairs (MSPT-RE) -> a knowledge graph.

    python examples/build_kg.py                                   # demo: the two example runs' models, synthetic posts
    python examples/build_kg.py --posts posts.jsonl --ner_model outputs/imner --re_model outputs/imre
    python examples/build_kg.py --posts folder/                   # folder of <id>.txt + <id>.jpg|png

`--posts`: a JSON Lines file, one `{"id": ..., "text": ..., "image": "img/1.jpg"}` per line (`image` relative to
the file, optional), or a directory of `.txt` posts with same-stem images. Without it, synthetic posts with known
entities and triples (datasets_scripts/posts.py) are written to `<output_dir>/synthetic_posts/` and read back, and
the result is scored against their truth. Nothing is trained here: the models come from
`accelerate launch examples/run_imner.py` and `accelerate launch examples/run_imre.py` (default output dirs).

Writes to `--output_dir` (default `outputs/kg`): `entities.jsonl` (one line per entity text, merged across posts,
with every mention's provenance), `triples.jsonl` (one line per (head, relation, tail) with its evidence),
`graph.ttl` (RDF Turtle, vocabulary in modeling_mspt/graph_mspt.py; needs rdflib, the `kg` extra), `report.jsonl`
(per post: ok / flagged / failed, with the reason) and, unless `--picture false`, a picture of the graph: entities
coloured by type, arrows labelled by relation, at most `--picture_max_nodes` entities (the largest connected groups
first), as `graph.png` (needs matplotlib, the `plots` extra: without it the PNG is skipped with a note) and
`graph.html` (self-contained SVG, hover for details, no extra). Bad posts are reported and skipped; a missing image
is replaced by a zero image and the post flagged.
"""

import json
import os
import sys
from dataclasses import dataclass, field

import transformers
from transformers import HfArgumentParser

from datasets_scripts.posts import read_posts, score_posts, synthetic_posts, write_posts
from modeling_mspt import KG_TASK, MSPTKnowledgeGraphPipeline
from modeling_mspt.graph_mspt import DEFAULT_BASE_IRI, PICTURE_MAX_NODES, MSPTKnowledgeGraph, write_jsonl

TRAIN_COMMANDS = {"ner_model": "accelerate launch examples/run_imner.py",
                  "re_model": "accelerate launch examples/run_imre.py"}  # fmt: skip


@dataclass
class BuildArguments:
    posts: str | None = field(default=None, metadata={"help": "JSON Lines file or directory of .txt posts; default: "
                                                               "synthetic posts with known truth."})  # fmt: skip
    ner_model: str = field(default="outputs/imner", metadata={"help": "NER checkpoint (run_imner.py output_dir)."})
    re_model: str = field(default="outputs/imre", metadata={"help": "RE checkpoint (run_imre.py output_dir)."})
    output_dir: str = field(default="outputs/kg", metadata={"help": "Where the graph files go."})
    threshold: float = field(default=0.5, metadata={"help": "Lowest relation confidence kept."})
    entity_threshold: float = field(default=0.0, metadata={"help": "Lowest entity confidence kept."})
    batch_size: int = field(default=16, metadata={"help": "Posts per NER forward pass."})
    re_batch_size: int = field(default=64, metadata={"help": "Entity pairs per RE forward pass."})
    num_synthetic_posts: int = field(default=40, metadata={"help": "Synthetic posts when --posts is not given."})
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic posts."})
    base_iri: str = field(default=DEFAULT_BASE_IRI, metadata={"help": "Base IRI of the RDF graph."})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:1, ..."})
    progress_bar: bool = field(default=True, metadata={"help": "Show a progress bar for long inputs."})
    picture: bool = field(default=True, metadata={"help": "Draw graph.html, and graph.png when matplotlib is "
                                                            "installed (the `plots` extra)."})  # fmt: skip
    picture_max_nodes: int = field(default=PICTURE_MAX_NODES, metadata={"help": "Most entities drawn (the largest "
                                                                               "connected groups first)."})  # fmt: skip

    def __post_init__(self):
        if self.picture_max_nodes < 1:
            raise ValueError(f"--picture_max_nodes {self.picture_max_nodes}: give a positive number of entities, or "
                             "--picture false for no picture.")  # fmt: skip


def check_models(args: BuildArguments):
    missing = [name for name in TRAIN_COMMANDS if not os.path.isfile(os.path.join(getattr(args, name), "config.json"))]
    if missing:
        lines = [f"No trained {name.split('_')[0].upper()} model in {getattr(args, name)!r}." for name in missing]
        lines += ["Train it first (a few minutes on a CPU), from the repository root:"]
        lines += [f"    {TRAIN_COMMANDS[name]}" for name in missing]
        lines += ["or point --ner_model / --re_model at your checkpoints."]
        sys.exit("\n".join(lines))


def synthetic_input(args: BuildArguments) -> tuple[str, list[dict]]:
    """Synthetic posts for the label space the demo models were trained on, written as JSONL + PNG files."""
    with open(os.path.join(args.ner_model, "results.json"), encoding="utf-8") as f:
        data = json.load(f)["arguments"]["data"]
    if data["benchmark"] != "synthetic":
        sys.exit(f"{args.ner_model} was trained on {data['benchmark']!r}, not on the synthetic benchmark: "
                 "give --posts.")
    posts = synthetic_posts(args.num_synthetic_posts, seed=args.seed, num_tasks=data["synthetic_num_tasks"])
    path = write_posts(posts, os.path.join(args.output_dir, "synthetic_posts"))
    return path, posts


def main():
    (args,) = HfArgumentParser(BuildArguments).parse_args_into_dataclasses()
    check_models(args)
    truth = None
    path = args.posts
    if path is None:
        path, truth = synthetic_input(args)
    posts, read_errors = read_posts(path)

    # pipeline_class: this package's pipeline, not the copy that checkpoints carry for trust_remote_code
    pipe = transformers.pipeline(KG_TASK, model=args.ner_model, re_model=args.re_model, device=args.device,
                                 batch_size=args.batch_size, pipeline_class=MSPTKnowledgeGraphPipeline)  # fmt: skip
    results = pipe(posts, threshold=args.threshold, entity_threshold=args.entity_threshold,
                   re_batch_size=args.re_batch_size, progress_bar=None if args.progress_bar else False)  # fmt: skip

    graph = MSPTKnowledgeGraph().add(results)
    entities_path, triples_path = graph.write_jsonl(args.output_dir)
    written = [entities_path, triples_path]
    try:
        rdf_triples = graph.write_turtle(os.path.join(args.output_dir, "graph.ttl"), base=args.base_iri)
        written.append(os.path.join(args.output_dir, "graph.ttl"))
    except ImportError as err:
        rdf_triples = None
        print(f"Turtle not written: {err}")
    if args.picture:
        for name, write in (("graph.png", graph.write_png), ("graph.html", graph.write_html)):
            try:
                written.append(write(os.path.join(args.output_dir, name), max_nodes=args.picture_max_nodes))
            except ImportError as err:
                print(f"{name} skipped: {err}")
    report = [{"id": e.id, "status": "failed", "error": e.error, "where": e.where, "warnings": []} for e in read_errors]
    report += [{"id": r["id"], "status": "failed" if r["error"] else "flagged" if r["warnings"] else "ok",
                "error": r["error"], "where": path, "warnings": r["warnings"]} for r in results]  # fmt: skip
    write_jsonl(report, os.path.join(args.output_dir, "report.jsonl"))
    written.append(os.path.join(args.output_dir, "report.jsonl"))

    failed = [r for r in report if r["status"] == "failed"]
    flagged = [r for r in report if r["status"] == "flagged"]
    entities, triples = graph.entity_records(), graph.triple_records()
    print(f"Posts: {len(report)} read, {len(report) - len(failed)} processed, {len(failed)} failed, "
          f"{len(flagged)} flagged")  # fmt: skip
    print(f"Entities: {sum(len(e['mentions']) for e in entities)} mentions -> {len(entities)} nodes; "
          f"triples: {sum(len(t['evidence']) for t in triples)} -> {len(triples)} facts"
          + ("" if rdf_triples is None else f"; RDF: {rdf_triples} triples"))  # fmt: skip
    for r in failed + flagged:
        print(f"  {r['status']} post {r['id']!r} ({r['where']}): {r['error'] or '; '.join(r['warnings'])}")
    if truth is not None:
        s = score_posts(truth, results)
        print(f"Against the synthetic truth: entities P {s['entity_precision']:.3f} R {s['entity_recall']:.3f}, "
              f"triples P {s['triple_precision']:.3f} R {s['triple_recall']:.3f}")  # fmt: skip
    print("Wrote " + ", ".join(written))
    summary = {"posts": len(report), "failed": len(failed), "flagged": len(flagged), "entities": len(entities),
               "triples": len(triples), "rdf_triples": rdf_triples}  # fmt: skip
    print(f"Summary: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
