"""Command-line entry point: `star [overrides]` composes the config, runs the loop, exits.

    star                                    # the default run (conf/config.yaml)
    star model=tiny debug=fast              # a smoke run in seconds
    star rationalization=off sampling.temperature=0.7 n_iterations=3
    star hydra.run.dir=outputs/my_run       # rerun the same command to resume it

User errors (a key the chosen option does not read, a bad value, a missing model) print one
message naming the fix and exit 2, before anything is written: the config is composed (Hydra),
checked (star/config.py: pure) and pre-flighted (star/preflight.py: data, model, memory, devices)
before the run directory's lock is taken. A sweep (-m, sweeps/) checks every point before it launches
any (SweepCheck). tests/test_user_errors.py holds the cases and their exact messages.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    HydraException,
    MissingConfigException,
    OverrideParseException,
    SearchPathException,
)
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from star.config import (
    ConfigError,
    StarConfig,
    check_option_keys,
    describe_config_error,
    inactive_settings,
    register_configs,
    validate,
    validate_launcher,
)

register_configs()

# conf/ sits at the repository root (beside star/); an absolute path makes Hydra read it as
# files, whatever the working directory.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


class UserError(Exception):
    """Raised for mistakes the user can fix; printed without a traceback."""


def _wandb_names(run_dir: Path) -> tuple[str, str | None]:
    """(run name, group) for W&B. A sweep point: its overrides (hydra.job.override_dirname) and
    the sweep's name (the sweep file's config name, else the sweep directory's name). A single
    run: the run directory's name and no group."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return run_dir.name, None
    hc = HydraConfig.get()
    group = hc.job.config_name if hc.job.config_name != "config" else Path(hc.sweep.dir).name
    return hc.job.override_dirname or run_dir.name, group


def _run_locked(cfg: DictConfig, run_dir: Path) -> list[dict]:
    """The run itself, once the run directory's lock is held."""
    from star.loop import StarLoop
    from star.models import ModelNotFoundError
    from star.run_info import write_run_info
    from star.tracking import Tracker
    from star.training.module import NonFiniteLossError
    from star.training.slurm import TrainingJobError

    write_run_info(run_dir, cfg)
    # In a sweep: one W&B run per point, named by its overrides, grouped by sweep (logger.* wins).
    run_name, group = _wandb_names(run_dir)
    logger_cfg = cfg.logger if cfg.logger.group or not group else OmegaConf.merge(cfg.logger, {"group": group})
    tracker = Tracker(run_dir, logger_cfg, OmegaConf.to_container(cfg, resolve=True), run_name=cfg.logger.name or run_name)
    try:
        return StarLoop(cfg, run_dir, tracker=tracker).run()
    except ModelNotFoundError as e:
        raise UserError(str(e)) from None
    except NonFiniteLossError as e:
        raise UserError(f"{e}. Every finished stage is kept.") from None
    except TrainingJobError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        # Out of disk, a read-only file system: the stage in progress has no marker, so a rerun
        # redoes it; everything marked done is complete.
        raise UserError(f"could not write the run directory ({e}); fix that, then rerun the same command "
                        "to resume from the last finished stage") from None
    finally:
        tracker.finish()


def run(cfg: DictConfig, run_dir: Path) -> list[dict]:
    """Check, then run (or resume) the STaR loop in run_dir; return per-iteration metrics."""
    from star.artifacts import RunLock, RunLockedError
    from star.preflight import preflight
    from star.report import iteration_table

    try:
        check_option_keys(cfg)
        validate(cfg)
        if unread := inactive_settings(cfg):
            print(f"[star] note: these settings have no effect here: {'; '.join(unread)}")
        preflight(cfg)
    except ConfigError as e:
        raise UserError(str(e)) from None
    try:
        with RunLock(run_dir):  # taken before anything is written: one process per run directory
            history = _run_locked(cfg, run_dir)
    except RunLockedError as e:
        raise UserError(str(e)) from None
    if cfg.print_table:
        print(iteration_table(history))
    print(f"[star] run directory: {run_dir}")
    return history


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as e:
        print(f"star: error: {e}", file=sys.stderr)
        sys.exit(2)


@contextmanager
def _hydra_errors_raised():
    """Hydra prints a composition error itself and exits 1, unless HYDRA_FULL_ERROR is set, in which case
    it raises it (documented Hydra behaviour); set it so main() can say which option reads a key."""
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


class SweepCheck(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): before a sweep launches anything, its SLURM launcher
    settings are checked and every point is composed and checked (the pure checks of star/config.py), so a
    bad value fails at once, not after the points before it ran (or were submitted)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # Hydra turns a callback's exception into a warning and goes on: exit here (SystemExit passes).
        try:
            check_sweep(config)
        except ConfigError as e:
            _error(str(e))
        except HydraException as e:
            _error(describe_config_error(e) or _hydra_message(e, sys.argv[1:]))


