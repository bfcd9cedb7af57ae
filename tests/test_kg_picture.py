"""The knowledge-graph picture (issue 15, item 6): `MSPTKnowledgeGraph.write_png` / `write_html` on small graphs with
known entities and triples, and `examples/build_kg.py` writing it (or saying why not) with tiny random models."""

import importlib.util
import json
import runpy
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NER_LABELS, RE_LABELS, make_config
from PIL import Image

from modeling_mspt import MSPTForRelationExtraction, MSPTForTokenClassification, MSPTProcessor
from modeling_mspt.graph_mspt import TAB10, MSPTKnowledgeGraph, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<b>Ada & \"Co\"</b> 'x' $\\frac{$ \x07"  # markup, quotes, a broken mathtext formula, a control character
TYPES = {"Ada Berg": "PER", "Ben Cole": "PER", HOSTILE: "PER", "Acme": "ORG", "Paris": "LOC", "Rome": "LOC",
         "Lonely": "MISC"}  # fmt: skip
TRIPLES = [("Ada Berg", "/per/org/member_of", "Acme"), ("Ben Cole", "/per/per/peer", "Ada Berg"),
           ("Acme", "/org/loc/locate_at", "Paris"), ("Acme", "/org/loc/headquarters", "Paris"),
           ("Paris", "/loc/org/home_of", "Acme"), (HOSTILE, "/per/loc/lives_in", "Rome"),
           ("Ada Berg", "/per/per/alias", "Ada Berg")]  # fmt: skip


def _result(post_id: str, names: list[str], triples: list[tuple], types: dict = TYPES) -> dict:
    """A pipeline result for one post whose entities are `names` (word i = entity i)."""
    span = {name: [i, i + 1] for i, name in enumerate(names)}
    entities = [{"text": n, "type": types[n], "score": 0.9,
                 "provenance": {"post_id": post_id, "span": span[n], "char_span": [0, 1], "image": None}}
                for n in names]  # fmt: skip
    relations = [{"head": h, "relation": r, "tail": t, "head_type": types[h], "tail_type": types[t], "score": 0.8,
                  "provenance": {"post_id": post_id, "head_span": span[h], "tail_span": span[t], "image": None}}
                 for h, r, t in triples]  # fmt: skip
    return {"id": post_id, "image": None, "error": None, "warnings": [], "entities": entities, "triples": relations}


def _results() -> list[dict]:
    return [_result("p1", ["Ada Berg", "Ben Cole", "Acme", "Lonely"], TRIPLES[:2] + TRIPLES[-1:]),
            _result("p2", ["Acme", "Paris"], TRIPLES[2:5]), _result("p3", [HOSTILE, "Rome"], TRIPLES[5:6])]


def _svg(html_path: Path) -> ET.Element:
    """The page's `<svg>`, parsed as XML: this fails if a name's markup was not escaped."""
    page = html_path.read_text(encoding="utf-8")
    return ET.fromstring(page[page.index("<svg") : page.index("</svg>") + len("</svg>")])


def _groups(svg: ET.Element, kind: str) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if g.get("class") == kind]


def test_png_is_an_image_of_the_requested_size_with_one_colour_per_type(tmp_path):
    path = MSPTKnowledgeGraph().add(_results()).write_png(str(tmp_path / "sub" / "graph.png"), size=(640, 480))
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (640, 480)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    # the graph's types sorted: LOC, MISC, ORG, PER -> tab10[0..3]; MISC ("Lonely") is in no triple: not drawn
    for i, kind in enumerate(["LOC", "MISC", "ORG", "PER"]):
        rgb = np.array([int(TAB10[i][k : k + 2], 16) for k in (1, 3, 5)])
        count = (pixels == rgb).all(1).sum()  # the inside of the nodes and of the legend's dot
        assert (count > 20) == (kind != "MISC"), (kind, count)


