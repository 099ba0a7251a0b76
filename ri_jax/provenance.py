"""Which code made a result: the commit of the checkout that ri-jax runs from.

Benchmark records and experiment results carry ``code_version()`` so a number can be
traced to the code that produced it, and a number from uncommitted code says so.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Sequence

CHECKOUT = Path(__file__).resolve().parent.parent

# What makes the numbers (git pathspecs): the package with its embedded model and data,
# and the scripts. Results, READMEs and tests may change without making a run "+changes".
CODE_PATHS = ("pyproject.toml", "ri_jax", "experiments/*.py", "benchmarks/*.py",
              "benchmarks/*.sh")


def code_version(root: str | Path | None = None, *,
                 paths: Sequence[str] = CODE_PATHS) -> str | None:
    """The commit at ``root``: its short hash, with "+changes" when its code differs.

    Args:
      root: top folder of a git checkout; None: the one that holds the ``ri_jax`` package
        (an editable install's clone).
      paths: git pathspecs of the tracked files that count as code.

    Returns:
      For example ``"1e735f9a2c"``, or ``"1e735f9a2c+changes"`` when a tracked file under
      ``paths`` differs from the commit; None when ``root`` is not the top of a git
      checkout (an installed wheel) or git is missing.
    """
    root = Path(CHECKOUT if root is None else root).resolve()

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    try:
        # A folder inside some other checkout (site-packages in a cloned project) is not ours.
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return None
        head = git("rev-parse", "--short=10", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if changed else "")
