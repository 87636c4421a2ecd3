"""Loading CQA and GSM8K data through `datasets` (star/tasks/hf_data.py): local json, jsonl and
parquet files in the hub schema, the hub when no files are given (faked: the hub is not
reachable from tests), caps, and the errors for a wrong schema or a bad row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest

from omegaconf import OmegaConf

from star.config import ConfigError, validate
from star.preflight import check_task_data
from star.tasks.cqa import SOURCE as CQA_SOURCE
from star.tasks.cqa import CqaConfig, CqaTask
from star.tasks.gsm8k import Gsm8kConfig, Gsm8kTask
from star.tasks.hf_data import MAX_REPORTED, TaskDataError, data_files_of
from tests.conftest import compose_config, run_star

DATA = Path(__file__).parent / "data"
TASKS = {"cqa": CqaTask, "gsm8k": Gsm8kTask}


def rows_of(task: str, split: str = "train") -> list[dict]:
    return [json.loads(line) for line in (DATA / task / f"{split}.jsonl").read_text().splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def make(task: str, train: str | None, dev: str | None = None, test: str | None = None, train_size: int = 100,
         dev_size: int = 100, test_size: int = 100, **kw):
    return TASKS[task](train_size=train_size, dev_size=dev_size, test_size=test_size,
                       data_files={"train": train, "dev": dev, "test": test}, **kw)


def fixture_files(task: str) -> tuple[str, str, str]:
    """The local train, dev and test files of `task`."""
    return str(DATA / task / "train.jsonl"), str(DATA / task / "dev.jsonl"), str(DATA / task / "test.jsonl")


# ----------------------------------------------------------------------------- formats, caps, splits

@pytest.mark.parametrize("task", ["cqa", "gsm8k"])
def test_json_jsonl_and_parquet_give_the_same_examples(task, tmp_path):
    rows = rows_of(task)
    (tmp_path / "t.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "t.parquet"))
    shutil.copy(DATA / task / "train.jsonl", tmp_path / "t.jsonl")
    dev = fixture_files(task)[1]
    loaded = [make(task, str(tmp_path / f"t.{ext}"), dev).load("train") for ext in ("jsonl", "json", "parquet")]
    assert len(loaded[0]) == len(rows) == 12
    assert loaded[0] == loaded[1] == loaded[2]
    assert [e.meta for e in loaded[0]] == [e.meta for e in loaded[2]]


@pytest.mark.parametrize("task", ["cqa", "gsm8k"])
def test_sizes_cap_at_the_first_rows_in_file_order(task):
    train, dev, test = fixture_files(task)
    full = make(task, train, dev, test).load("train")
    capped = make(task, train, dev, test, train_size=5, dev_size=2, test_size=3)
    assert capped.load("train") == full[:5]
    assert [e.question for e in capped.load("dev")] == [r["question"].strip() for r in rows_of(task, "dev")[:2]]
    assert [e.question for e in capped.load("test")] == [r["question"].strip() for r in rows_of(task, "test")[:3]]
    assert len(make(task, train, dev, test, train_size=10_000).load("train")) == 12  # a cap, not a demand


def test_examples_hold_the_hub_fields():
    cqa = make("cqa", *fixture_files("cqa")).load("train")[0]
    row = rows_of("cqa")[0]
    assert (cqa.id, cqa.question, cqa.answer) == (row["id"], row["question"], row["answerKey"])
    assert cqa.meta["labels"] == row["choices"]["label"] and cqa.meta["texts"] == row["choices"]["text"]
    gsm = make("gsm8k", *fixture_files("gsm8k")).load("train")
    assert [e.answer for e in gsm][5] == "2175"  # "#### 2,175" normalised
    assert gsm[9].answer == "5.25" and gsm[8].answer == "-21"


def test_unknown_split_and_a_run_without_a_test_file():
    with pytest.raises(ValueError, match="unknown split 'validation' for cqa; valid splits: train, dev, test$"):
        make("cqa", *fixture_files("cqa")).load("validation")
    no_test = make("gsm8k", *fixture_files("gsm8k")[:2])
    assert no_test.splits == ("train", "dev")
    with pytest.raises(ValueError, match=r"valid splits: train, dev; set task.data_files.test=PATH to add one"):
        no_test.load("test")


def test_cache_is_copied():
    task = make("cqa", *fixture_files("cqa"))
    task.load("train").clear()
    assert len(task.load("train")) == 12


# ----------------------------------------------------------------------------- schema and row errors

def test_wrong_schema_names_the_missing_fields_and_the_fix():
    with pytest.raises(TaskDataError) as e:
        make("cqa", fixture_files("gsm8k")[0]).load("train")
    msg = str(e.value)
    assert "missing fields id, choices, answerKey" in msg and "task.data_files.train" in msg
    assert "Fix: convert the file" in msg and '"answerKey": "B"' in msg
    with pytest.raises(TaskDataError, match="missing field answer "):
        make("gsm8k", fixture_files("cqa")[0]).load("train")


def _cqa_bad(edit):
    rows = rows_of("cqa")
    edit(rows)
    return rows


CQA_BAD_ROWS = [
    (lambda r: r[2].pop("question"), "row 3 (id 'cqa-train-002'): missing question"),
    (lambda r: r[2].update(question=""), "row 3 (id 'cqa-train-002'): question is empty"),
    (lambda r: r[2].update(question="   "), "question is empty"),
    (lambda r: r[2].update(question=5), "row 3 (id 'cqa-train-002'): question must be a string, got int 5"),
    (lambda r: r[3].pop("id"), "row 4: missing id"),
    (lambda r: r[3].update(id=17), "row 4: id must be a string, got int"),
    (lambda r: r[4].update(answerKey="F"), "row 5 (id 'cqa-train-004'): gold answerKey 'F' is not among the choices A, B, C, D, E"),
    (lambda r: r[4].update(answerKey=None), "row 5 (id 'cqa-train-004'): missing answerKey"),
    (lambda r: r[4].update(answerKey=""), "answerKey is empty"),
    (lambda r: r[5].update(choices="A) x B) y"), 'choices must be {"label": [...], "text": [...]}'),
    (lambda r: r[5]["choices"].update(label=list("abcde")), "choices.label must be single capital letters"),
    (lambda r: r[5]["choices"].update(label=list("AACDE")), "choices.label repeats a label"),
    (lambda r: r[5]["choices"]["text"].pop(), "equal label and text lists of 2 or more, got 5 labels and 4 texts"),
    (lambda r: r[5]["choices"]["text"].__setitem__(1, ""), "row 6 (id 'cqa-train-005'): choices.text 2 must be a non-empty"),
    (lambda r: r[5]["choices"]["text"].__setitem__(1, 3), "choices.text 2 must be a non-empty"),
    (lambda r: r[6].update(question_concept=3), "question_concept must be a string"),
    (lambda r: r[8].update(id=r[1]["id"]), "row 9 repeats id 'cqa-train-001' of row 2"),
]


@pytest.mark.parametrize("edit,needle", CQA_BAD_ROWS)
def test_cqa_bad_rows_are_named(tmp_path, edit, needle):
    path = write_jsonl(tmp_path / "train.jsonl", _cqa_bad(edit))
    with pytest.raises(TaskDataError) as e:
        make("cqa", path).load("train")
    assert needle in str(e.value)
    assert f"cqa train file {path} (task.data_files.train)" in str(e.value)


def test_bad_row_past_the_cap_still_fails(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", _cqa_bad(lambda r: r[11].update(answerKey="Z")))
    with pytest.raises(TaskDataError, match="row 12"):
        make("cqa", path, train_size=2).load("train")


def test_many_bad_rows_are_listed_up_to_a_limit(tmp_path):
    rows = [dict(r, answerKey="Q") for r in rows_of("cqa")]
    with pytest.raises(TaskDataError) as e:
        make("cqa", write_jsonl(tmp_path / "train.jsonl", rows)).load("train")
    msg = str(e.value)
    assert "12 bad rows" in msg and msg.count("gold answerKey 'Q'") == MAX_REPORTED
    assert f"... and {12 - MAX_REPORTED} more bad rows" in msg


GSM8K_BAD_ROWS = [
    (lambda r: r[1].update(answer="She has 3 apples."), "row 2: answer must end in one '#### N' (the final number), found 0 '####'"),
    (lambda r: r[1].update(answer="x\n#### 3\n#### 4"), "found 2 '####'"),
    (lambda r: r[1].update(answer="x = 3\n#### three"), "row 2: the final answer after '####' must be a number, got 'three'"),
    (lambda r: r[1].update(answer="#### 3"), "row 2: answer has no solution lines before '####'"),
    (lambda r: r[1].update(answer=3), "row 2: answer must be a string, got int 3"),
    (lambda r: r[1].pop("question"), "row 2: missing question"),
    (lambda r: r[1].update(question=""), "row 2: question is empty"),
]


@pytest.mark.parametrize("edit,needle", GSM8K_BAD_ROWS)
def test_gsm8k_bad_rows_are_named(tmp_path, edit, needle):
    rows = rows_of("gsm8k")
    edit(rows)
    with pytest.raises(TaskDataError) as e:
        make("gsm8k", write_jsonl(tmp_path / "train.jsonl", rows)).load("train")
    assert needle in str(e.value)


def test_gsm8k_optional_ids(tmp_path):
    rows = [dict(r, id=f"g{i}") for i, r in enumerate(rows_of("gsm8k"))]
    dev = fixture_files("gsm8k")[1]
    assert [e.id for e in make("gsm8k", write_jsonl(tmp_path / "a.jsonl", rows), dev).load("train")][:2] == ["g0", "g1"]
    rows[3]["id"] = "g0"
    with pytest.raises(TaskDataError, match="row 4 repeats id 'g0' of row 1"):
        make("gsm8k", write_jsonl(tmp_path / "b.jsonl", rows)).load("train")
    rows[3]["id"] = None
    with pytest.raises(TaskDataError, match="some rows have an id and some do not"):
        make("gsm8k", write_jsonl(tmp_path / "c.jsonl", rows)).load("train")


@pytest.mark.parametrize("name,content,needle", [
    ("bad.jsonl", '{"id": "a"}\n{"id": "b"}\nnot json\n', "line 3 is not valid JSON"),
    ("bad.jsonl", '{"id": "a"}\n[1, 2]\n', "line 2 is not a JSON object"),
    ("bad.json", '[{"id": "a"},\n {"id": }]', "invalid JSON at line 2"),
    ("empty.jsonl", "", "is empty"),
    ("data.csv", "id,question\n", "unsupported file type '.csv'; use one of .json, .jsonl, .parquet"),
])
def test_unreadable_files(tmp_path, name, content, needle):
    (tmp_path / name).write_text(content)
    with pytest.raises(TaskDataError, match=needle):
        make("cqa", str(tmp_path / name)).load("train")


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(TaskDataError) as e:
        make("gsm8k", *fixture_files("gsm8k")[:1], dev=str(tmp_path / "nope.jsonl")).load("dev")
    assert "task.data_files.dev" in str(e.value) and "no such file" in str(e.value)


# ----------------------------------------------------------------------------- the hub (faked)

@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset with the hub replaced: local builders ("json", "parquet") run for
    real; a hub id is recorded and answered from the fixture files, or fails like offline."""
    real = datasets.load_dataset
    state = {"calls": [], "offline": False}
    hub_files = {("tau/commonsense_qa", "train"): ("cqa", "train"),
                 ("tau/commonsense_qa", "validation"): ("cqa", "test"),
                 ("openai/gsm8k", "train"): ("gsm8k", "train"), ("openai/gsm8k", "test"): ("gsm8k", "test")}

    def load_dataset(path, name=None, **kw):
        if path in ("json", "parquet"):
            return real(path, name, **kw)
        state["calls"].append((path, name, kw.get("split")))
        if state["offline"]:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")
        return datasets.Dataset.from_list(rows_of(*hub_files[(path, kw["split"])]))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return state


