"""The Hub options of a run, end to end through the local Hub (tests/hub_server.py): the repo id resolved and the
token checked before training, `hub_revision`, `hub_private_repo`, per-task subfolders or branches (loaded back with
`from_pretrained(..., revision=)`), the card naming the repo, a failed push that says how to push again, and
`--hub_strategy every_save` (each task pushed as it is saved, a failed task push that does not stop training)."""

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_config
from continual_trainer.reporting import HubPushError, push_run_to_hub, resolve_hub_repo_id, run_files
from continual_trainer.state import write_run
from hub_server import local_hub
from test_examples import TINY  # the tiny demo run of the example scripts' tests

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = {"name": "synthetic", "config_name": "re", "task_type": "re", "label_names": ["a"], "new_labels": [["a"]],
            "sizes": [[1, 1, 1]]}  # fmt: skip


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with local_hub(monkeypatch, tmp_path) as server:
        yield server


@pytest.fixture
def no_saved_token(monkeypatch, tmp_path):
    """No HF_TOKEN and no token saved by `hf auth login`."""
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no_stored_tokens"))


def _digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def run_dir(tmp_path, tiny_processor):
    """A 2-task run whose three models (after task 1, after task 2, final) have different weights."""
    from modeling_mspt import MSPTForRelationExtraction

    root = tmp_path / "run"
    write_run(str(root), IDENTITY, "mspt")
    for seed, target in enumerate((root / "task-00", root / "task-01", root)):
        torch.manual_seed(seed)
        MSPTForRelationExtraction(make_config()).save_pretrained(target)
        tiny_processor.save_pretrained(target)
    (root / "README.md").write_text("---\nlicense: apache-2.0\n---\n# run\n")
    return root


def _load(location, tmp_path, **kwargs):
    from transformers import AutoModelForSequenceClassification, AutoProcessor

    kwargs = dict(trust_remote_code=True, cache_dir=str(tmp_path / "hf_cache"), **kwargs)
    return AutoModelForSequenceClassification.from_pretrained(location, **kwargs), AutoProcessor.from_pretrained(
        location, **kwargs)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------- push layouts
def test_branches_layout_one_branch_per_task_loads_by_revision(hub, run_dir, tmp_path):
    push_run_to_hub(str(run_dir), "tester/run", token="hf_test", task_layout="branches")

    assert hub.branches("tester/run") == ["main", "task-00", "task-01"]
    files = run_files(str(run_dir))
    assert set(hub.files("tester/run")) == {f for f in files if "/" not in f}  # main: the final model, no task-XX/
    for task in ("task-00", "task-01"):  # each branch holds exactly its task's files, at its root
        stored = hub.files("tester/run", revision=task)
        assert stored == {f.split("/", 1)[1]: (run_dir / f).read_bytes() for f in files if f.startswith(task + "/")}
    loaded = {rev: _load("tester/run", tmp_path, revision=rev)[0] for rev in ("task-00", "task-01", "main")}
    local = {rev: _load(str(path), tmp_path)[0]
             for rev, path in (("task-00", run_dir / "task-00"), ("task-01", run_dir / "task-01"), ("main", run_dir))}
    for rev in loaded:
        assert _same_weights(loaded[rev], local[rev]), rev
    assert not _same_weights(loaded["task-00"], loaded["task-01"])  # the revisions really differ
    processor = _load("tester/run", tmp_path, revision="task-01")[1]
    assert processor.tokenizer.get_vocab() == _load(str(run_dir / "task-01"), tmp_path)[1].tokenizer.get_vocab()

    # a second push (the retry after a failure, or a run pushed again) leaves the same branches and files
    push_run_to_hub(str(run_dir), "tester/run", token="hf_test", task_layout="branches")
    assert hub.branches("tester/run") == ["main", "task-00", "task-01"]
    assert set(hub.files("tester/run", revision="task-00")) == {f[8:] for f in files if f.startswith("task-00/")}
    # a repo whose main already holds a run (pushed with subfolders): the new task branches start from it, and
    # still end up holding their task's files only
    push_run_to_hub(str(run_dir), "tester/mixed", token="hf_test")
    push_run_to_hub(str(run_dir), "tester/mixed", token="hf_test", task_layout="branches")
    assert hub.files("tester/mixed", revision="task-01") == hub.files("tester/run", revision="task-01")


