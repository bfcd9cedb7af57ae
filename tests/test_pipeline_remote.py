"""The knowledge-graph pipeline from a checkpoint (issue 15, item 3): the NER checkpoint carries the pipeline
(`custom_pipelines` in config.json, pipeline_mspt.py and every module it imports), a fresh process that cannot import
the package runs `transformers.pipeline("multimodal-kg-construction", model=<NER dir>, re_model=<RE dir>,
trust_remote_code=True)` offline and gets what the package's pipeline gives; posts may be a str, a dict or a list of
either, and one bad post gets an error while the others are returned; `text-classification` on an RE checkpoint."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from PIL import Image
from transformers import BertTokenizer, CLIPImageProcessorPil

from conftest import HIDE_PACKAGE, NER_LABELS, RE_LABELS, WORDS, make_config
from modeling_mspt import (
    KG_TASK,
    MSPTForRelationExtraction,
    MSPTForTokenClassification,
    MSPTKnowledgeGraphPipeline,
    MSPTProcessor,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_KEYS = {"id", "entities", "triples", "image", "image_missing", "warnings", "error"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny NER and RE checkpoints saved as the continual trainer saves a task (model, then processor), two images
    (a real one, an unreadable one) and the posts of the tests."""
    root = tmp_path_factory.mktemp("kg")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["##s", "##ed", "##ing"]
    processor = MSPTProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}), max_length=16,
    )  # fmt: skip
    torch.manual_seed(0)
    models = {"ner": MSPTForTokenClassification(make_config(NER_LABELS)),
              "re": MSPTForRelationExtraction(make_config(RE_LABELS, re_pooling="entity")),
              "re_cls": MSPTForRelationExtraction(make_config(RE_LABELS, re_pooling="cls"))}  # fmt: skip
    for name, model in models.items():
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    Image.new("RGB", (40, 30), (200, 30, 60)).save(root / "red.png")
    (root / "broken.jpg").write_bytes(b"not an image")
    posts = {
        "str": "john smith visited paris in the park",  # 36 characters: one post, not 36
        "dict": {"id": "p1", "text": "john visited paris", "image": str(root / "red.png")},
        "list": ["the dog ran in the park",
                 {"id": "bad-text", "text": 123},
                 {"id": "bad-image", "text": "a cat sat on the mat", "image": str(root / "broken.jpg")},
                 42,
                 {"id": "ok", "text": "smith visited paris", "image": None}],  # fmt: skip
    }
    (root / "posts.json").write_text(json.dumps(posts))
    return root, posts


def _local_pipeline(root):
    return MSPTKnowledgeGraphPipeline(model=str(root / "ner"), re_model=str(root / "re"), device="cpu")


def _relative_imports(path) -> set[str]:
    return set(re.findall(r"^\s*from\s+\.(\w+)\s+import", open(path, encoding="utf-8").read(), flags=re.MULTILINE))


def test_ner_checkpoint_carries_the_pipeline_and_every_module_it_imports(checkpoints):
    root, _ = checkpoints
    config = json.loads((root / "ner" / "config.json").read_text())
    assert config["custom_pipelines"] == {KG_TASK: {"impl": "pipeline_mspt.MSPTKnowledgeGraphPipeline",
                                                    "pt": ["AutoModelForTokenClassification"], "type": "multimodal"}}
    assert config["auto_map"]["AutoModelForTokenClassification"] == "modeling_mspt.MSPTForTokenClassification"
    files = set(os.listdir(root / "ner"))
    assert {"pipeline_mspt.py", "processing_mspt.py", "processor_config.json"} <= files
    todo, seen = ["pipeline_mspt"], set()
    while todo:  # the closure of the relative imports: all there, flat
        name = todo.pop()
        seen.add(name)
        assert f"{name}.py" in files, f"{name}.py (imported by the pipeline's code) is not in the checkpoint"
        todo += sorted(_relative_imports(root / "ner" / f"{name}.py") - seen)
    assert {"configuration_mspt", "modeling_mspt", "processing_mspt"} <= seen
    # the RE checkpoint is not a pipeline entry point: `model=` takes the NER checkpoint
    assert "custom_pipelines" not in json.loads((root / "re" / "config.json").read_text())


def test_saving_leaves_the_model_config_unchanged(tmp_path):
    """`custom_pipelines` goes to config.json only: a continual run compares its model's config with the one it
    started with, and the NER model is saved after every task."""
    model = MSPTForTokenClassification(make_config(NER_LABELS))
    model.config.custom_pipelines = {"my-task": {"impl": "my_pipeline.MyPipeline", "pt": []}}
    model.save_pretrained(tmp_path / "with")
    assert set(json.loads((tmp_path / "with" / "config.json").read_text())["custom_pipelines"]) == {"my-task", KG_TASK}
    assert model.config.custom_pipelines == {"my-task": {"impl": "my_pipeline.MyPipeline", "pt": []}}
    del model.config.custom_pipelines
    model.save_pretrained(tmp_path / "without")
    assert "custom_pipelines" not in model.config.to_dict()
    assert KG_TASK in json.loads((tmp_path / "without" / "config.json").read_text())["custom_pipelines"]


