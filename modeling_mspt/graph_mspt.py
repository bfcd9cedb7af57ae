"""`MSPTKnowledgeGraph`: the pipeline's per-post results merged into one graph, as JSON Lines and RDF.

Entities with the same text (whitespace-normalised, case kept) are one node, whatever post they come from; each
mention keeps its provenance (post, word and character span, image, type, confidence). Triples with the same
`(head text, relation, tail text)` are one fact with one evidence record per post and entity pair.

RDF vocabulary (`to_rdf`, serialised as Turtle by `write_turtle`); `base` defaults to `http://example.org/mspt/`:

    mspt:  <base>vocab#      mspt:Entity, mspt:Mention, mspt:Post (classes); mspt:mentionOf, mspt:entityType,
                             mspt:confidence (xsd:double), mspt:wordStart / mspt:wordEnd (word span [start, end)),
                             mspt:charStart / mspt:charEnd, mspt:postId, mspt:image (the image path as given),
                             mspt:headMention / mspt:tailMention (a statement's evidence)
    type:  <base>type/       one rdfs:Class per entity type (rdfs:subClassOf mspt:Entity, rdfs:label = the type)
    rel:   <base>relation/   one rdf:Property per relation (rdfs:label = the relation name, e.g. /per/org/member_of)
    entity: <base>entity/    one node per entity text, local name = the text's slug (`Ada_Berg`)
    post:  <base>post/       one per post that went through (local name = the URL-quoted post id)
    mention: <base>mention/  `<post>_<start>-<end>`: an entity mention (word span) in a post
    statement: <base>statement/  `<post>_<head start>-<head end>_<tail start>-<tail end>`: evidence of a fact
    prov:  PROV-O            posts are prov:Entity; mentions and statements prov:wasDerivedFrom their post

A node is `entity:<slug> a mspt:Entity, type:<T> ; rdfs:label "<text>"` (one rdf:type per type its mentions
got); a fact is the direct edge `entity:<head> rel:<r> entity:<tail>`, and each piece of evidence is an
`rdf:Statement` about that edge (standard reification) with its confidence, mentions and post.
"""

import json
import os
import re
from collections import Counter
from urllib.parse import quote

DEFAULT_BASE_IRI = "http://example.org/mspt/"