def test_subfolders_on_a_revision_of_a_private_repo(hub, run_dir, tmp_path):
    push_run_to_hub(str(run_dir), "tester/run", token="hf_test", private=True, revision="v2")

    assert hub.private[("model", "tester/run")] is True
    assert hub.branches("tester/run") == ["main", "v2"]
    assert hub.files("tester/run") == {}  # main untouched
    assert set(hub.files("tester/run", revision="v2")) == set(run_files(str(run_dir)))
    assert {rev for _, rev, _ in hub.commits} == {"v2"}
    model, _ = _load("tester/run", tmp_path, revision="v2", subfolder="task-01")
    assert _same_weights(model, _load(str(run_dir / "task-01"), tmp_path)[0])
    # with branches and a revision, the task branches carry the revision's name: two runs' branches stay apart
    push_run_to_hub(str(run_dir), "tester/run", token="hf_test", revision="v3", task_layout="branches")
    assert hub.branches("tester/run") == ["main", "v2", "v3", "v3-task-00", "v3-task-01"]
    with pytest.raises(ValueError, match="task_layout"):
        push_run_to_hub(str(run_dir), "tester/run", token="hf_test", task_layout="folders")


def test_failed_branch_push_keeps_the_run_and_says_how_to_push_again(hub, run_dir):
    before = _digest(run_dir)
    hub.fail_next = [("POST", "/api/models/tester/run/commit/v2-task-01", 403)]
    with pytest.raises(HubPushError, match="403") as error:
        push_run_to_hub(str(run_dir), "tester/run", token="hf_test", revision="v2", task_layout="branches",
                        retry_wait=0.01)  # fmt: skip
    message = str(error.value)
    assert f"push_run_to_hub({str(run_dir)!r}, 'tester/run', revision='v2', task_layout='branches')" in message
    assert _digest(run_dir) == before
    assert hub.files("tester/run", revision="v2") == {}  # the final model is pushed last: never before its tasks
    push_run_to_hub(str(run_dir), "tester/run", revision="v2", task_layout="branches")  # the call of the message
    assert hub.branches("tester/run") == ["main", "v2", "v2-task-00", "v2-task-01"]
    assert set(hub.files("tester/run", revision="v2")) == {f for f in run_files(str(run_dir)) if "/" not in f}


# ------------------------------------------------------------------------------------------- repo id + token
def test_resolve_repo_id_from_output_dir_and_user(hub, tmp_path, no_saved_token, monkeypatch):
    out = str(tmp_path / "mspt-imre")
    assert resolve_hub_repo_id(None, out, token="hf_test") == "tester/mspt-imre"  # as Trainer: folder name + user
    assert resolve_hub_repo_id("demo", out, token="hf_test") == "tester/demo"
    assert resolve_hub_repo_id("org/demo", out, token="hf_test") == "org/demo"
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    assert resolve_hub_repo_id(None, out) == "tester/mspt-imre"  # the token from the environment
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ValueError, match="none was found: pass --hub_token, set HF_TOKEN or run `hf auth login`"):
        resolve_hub_repo_id("org/demo", out)
    with pytest.raises(ValueError, match=r"refused the token \(401\)"):
        resolve_hub_repo_id("org/demo", out, token="hf_wrong")
    hub.tokens["hf_read"] = "reader"
    hub.read_only.add("hf_read")
    with pytest.raises(ValueError, match="'reader' is read-only"):
        resolve_hub_repo_id("org/demo", out, token="hf_read")
    with pytest.raises(ValueError, match=r"output_dir's folder name \('bad name!'"):
        resolve_hub_repo_id(None, str(tmp_path / "bad name!"), token="hf_test")
    with pytest.raises(ValueError, match="--hub_model_id gives the repo id 'a/b/c'"):
        resolve_hub_repo_id("a/b/c", out, token="hf_test")
    with pytest.raises(ValueError, match="could not be reached"):
        resolve_hub_repo_id("org/demo", out, token="hf_test", endpoint="http://127.0.0.1:9", timeout=2)
    assert all(path == "/api/whoami-v2" for _, path in hub.requests if path != "/api/agent-harnesses")


