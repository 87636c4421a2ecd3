"""checkpoint.keep=last_and_best: older checkpoints go, the last (M(n), which the next iteration
needs) and the best by dev accuracy stay, and every deletion is logged in the run directory."""

from __future__ import annotations

from pathlib import Path

from star import artifacts as A


def fake_run(root: Path, accuracies: list[float], checkpoints: list[str | None]) -> Path:
    """Iterations 1..n with the given dev accuracies; train.done of iteration k names checkpoints[k-1]
    (None: M(k) is the base), and a checkpoint directory exists for every iteration that trained."""
    A.write_json(A.iter_dir(root, 0) / "eval.json", {"accuracy": 0.0})
    for k, (acc, ckpt) in enumerate(zip(accuracies, checkpoints), start=1):
        d = A.iter_dir(root, k)
        A.write_json(d / "eval.json", {"accuracy": acc})
        A.mark_done(root, k, "train", {"checkpoint": ckpt, "prompted": False})
        if ckpt == f"iter_{k:02d}/checkpoint":
            (root / ckpt).mkdir(parents=True)
            (root / ckpt / "model.safetensors").write_bytes(b"w")
    return root


def existing(root: Path) -> list[str]:
    return sorted(f"{p.parent.name}/checkpoint" for p in root.glob("iter_*/checkpoint"))


def test_keeps_last_and_best(tmp_path):
    run = fake_run(tmp_path, [0.2, 0.6, 0.4, 0.5], [f"iter_{k:02d}/checkpoint" for k in range(1, 5)])
    deleted = A.prune_checkpoints(run, 4)
    assert deleted == ["iter_01/checkpoint", "iter_03/checkpoint"]
    assert existing(run) == ["iter_02/checkpoint", "iter_04/checkpoint"]
    rows = A.read_jsonl(run / A.RETENTION_LOG)
    assert [r["deleted"] for r in rows] == deleted and rows[0]["best_iteration"] == 2
    assert A.prune_checkpoints(run, 4) == []  # idempotent: a redone eval deletes nothing more
    assert len(A.read_jsonl(run / A.RETENTION_LOG)) == 2


def test_ties_keep_the_earliest_best(tmp_path):
    run = fake_run(tmp_path, [0.0, 0.0, 0.0], [f"iter_{k:02d}/checkpoint" for k in range(1, 4)])
    assert A.prune_checkpoints(run, 3) == ["iter_02/checkpoint"]


def test_never_deletes_the_checkpoint_m_n_points_to(tmp_path):
    # Iteration 3 kept nothing and continued from M(2): M(3) IS iter_02/checkpoint, needed to generate
    # iteration 4, even though iteration 1 scored best.
    run = fake_run(tmp_path, [0.9, 0.1, 0.1], ["iter_01/checkpoint", "iter_02/checkpoint", "iter_02/checkpoint"])
    assert A.prune_checkpoints(run, 3) == []
    assert existing(run) == ["iter_01/checkpoint", "iter_02/checkpoint"]


def test_base_model_iterations_have_nothing_to_keep(tmp_path):
    run = fake_run(tmp_path, [0.5, 0.1], ["iter_01/checkpoint", None])
    assert A.prune_checkpoints(run, 2) == []  # M(2) is the base; iter_01 is the best


def test_a_killed_deletion_leaves_a_temp_that_is_cleared(tmp_path):
    run = fake_run(tmp_path, [0.1, 0.2], ["iter_01/checkpoint", "iter_02/checkpoint"])
    stale = A.iter_dir(run, 1) / ".checkpoint.deleted.tmp"
    stale.mkdir()
    A.prune_checkpoints(run, 2)
    assert existing(run) == ["iter_02/checkpoint"] and not stale.exists()
