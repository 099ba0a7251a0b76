"""ri_jax.protocols.table2's summary over runs."""

from ri_jax.protocols import table2


def test_table2_summary_leaves_out_runs_without_coverage():
    covered = {"ACU-GT": 80.0, "ACU-MD": 90.0, "CVR": 50.0, "covered": 5}
    empty = {"ACU-GT": 0.0, "ACU-MD": 0.0, "CVR": 0.0, "covered": 0}
    table, missing = table2.summarise([{"reference": covered, "unseen": empty},
                                       {"reference": covered, "unseen": empty}])
    assert table["reference"]["ACU-GT"] == {"mean": 80.0, "std": 0.0}
    assert table["unseen"]["ACU-GT"] == {"mean": None, "std": None}
    assert table["unseen"]["CVR"] == {"mean": 0.0, "std": 0.0}
    assert missing == {"reference": 0, "unseen": 2}
