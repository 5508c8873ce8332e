"""The quickstart is one point of the learning curve: same data, training and evaluation settings."""

from pathlib import Path

import yaml

from prefrec.quickstart import QUICKSTART, SHOTS

CURVE = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "learning-curve.yaml"


def test_quickstart_equals_a_point_of_the_learning_curve():
    curve = yaml.safe_load(CURVE.read_text())
    ds = next(d for d in curve["datasets"] if d["label"] == "ml-100k")
    (qs,) = QUICKSTART["datasets"]
    assert qs["dataset"] == ds["dataset"] and qs["task"] == ds["task"] and qs["prepare"] == ds["prepare"]
    assert SHOTS in curve["shots"] and QUICKSTART["shots"] == [SHOTS]
    assert set(QUICKSTART["methods"]) <= set(ds["methods"])
    for key in ("train", "sft", "align", "ks", "seeds"):
        assert QUICKSTART[key] == curve[key], key
    assert curve["eval"] == {} and QUICKSTART["eval"] == {}  # the whole test split in both
