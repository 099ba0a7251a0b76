"""One process of tests/test_distributed.py: the tiny interpret run with each RI variant
(the default, the authors' per-input pools, then the paper's shared sample), then the tiny
Table 2 (the default variant).

    python tests/distributed_worker.py OUT DATA CKPT [launch flags...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "experiments"))

import interpret  # noqa: E402
import table2  # noqa: E402

out, data, ckpt, *launch = sys.argv[1:]
common = ["--data", data, "--checkpoint", ckpt, "--batch-size", "8", "--no-progress",
          "--refs-per-class", "0", "--cache-dir", str(Path(out) / f"cache{launch[-1:]}")] + launch
for folder, variant in (("interpret", []), ("interpret_paper", ["--ri-variant", "paper"])):
    interpret.main(common + variant + ["--out", str(Path(out) / folder), "--num-inputs", "3",
                                       "--top-k", "3", "--num-boundaries", "6"])
table2.main(common + ["--out", str(Path(out) / "table2"), "--runs", "1", "--per-class", "2",
                      "--num-boundaries", "5", "--unseen", "0"])
print("worker done", flush=True)
