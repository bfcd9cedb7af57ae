"""Hostile inputs to the model side (issue 16): checkpoints loaded into the wrong head, config typos and nonsense
sizes, degenerate batches (no labels, no rows, NaN pixels behind a zero mask), and a Hub that never answers."""

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from conftest import NER_LABELS, RE_LABELS, TEXT, VISION, make_config, make_inputs
from modeling_mspt import MSPTConfig, MSPTForRelationExtraction, MSPTForTokenClassification, MSPTModel


def seeded(cls, config, seed=0):
    torch.manual_seed(seed)
    return cls(config)


# ------------------------------------------------------------------------------------ case 12: wrong head, typos
@pytest.fixture
def checkpoints(tmp_path):
    seeded(MSPTForRelationExtraction, make_config()).save_pretrained(tmp_path / "re")
    seeded(MSPTForTokenClassification, make_config(NER_LABELS)).save_pretrained(tmp_path / "ner")
    return tmp_path


@pytest.mark.parametrize(
    "load, saved, right",
    [
        (MSPTForRelationExtraction.from_pretrained, "ner", "MSPTForTokenClassification"),
        (AutoModelForSequenceClassification.from_pretrained, "ner", "MSPTForTokenClassification"),
        (MSPTForTokenClassification.from_pretrained, "re", "MSPTForRelationExtraction"),
        (AutoModelForTokenClassification.from_pretrained, "re", "MSPTForRelationExtraction"),
    ],
)
def test_checkpoint_of_another_head_is_refused_before_loading(checkpoints, load, saved, right):
    # before: the NER weights filled the RE head silently (id2label = BIO tags), only a load report was printed
    with pytest.raises(ValueError) as error:
        load(checkpoints / saved)
    message = str(error.value)
    wrong = "MSPTForRelationExtraction" if saved == "ner" else "MSPTForTokenClassification"
    auto = "AutoModelForTokenClassification" if saved == "ner" else "AutoModelForSequenceClassification"
    assert right in message and wrong in message and auto in message and str(checkpoints / saved) in message


