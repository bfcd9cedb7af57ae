"""save_pretrained -> from_pretrained gives identical outputs, in-process through the Auto classes and in a fresh
process that never imports the package (trust_remote_code=True). Weights are safetensors only."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
)

from conftest import HIDE_PACKAGE, NER_LABELS, make_config
from modeling_mspt import MSPTForRelationExtraction, MSPTForTokenClassification, MSPTModel, MSPTProcessor

REMOTE_FILES = {"configuration_mspt.py", "modeling_mspt.py", "layers_mspt.py", "crf_mspt.py", "loading_mspt.py"}


def _save(tmp_path, processor):
    torch.manual_seed(0)
    re_model = MSPTForRelationExtraction(make_config()).eval()
    ner_model = MSPTForTokenClassification(make_config(NER_LABELS)).eval()
    re_model.save_pretrained(tmp_path / "re")
    ner_model.save_pretrained(tmp_path / "ner")
    processor.save_pretrained(tmp_path / "re")
    batch = processor(
        [["john", "visited", "paris"], ["the", "dog", "ran", "in", "the", "park"], ["a", "cat"]],
        images=[None, None, None],
        head_spans=[(0, 1), (1, 2), (0, 1)],
        tail_spans=[(2, 3), (5, 6), (1, 2)],
    )
    batch["pixel_values"] = torch.randn(batch["pixel_values"].shape, generator=torch.Generator().manual_seed(3))
    batch["image_mask"] = torch.tensor([1, 0, 1])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "image_mask")}
    return re_model, ner_model, inputs


def test_checkpoint_files_are_safetensors_with_auto_map(tmp_path, tiny_processor):
    _save(tmp_path, tiny_processor)
    files = set(os.listdir(tmp_path / "re"))
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert REMOTE_FILES <= files and "processing_mspt.py" in files
    auto_map = json.loads((tmp_path / "re" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForTokenClassification"] == "modeling_mspt.MSPTForTokenClassification"
    assert auto_map["AutoModelForSequenceClassification"] == "modeling_mspt.MSPTForRelationExtraction"
    processor_map = json.loads((tmp_path / "re" / "processor_config.json").read_text())["auto_map"]
    assert processor_map["AutoProcessor"] == "processing_mspt.MSPTProcessor"


def test_in_process_round_trip_through_auto_classes(tmp_path, tiny_processor):
    re_model, ner_model, inputs = _save(tmp_path, tiny_processor)
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "re").to_dict(), dict)
    re_loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "re")
    ner_loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "ner")
    base = AutoModel.from_pretrained(tmp_path / "re")
    assert type(re_loaded) is MSPTForRelationExtraction and type(ner_loaded) is MSPTForTokenClassification
    assert type(base) is MSPTModel
    with torch.no_grad():
        torch.testing.assert_close(re_loaded(**inputs).logits, re_model(**inputs).logits, rtol=0, atol=0)
        a, b = ner_loaded(**inputs), ner_model(**inputs)
        torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
        assert torch.equal(a.tags, b.tags)
        torch.testing.assert_close(
            base(**inputs).text_last_hidden_state, re_model.mspt(**inputs).text_last_hidden_state, rtol=0, atol=0
        )
    assert re_loaded.config.id2label == re_model.config.id2label


def test_processor_round_trip(tmp_path, tiny_processor):
    words = [["john", "smith", "visited", "paris"], ["a", "dog"]]
    kwargs = dict(images=[None, None], head_spans=[(0, 2), (1, 2)], tail_spans=[(3, 4), (0, 1)], labels=[1, 0])
    tiny_processor.save_pretrained(tmp_path)
    for loaded in (MSPTProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is MSPTProcessor and loaded.max_length == 16
        assert len(loaded.tokenizer) == len(tiny_processor.tokenizer)
        a, b = loaded(words, **kwargs), tiny_processor(words, **kwargs)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


REMOTE_SCRIPT = HIDE_PACKAGE + textwrap.dedent(
    """
    import sys, torch
    from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, AutoProcessor)

    root, inputs = sys.argv[1], torch.load(sys.argv[2], weights_only=True)
    assert AutoConfig.from_pretrained(root + "/re", trust_remote_code=True).model_type == "mspt"
    re_model = AutoModelForSequenceClassification.from_pretrained(root + "/re", trust_remote_code=True)
    ner_model = AutoModelForTokenClassification.from_pretrained(root + "/ner", trust_remote_code=True)
    base = AutoModel.from_pretrained(root + "/re", trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(root + "/re", trust_remote_code=True)
    words = [["john", "visited", "paris"]]
    encoded = processor(words, images=[None], head_spans=[(0, 1)], tail_spans=[(2, 3)])
    with torch.no_grad():
        ner = ner_model(**inputs)
        torch.save({"re": re_model(**inputs).logits, "ner": ner.logits, "tags": ner.tags,
                    "base": base(**inputs).text_last_hidden_state, "ids": encoded["input_ids"],
                    "modules": sorted(m for m in sys.modules if m.endswith("modeling_mspt"))}, sys.argv[3])
    """
)


def test_fresh_process_remote_code_load_gives_identical_outputs(tmp_path, tiny_processor):
    re_model, ner_model, inputs = _save(tmp_path, tiny_processor)
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    script = tmp_path / "load.py"
    script.write_text(REMOTE_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["modules"] and all(m.startswith("transformers_modules.") for m in out["modules"]), out["modules"]
    with torch.no_grad():
        ner = ner_model(**inputs)
        torch.testing.assert_close(out["re"], re_model(**inputs).logits, rtol=0, atol=0)
        torch.testing.assert_close(out["ner"], ner.logits, rtol=0, atol=0)
        assert torch.equal(out["tags"], ner.tags)
        torch.testing.assert_close(out["base"], re_model.mspt(**inputs).text_last_hidden_state, rtol=0, atol=0)
    expected = tiny_processor([["john", "visited", "paris"]], head_spans=[(0, 1)], tail_spans=[(2, 3)])
    assert torch.equal(out["ids"], expected["input_ids"])