def test_string_dict_and_list_inputs(checkpoints):
    root, posts = checkpoints
    pipe = _local_pipeline(root)
    one = pipe(posts["str"], threshold=0.0)
    assert isinstance(one, dict) and set(one) == RESULT_KEYS and one["error"] is None and one["id"] == "#0"
    for entity in one["entities"]:  # spans of the 7 words of the post, not of its characters
        start, end = entity["provenance"]["span"]
        assert 0 <= start < end <= 7 and entity["text"] == " ".join(posts["str"].split()[start:end])
    assert pipe([posts["str"]], threshold=0.0) == [one]
    assert pipe({"text": posts["str"]}, threshold=0.0) == one
    assert pipe(42)["error"] == "a post must be a str or a dict with `text`, got int"
    results = pipe(posts["list"], threshold=0.0)
    assert [r["id"] for r in results] == ["#0", "bad-text", "bad-image", "#3", "ok"]
    assert [r["error"] for r in results] == [None, "`text` is int", None,
                                             "a post must be a str or a dict with `text`, got int", None]  # fmt: skip
    assert results[1]["entities"] == results[1]["triples"] == results[3]["entities"] == []
    assert results[2]["image_missing"] and "broken.jpg" in results[2]["warnings"][0]
    assert all(set(r) == RESULT_KEYS for r in results)
    # a bad post does not change the others' results
    assert results[0] == {**pipe(posts["list"][0], threshold=0.0), "id": "#0"}
    assert results[4] == pipe(posts["list"][4], threshold=0.0)


def test_installed_package_needs_no_trust_remote_code(checkpoints):
    """With the package imported, the task is served by the registered pipeline, not by the checkpoint's copy, and
    `trust_remote_code` is not needed (the `custom_pipelines` entry is for processes without the package)."""
    root, posts = checkpoints
    pipe = transformers.pipeline(KG_TASK, model=str(root / "ner"), re_model=str(root / "re"), device="cpu")
    assert type(pipe) is MSPTKnowledgeGraphPipeline and type(pipe.model) is MSPTForTokenClassification
    assert "custom_pipelines" not in pipe.model.config.to_dict()  # served here: the loaded config drops the entry
    assert pipe(posts["dict"], threshold=0.0) == _local_pipeline(root)(posts["dict"], threshold=0.0)


REMOTE_SCRIPT = HIDE_PACKAGE + textwrap.dedent(
    """
    import json, os, sys
    repo, root = sys.argv[1], sys.argv[2]
    assert not any(os.path.abspath(p or ".") == repo for p in sys.path), sys.path
    try:
        import modeling_mspt
    except ImportError:
        pass
    else:
        raise AssertionError("the package is importable")
    import transformers

    task, ner, re_dir = "multimodal-kg-construction", root + "/ner", root + "/re"
    try:
        transformers.pipeline(task, model=ner, trust_remote_code=True)
    except ValueError as err:
        no_re_model = str(err)
    pipe = transformers.pipeline(task, model=ner, re_model=re_dir, trust_remote_code=True, device="cpu")
    posts = json.load(open(root + "/posts.json"))
    out = {kind: pipe(post, threshold=0.0) for kind, post in posts.items()}
    out["no_re_model"] = no_re_model
    out["classes"] = [type(x).__module__ for x in (pipe, pipe.model, pipe.re_model, pipe.processor)]
    out["package_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "modeling_mspt")
    json.dump(out, open(root + "/remote.json", "w"))
    """
)


def test_fresh_process_without_the_package_runs_the_pipeline_from_the_checkpoint(checkpoints):
    root, posts = checkpoints
    script = root / "remote_pipeline.py"
    script.write_text(REMOTE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(script), REPO, str(root)], cwd=root, env=env, capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr  # no prompt for the RE dir
    out = json.loads((root / "remote.json").read_text())
    assert "re_model=" in out["no_re_model"]
    assert out["package_modules"] == []
    assert all(m.startswith("transformers_modules.") for m in out["classes"]), out["classes"]
    assert out["classes"][0].endswith(".pipeline_mspt") and out["classes"][3].endswith(".processing_mspt")

    # the same results as the package's pipeline on the same checkpoints: the same code, models and processors
    local = _local_pipeline(root)
    for kind, post in posts.items():
        assert out[kind] == json.loads(json.dumps(local(post, threshold=0.0))), kind
    assert isinstance(out["str"], dict) and out["str"]["error"] is None
    assert out["dict"]["id"] == "p1" and out["dict"]["image"].endswith("red.png") and not out["dict"]["image_missing"]
    assert any(out["dict"]["entities"]) or any(out["str"]["entities"])  # something was compared
    errors = [r["error"] for r in out["list"]]
    assert errors[1] == "`text` is int" and errors[3].startswith("a post must be a str or a dict")
    assert errors[0] is errors[2] is errors[4] is None and out["list"][2]["image_missing"]


def test_text_classification_on_an_re_checkpoint(checkpoints):
    """`re_pooling="cls"`: the pipeline classifies the pair marked in the text, exactly as the RE model does on the
    processor's encoding of the same pair (no image). `"entity"`: a clear error naming the KG pipeline."""
    root, _ = checkpoints
    pipe = transformers.pipeline("text-classification", model=str(root / "re_cls"), device="cpu", top_k=None)
    scores = {r["label"]: r["score"] for r in pipe(["<s> john </s> visited <o> paris </o>"])[0]}
    assert set(scores) == set(RE_LABELS.values())
    processor = MSPTProcessor.from_pretrained(root / "re_cls")
    batch = processor([["john", "visited", "paris"]], images=[None], head_spans=[(0, 1)], tail_spans=[(2, 3)])
    assert pipe.tokenizer("<s> john </s> visited <o> paris </o>")["input_ids"] == batch["input_ids"][0].tolist()
    model = MSPTForRelationExtraction.from_pretrained(root / "re_cls").eval()
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.softmax(-1)[0]
    torch.testing.assert_close(torch.tensor([scores[RE_LABELS[i]] for i in range(len(RE_LABELS))]), expected)

    entity = transformers.pipeline("text-classification", model=str(root / "re"), device="cpu")
    with pytest.raises(ValueError, match=r"entity_positions.*multimodal-kg-construction.*re_model=<this checkpoint>"):
        entity("<s> john </s> visited <o> paris </o>")
