"""Command-line entry point: `star [overrides]` composes the config, runs the loop, exits.

    star                                    # the default run (conf/config.yaml)
    star model=tiny debug=fast              # a smoke run in seconds
    star rationalization=off sampling.temperature=0.7 n_iterations=3
    star hydra.run.dir=outputs/my_run       # rerun the same command to resume it

User errors (a key the chosen option does not read, a bad value, a missing model) print one
message naming the fix and exit 2, before anything is written: the config is composed (Hydra),
checked (star/config.py: pure) and pre-flighted (star/preflight.py: data, model, memory, devices)
before the run directory's lock is taken.
"""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from star.config import ConfigError, check_option_keys, describe_config_error, inactive_settings, register_configs, validate

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


def main() -> None:
    problem = _run_dir_problem(sys.argv[1:])
    if problem:
        print(f"star: error: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        with _hydra_errors_raised():
            _hydra_main()
    except HydraException as e:
        # Composing the config failed (Hydra wraps every composition error in its own exceptions; a run's
        # own failure is never one): an unknown option, a key the chosen option does not read, a wrong type.
        message = describe_config_error(e) or _compact(e)
        print(f"star: error: {message}", file=sys.stderr)
        sys.exit(2)


def _compact(e: BaseException) -> str:
    """Hydra's own message for a composition error, with the OmegaConf error behind it."""
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else None
    return str(e).strip() + (f"\n{str(cause).strip()}" if cause is not None and str(cause) not in str(e) else "")


if __name__ == "__main__":
    main()