# -------------------------------------------------------------------------------------------- the run script
def _run(monkeypatch, out, *extra):
    """examples/run_imre.py's main, in this process, with these arguments."""
    spec = importlib.util.spec_from_file_location("example_run_imre", ROOT / "examples" / "run_imre.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", ["run_imre.py", "--output_dir", str(out), "--dataset_cache_dir",
                                      str(out.parent / "cache"), *TINY, *extra])  # fmt: skip
    return script.main()


@pytest.fixture
def no_training(monkeypatch):
    from continual_trainer.trainer import ContinualTrainer

    def train_tasks(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(ContinualTrainer, "train_tasks", train_tasks)


@pytest.mark.parametrize("extra,error", [
    (["--push_to_hub", "true"], "none was found: pass --hub_token"),
    (["--push_to_hub", "true", "--hub_token", "hf_wrong"], r"refused the token \(401\)"),
    (["--push_to_hub", "true", "--hub_token", "hf_test", "--hub_model_id", "a/b/c"], "--hub_model_id gives"),
    (["--push_to_hub", "true", "--hub_token", "hf_test", "--hub_strategy", "checkpoint"],
     "--hub_strategy checkpoint is not supported by the example scripts: mid-task checkpoints are not pushed"),
    (["--push_to_hub", "true", "--hub_token", "hf_test", "--hub_strategy", "all_checkpoints"],
     "--hub_strategy all_checkpoints is not supported"),
    (["--hub_task_layout", "branch"], r"--hub_task_layout must be one of \('subfolders', 'branches'\), got 'branch'"),
])  # fmt: skip
def test_bad_hub_settings_fail_before_training(hub, tmp_path, monkeypatch, no_saved_token, no_training, extra, error):
    # before: --push_to_hub without --hub_model_id crashed with a TypeError after the whole run, and --hub_strategy
    # was dropped silently
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=error):
        _run(monkeypatch, out, *extra)
    assert not list(out.glob("task-*"))  # nothing was trained
    assert not any("/commit/" in path or path == "/api/repos/create" for _, path in hub.requests)


def test_run_pushes_one_branch_per_task_and_the_card_names_the_repo(hub, tmp_path, monkeypatch, no_saved_token):
    from huggingface_hub import ModelCard

    out = tmp_path / "mspt-demo"
    _run(monkeypatch, out, "--push_to_hub", "true", "--hub_token", "hf_test", "--hub_task_layout", "branches",
         "--hub_private_repo", "true")  # fmt: skip

    repo = "tester/mspt-demo"  # no --hub_model_id: the output_dir's name under the token's user
    assert hub.branches(repo) == ["main", "task-00", "task-01"] and hub.private[("model", repo)] is True
    main = hub.files(repo)
    assert not any(path.startswith("task-") for path in main)
    assert main["all_results.json"] == (out / "all_results.json").read_bytes()
    all_results = json.loads(main["all_results.json"])
    assert all_results["num_tasks"] == 2 and set(all_results) >= {"final_average", "forgetting", "bwt"}
    card = ModelCard(main["README.md"].decode())
    assert card.data.pipeline_tag == "text-classification" and card.data.license == "apache-2.0"
    assert 'AutoModelForSequenceClassification.from_pretrained("tester/mspt-demo", trust_remote_code=True)' in card.text
    assert 'revision="task-00"' in card.text and "](accuracy_matrix.png)" in card.text
    assert "accuracy_matrix.png" in main and "modality_balance.png" in main
    model, _ = _load(repo, tmp_path, revision="task-00")
    assert _same_weights(model, _load(str(out / "task-00"), tmp_path)[0])