@pytest.mark.parametrize("task,hub_calls", [
    ("cqa", [("tau/commonsense_qa", None, "train"), ("tau/commonsense_qa", None, "validation")]),
    ("gsm8k", [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]),
])
def test_hub_is_read_only_without_files(fake_hub, task, hub_calls):
    with_files = make(task, *fixture_files(task))
    assert [len(with_files.load(split)) for split in ("train", "dev", "test")] == [12, 6, 5]
    assert fake_hub["calls"] == []
    # From the hub: train and test are the hub's (here the fixture files), dev a slice of train.
    from_hub = make(task, None, None, None, dev_size=4)
    assert from_hub.splits == ("train", "dev", "test")
    assert from_hub.load("test") == with_files.load("test")
    assert len(from_hub.load("dev")) == 4 and len(from_hub.load("train")) == 8
    assert sorted(from_hub.load("train") + from_hub.load("dev"), key=lambda e: e.id) == \
           sorted(with_files.load("train"), key=lambda e: e.id)
    assert fake_hub["calls"] == hub_calls


def test_local_loads_skip_the_download_ping_and_restore_datasets_settings(monkeypatch):
    seen = []
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: seen.append(
        (datasets.config.HF_UPDATE_DOWNLOAD_COUNTS, datasets.are_progress_bars_disabled())) or real(*a, **kw))
    before = (datasets.config.HF_UPDATE_DOWNLOAD_COUNTS, datasets.are_progress_bars_disabled())
    make("cqa", *fixture_files("cqa")).load("train")
    assert seen == [(False, True)] * 3  # train, test and dev files
    assert (datasets.config.HF_UPDATE_DOWNLOAD_COUNTS, datasets.are_progress_bars_disabled()) == before