def test_matching_and_base_loads_still_work(checkpoints):
    assert type(MSPTForTokenClassification.from_pretrained(checkpoints / "ner")) is MSPTForTokenClassification
    assert type(AutoModelForSequenceClassification.from_pretrained(checkpoints / "re")) is MSPTForRelationExtraction
    base = MSPTModel.from_pretrained(checkpoints / "ner")  # the shared encoder of any MSPT head
    assert type(base) is MSPTModel


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):  # loaded through trust_remote_code only
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "modeling_mspt":
                raise ImportError(f"blocked import of {name}")

    sys.meta_path.insert(0, Block())
    from transformers import AutoModelForSequenceClassification
    try:
        AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True)
    except ValueError as err:
        print("REFUSED", err)
    else:
        print("LOADED")
    """
)


def test_wrong_head_is_refused_through_remote_code_too(checkpoints):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(checkpoints / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    script = checkpoints / "load.py"
    script.write_text(REMOTE_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(checkpoints / "ner")], cwd=checkpoints, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("REFUSED") and "AutoModelForTokenClassification" in result.stdout, result.stdout


def test_config_json_typo_is_refused_with_the_suggestion(tmp_path):
    deep = make_config(text={"num_hidden_layers": 3}, vision={"num_hidden_layers": 3}, num_interaction_layers=1)
    seeded(MSPTForRelationExtraction, deep).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    saved["num_interaction_layer"] = saved.pop("num_interaction_layers")  # before: loaded with the default 3
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"`num_interaction_layer`.*`num_interaction_layers`"):
        MSPTForRelationExtraction.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "kwargs, named, suggestion",
    [
        (dict(shared_key_mod="reference"), "shared_key_mod", "shared_key_mode"),
        (dict(text={"num_hidden_layer": 1}), "text_config.num_hidden_layer", "num_hidden_layers"),
        (dict(vision={"patch_sze": 16}), "vision_config.patch_sze", "patch_size"),
        (dict(image_size=64), "image_size", "vision_config"),  # a tower field at the top level does nothing
        (dict(hidden_size=64), "hidden_size", "text_config"),
    ],
)
def test_unknown_keys_that_look_like_fields_are_refused(kwargs, named, suggestion):
    text, vision = kwargs.pop("text", None), kwargs.pop("vision", None)
    with pytest.raises(ValueError) as error:
        make_config(text=text, vision=vision, **kwargs)
    assert f"`{named}`" in str(error.value) and suggestion in str(error.value)


def test_unrelated_extra_keys_are_kept():
    config = make_config(training_note="seed 3", text={"gradient_checkpointing": False})
    assert config.training_note == "seed 3"


# ------------------------------------------------------------------------------------- case 16: config validation
INVALID = [
    (dict(text={"hidden_size": 0}), "text_config.hidden_size", "0"),
    (dict(text={"hidden_size": -32}, num_interaction_layers=0), "text_config.hidden_size", "-32"),
    (dict(text={"num_attention_heads": 0}), "text_config.num_attention_heads", "0"),
    (dict(text={"num_hidden_layers": 0}, num_interaction_layers=0), "text_config.num_hidden_layers", "0"),
    (dict(text={"intermediate_size": 0}), "text_config.intermediate_size", "0"),
    (dict(text={"vocab_size": 0}), "text_config.vocab_size", "0"),
    (dict(text={"max_position_embeddings": "40"}), "text_config.max_position_embeddings", "'40'"),
    (dict(text={"hidden_dropout_prob": 1.5}), "text_config.hidden_dropout_prob", "1.5"),
    (dict(text={"layer_norm_eps": 0.0}), "text_config.layer_norm_eps", "0.0"),
    (dict(text={"hidden_act": "swishy"}), "text_config.hidden_act", "'swishy'"),
    (dict(vision={"image_size": 0}), "vision_config.image_size", "0"),
    (dict(vision={"image_size": -32}), "vision_config.image_size", "-32"),
    (dict(vision={"patch_size": 0}), "vision_config.patch_size", "0"),
    (dict(vision={"patch_size": -8}), "vision_config.patch_size", "-8"),
    (dict(vision={"patch_size": 64}), "vision_config.patch_size", "64"),
    (dict(vision={"num_channels": 0}), "vision_config.num_channels", "0"),
    (dict(vision={"num_hidden_layers": -1}, num_interaction_layers=0), "vision_config.num_hidden_layers", "-1"),
    (dict(vision={"attention_dropout": -0.1}), "vision_config.attention_dropout", "-0.1"),
    (dict(num_interaction_layers="2"), "num_interaction_layers", "'2'"),
    (dict(num_interaction_layers=1.0), "num_interaction_layers", "1.0"),
    (dict(num_interaction_layers=True), "num_interaction_layers", "True"),
    (dict(num_interaction_layers=-1), "num_interaction_layers", "-1"),
    (dict(max_text_length="16"), "max_text_length", "'16'"),
    (dict(max_text_length=0), "max_text_length", "0"),
    (dict(num_aux_images="1"), "num_aux_images", "'1'"),
    (dict(num_aux_images=1, aux_image_size=0), "aux_image_size", "0"),
    (dict(num_aux_images=1, aux_image_size=12), "aux_image_size", "12"),
    (dict(classifier_dropout="0.1"), "classifier_dropout", "'0.1'"),
    (dict(classifier_dropout=1.0), "classifier_dropout", "1.0"),
    (dict(shared_key_mode=None), "shared_key_mode", "None"),
    (dict(re_pooling="mean"), "re_pooling", "'mean'"),
    (dict(labels={}), "id2label", "{}"),
    (dict(labels={0: "None", 2: "/per/per/peer"}), "id2label", "[0, 2]"),
    (dict(labels={0: "None", 1: "None"}), "id2label", "'None'"),
]


@pytest.mark.parametrize("kwargs, field, value", INVALID, ids=[f"{f}={v}" for _, f, v in INVALID])
def test_invalid_config_value_names_field_value_and_fix(kwargs, field, value):
    kwargs = dict(kwargs)
    text, vision = kwargs.pop("text", None), kwargs.pop("vision", None)
    # before: ZeroDivisionError / negative-dimension RuntimeError deep in torch, a TypeError for '2', or accepted
    with pytest.raises(ValueError) as error:
        make_config(text=text, vision=vision, **kwargs)
    message = str(error.value)
    assert f"`{field}`" in message and value in message, message
    assert any(word in message for word in ("must", "use", "set", "pass")), message  # says what to do


def test_values_changed_after_construction_are_checked_when_the_model_is_built(tmp_path):
    config = make_config()
    config.num_interaction_layers = "1"
    with pytest.raises(ValueError, match="`num_interaction_layers`"):
        MSPTForRelationExtraction(config)
    seeded(MSPTForRelationExtraction, make_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="`max_text_length`"):
        MSPTForRelationExtraction.from_pretrained(tmp_path, max_text_length=-1)


def test_valid_edge_configs_are_accepted():
    make_config(num_interaction_layers=0, text={"hidden_size": 48, "num_attention_heads": 4})  # no shared key
    make_config(vision={"image_size": 8, "patch_size": 8})  # one patch
    make_config(labels={0: "O"})  # a single label
    make_config(num_aux_images=2, aux_image_size=16)
    assert MSPTConfig().num_labels == 2  # transformers' default label space when none is given


# --------------------------------------------------------------------------------- case 17: degenerate batches
def test_re_batch_without_any_label_gives_zero_loss_and_zero_gradient():
    config = make_config()
    model = seeded(MSPTForRelationExtraction, config).eval()
    inputs = make_inputs(config)
    out = model(**inputs, labels=torch.full((3,), -100))  # before: NaN
    assert out.loss.item() == 0.0
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    labels = torch.tensor([2, -100, 4])  # partly ignored: still the mean over the labelled rows
    out = model(**inputs, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))


def _ner_batch(config):
    inputs = make_inputs(config)
    words = inputs["attention_mask"].clone()
    words[:, 0] = 0  # [CLS]
    labels = torch.randint(0, config.num_labels, words.shape, generator=torch.Generator().manual_seed(1))
    return inputs, words, labels.masked_fill(~words.bool(), -100)


@pytest.mark.parametrize("give_word_starts", [True, False])
def test_ner_rows_without_labels_are_skipped(give_word_starts):
    config = make_config(NER_LABELS)
    model = seeded(MSPTForTokenClassification, config).eval()
    inputs, words, labels = _ner_batch(config)
    extra = {"word_start_mask": words} if give_word_starts else {}
    out = model(**inputs, **extra, labels=torch.full_like(labels, -100))  # before: ValueError on -100 / NaN
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p.grad)) for p in model.parameters() if p.grad is not None)
    # one unlabelled row among labelled ones: the loss is the mean over the labelled rows only
    labels[0] = -100
    mixed = model(**inputs, **extra, labels=labels).loss
    rest = {k: v[1:] for k, v in {**inputs, **extra}.items()}
    torch.testing.assert_close(mixed, model(**rest, labels=labels[1:]).loss)


def test_lwf_over_no_valid_prediction_is_zero_not_nan():
    from continual_trainer.losses import lwf_loss

    student = torch.randn(3, 7, 5, requires_grad=True)
    teacher = torch.randn(3, 7, 5)
    none = torch.zeros(3, 7, dtype=torch.bool)  # NER batch whose labels are all -100; before: mean of nothing = NaN
    loss = lwf_loss(student, teacher, 2.0, none)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(student.grad, torch.zeros_like(student.grad))
    some = torch.rand(3, 7, generator=torch.Generator().manual_seed(0)) > 0.5
    kl = F.kl_div(F.log_softmax(student / 2, -1), F.log_softmax(teacher / 2, -1), reduction="none", log_target=True)
    torch.testing.assert_close(lwf_loss(student, teacher, 2.0, some), kl.sum(-1)[some].mean() * 4)


def test_ner_row_with_a_hole_in_its_labels_is_a_clear_error():
    config = make_config(NER_LABELS)
    model = seeded(MSPTForTokenClassification, config).eval()
    inputs, words, labels = _ner_batch(config)
    labels[2, 3] = -100  # a word start without a tag in a tagged row: the CRF chain cannot skip it
    with pytest.raises(ValueError, match=r"word_start_mask"):
        model(**inputs, word_start_mask=words, labels=labels)


@pytest.mark.parametrize("cls", [MSPTModel, MSPTForRelationExtraction, MSPTForTokenClassification])
def test_empty_batch_is_a_clear_error(cls):
    config = make_config(NER_LABELS if cls is MSPTForTokenClassification else RE_LABELS)
    model = seeded(cls, config).eval()
    inputs = {k: v[:0] for k, v in make_inputs(config).items()}
    with pytest.raises(ValueError, match="empty batch"):  # before: a reshape RuntimeError deep in attention
        model(**inputs)
    inputs = {k: v[:, :0] if k in ("input_ids", "attention_mask") else v for k, v in make_inputs(config).items()}
    with pytest.raises(ValueError, match="no tokens"):
        model(**inputs)


@pytest.mark.parametrize("cls", [MSPTForRelationExtraction, MSPTForTokenClassification])
def test_nan_pixels_behind_a_zero_image_mask_change_nothing(cls):
    config = make_config(NER_LABELS if cls is MSPTForTokenClassification else RE_LABELS, num_aux_images=1,
                         aux_image_size=16)  # fmt: skip
    model = seeded(cls, config).eval()
    inputs = make_inputs(config)
    inputs["image_mask"] = torch.tensor([1, 0, 1])
    inputs["aux_pixel_values"] = torch.randn(3, 1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    inputs["aux_mask"] = torch.tensor([[1], [1], [0]])
    clean = {k: v.clone() for k, v in inputs.items()}
    clean["pixel_values"][1] = 0
    clean["aux_pixel_values"][2] = 0
    inputs["pixel_values"][1] = float("nan")  # absent image: before, NaN * 0 gave non-finite logits
    inputs["aux_pixel_values"][2] = float("nan")  # absent crop
    with torch.no_grad():
        out, ref = model(**inputs), model(**clean)
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=0)


# ------------------------------------------------------------------------------- case 15: a Hub that never answers
def _tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def _tiny_run(root, tiny_processor):
    from continual_trainer.state import write_run

    model = seeded(MSPTForRelationExtraction, make_config())
    write_run(str(root), {"name": "synthetic", "config_name": "re", "task_type": "re", "label_names": ["a"],
                          "new_labels": [["a"]], "sizes": [[1, 1, 1]]}, "mspt")  # fmt: skip
    for target in (root / "task-00", root):
        model.save_pretrained(target)
        tiny_processor.save_pretrained(target)


def _no_agent_registry_fetch(tmp_path, monkeypatch):
    """huggingface_hub fetches an agent registry once a day; a fresh cached copy keeps it off the test's servers."""
    import huggingface_hub.constants as constants

    from hub_server import EMPTY_AGENT_REGISTRY

    path = tmp_path / "agent_harnesses.json"
    path.write_text(json.dumps(EMPTY_AGENT_REGISTRY))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(path))