# ------------------------------------------------------------------------------------ --hub_strategy every_save
@pytest.fixture
def task_ends(hub, monkeypatch):
    """{task_id: {branch: {path: bytes}}}: the repos' files when each task's push callback fires (before it pushes)."""
    from continual_trainer.hub import TaskPushCallback

    seen, push = {}, TaskPushCallback.on_task_end

    def on_task_end(self, args, state, control, task_id=None, **kwargs):
        seen[task_id] = {rev: hub.files(repo, revision=rev) for repo in ("tester/every", "tester/fail")
                         for rev in hub.branches(repo)}  # fmt: skip
        return push(self, args, state, control, task_id=task_id, **kwargs)

    monkeypatch.setattr(TaskPushCallback, "on_task_end", on_task_end)
    return seen


def test_every_save_pushes_each_task_as_it_is_saved(hub, tmp_path, monkeypatch, no_saved_token, task_ends):
    out = tmp_path / "every"
    _run(monkeypatch, out, "--synthetic_num_tasks", "3", "--push_to_hub", "true", "--hub_token", "hf_test",
         "--hub_revision", "v2", "--hub_strategy", "every_save")  # fmt: skip

    assert sorted(task_ends) == [0, 1, 2]
    local = {f: (out / f).read_bytes() for f in run_files(str(out))}
    task_00, task_01 = ({f: data for f, data in local.items() if f.startswith(t)} for t in ("task-00/", "task-01/"))
    assert task_ends[0] == {}  # nothing on the Hub before the first task is finished
    assert task_ends[1] == {"main": {}, "v2": task_00}  # task-00 pushed into v2's task-00/ before task 2 started
    assert task_ends[2]["v2"] == {**task_00, **task_01}
    assert [(rev, summary.rsplit(": ", 1)[-1]) for repo, rev, summary in hub.commits if repo == "tester/every"] == [
        ("v2", "task-00"), ("v2", "task-01"), ("v2", "task-02"), ("v2", "Upload MSPT continual run")]  # fmt: skip
    assert hub.files("tester/every") == {}  # main untouched

    push_run_to_hub(str(out), "tester/end", token="hf_test", revision="v2")  # what --hub_strategy end pushes
    assert hub.files("tester/every", revision="v2") == hub.files("tester/end", revision="v2")
    assert set(hub.files("tester/end", revision="v2")) == set(run_files(str(out)))


def test_every_save_task_push_refused_training_goes_on(hub, tmp_path, monkeypatch, no_saved_token, task_ends, caplog):
    hub.fail_next = [("POST", "/api/models/tester/fail/commit/task-01", 403)]  # task-01's own push only
    out = tmp_path / "fail"
    with caplog.at_level("WARNING", logger="continual_trainer.hub"):
        _run(monkeypatch, out, "--synthetic_num_tasks", "3", "--push_to_hub", "true", "--hub_token", "hf_test",
             "--hub_model_id", "fail", "--hub_task_layout", "branches", "--hub_strategy", "every_save")  # fmt: skip

    assert sorted(task_ends) == [0, 1, 2] and (out / "task-02" / "config.json").is_file()  # training went on
    assert sorted(task_ends[2]) == ["main", "task-00", "task-01"]  # the branch was made; its commit was refused
    assert task_ends[2]["task-01"] == task_ends[2]["main"] == {}
    files = run_files(str(out))
    assert task_ends[1]["task-00"] == {f[8:]: (out / f).read_bytes() for f in files if f.startswith("task-00/")}
    warnings = [r.getMessage() for r in caplog.records if "Training goes on" in r.getMessage()]
    assert len(warnings) == 1 and str(out / "task-01") in warnings[0] and "403" in warnings[0]  # task-01's only
    assert f"push_run_to_hub({str(out)!r}, 'tester/fail', task_layout='branches')" in warnings[0]
    assert hub.branches("tester/fail") == ["main", "task-00", "task-01", "task-02"]
    for task in ("task-00", "task-01", "task-02"):  # the push at the end brought task-01 too
        stored = hub.files("tester/fail", revision=task)
        assert stored == {f.split("/", 1)[1]: (out / f).read_bytes() for f in files if f.startswith(task + "/")}
    assert set(hub.files("tester/fail")) == {f for f in files if "/" not in f}