def test_which_split_comes_from_where(fake_hub):
    train, dev, test = fixture_files("cqa")
    # No train file: train and test from the hub unless they have files; dev never from the hub.
    make("cqa", None, dev, test).load("train")
    make("cqa", None, dev, None).load("train")
    hub = "tau/commonsense_qa"
    assert fake_hub["calls"] == [(hub, None, "train"), (hub, None, "train"), (hub, None, "validation")]
    # A train file and no other: dev carved from it, no test split, no hub.
    carved = make("cqa", train, None, None, dev_size=4)
    assert carved.splits == ("train", "dev") and len(carved.load("dev")) == 4
    assert len(fake_hub["calls"]) == 3


@pytest.mark.parametrize("task,hub_id", [("cqa", "tau/commonsense_qa"), ("gsm8k", "openai/gsm8k")])
def test_hub_failure_says_to_pass_local_files(fake_hub, task, hub_id):
    fake_hub["offline"] = True
    with pytest.raises(TaskDataError) as e:
        make(task, None, None).load("train")
    msg = str(e.value)
    assert hub_id in msg and "Couldn't reach" in msg
    assert "task.data_files.train=PATH task.data_files.test=PATH" in msg


def test_config_hub_id_and_config_reach_load_dataset(fake_hub):
    from star.tasks import build_task

    fake_hub["offline"] = True
    for overrides in (["task.hub_id=my/gsm8k-copy", "task.hub_config=null"], ["task.hub_config=socratic"]):
        with pytest.raises(TaskDataError):
            build_task(compose_config(["task=gsm8k", *overrides]).task, seed=0).load("dev")
    assert fake_hub["calls"] == [("my/gsm8k-copy", None, "train"), ("openai/gsm8k", "socratic", "train")]