def test_push_to_a_hub_that_never_answers_times_out_and_says_how_to_repush(tmp_path, tiny_processor, monkeypatch):
    import huggingface_hub.constants as constants
    from huggingface_hub import HfApi  # noqa: F401 - imported before the clock starts (seconds on a busy machine)

    from continual_trainer.reporting import HubPushError, push_run_to_hub
    from hub_server import HangingServer, HubServer

    run = tmp_path / "run"
    _tiny_run(run, tiny_processor)
    before = _tree_digest(run)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _no_agent_registry_fetch(tmp_path, monkeypatch)
    with HangingServer() as hang:
        monkeypatch.setattr(constants, "ENDPOINT", hang.endpoint)
        outcome = {}

        def push():
            try:
                push_run_to_hub(str(run), "tester/slow", token="hf_test", endpoint=hang.endpoint, timeout=0.5,
                                retries=2, retry_wait=0.1)  # fmt: skip
            except Exception as err:  # noqa: BLE001 - handed to the test thread
                outcome["error"] = err

        start = time.monotonic()
        worker = threading.Thread(target=push, daemon=True)
        worker.start()
        worker.join(60)  # before: blocked forever (900 s observed)
        elapsed = time.monotonic() - start
        assert not worker.is_alive(), "push_run_to_hub hung on a server that never answers"
        connections = hang.connections
    error = outcome.get("error")
    assert isinstance(error, HubPushError), repr(error)
    assert connections == 3  # the first try and two retries, each cut by the timeout
    assert elapsed < 20, elapsed  # 3 x 0.5 s timeouts + 0.3 s of waits, with room for a busy machine
    message = str(error)
    assert "3 attempts" in message and str(run) in message and "tester/slow" in message
    assert f"push_run_to_hub({str(run)!r}, 'tester/slow', endpoint={hang.endpoint!r})" in message
    assert _tree_digest(run) == before  # the local outputs are intact ...
    with HubServer() as hub:  # ... and the same call succeeds once the Hub answers
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        push_run_to_hub(str(run), "tester/slow", token="hf_test", endpoint=hub.endpoint, timeout=5)
        assert set(hub.files("tester/slow")) == {p for p in run_files_of(run)}


