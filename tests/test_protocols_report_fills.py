"""RESULTS.md's Table 1 under each fill: the checks table and the verdict, on hand-made numbers."""

from ri_jax.protocols.report import fill_claims, fills_section, fills_verdict


def ms(mean, std=0.5):
    return {"mean": mean, "std": std}


def table(ri_ad, gc_ad, ri_inv_ad, fill="black"):
    """A two-method Table 1 JSON: mAI equal everywhere, so only mAD decides."""
    entry = lambda ad, inv: {"mAD": ms(ad), "mAI": ms(20.0),
                             "inverse": {"mAD": ms(inv), "mAI": ms(20.0)}}
    per = {"cat": {"count": 3, "mAD": ms(1.0), "mAI": ms(2.0)},
           "dog": {"count": 0, "mAD": None, "mAI": None}}
    return {"methods": {"RI": entry(ri_ad, ri_inv_ad), "Grad-CAM": entry(gc_ad, 40.0)},
            "controls": {"Random": {"mAD": ms(30.0), "mAI": ms(20.0)}},
            "per_class": {"RI": per, "Grad-CAM": per, "Random": per},
            "fill_prior": {"fill": fill, "blur_sigma": 9.6 if fill == "blur" else None,
                           "images": 5 if fill == "blur" else 1,
                           "probabilities": {"cat": 0.75, "dog": 0.25},
                           "predicted": {"cat": 0.8, "dog": 0.2} if fill == "blur" else
                           {"cat": 1.0, "dog": 0.0}},
            "masking": {"fill": fill, "blur_sigma": 9.6 if fill == "blur" else None}}


def test_claims_follow_the_numbers():
    claims = fill_claims(table(ri_ad=10.0, gc_ad=20.0, ri_inv_ad=10.5))
    assert claims["RI is the best method on mAD"]
    assert not claims["RI clearly beats its own inverse on mAD"]  # 0.5 apart, stds sum to 1
    assert claims["Grad-CAM clearly beats its own inverse on mAD"]
    assert claims["RI clearly beats the Random control on mAD"]
    assert not claims["RI clearly beats the Random control on mAI"]  # equal


def test_verdict_separates_what_survives_every_fill():
    tables = {"black": table(10.0, 20.0, 30.0), "mean": table(25.0, 20.0, 30.0, "mean"),
              "blur": table(12.0, 20.0, 30.0, "blur")}
    text = "\n".join(fills_verdict(tables))
    survive = text.split("Holds under every fill:")[1].split("Depends on the fill")[0]
    depend = text.split("Depends on the fill")[1].split("Holds under no fill:")[0]
    assert "- RI clearly beats its own inverse on mAD" in survive
    assert "- RI is the best method on mAD: black, blur" in depend
    assert "RI is the best method on mAD" not in survive
    assert "RI is the best method on mAI" in text.split("Holds under no fill:")[1]  # a tie is not best
    section = "\n".join(fills_section(tables))
    for fill in tables:
        assert f"### Fill: {fill}" in section
    assert "cat (n = 3): mAD / mAI" in section and "| – / – |" in section  # no dog images
    assert "mean over the 5 fully blurred unseen images" in section