# ----------------------------------------------------------------------------- config validation

@pytest.mark.parametrize("task", ["cqa", "gsm8k"])
def test_config_with_local_files_validates(task):
    train, dev, test = fixture_files(task)
    cfg = compose_config([f"task={task}", f"task.data_files.train={train}", f"task.data_files.dev={dev}",
                          f"task.data_files.test={test}"])
    validate(cfg)
    check_task_data(cfg)
    assert cfg.task.max_new_tokens == {"cqa": 96, "gsm8k": 256}[task]
    # The caps keep the hub's whole train split (less dev) and its whole reported split as test.
    assert cfg.task.train_size >= 9741 and cfg.task.test_size >= 1319 and cfg.task.dev_size == 500


def test_config_validation_names_bad_data(tmp_path, fake_hub):
    path = write_jsonl(tmp_path / "dev.jsonl", _cqa_bad(lambda r: r[0].update(answerKey="F")))
    cfg = compose_config(["task=cqa", f"task.data_files.train={fixture_files('cqa')[0]}", f"task.data_files.dev={path}"])
    validate(cfg)  # the pure checks do not read data; the preflight does
    with pytest.raises(ConfigError, match="row 1 .*gold answerKey 'F'"):
        check_task_data(cfg)
    fake_hub["offline"] = True
    with pytest.raises(ConfigError, match="task.data_files.train=PATH"):
        check_task_data(compose_config(["task=gsm8k"]))