def run_files_of(run):
    from continual_trainer.reporting import run_files

    return run_files(str(run))


def test_push_retries_a_server_error_but_not_a_refusal(tmp_path, tiny_processor, monkeypatch):
    import huggingface_hub.constants as constants

    from continual_trainer.reporting import HubPushError, push_run_to_hub
    from hub_server import HubServer

    run = tmp_path / "run"
    _tiny_run(run, tiny_processor)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _no_agent_registry_fetch(tmp_path, monkeypatch)
    create = ("POST", "/api/repos/create")
    with HubServer() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        hub.fail_next = [(*create, 503)]  # a passing outage: the second attempt goes through
        push_run_to_hub(str(run), "tester/flaky", token="hf_test", endpoint=hub.endpoint, retry_wait=0.1)
        assert hub.requests.count(create) == 2 and set(hub.files("tester/flaky")) == set(run_files_of(run))
        hub.fail_next = [(*create, 403)]  # a refusal is final: no retry, and the message says how to re-push
        with pytest.raises(HubPushError, match="403") as error:
            push_run_to_hub(str(run), "tester/forbidden", token="hf_test", endpoint=hub.endpoint, retry_wait=0.1)
        assert hub.requests.count(create) == 3
        assert "1 attempt" in str(error.value) and "push_run_to_hub(" in str(error.value)


