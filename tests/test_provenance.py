"""``provenance.code_version``: the commit a result was made at, and whether its code differed."""

import subprocess

import pytest

from ri_jax import provenance


def git(root, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A one-commit checkout shaped like ri-jax: code, results and a README."""
    for path in ("ri_jax/lib.py", "experiments/run.py", "benchmarks/bench.py",
                 "benchmarks/results/solver.json", "results/table1/table1.json", "README.md",
                 "tests/test_lib.py", "pyproject.toml"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path, git(tmp_path, "rev-parse", "--short=10", "HEAD")


def test_outside_a_checkout_there_is_no_version(tmp_path, checkout):
    root, _ = checkout
    assert provenance.code_version(tmp_path / "elsewhere") is None  # missing folder
    (tmp_path / "plain").mkdir()
    assert provenance.code_version(tmp_path / "plain") is None  # not a checkout
    # A folder inside someone else's checkout (an installed copy) is not that checkout.
    assert provenance.code_version(root / "ri_jax") is None


@pytest.mark.parametrize("path", ["results/table1/table1.json", "benchmarks/results/solver.json",
                                  "README.md", "tests/test_lib.py"])
def test_results_docs_tests_and_untracked_files_leave_the_version_clean(checkout, path):
    root, head = checkout
    (root / path).write_text("2\n")
    (root / "ri_jax" / "scratch.py").write_text("")  # untracked
    assert provenance.code_version(root) == head


@pytest.mark.parametrize("path", ["ri_jax/lib.py", "experiments/run.py", "benchmarks/bench.py",
                                  "pyproject.toml"])
def test_a_changed_code_file_marks_the_version(checkout, path):
    root, head = checkout
    assert provenance.code_version(root) == head
    (root / path).write_text("2\n")
    assert provenance.code_version(root) == head + "+changes"


@pytest.mark.skipif(not (provenance.CHECKOUT / ".git").exists(), reason="not run from a git clone")
def test_the_default_root_is_this_checkout():
    version = provenance.code_version()
    head = git(provenance.CHECKOUT, "rev-parse", "--short=10", "HEAD")
    assert version in (head, head + "+changes")
