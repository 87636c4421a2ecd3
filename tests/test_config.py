"""Every config option composes; typos, wrong types and bad values fail early with a fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from star.cli import CONF_DIR
from star.config import ConfigError, describe_config_error, inactive_settings, validate
from star.preflight import preflight
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


def check(cfg) -> None:
    """What the CLI runs before loading anything: the pure checks, then the pre-flight. generator=vllm on a
    machine without the vLLM environment (scripts/setup.sh --vllm) must be refused by the pre-flight."""
    from star.config import ConfigError
    from star.generation.vllm_engine import environment_problem

    validate(cfg)
    if cfg.generator.name == "vllm" and environment_problem(cfg.generator.python):
        with pytest.raises(ConfigError, match=r"bash scripts/setup\.sh --vllm"):
            preflight(cfg)
        return
    preflight(cfg)


def test_groups_present():
    for group in ("task", "model", "method", "rationalization", "sampling", "schedule", "trainer",
                  "generator", "logger", "debug", "experiment"):
        assert group in GROUPS, f"config group {group} missing"


@pytest.mark.parametrize("group,option", list(group_options()))
def test_every_option_composes_and_validates(group, option):
    cfg = compose_config([f"{group}={option}", *required_for(group, option)])
    check(cfg)


@pytest.mark.parametrize("group,option", [(g, o) for g, o in group_options() if g != "debug"])
def test_every_option_composes_with_debug_fast(group, option):
    check(compose_config([f"{group}={option}", "debug=fast", *required_for(group, option)]))


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
                          "schedule.mode=linear", "task.digits=[1,2]"])
    assert cfg.seed == 3 and cfg.n_iterations == 0 and cfg.sampling.temperature == 0.7
    assert list(cfg.task.digits) == [1, 2]
    cqa = compose_config(["task=cqa", "task.data_files.train=a.jsonl", "task.data_files.dev=b.jsonl"])
    assert cqa.task.data_files.train == "a.jsonl"
    assert compose_config(["model=hf", "model.name_or_path=/x"]).model.name_or_path == "/x"


# Each option owns its keys, for every group: (overrides, the error naming who reads the key, or None
# when it composes; the settings reported as having no effect).
OPTION_KEYS = [
    (["task=cqa", "task.digits=[1,2]"], "task.digits is not read by task=cqa; task=arithmetic reads it", []),
    (["task=arithmetic", "task.hub_id=x"], "task=cqa reads it (also task=gsm8k)", []),
    (["task=reasoning_gym", "task.source=gsm_symbolic"], "task=gsm8k reads it", []),
    (["task=gsm8k", "debug=fast"], None, []),
    (["task.digitz=3"], "task.digitz is not a key of task=arithmetic", []),
    (["model.name_or_path=/x"], "model.name_or_path is not read by model=smollm2_135m; model=hf reads it: add model=hf",
     []),
    (["model=hf", "model.name_or_path=x", "model.hidden_size=8"], "model=tiny reads it (also model=gptj_tiny)", []),
    (["model=tiny", "model.cache_dir=/tmp"], "model=smollm2_135m reads it", []),
    (["model=tiny", "model.lora.r=4"], None, ["model.lora.r=4 (model.lora.enabled=false)"]),
    (["method.restart=false"], "method.restart is not a key of method", []),
    (["method=direct_finetune", "method.min_rationale_lines=1"], None,
     ["method.min_rationale_lines=1 (method.data=gold)"]),
    (["method.min_rationale_lines=1"], None, []),
    (["rationalization=off", "rationalization.p_rationalization=0.5"], None,
     ["rationalization.p_rationalization=0.5 (rationalization.enabled=false)",
      # set by the default experiment, and without effect once rationalization is off
      "rationalization.hinted_prompt_for_finetuned=false (rationalization.enabled=false)"]),
    (["sampling.top_p=0.9"], None, ["sampling.top_p=0.9 (sampling.temperature=0, greedy)"]),
    (["schedule=linear", "schedule.increment=5"], None, ["schedule.growth=0.0 (schedule.mode=linear)"]),
    (["~experiment", "schedule=epoch"], None, []),
    (["trainer.sharding_strategy=NO_SHARD"], None, ["trainer.sharding_strategy=NO_SHARD (trainer.strategy=auto)"]),
    (["trainer=fsdp", "trainer.sharding_strategy=NO_SHARD"], None, []),
    (["generator.slurm.cpus_per_task=2"], None, ["generator.slurm="]),
    (["logger.projekt=x"], "logger.projekt is not a key of logger", []),
    (["checkpoint.keep=all"], None, []),
    (["experiment=cqa_gptj_star"], None, []),
    (["debug_task=fast_arithmetic"], None, []),
    (["hydra/launcher=slurm", "hydra.launcher.partition=debug"], None, []),
    (["ablation=temperature", "sampling.top_p=0.8"], None, []),
    (["~experiment", "ablation=rationalization_off", "rationalization.p_rationalization=0.5"], None,
     ["rationalization.p_rationalization=0.5 (rationalization.enabled=false)"]),
]


@pytest.mark.parametrize("overrides,error,unread", OPTION_KEYS, ids=[" ".join(o) for o, _, _ in OPTION_KEYS])
def test_each_option_owns_its_keys(overrides, error, unread):
    if error is not None:
        with pytest.raises(ConfigCompositionException) as e:
            compose_config(overrides)
        assert error in describe_config_error(e.value)
        return
    notes = inactive_settings(compose_config(overrides))
    assert len(notes) == len(unread) and all(any(n.startswith(u) for n in notes) for u in unread), notes


def test_the_option_key_table_covers_every_group():
    covered = {re.split(r"[./=]", o.lstrip("~+"))[0] for overrides, _, _ in OPTION_KEYS for o in overrides}
    assert set(GROUPS) <= covered, set(GROUPS) - covered


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
        check(cfg)
    assert needle in str(e.value)