class _Processes:
    """The main process of a multi-process run, as `finish_run` and `push_outputs` see it: what it did, in order."""

    def __init__(self):
        self.done = []
        self.accelerator = self
        self.args = type("Args", (), dict(output_dir="run", hub_model_id="tester/run", hub_token=None,
                                          hub_private_repo=None))()  # fmt: skip

    def is_world_process_zero(self):
        return True

    def wait_for_everyone(self):
        self.done.append("barrier")

    def output_dir_lock(self):
        return contextlib.nullcontext()


def test_a_failing_push_or_output_write_still_meets_the_other_processes(monkeypatch):
    # before: the main process raised before the barrier, and the other processes waited for it there
    from continual_trainer import experiment, hub, reporting

    main = _Processes()

    def refused(*args, **kwargs):
        main.done.append("push")
        raise reporting.HubPushError("403 Forbidden: the run on disk is intact")

    monkeypatch.setattr(hub, "push_run_to_hub", refused)  # where push_outputs finds it
    with pytest.raises(reporting.HubPushError, match="403 Forbidden"):
        experiment.push_outputs(main)
    assert main.done == ["push", "barrier"]

    def disk_full(*args):
        main.done.append("write")
        raise OSError(28, "No space left on device")

    main.done.clear()
    monkeypatch.setattr(experiment, "write_outputs", disk_full)
    with pytest.raises(OSError, match="No space left"):
        experiment.finish_run(main, None, None, None, None, push_to_hub=True)
    assert main.done == ["write", "barrier"]  # and no push of a run whose outputs were not written