def check_sweep(config: DictConfig) -> None:
    """The checks of SweepCheck; `config` is the sweep's own (hydra node included). Raises ConfigError."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from star.preflight import check_sweep_launcher_available

    validate_launcher(config.hydra.launcher)
    check_sweep_launcher_available(config.hydra.launcher)
    sweeper = config.hydra.sweeper
    if not str(sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return  # another sweeper picks its points as it goes
    # The points as BasicSweeper makes them: the sweep file's params, then the command line's overrides.
    loader = GlobalHydra.instance().config_loader()
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(
        params + list(config.hydra.overrides.task))
    swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
    # Every combination, as BasicSweeper makes them: one entry per key (a later override of a key replaces
    # an earlier one, in the earlier one's place), the last key varying fastest.
    choices: dict[str, list[str]] = {}
    for o in overrides:
        key = o.get_key_element()
        values = o.sweep_string_iterator() if o.is_sweep_override() else [o.get_value_element_as_str()]
        choices[key] = [f"{key}={v}" for v in values]
    points = list(itertools.product(*choices.values()))
    for n, point in enumerate(points, 1):
        cfg = loader.load_sweep_config(config, list(point))
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        try:
            check_option_keys(cfg)
            validate(cfg)
        except ConfigError as e:
            shown = " ".join(o for o in point if o.split("=", 1)[0] in swept)
            raise ConfigError(f"sweep point {n} of {len(points)} ({shown}): {e}; nothing was launched") from None


# The groups every run needs one option of (the schema has no default for them).
REQUIRED_GROUPS = tuple(f.name for f in dataclasses.fields(StarConfig) if f.default is MISSING)


def _override_problem(argv: list[str]) -> str | None:
    """Overrides Hydra would fail on with a traceback or an unrelated message: no key, or a required group
    deleted."""
    for arg in argv:
        if arg.startswith("-"):
            continue
        key = arg.split("=", 1)[0]
        if "=" in arg and not key.lstrip("+~"):
            return f"the override '{arg}' has no key; write KEY=VALUE, e.g. seed=3"
        if key.startswith("~") and key[1:] in REQUIRED_GROUPS:
            group = key[1:]
            return (f"{key} removes the {group}, and every run needs one; choose one with {group}=NAME "
                    f"({', '.join(_options(Path(CONF_DIR) / group))})")
    return None


def _options(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _run_dir_problem(argv: list[str]) -> str | None:
    """Hydra creates the run directory before our code runs, and fails with a traceback when it
    cannot: check an explicit hydra.run.dir first."""
    for arg in argv:
        if arg.startswith("hydra.run.dir="):
            path = Path(arg.split("=", 1)[1]).expanduser()
            parent = next((p for p in [path, *path.parents] if p.exists()), None)
            if parent is not None and (not parent.is_dir() or not os.access(parent, os.W_OK)):
                return f"cannot create the run directory {path}: {parent} is not a writable directory; " \
                       "choose another hydra.run.dir"
    return None


def _error(message: str) -> None:
    print(f"star: error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    argv = sys.argv[1:]
    problem = _override_problem(argv) or _run_dir_problem(argv)
    if problem:
        _error(problem)
    try:
        with _hydra_errors_raised():
            _hydra_main()
    except HydraException as e:
        # Composing the config failed (Hydra wraps every composition error in its own exceptions; a run's
        # own failure is never one): an unknown option, a key the chosen option does not read, a wrong type.
        _error(describe_config_error(e) or _hydra_message(e, argv))
    except Exception as e:
        if type(e).__name__ != "FailedJobError" or not type(e).__module__.startswith("submitit"):
            raise
        # sbatch refused a sweep's jobs (hydra/launcher=slurm); submitit has printed what sbatch said.
        above = " (its message is above)" if str(e).strip() else ""
        _error(f"sbatch refused the sweep's jobs{above}; fix the hydra.launcher setting it names (partition, "
               "timeout_min, mem_gb, additional_parameters.account ...), or check that SLURM answers here (sinfo)")


def _hydra_message(e: HydraException, argv: list[str]) -> str:
    """One message with the fix for Hydra's own errors about the command line; else Hydra's message."""
    if isinstance(e, OverrideParseException):
        lines = [line for line in e.message.splitlines() if not line.startswith("See https://")]
        if lines[0].startswith("LexerNoViableAltException: "):  # the next line puts a caret under the character
            at = len(lines[1].rstrip()) - 1 - len("LexerNoViableAltException: ")
            detail = f"unexpected character {e.override[at]!r} at position {at + 1}"
        else:
            detail = " ".join(lines[1:] if lines[0].startswith("Error parsing override") else lines)
        return (f"cannot parse the override '{e.override}' ({detail}); write KEY=VALUE, and quote a value with "
                f"special characters: KEY='VALUE' (https://hydra.cc/docs/1.2/advanced/override_grammar/basic)")
    if isinstance(e, MissingConfigException) and e.missing_cfg_file:
        return _missing_config_message(e, argv) or _compact(e)
    if isinstance(e, SearchPathException):
        return f"{e}; -cd (--config-dir) takes a directory of config files, e.g. -cd sweeps"
    return _compact(e)


def _missing_config_message(e: MissingConfigException, argv: list[str]) -> str | None:
    """An option or a primary config (-cn) that does not exist: the ones that do."""
    path = e.missing_cfg_file
    if str(e).startswith("Cannot find primary config"):
        folder = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-cd", "--config-dir")), None)
        where = folder or "conf"
        names = _options(Path(folder) if folder else Path(CONF_DIR))
        return f"-cn {path}: there is no {path}.yaml in {where}/; choose one of: {', '.join(names)} (-cn NAME)"
    group, _, name = path.rpartition("/")
    if not group or not e.options:
        return None
    parent = re.match(r"In '([^']+)': ", str(e))
    # Named when the option comes from a file of ours other than the root config (an experiment, a sweep).
    where = f"in {parent.group(1)}.yaml: " if parent and parent.group(1) != "config" \
        and not parent.group(1).startswith("hydra/") else ""
    return f"{where}unknown {group} option '{name}'; choose one of: {', '.join(e.options)} ({group}=NAME)"


def _compact(e: BaseException) -> str:
    """Hydra's own message for a composition error, with the OmegaConf error behind it."""
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else None
    return str(e).strip() + (f"\n{str(cause).strip()}" if cause is not None and str(cause) not in str(e) else "")


if __name__ == "__main__":
    main()
