"""`MSPTKnowledgeGraph`: the pipeline's per-post results merged into one graph, as JSON Lines, RDF and a picture.

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

Pictures (`write_png`, needs matplotlib, the `plots` extra; `write_html`, no extra): the entities that take part in
a triple, coloured by their type (legend; matplotlib's tab10 over the graph's types in sorted order, evenly spaced
hues past 10 types), one arrow per fact labelled by its relation (facts between the same two entities bend apart, a
fact from an entity to itself is a loop). Entities without a triple are not drawn (the title counts them). At most
`max_nodes` (default 100, where a picture stays readable) entities are drawn: the largest connected groups first,
within a group the entities with the most neighbours; the title says how many of the entities in triples are shown.
Each group is laid out on its own (networkx, which comes with torch: Kamada-Kawai, or a seeded spring layout without
scipy), entities in text order, and the groups are packed in rows, largest first: a graph gets the same layout on
every run, whatever the order of its posts (the HTML is the same bytes). The HTML page is self-contained (inline
SVG, no script, nothing fetched), and hovering an entity or an arrow shows its type, mentions, evidence and
confidence.
"""

import colorsys
import html
import json
import os
import re
import warnings
from collections import Counter
from urllib.parse import quote

import numpy as np

DEFAULT_BASE_IRI = "http://example.org/mspt/"
PICTURE_MAX_NODES = 100
PICTURE_SIZE = (1600, 1200)  # pixels, width x height
# matplotlib's "tab10", written out so that the HTML needs no matplotlib; more types get evenly spaced hues
TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
FONT_PX = {"title": 16, "legend": 13, "node": 11, "edge": 9}
EDGE_COLOR = "#555555"


