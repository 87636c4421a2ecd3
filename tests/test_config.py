"""Every config option composes; typos, wrong types and bad values fail early with a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from star.cli import CONF_DIR
from star.config import ConfigError, validate
from tests.conftest import REPO, compose_config

GROUPS = sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir())


def group_options():
    for group in GROUPS:
        for f in sorted((Path(CONF_DIR) / group).glob("*.yaml")):
            yield group, f.stem


def required_for(group: str, option: str) -> list[str]:
    """What an option needs besides itself to validate offline (a model path, local data)."""
    if group == "trainer" and option == "cpu_ddp":
        # Two CPU processes each holding the default 135M model and its optimizer may not fit
        # the RAM of whatever machine runs the tests; the memory check is tested on its own.
        return ["model=tiny"]
    if group == "model" and option == "hf":
        return ["model.name_or_path=some-org/some-model"]  # a hub id: checked only when loaded
    if group == "model" and option == "gptj_6b":
        return ["trainer=gpu"]  # full fine-tuning of 6B on this CPU is refused by the memory check
    task = option if group == "task" else option.split("_")[0] if group == "experiment" else None
    if task and (REPO / "tests" / "data" / task).is_dir():
        return [f"task.data_files.{split}={REPO}/tests/data/{task}/{split}.jsonl" for split in ("train", "dev")]
    return []


def test_groups_present():
    for group in ("task", "model", "method", "rationalization", "sampling", "schedule", "trainer",
                  "generator", "logger", "debug", "experiment"):
        assert group in GROUPS, f"config group {group} missing"


@pytest.mark.parametrize("group,option", list(group_options()))
def test_every_option_composes_and_validates(group, option):
    cfg = compose_config([f"{group}={option}", *required_for(group, option)])
    validate(cfg)


@pytest.mark.parametrize("group,option", [(g, o) for g, o in group_options() if g != "debug"])
def test_every_option_composes_with_debug_fast(group, option):
    validate(compose_config([f"{group}={option}", "debug=fast", *required_for(group, option)]))


def test_experiment_names_follow_task_model_variant():
    for f in (Path(CONF_DIR) / "experiment").glob("*.yaml"):
        task, model, *variant = f.stem.split("_")
        assert task in ("arithmetic", "cqa", "gsm8k") and model and variant, f.name
        assert f.read_text().startswith("# @package _global_\n# "), f"{f.name}: package line, then a comment"


def test_each_option_sets_its_group():
    assert compose_config(["rationalization=off"]).rationalization.enabled is False
    assert compose_config(["rationalization=on"]).rationalization.enabled is True
    assert compose_config(["schedule=linear"]).schedule.mode == "linear"
    assert compose_config(["schedule=epoch"]).schedule.mode == "epoch"
    assert compose_config(["sampling=temperature"]).sampling.temperature > 0
    assert compose_config(["method=fewshot_cot"]).n_iterations == 0
    assert compose_config(["logger=none"]).logger.wandb is False


def test_documented_keys_exist():
    cfg = compose_config(["seed=3", "n_iterations=0", "sampling.temperature=0.7", "sampling.top_p=0.9",
                          "rationalization.enabled=false", "rationalization.p_rationalization=0.5",
                          "schedule.mode=linear", "task.digits=[1,2]", "task.data_files.train=a.jsonl",
                          "task.data_files.dev=b.jsonl", "model.name_or_path=/x"])
    assert cfg.seed == 3 and cfg.n_iterations == 0 and cfg.sampling.temperature == 0.7
    assert list(cfg.task.digits) == [1, 2] and cfg.task.data_files.train == "a.jsonl"


def test_typo_fails_at_compose():
    with pytest.raises(ConfigCompositionException) as e:
        compose_config(["task.digitz=3"])
    assert isinstance(e.value.__cause__, (ConfigKeyError, ConfigAttributeError))
    assert "digitz" in str(e.value.__cause__)


def test_wrong_type_fails_at_compose():
    with pytest.raises(ConfigCompositionException) as e:
        compose_config(["n_iterations=abc"])
    assert isinstance(e.value.__cause__, ValidationError)


def test_unknown_option_lists_choices():
    with pytest.raises(Exception) as e:
        compose_config(["schedule=cosine"])
    assert "exponential" in str(e.value)


BAD_VALUES = [
    ("n_iterations=-1", "n_iterations"),
    ("task.train_size=0", "task.train_size"),
    ("task.dev_size=0", "task.dev_size"),
    ("task.digits=[0,1]", "task.digits"),
    ("task.digits=[]", "task.digits"),
    ("task.sample_per_iteration=0", "task.sample_per_iteration"),
    ("task.sample_per_iteration=5000", "task.sample_per_iteration"),
    ("task.max_new_tokens=0", "task.max_new_tokens"),
    ("task.name=nosuchtask", "unknown task"),
    ("sampling.temperature=-0.1", "sampling.temperature"),
    ("sampling.top_p=0", "sampling.top_p"),
    ("sampling.top_p=1.5", "sampling.top_p"),
    ("rationalization.p_rationalization=1.5", "p_rationalization"),
    ("rationalization.p_rationalization=-0.1", "p_rationalization"),
    ("schedule.mode=cosine", "schedule.mode"),
    ("schedule.base_steps=0", "schedule.base_steps"),
    ("trainer.lr=0", "trainer.lr"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.warmup_steps=-1", "trainer.warmup_steps"),
    ("trainer.optimizer=sgd", "trainer.optimizer"),
    ("generator.batch_size=0", "generator.batch_size"),
    ("logger.mode=cloud", "logger.mode"),
    ("plateau_patience=0", "plateau_patience"),
    ("model.name=nosuch", "unknown model"),
    ("task.digits=[1]", "task.train_size"),  # 100 one-digit problems cannot fill 1000 + 100
]


@pytest.mark.parametrize("override,needle", BAD_VALUES)
def test_bad_values_rejected_with_the_key_named(override, needle):
    cfg = compose_config(["~experiment", override])  # plain group defaults: the needles assume their sizes
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert needle in str(e.value)
