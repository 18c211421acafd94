"""The tree holds sources only: no MindSpore compile dumps or build outputs are tracked."""

import fnmatch
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What MindSpore writes while compiling (IR dumps, per-rank directories, kernel caches) and what builds leave.
GENERATED = ("*.ir", "*.dot", "rank_*/*", "kernel_meta/*", "*.so", "*.o", "*.pyc", "*.egg-info/*", "build/*")


def tracked_files() -> list:
    listing = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return listing.stdout.splitlines()


def test_no_generated_file_is_tracked():
    files = tracked_files()
    assert files, "git ls-files listed nothing: the suite must run from a git checkout"
    generated = [f for f in files if any(fnmatch.fnmatch(f, pattern) for pattern in GENERATED)]
    assert not generated, f"generated files are tracked (git rm them; .gitignore covers them): {generated}"


def test_gitignore_covers_mindspore_dumps():
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "TOPO_SORT_CIRCLE_GRAPHS_1.ir", "rank_0/om/analyze_fail.ir", "kernel_meta/x"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ignored.stdout.split() == ["TOPO_SORT_CIRCLE_GRAPHS_1.ir", "rank_0/om/analyze_fail.ir", "kernel_meta/x"]