class MSPTKnowledgeGraph:
    """Merge `MSPTKnowledgeGraphPipeline` results: `add(results)`, then `entity_records()` / `triple_records()`,
    `write_jsonl(folder)`, `to_rdf()` / `write_turtle(path)`, `write_png(path)` / `write_html(path)`."""

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

    def drawing(self, max_nodes: int = PICTURE_MAX_NODES, seed: int = 0, size: tuple[int, int] = PICTURE_SIZE):
        """What `write_png` and `write_html` draw, in pixels of a `size` (width, height) canvas, y down: `title`,
        `message` (why nothing is drawn, else None), `radius` (of a node), `nodes` (`text`, `type`, `color`, `x`, `y`,
        `tooltip`), `edges` (`relation`, `path`: start, control and end point of a quadratic Bezier curve whose end is
        the arrow's tip, `label`: where the relation is written, `tooltip`) and `legend` (`type`, `color`, `x`, `y`)."""
        if not isinstance(max_nodes, int) or max_nodes < 1:
            raise ValueError(f"max_nodes={max_nodes!r}: give a positive number of entities to draw.")
        width, height = size
        if width < 400 or height < 300:
            raise ValueError(f"size={size!r}: a picture needs at least 400 x 300 pixels (width, height).")
        records, triples = self.entity_records(), self.triple_records()
        nx = _networkx()
        linked = nx.Graph((t["head"], t["tail"]) for t in triples)  # the entities in a triple
        mentions = {e["text"]: len(e["mentions"]) for e in records}
        order = [name for group in sorted(nx.connected_components(linked), key=lambda c: (-len(c), min(c)))
                 for name in sorted(group, key=lambda n: (-linked.degree(n), -mentions[n], n))]  # fmt: skip
        chosen = set(order[:max_nodes])
        triples = sorted((t for t in triples if t["head"] in chosen and t["tail"] in chosen),
                         key=lambda t: (t["head"], t["relation"], t["tail"]))  # fmt: skip
        names = {n for t in triples for n in (t["head"], t["tail"])}  # a chosen entity left without a triple goes
        kept = sorted((e for e in records if e["text"] in names), key=lambda e: e["text"])
        title = f"Knowledge graph: {len(kept)} entities, {len(triples)} triples"
        if len(kept) < len(linked):
            title += f" (largest connected groups first: {len(kept)} of the {len(linked)} entities in triples)"
        if len(records) > len(linked):
            title += f"; not drawn: {len(records) - len(linked)} entity(ies) without a triple"
        all_types = sorted({e["type"] for e in records})
        colors = dict(zip(all_types, _palette(len(all_types))))
        drawing = {"size": (width, height), "title": title, "message": None, "nodes": [], "edges": [], "legend": []}
        radius = round(float(np.clip(0.06 * min(width, height) / max(len(kept), 1) ** 0.5, 4, 12)), 1)
        drawing["radius"] = radius
        if not kept:
            drawing["message"] = (f"No triples to draw: {len(records)} entity(ies) from {len(self.posts)} post(s), "
                                  "none linked by a relation.")  # fmt: skip
            return drawing
        types = sorted({e["type"] for e in kept})
        legend_width = min(max(8 * max(map(len, types)) + 40, 120), 320)
        for i, kind in enumerate(types):
            drawing["legend"].append({"type": kind, "color": colors[kind], "x": width - legend_width + 10.0,
                                      "y": 60.0 + i * 1.8 * FONT_PX["legend"]})  # fmt: skip
        box = (30, 50, width - legend_width - 130, height - 30)  # room for the title, legend and node names
        xy = _layout([e["text"] for e in kept], [(t["head"], t["tail"]) for t in triples], seed, box)
        for e in kept:
            counts = ", ".join(f"{k} {n}" for k, n in sorted(e["types"].items()))
            posts = len({m["post_id"] for m in e["mentions"]})
            tooltip = (f"{e['text']}\ntype {e['type']} (mentions by type: {counts})\n{len(e['mentions'])} "
                       f"mention(s) in {posts} post(s), confidence up to {e['score']:.2f}")  # fmt: skip
            x, y = xy[e["text"]]
            drawing["nodes"].append({"text": e["text"], "type": e["type"], "color": colors[e["type"]], "x": x,
                                     "y": y, "tooltip": tooltip})  # fmt: skip
        for t, (path, label) in zip(triples, _edge_geometry(triples, xy, radius)):
            tooltip = (f"{t['head']} -[{t['relation']}]-> {t['tail']}\n{len(t['evidence'])} piece(s) of evidence, "
                       f"confidence up to {t['score']:.2f}")  # fmt: skip
            drawing["edges"].append({"relation": t["relation"], "path": path, "label": label, "tooltip": tooltip})
        return drawing

    def write_png(self, path: str, max_nodes: int = PICTURE_MAX_NODES, seed: int = 0,
                  size: tuple[int, int] = PICTURE_SIZE, dpi: int = 100) -> str:  # fmt: skip
        """The picture of `drawing(max_nodes, seed, size)` as a `size` PNG (needs matplotlib); returns `path`."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            from matplotlib.patches import Circle, FancyArrowPatch
            from matplotlib.path import Path
        except ImportError as err:
            raise ImportError("Drawing graph.png needs matplotlib: `pip install matplotlib` (or the package's `plots` "
                              "extra, `pip install -e \".[plots]\"`).") from err  # fmt: skip
        d = self.drawing(max_nodes, seed, size)
        (width, height), r, pt = d["size"], d["radius"], 72 / dpi  # font sizes: pixels -> points
        figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
        ax = figure.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)  # y down, as in the SVG
        ax.set_axis_off()

        def text(x, y, s, kind, **kwargs):  # parse_math=False: a post's "$" is text, not mathtext
            ax.text(x, y, s, fontsize=FONT_PX[kind] * pt, va="center", parse_math=False, **kwargs)

        text(30, 25, d["title"], "title", weight="bold")
        if d["message"]:
            text(width / 2, height / 2, d["message"], "title", ha="center")
        for e in d["edges"]:
            curve = Path(e["path"], [Path.MOVETO, Path.CURVE3, Path.CURVE3])
            ax.add_patch(FancyArrowPatch(path=curve, arrowstyle="-|>", mutation_scale=10, color=EDGE_COLOR, lw=1))
            text(*e["label"], e["relation"], "edge", ha="center", color="#333333",
                 bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.7})
        for n in d["nodes"]:
            ax.add_patch(Circle((n["x"], n["y"]), r, facecolor=n["color"], edgecolor="white", lw=1, zorder=2))
            text(n["x"] + r + 3, n["y"], n["text"], "node")
        for item in d["legend"]:
            ax.add_patch(Circle((item["x"], item["y"]), 6, facecolor=item["color"], edgecolor="none"))
            text(item["x"] + 12, item["y"], item["type"], "legend")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with warnings.catch_warnings():  # the HTML view shows the characters the PNG's font lacks
            warnings.filterwarnings("ignore", message="Glyph .* missing from")
            FigureCanvasAgg(figure).print_png(path)  # exactly `size`, whatever the user's savefig settings
        return path

    def write_html(self, path: str, max_nodes: int = PICTURE_MAX_NODES, seed: int = 0,
                   size: tuple[int, int] = PICTURE_SIZE) -> str:  # fmt: skip
        """The picture of `drawing(max_nodes, seed, size)` as one self-contained HTML page (inline SVG, hover for
        details, no script, nothing fetched); returns `path`."""
        d = self.drawing(max_nodes, seed, size)
        style = ("body{font-family:sans-serif;margin:1em} svg{max-width:100%;height:auto;border:1px solid #ddd} "
                 "g.node:hover circle{stroke:#000;stroke-width:2} g.edge:hover path{stroke:#d00;stroke-width:2}")
        note = ("Hover over an entity or an arrow for its type, mentions, evidence and confidence. Written by "
                "<code>MSPTKnowledgeGraph.write_html</code>; every entity is in <code>entities.jsonl</code>, every "
                "triple with its evidence in <code>triples.jsonl</code>.")
        page = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"/>',
                f"<title>{_escape(d['title'])}</title>", f"<style>{style}</style>", "</head><body>", f"<p>{note}</p>",
                _svg(d), "</body></html>", ""]  # fmt: skip
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(page))
        return path


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


def _palette(n: int) -> list[str]:
    if n <= len(TAB10):
        return list(TAB10[:n])
    return ["#%02x%02x%02x" % tuple(round(255 * c) for c in colorsys.hls_to_rgb(i / n, 0.45, 0.65)) for i in range(n)]


def _networkx():
    try:
        import networkx
    except ImportError as err:
        raise ImportError("Drawing the graph needs networkx (it comes with torch): `pip install networkx`.") from err
    return networkx


def _layout(names: list[str], pairs: list[tuple[str, str]], seed: int, box: tuple) -> dict[str, tuple[float, float]]:
    """Each connected group of `names` laid out on its own, the groups packed in rows (largest first) into square
    cells of side sqrt(size), the whole scaled into `box` (x0, y0, x1, y1) keeping its aspect."""
    nx = _networkx()
    graph = nx.Graph()
    graph.add_nodes_from(names)
    graph.add_edges_from((h, t) for h, t in pairs if h != t)
    groups = sorted((sorted(c) for c in nx.connected_components(graph)), key=lambda c: (-len(c), c[0]))
    sides = [len(g) ** 0.5 for g in groups]
    (x0, y0, x1, y1), units = box, {}
    row_width = max(sides[0], (sum(s * s for s in sides) * (x1 - x0) / (y1 - y0)) ** 0.5)
    x = y = row = 0.0
    for group, side in zip(groups, sides):
        if x > 0 and x + side > row_width + 1e-9:
            x, y, row = 0.0, y + row, 0.0
        sub = nx.Graph()
        sub.add_nodes_from(group)  # text order, so the seeded layout does not depend on the order of the posts
        sub.add_edges_from(graph.subgraph(group).edges)
        try:  # Kamada-Kawai (deterministic, clearer than a spring layout on tree-like groups) needs scipy
            pos = nx.kamada_kawai_layout(sub) if len(group) > 1 else {group[0]: (0.0, 0.0)}
        except ImportError:
            pos = nx.spring_layout(sub, seed=seed)
        xy = np.array([pos[n] for n in group], dtype=np.float64).reshape(len(group), 2)  # (n, 2)
        xy -= xy.min(0)
        xy = xy / xy.max() if xy.max() > 0 else xy + 0.5  # longest side 1, aspect kept
        xy += (1 - xy.max(0)) / 2  # centred in the unit square
        for name, (u, v) in zip(group, xy):
            units[name] = (x + side * (0.1 + 0.8 * u), y + side * (0.1 + 0.8 * v))
        x, row = x + side, max(row, side)
    uv = np.array([units[n] for n in names])  # (n, 2) in cell units
    width, height = max(uv[:, 0].max(), 1e-9), max(uv[:, 1].max(), 1e-9)
    scale = min((x1 - x0) / width, (y1 - y0) / height)
    uv = np.array([x0 + (x1 - x0 - scale * width) / 2, y0 + (y1 - y0 - scale * height) / 2]) + scale * uv
    return {name: (round(float(u), 1), round(float(v), 1)) for name, (u, v) in zip(names, uv)}


def _edge_geometry(triples: list[dict], xy: dict, r: float) -> list[tuple[list, tuple]]:
    """Per triple: (start, control, end) of its quadratic Bezier curve, cut at the two node circles, and its label
    point. The k facts between two entities (either direction) bend apart; a fact from an entity to itself is a loop."""
    groups: dict[frozenset, list[int]] = {}
    for i, t in enumerate(triples):
        groups.setdefault(frozenset((t["head"], t["tail"])), []).append(i)
    shapes = [None] * len(triples)
    for members in groups.values():
        for k, i in enumerate(members):
            head, tail = triples[i]["head"], triples[i]["tail"]
            p0, p1 = np.array(xy[head]), np.array(xy[tail])
            if head == tail:
                angle = -np.pi / 2 + 0.9 * k  # the k-th loop of an entity turns clockwise from the top
                start, end = (p0 + r * np.array([np.cos(a), np.sin(a)]) for a in (angle - 0.9, angle + 0.9))
                control = p0 + 7 * r * np.array([np.cos(angle), np.sin(angle)])
            else:
                a, b = sorted((head, tail))  # one frame for both directions, so A->B and B->A bend apart
                u = np.array(xy[b]) - np.array(xy[a])
                control = (p0 + p1) / 2 + (k - (len(members) - 1) / 2) * 0.4 * np.array([-u[1], u[0]])
                start, end = p0 + r * _unit(control - p0), p1 + r * _unit(control - p1)
            label = 0.25 * start + 0.5 * control + 0.25 * end
            points = [tuple(np.round(p, 1).tolist()) for p in (start, control, end)]
            shapes[i] = (points, tuple(np.round(label, 1).tolist()))
    return shapes


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.hypot(*v))
    return v / norm if norm > 0 else v


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _escape(text: str) -> str:
    """Post text is untrusted: markup characters escaped, characters XML forbids replaced by U+FFFD."""
    return html.escape(_XML_INVALID.sub("\ufffd", text), quote=True)


def _svg(d: dict) -> str:
    """The drawing as one `<svg>` element: a `<g class="edge|node|legend">` per item, its `<title>` the tooltip."""
    (width, height), r = d["size"], d["radius"]

    def tag(name, body=None, **attrs):  # attribute names: font_size -> font-size, class_ -> class
        attrs = "".join(f' {k.rstrip("_").replace("_", "-")}="{f"{v:.1f}" if isinstance(v, float) else v}"'
                        for k, v in attrs.items())  # fmt: skip
        return f"<{name}{attrs}/>" if body is None else f"<{name}{attrs}>{body}</{name}>"

    def text(x, y, s, kind, **attrs):
        return tag("text", _escape(s), x=float(x), y=float(y), font_size=FONT_PX[kind], dominant_baseline="central",
                   **attrs)  # fmt: skip

    arrow = tag("marker", tag("path", d="M0,0L10,5L0,10z", fill=EDGE_COLOR), id="arrow", viewBox="0 0 10 10", refX=10,
                refY=5, markerWidth=7, markerHeight=7, orient="auto")  # fmt: skip
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, sans-serif">', tag("defs", arrow),
             tag("rect", width="100%", height="100%", fill="white"),
             text(30, 25, d["title"], "title", font_weight="bold")]
    if d["message"]:
        lines.append(text(width / 2, height / 2, d["message"], "title", text_anchor="middle", class_="message"))
    for e in d["edges"]:
        (x0, y0), (cx, cy), (x1, y1) = e["path"]
        curve = tag("path", d=f"M{x0:.1f} {y0:.1f}Q{cx:.1f} {cy:.1f} {x1:.1f} {y1:.1f}", fill="none", stroke=EDGE_COLOR,
                    marker_end="url(#arrow)")  # fmt: skip
        label = text(*e["label"], e["relation"], "edge", text_anchor="middle", fill="#333333", stroke="white",
                     stroke_width=3, paint_order="stroke")  # fmt: skip
        lines.append(tag("g", tag("title", _escape(e["tooltip"])) + curve + label, class_="edge"))
    for n in d["nodes"]:
        circle = tag("circle", cx=n["x"], cy=n["y"], r=float(r), fill=n["color"], stroke="white")
        name = text(n["x"] + r + 3, n["y"], n["text"], "node")
        lines.append(tag("g", tag("title", _escape(n["tooltip"])) + circle + name, class_="node"))
    for item in d["legend"]:
        circle = tag("circle", cx=item["x"], cy=item["y"], r=6.0, fill=item["color"])
        lines.append(tag("g", circle + text(item["x"] + 12, item["y"], item["type"], "legend"), class_="legend"))
    return "\n".join(lines + ["</svg>"])


__all__ = ["DEFAULT_BASE_IRI", "PICTURE_MAX_NODES", "MSPTKnowledgeGraph", "read_jsonl", "write_jsonl"]