class MSPTKnowledgeGraph:
    """Merge `MSPTKnowledgeGraphPipeline` results: `add(results)`, then `entity_records()` / `triple_records()`,
    `write_jsonl(folder)`, `to_rdf()` / `write_turtle(path)`."""

    def __init__(self):
        self._entities: dict[str, list[dict]] = {}  # text -> mentions
        self._triples: dict[tuple[str, str, str], list[dict]] = {}  # (head, relation, tail) -> evidence
        self.posts: dict[str, str | None] = {}  # post id -> image reference, for the posts that went through

    def add(self, results: list[dict]) -> "MSPTKnowledgeGraph":
        """Merge pipeline results (failed posts are skipped). A post id already in the graph, or twice in `results`,
        is a `ValueError` and nothing is added: two posts with one id would merge their mentions and evidence."""
        counts = Counter(r["id"] for r in results if not r.get("error"))
        repeated = sorted(i for i, n in counts.items() if n > 1 or i in self.posts)
        if repeated:
            raise ValueError(f"post id {repeated[0]!r} is already in the graph or twice in these results "
                             f"({len(repeated)} such id(s)): two posts with one id would merge their mentions and "
                             "evidence. Give every post a unique id.")
        for result in results:
            if result.get("error"):
                continue
            self.posts[result["id"]] = result.get("image")
            for entity in result["entities"]:
                mention = {**entity["provenance"], "type": entity["type"], "score": entity["score"]}
                self._entities.setdefault(entity["text"], []).append(mention)
            for triple in result["triples"]:
                evidence = {**triple["provenance"], "head_type": triple["head_type"],
                            "tail_type": triple["tail_type"], "score": triple["score"]}  # fmt: skip
                self._triples.setdefault((triple["head"], triple["relation"], triple["tail"]), []).append(evidence)
        return self

    def entity_records(self) -> list[dict]:
        """One record per entity text: `id`, `text`, `type` (most mentioned; ties: highest total confidence),
        `types` (mention counts), `score` (highest), `mentions`."""
        slugs = _unique_slugs(self._entities)
        records = []
        for text, mentions in self._entities.items():
            counts = Counter(m["type"] for m in mentions)
            total = Counter()
            for m in mentions:
                total[m["type"]] += m["score"]
            best = max(counts, key=lambda t: (counts[t], total[t]))
            records.append({"id": slugs[text], "text": text, "type": best, "types": dict(counts),
                            "score": max(m["score"] for m in mentions), "mentions": mentions})  # fmt: skip
        return records

    def triple_records(self) -> list[dict]:
        """One record per `(head, relation, tail)`: `head_id`/`tail_id` (the entity records' ids), `score`
        (highest), `evidence` (one per post and entity pair)."""
        slugs = _unique_slugs(self._entities)
        return [{"head": h, "relation": r, "tail": t, "head_id": slugs[h], "tail_id": slugs[t],
                 "score": max(e["score"] for e in evidence), "evidence": evidence}
                for (h, r, t), evidence in self._triples.items()]  # fmt: skip

    def write_jsonl(self, folder: str) -> tuple[str, str]:
        """`entities.jsonl` and `triples.jsonl` in `folder` (created); returns their paths."""
        os.makedirs(folder, exist_ok=True)
        paths = os.path.join(folder, "entities.jsonl"), os.path.join(folder, "triples.jsonl")
        for path, records in zip(paths, (self.entity_records(), self.triple_records())):
            write_jsonl(records, path)
        return paths

    def to_rdf(self, base: str = DEFAULT_BASE_IRI):
        """An `rdflib.Graph` in the vocabulary of the module docstring (needs `pip install mspt[kg]`)."""
        try:
            from rdflib import RDF, RDFS, XSD, Graph, Literal, Namespace
        except ImportError as err:
            raise ImportError("Writing RDF needs rdflib: `pip install rdflib` (or the package's `kg` extra).") from err
        spaces = {name: Namespace(f"{base}{path}") for name, path in (
            ("mspt", "vocab#"), ("type", "type/"), ("rel", "relation/"), ("entity", "entity/"), ("post", "post/"),
            ("mention", "mention/"), ("statement", "statement/"))}  # fmt: skip
        spaces["prov"] = Namespace("http://www.w3.org/ns/prov#")
        graph = Graph()
        for prefix, namespace in spaces.items():
            graph.bind(prefix, namespace)
        mspt, types, relations, prov = spaces["mspt"], spaces["type"], spaces["rel"], spaces["prov"]

        def post_iri(post_id):
            return spaces["post"][quote(post_id, safe="")]

        def mention_iri(post_id, span):
            return spaces["mention"][f"{quote(post_id, safe='')}_{span[0]}-{span[1]}"]

        type_slugs = _unique_slugs(sorted({m["type"] for ms in self._entities.values() for m in ms}))
        relation_slugs = _unique_slugs(sorted({r for _, r, _ in self._triples}))
        for name, slug in type_slugs.items():
            graph.add((types[slug], RDF.type, RDFS.Class))
            graph.add((types[slug], RDFS.subClassOf, mspt.Entity))
            graph.add((types[slug], RDFS.label, Literal(name)))
        for name, slug in relation_slugs.items():
            graph.add((relations[slug], RDF.type, RDF.Property))
            graph.add((relations[slug], RDFS.label, Literal(name)))
        for post_id, image in self.posts.items():
            post = post_iri(post_id)
            graph.add((post, RDF.type, mspt.Post))
            graph.add((post, RDF.type, prov.Entity))
            graph.add((post, mspt.postId, Literal(post_id)))
            if image:
                graph.add((post, mspt.image, Literal(image)))

        for record in self.entity_records():
            node = spaces["entity"][record["id"]]
            graph.add((node, RDF.type, mspt.Entity))
            graph.add((node, RDFS.label, Literal(record["text"])))
            for m in record["mentions"]:
                graph.add((node, RDF.type, types[type_slugs[m["type"]]]))
                mention, kind = mention_iri(m["post_id"], m["span"]), types[type_slugs[m["type"]]]
                for p, o in ((RDF.type, mspt.Mention), (mspt.mentionOf, node), (mspt.entityType, kind),
                             (mspt.confidence, Literal(m["score"], datatype=XSD.double)),
                             (mspt.wordStart, Literal(m["span"][0])), (mspt.wordEnd, Literal(m["span"][1])),
                             (mspt.charStart, Literal(m["char_span"][0])), (mspt.charEnd, Literal(m["char_span"][1])),
                             (prov.wasDerivedFrom, post_iri(m["post_id"]))):  # fmt: skip
                    graph.add((mention, p, o))
        for record in self.triple_records():
            head, tail = spaces["entity"][record["head_id"]], spaces["entity"][record["tail_id"]]
            relation = relations[relation_slugs[record["relation"]]]
            graph.add((head, relation, tail))
            for e in record["evidence"]:
                hs, ts = e["head_span"], e["tail_span"]
                statement = spaces["statement"][f"{quote(e['post_id'], safe='')}_{hs[0]}-{hs[1]}_{ts[0]}-{ts[1]}"]
                for p, o in ((RDF.type, RDF.Statement), (RDF.subject, head), (RDF.predicate, relation),
                             (RDF.object, tail), (mspt.confidence, Literal(e["score"], datatype=XSD.double)),
                             (mspt.headMention, mention_iri(e["post_id"], hs)),
                             (mspt.tailMention, mention_iri(e["post_id"], ts)),
                             (prov.wasDerivedFrom, post_iri(e["post_id"]))):  # fmt: skip
                    graph.add((statement, p, o))
        return graph

    def write_turtle(self, path: str, base: str = DEFAULT_BASE_IRI) -> int:
        """Serialise `to_rdf(base)` as Turtle to `path`; returns the number of RDF triples written."""
        graph = self.to_rdf(base)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        graph.serialize(destination=path, format="turtle", encoding="utf-8")
        return len(graph)


def write_jsonl(records: list[dict], path: str):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _unique_slugs(names) -> dict[str, str]:
    """IRI-safe local names (`[A-Za-z0-9_]`), unique: a name whose slug is taken gets `_2`, `_3`, ... in order."""
    slugs, taken = {}, set()
    for name in names:
        base = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_") or "x"
        slug, n = base, 1
        while slug in taken:
            n += 1
            slug = f"{base}_{n}"
        slugs[name] = slug
        taken.add(slug)
    return slugs


__all__ = ["DEFAULT_BASE_IRI", "MSPTKnowledgeGraph", "read_jsonl", "write_jsonl"]