def test_html_has_every_entity_and_relation_coloured_by_type(tmp_path):
    graph = MSPTKnowledgeGraph().add(_results())
    svg = _svg(Path(graph.write_html(str(tmp_path / "graph.html"))))
    nodes = {g.find(f"{SVG}text").text: g.find(f"{SVG}circle").get("fill") for g in _groups(svg, "node")}
    drawn = {n.replace("\x07", "\ufffd") for n in TYPES if n != "Lonely"}  # the control character cannot be in XML
    assert set(nodes) == drawn
    colours = {}
    for name, fill in nodes.items():
        colours.setdefault(TYPES[name.replace("\ufffd", "\x07")], set()).add(fill)
    assert all(len(fills) == 1 for fills in colours.values()), colours  # one colour within a type
    assert len({fills.pop() for fills in colours.values()}) == 3  # PER, ORG, LOC: three different colours
    legend = {g.find(f"{SVG}text").text: g.find(f"{SVG}circle").get("fill") for g in _groups(svg, "legend")}
    assert legend == {kind: nodes[name] for name, kind in TYPES.items() if name in nodes}
    edges = _groups(svg, "edge")
    assert sorted(g.find(f"{SVG}text").text for g in edges) == sorted(r for _, r, _ in TRIPLES)
    assert all(g.find(f"{SVG}path").get("marker-end") == "url(#arrow)" for g in edges)  # directed
    tooltips = {g.find(f"{SVG}title").text.split("\n")[0] for g in edges}
    assert "Paris -[/loc/org/home_of]-> Acme" in tooltips and "Acme -[/org/loc/locate_at]-> Paris" in tooltips
    paths = {g.find(f"{SVG}path").get("d") for g in edges}
    assert len(paths) == len(edges)  # the three facts between Acme and Paris do not lie on top of each other
    title = svg.find(f"{SVG}text").text
    assert "6 entities, 7 triples" in title and "not drawn: 1 entity(ies) without a triple" in title


def test_untrusted_names_are_escaped_and_draw_in_the_png(tmp_path):
    graph = MSPTKnowledgeGraph().add(_results())
    page = Path(graph.write_html(str(tmp_path / "graph.html"))).read_text(encoding="utf-8")
    assert "<b>" not in page and "</b>" not in page and "\x07" not in page
    assert "&lt;b&gt;Ada &amp; &quot;Co&quot;&lt;/b&gt; &#x27;x&#x27;" in page
    svg = _svg(tmp_path / "graph.html")
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert HOSTILE.replace("\x07", "\ufffd") in texts  # parsed back, the name is the post's text
    assert sum(HOSTILE.replace("\x07", "\ufffd") in (t.text or "") for t in svg.iter(f"{SVG}title")) == 2  # node, edge
    graph.write_png(str(tmp_path / "graph.png"), size=(640, 480))  # "$\frac{$" as mathtext: ValueError
    assert Image.open(tmp_path / "graph.png").size == (640, 480)


@pytest.mark.parametrize("results", [[], [_result("p1", ["Ada Berg", "Lonely"], [])]], ids=["empty", "no-triple"])
def test_a_graph_without_triples_says_so(results, tmp_path):
    graph = MSPTKnowledgeGraph().add(results)
    svg = _svg(Path(graph.write_html(str(tmp_path / "graph.html"))))
    messages = [t.text for t in svg.iter(f"{SVG}text") if t.get("class") == "message"]
    assert messages == [f"No triples to draw: {2 * len(results)} entity(ies) from {len(results)} post(s), none linked "
                        "by a relation."]  # fmt: skip
    assert not _groups(svg, "node") and not _groups(svg, "edge")
    with Image.open(graph.write_png(str(tmp_path / "graph.png"), size=(400, 300))) as image:
        assert image.size == (400, 300)
        assert len(image.convert("L").getcolors(1 << 16)) > 1  # the message is in the picture: not a blank page


def test_the_picture_is_the_same_whatever_the_order_of_the_posts(tmp_path):
    first = MSPTKnowledgeGraph().add(_results()).write_html(str(tmp_path / "a.html"))
    again = MSPTKnowledgeGraph().add(_results()).write_html(str(tmp_path / "b.html"))
    reversed_posts = MSPTKnowledgeGraph().add(_results()[::-1]).write_html(str(tmp_path / "c.html"))
    assert Path(first).read_bytes() == Path(again).read_bytes() == Path(reversed_posts).read_bytes()


def test_without_scipy_the_layout_is_the_seeded_spring_layout(monkeypatch):
    graph = MSPTKnowledgeGraph().add(_results())
    kamada_kawai = {n["text"]: (n["x"], n["y"]) for n in graph.drawing()["nodes"]}
    monkeypatch.setitem(sys.modules, "scipy", None)  # networkx's Kamada-Kawai imports scipy when it runs
    spring = [{n["text"]: (n["x"], n["y"]) for n in graph.drawing(seed=seed)["nodes"]} for seed in (0, 0, 1)]
    assert set(spring[0]) == set(kamada_kawai) and spring[0] != kamada_kawai
    assert spring[0] == spring[1] != spring[2]  # seeded


