"""Progress that reads right: away from a terminal, one line per 10% (plus the end) with loss and tok/s;
on a terminal a tqdm bar; the fit's lines say `iter N train: step k/K` and replace Lightning's bar;
generation passes report questions and tok/s; progress=False stays silent.

    python -m pytest -q tests/test_progress.py              # the fast part
    python -m pytest -q -m slow tests/test_progress.py      # spawned DDP: only rank 0 reports
"""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from star.generation.hf import HFGenerator
from star.models import load_model_and_tokenizer
from star.progress import Progress
from star.training import finetune
from star.training.callbacks import TrainProgress
from star.training.fit import build_trainer
from tests.conftest import compose_config

ROWS = [{"prompt": f"Q: {a} + 1\nA:", "completion": f" {a + 1}\n\n"} for a in range(8)]


class Clock:
    """A perf_counter that moves only when told."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr("star.progress.time.perf_counter", c)
    return c


def test_away_from_a_terminal_one_line_per_ten_percent(clock):
    out = io.StringIO()
    bar = Progress("iter 1 train", 40, unit="step", stream=out)
    for k in range(1, 41):
        clock.now += 0.5                      # 0.5 s per step, 80 tokens per step: 160 tok/s
        bar.update(k, tokens=80 * k, loss=1.0 - k / 100)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == [f"iter 1 train: step {k}/40 ({k * 100 // 40}%), loss {1.0 - k / 100:.3g}, 160 tok/s"
                     for k in range(4, 41, 4)]
    assert "\r" not in out.getvalue()


def test_a_loop_that_stops_short_gets_its_last_line_at_close(clock):
    out = io.StringIO()
    bar = Progress("generate", 40, unit="question", stream=out)
    for k in (3, 6, 9, 13, 14):
        clock.now += 1.0
        bar.update(k, tokens=11 * k)
    bar.close()
    bar.close()  # a second close writes nothing more
    assert out.getvalue().splitlines() == [
        "generate: question 6/40 (15%), 33 tok/s",    # 10%
        "generate: question 9/40 (22%), 33 tok/s",    # 20%
        "generate: question 13/40 (32%), 36 tok/s",   # 30%
        "generate: question 14/40 (35%), 31 tok/s",   # the end (close)
    ]


def test_on_a_terminal_a_tqdm_bar_with_loss_and_rate(clock):
    out = Terminal()
    bar = Progress("iter 2 train", 4, stream=out)
    for k in range(1, 5):
        clock.now += 1.0
        bar.update(k, tokens=50 * k, loss=0.53)
    bar.close()
    text = out.getvalue()
    assert "\r" in text and "iter 2 train: 100%" in text and "4/4" in text
    assert "loss=0.53" in text and "tok/s=50" in text
    assert "step 4/4 (100%)" not in text  # no log lines on a terminal


def test_disabled_writes_nothing(clock):
    for stream in (io.StringIO(), Terminal()):
        bar = Progress("x", 10, enabled=False, stream=stream)
        bar.update(10, tokens=5, loss=1.0)
        bar.close()
        assert stream.getvalue() == ""


def test_only_rank_0_reports():
    for rank0, expected in ((True, True), (False, False)):
        callback = TrainProgress("iter 1 train", 10)
        callback.on_train_start(SimpleNamespace(is_global_zero=rank0), None)
        assert (callback.progress is not None) == expected


def test_the_trainer_has_our_progress_and_not_lightnings():
    cfg = compose_config(["model=tiny"])
    on = build_trainer(cfg.trainer, 5, progress=True, desc="iter 3 train")
    off = build_trainer(cfg.trainer, 5, progress=False)
    assert on.progress_bar_callback is None and off.progress_bar_callback is None
    [ours] = [c for c in on.callbacks if isinstance(c, TrainProgress)]
    assert (ours.desc, ours.total_steps) == ("iter 3 train", 5)
    assert not any(isinstance(c, TrainProgress) for c in off.callbacks)


LINE = r"iter 3 train: step (\d+)/5 \((\d+)%\), loss \d[\d.e+-]*, (\d+) tok/s"


def test_a_fit_reports_iteration_steps_loss_and_rate(capsys):
    cfg = compose_config(["model=tiny", "trainer.batch_size=4", "trainer.warmup_steps=0"])
    model, tok = load_model_and_tokenizer(cfg.model, seed=0)
    finetune(model, tok, ROWS, steps=5, trainer_cfg=cfg.trainer, seed=0, progress=True, desc="iter 3 train")
    err = capsys.readouterr().err
    matches = [re.fullmatch(LINE, line) for line in err.splitlines() if line.startswith("iter 3 train")]
    assert [int(m[1]) for m in matches if m] == [1, 2, 3, 4, 5], err  # 5 steps: each is 20%
    assert all(m and int(m[3]) > 0 for m in matches), err
    assert "Epoch" not in err and "\r" not in err


def test_a_fit_without_progress_is_silent(capsys):
    cfg = compose_config(["model=tiny", "trainer.batch_size=4"])
    model, tok = load_model_and_tokenizer(cfg.model, seed=0)
    finetune(model, tok, ROWS, steps=2, trainer_cfg=cfg.trainer, seed=0, progress=False, desc="iter 3 train")
    err = capsys.readouterr().err
    assert "iter 3 train" not in err and "Epoch" not in err


def test_a_generation_pass_reports_questions_and_rate(capsys):
    cfg = OmegaConf.create({"name": "tiny", "hidden_size": 64, "n_layers": 2, "n_heads": 4, "dtype": "float32"})
    model, tok = load_model_and_tokenizer(cfg, seed=1)
    questions = [f"Q: {a} + {a}\nA:" for a in range(10)]
    gen = HFGenerator(model, tok, batch_size=2, progress=True)
    gen.n_new_tokens = 1000  # tokens of earlier calls do not count in this pass's rate
    with torch.no_grad():
        gen.generate("", questions, seeds=[0] * 10, max_new_tokens=4, stop=(), desc="iter 1 generate")
    lines = capsys.readouterr().err.splitlines()
    found = [re.fullmatch(r"iter 1 generate: question (\d+)/10 \((\d+)%\), (\d+) tok/s", line) for line in lines]
    assert all(found) and [int(m[1]) for m in found] == [2, 4, 6, 8, 10], lines  # 5 batches: 20% each
    assert int(found[-1][3]) > 0


def test_generation_without_progress_is_silent(capsys):
    cfg = OmegaConf.create({"name": "tiny", "hidden_size": 64, "n_layers": 2, "n_heads": 4, "dtype": "float32"})
    model, tok = load_model_and_tokenizer(cfg, seed=1)
    HFGenerator(model, tok, batch_size=2, progress=False).generate(
        "", ["Q: 1 + 1\nA:"] * 3, seeds=[0] * 3, max_new_tokens=2, stop=(), desc="quiet")
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_spawned_ddp_ranks_report_once(capfd):
    """trainer=cpu_ddp: the spawned ranks write to the inherited stderr; only rank 0 writes lines."""
    cfg = compose_config(["model=tiny", "trainer=cpu_ddp", "trainer.batch_size=2", "trainer.warmup_steps=0"])
    model, tok = load_model_and_tokenizer(cfg.model, seed=0)
    finetune(model, tok, ROWS, steps=5, trainer_cfg=cfg.trainer, seed=0, progress=True, desc="iter 3 train")
    err = capfd.readouterr().err
    steps = [int(m[1]) for m in re.finditer(LINE, err)]
    assert steps == [1, 2, 3, 4, 5], err
