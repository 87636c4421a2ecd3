"""star.run_info's commit helpers, on a scratch git repository: the label a benchmark header carries."""

from __future__ import annotations

import subprocess
from pathlib import Path

from star.run_info import commit_label, git_commit


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_the_label_is_the_short_commit_and_says_when_tracked_files_changed(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "commit", "-q", "-m", "first")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert git_commit(tmp_path) == head
    assert commit_label(tmp_path) == head[:7]
    (tmp_path / "new.txt").write_text("untracked files are not the measured code\n")
    assert commit_label(tmp_path) == head[:7]
    (tmp_path / "a.txt").write_text("two\n")
    assert commit_label(tmp_path) == head[:7] + " (with uncommitted changes)"


def test_outside_git_there_is_no_commit(tmp_path):
    assert git_commit(tmp_path) is None
    assert commit_label(tmp_path) == "unknown"