def test_max_nodes_draws_the_largest_connected_groups_first():
    groups = [["Z1", "Z2", "Z3", "Z4"], ["M1", "M2", "M3"], ["A1", "A2"]]  # three chains; text order is not size order
    types = {name: "PER" for name in sum(groups, [])}
    results = [_result(f"p{i}", g, [(h, "/r/next", t) for h, t in zip(g, g[1:])], types) for i, g in enumerate(groups)]
    graph = MSPTKnowledgeGraph().add(results)
    names = {n: {node["text"] for node in graph.drawing(max_nodes=n)["nodes"]} for n in (4, 5, 7, 9)}
    # at 5 the fifth entity (M2, the most connected of group M) would have no triple drawn: it is left out
    assert names[4] == names[5] == set(groups[0]) and names[7] == set(groups[0] + groups[1])
    assert names[9] == set(sum(groups, []))
    assert "(largest connected groups first: 7 of the 9 entities in triples)" in graph.drawing(max_nodes=7)["title"]
    assert "largest" not in graph.drawing(max_nodes=9)["title"]
    with pytest.raises(ValueError, match="max_nodes=0"):
        graph.drawing(max_nodes=0)


def test_the_module_works_without_matplotlib_and_names_the_extra(tmp_path, monkeypatch):
    """`modeling_mspt` files are copied next to checkpoints: graph_mspt.py must import alone, without matplotlib."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    spec = importlib.util.spec_from_file_location("lone_graph_mspt", ROOT / "modeling_mspt" / "graph_mspt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    graph = module.MSPTKnowledgeGraph().add(_results())
    assert _groups(_svg(Path(graph.write_html(str(tmp_path / "graph.html")))), "node")
    with pytest.raises(ImportError, match=r"pip install matplotlib.*plots"):
        graph.write_png(str(tmp_path / "graph.png"))
    assert not (tmp_path / "graph.png").exists()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny random NER and RE checkpoints (no training): the posts give their entity spans, so only RE runs."""
    folder = tmp_path_factory.mktemp("models")
    processor = MSPTProcessor.from_word_vocabulary(["coach", "ada", "meets", "mayor", "ben"], image_size=32,
                                                   max_length=24)  # fmt: skip
    vocab = {"vocab_size": len(processor.tokenizer)}
    torch.manual_seed(0)
    ner = MSPTForTokenClassification(make_config(NER_LABELS, text=vocab, max_text_length=24))
    re_ = MSPTForRelationExtraction(make_config(RE_LABELS, text=vocab, max_text_length=24, re_pooling="entity"))
    with torch.no_grad():
        re_.classifier.bias[0] = -100.0  # never "None": every ordered pair of entities becomes a triple
    for name, model in (("ner", ner), ("re", re_)):
        model.save_pretrained(folder / name)
        processor.save_pretrained(folder / name)
    posts = folder / "posts.jsonl"
    lines = [{"id": "p1", "text": "coach ada meets mayor ben", "entity_spans": [[0, 2, "PER"], [3, 5, "LOC"]]},
             {"id": "p2", "text": "ada meets ben", "entity_spans": [[0, 1, "PER"], [2, 3, "PER"]]}]
    posts.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return folder, posts


def _build_kg(monkeypatch, capsys, folder, posts, out, *argv) -> str:
    monkeypatch.setattr(sys, "argv", ["build_kg.py", "--posts", str(posts), "--ner_model", str(folder / "ner"),
                                      "--re_model", str(folder / "re"), "--output_dir", str(out), "--threshold", "0",
                                      "--progress_bar", "false", *argv])  # fmt: skip
    runpy.run_path(str(ROOT / "examples" / "build_kg.py"), run_name="__main__")
    return capsys.readouterr().out


def test_build_kg_draws_the_graph_and_skips_only_the_png_without_matplotlib(checkpoints, monkeypatch, capsys,
                                                                             tmp_path):  # fmt: skip
    folder, posts = checkpoints
    out = _build_kg(monkeypatch, capsys, folder, posts, tmp_path / "kg")
    triples = read_jsonl(tmp_path / "kg" / "triples.jsonl")
    assert len(triples) == 4 and "graph.png" in out and "skipped" not in out, out  # both orders, both posts
    assert Image.open(tmp_path / "kg" / "graph.png").size == (1600, 1200)
    assert len(_groups(_svg(tmp_path / "kg" / "graph.html"), "edge")) == len(triples)

    with monkeypatch.context() as patch:
        for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
            patch.setitem(sys.modules, name, None)
        out = _build_kg(patch, capsys, folder, posts, tmp_path / "bare")
    assert "graph.png skipped: Drawing graph.png needs matplotlib" in out and ".[plots]" in out, out
    written = {p.name for p in (tmp_path / "bare").iterdir()}
    assert {"entities.jsonl", "triples.jsonl", "report.jsonl", "graph.html"} <= written and "graph.png" not in written

    _build_kg(monkeypatch, capsys, folder, posts, tmp_path / "none", "--picture", "false")
    assert not {"graph.png", "graph.html"} & {p.name for p in (tmp_path / "none").iterdir()}
    with pytest.raises(ValueError, match="--picture_max_nodes 0"):
        _build_kg(monkeypatch, capsys, folder, posts, tmp_path / "zero", "--picture_max_nodes", "0")
