"""The variant study's summary and verdict (ri_jax.protocols.variant_study) on made-up tables."""

import copy

from ri_jax.protocols.report import variant_study_markdown
from ri_jax.protocols.variant_study import paper_ordering, summarise_variant_study


def ms(mean, std=0.5):
    return {"mean": mean, "std": std}


def ri_run(distinct=2.0, covered=900.0):
    stats = lambda v: {"mean": v, "min": v, "max": v}
    return {"distinct_polytopes": distinct, "references_covered": stats(covered),
            "other_class_covered": stats(0.0), "not_reached": 0, "interpretations_used": 5,
            "routed_by_polytope": 800,
            "diagnostics": {"distinct_covered_sets": distinct, "searches_not_converged": 1,
                            "boundaries_before_loosen": stats(9.0),
                            "boundaries_after_loosen": stats(6.0),
                            "search_steps": {"mean": 20.0, "max": 40},
                            "cosine_within_polytope": stats(0.5),
                            "cosine_across_interpretations": 0.1,
                            "cosine_ri_gradcam": stats(0.9)}}


def tables(ri_ad, ri_ai, random_ad=40.0, random_ai=10.0):
    t1 = {"methods": {"RI": {"mAD": ms(ri_ad), "mAI": ms(ri_ai)},
                      "Grad-CAM": {"mAD": ms(35.0), "mAI": ms(20.0)},
                      "Grad-CAM++": {"mAD": ms(36.0), "mAI": ms(19.0)},
                      "Score-CAM": {"mAD": ms(37.0), "mAI": ms(18.0)}},
          "controls": {"Random": {"mAD": ms(random_ad), "mAI": ms(random_ai)}},
          "interpretations": {"RI": [ri_run()]}}
    region = {"ACU-GT": ms(80.0), "ACU-MD": ms(99.0), "CVR": ms(95.0)}
    t2 = {"reference": region, "unseen": copy.deepcopy(region), "model": {},
          "interpretations": [ri_run()]}
    return t1, t2


def test_paper_ordering_needs_clear_leads_over_methods_and_random():
    assert paper_ordering(tables(30.0, 25.0)[0])["holds"]
    within = paper_ordering(tables(34.5, 25.0)[0])  # 0.5 < spread of 1.0
    assert not within["holds"] and within["mAD"]["best_other"] == "Grad-CAM"
    assert not within["mAD"]["clear_over_best_other"] and within["mAI"]["clear_over_best_other"]
    beaten = paper_ordering(tables(30.0, 25.0, random_ad=20.0)[0])
    assert not beaten["holds"] and beaten["mAD"]["margin_over_random"] == -10.0


def test_summary_rows_and_verdict_follow_the_numbers():
    entries = []
    for variant, (ad, ai) in (("paper", (36.0, 18.0)), ("authors", (30.0, 25.0))):
        t1, t2 = tables(ad, ai)
        entries.append({"model": "m", "model_info": {"arch": "vgg11"}, "variant": variant,
                        "table1": t1, "table2": t2})
    study = summarise_variant_study(entries)
    assert [r["variant"] for r in study["rows"]] == ["paper", "authors"]
    assert study["rows"][1]["ri"]["boundaries_after_loosen"] == 6.0
    assert study["verdict"][-1].endswith("m / authors.")
    assert "does not hold" in study["verdict"][0] and "holds" in study["verdict"][1]
    study["config"] = {"runs": 1, "unseen": 10, "seed": 0}
    text = variant_study_markdown(study)
    assert "| m | authors |" in text and "9.0 → 6.0" in text