# ----------------------------------------------------------------------------- where the data comes from

def test_with_location_keeps_the_schema_and_sets_where_the_rows_are():
    mine = CQA_SOURCE.with_location("me/cqa-copy", "small", {"train": "a.jsonl", "test": "t.jsonl", "x": "ignored"})
    assert (mine.hub_id, mine.hub_config) == ("me/cqa-copy", "small")
    assert dict(mine.data_files) == {"train": "a.jsonl", "dev": None, "test": "t.jsonl"}
    assert (mine.task, mine.required, mine.schema, mine.hub_splits) == \
           (CQA_SOURCE.task, CQA_SOURCE.required, CQA_SOURCE.schema, CQA_SOURCE.hub_splits)
    assert dict(CQA_SOURCE.with_location(None, None, None).data_files) == {"train": None, "dev": None, "test": None}


@pytest.mark.parametrize("schema", [CqaConfig, Gsm8kConfig])
def test_data_files_of_a_config_section(schema):
    section = OmegaConf.merge(OmegaConf.structured(schema), {"data_files": {"train": "t.jsonl"}})
    none = {"train": None, "dev": None, "test": None}
    assert data_files_of(section) == {**none, "train": "t.jsonl"}
    assert data_files_of(OmegaConf.structured(schema)) == none
    assert data_files_of(OmegaConf.create({"name": "x"})) == none  # no data_files key


@pytest.mark.parametrize("task,schema", [("cqa", CqaConfig), ("gsm8k", Gsm8kConfig)])
def test_from_config_reads_a_section_of_only_its_own_keys(task, schema):
    train, dev, test = fixture_files(task)
    section = OmegaConf.merge(OmegaConf.structured(schema),
                              {"name": task, "train_size": 4, "dev_size": 2, "test_size": 3,
                               "data_files": {"train": train, "dev": dev, "test": test}})
    built = TASKS[task].from_config(section, seed=0)
    assert TASKS[task].config_class is schema
    assert [len(built.load(s)) for s in ("train", "dev", "test")] == [4, 2, 3]
    assert built.source.hub_id == {"cqa": "tau/commonsense_qa", "gsm8k": "openai/gsm8k"}[task]


# ----------------------------------------------------------------------------- end to end

@pytest.mark.slow
@pytest.mark.parametrize("task", ["cqa", "gsm8k"])
def test_cli_smoke_run_on_local_files(tmp_path, task):
    train, dev, _ = fixture_files(task)
    run_dir = tmp_path / "run"
    proc = run_star([f"task={task}", "model=tiny", "debug=fast", "n_iterations=1", "logger=none",
                     f"task.data_files.train={train}", f"task.data_files.dev={dev}", f"hydra.run.dir={run_dir}"],
                    env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    generations = [json.loads(line) for line in (run_dir / "iter_01" / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 12
    assert json.loads((run_dir / "iter_01" / "eval.json").read_text())["n"] == 6
    trained = (run_dir / "iter_01" / "train.jsonl").read_text()
    assert "(CORRECT)" not in trained and "(hint:" not in trained
