"""poisonsift.art.HeatmapClusteringDefence: an ART PoisonFilteringDefence that gives poisonsift's HC flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

art = pytest.importorskip("art")

from poisonsift.art import HeatmapClusteringDefence  # noqa: E402
from poisonsift.defences import DetectSpec  # noqa: E402
from poisonsift.errors import ConfigError  # noqa: E402
from poisonsift.runs import detect_run, load_poisoned  # noqa: E402
from poisonsift.training import load_checkpoint  # noqa: E402


def _art_classifier(run, clip=(0.0, 1.0)):
    """The run's model as an ART PyTorchClassifier, with the run's normaliser as ART preprocessing."""
    import torch
    from art.estimators.classification import PyTorchClassifier

    model, norm = load_checkpoint(run / "model.pt", "cpu")
    pd = load_poisoned(run / "poisoned.npz")
    scale = clip[1] - clip[0]
    mean = clip[0] + scale * np.asarray(norm.mean).reshape(3, 1, 1)
    std = scale * np.asarray(norm.std).reshape(3, 1, 1)
    clf = PyTorchClassifier(model, torch.nn.CrossEntropyLoss(), (3, 32, 32), len(pd.classes), clip_values=clip,
                            preprocessing=(mean, std), device_type="cpu")  # fmt: skip
    x = clip[0] + scale * pd.x_train.transpose(0, 3, 1, 2).astype(np.float32) / 255  # ART's NCHW floats
    y = np.eye(len(pd.classes), dtype=np.float32)[pd.y_train]  # one-hot, as ART examples give them
    return clf, x, y, pd


@pytest.mark.parametrize("clip", [(0.0, 1.0), (0.0, 255.0)])
def test_art_defence_gives_the_flags_of_detect(attacked_run, clip):
    clf, x, y, pd = _art_classifier(attacked_run, clip)
    defence = HeatmapClusteringDefence(clf, x, y)
    report, is_clean = defence.detect_poison(classes=[5])
    det = detect_run(attacked_run, DetectSpec("hc", view_samples=0), cls=5)
    with np.load(attacked_run / "detection-hc.npz") as z:
        flags = z["is_poisoned"]
    rows = np.flatnonzero(pd.y_train == 5)
    assert np.array_equal(1 - np.asarray(is_clean)[rows], flags.astype(int))
    assert sum(is_clean) == len(x) - flags.sum()  # classes not examined stay clean
    assert report["Class_5"]["n_flagged"] == det["n_flagged"] and report["Class_5"]["suspicious"]


def test_art_defence_runs_beside_activation_defence(attacked_run):
    from art.defences.detector.poison import ActivationDefence

    clf, x, y, pd = _art_classifier(attacked_run)
    truth = (~pd.poison_mask).astype(int)
    hc = HeatmapClusteringDefence(clf, x, y, seed=0)
    report, is_clean = hc.detect_poison()
    assert set(report) == {f"Class_{c}" for c in range(6)}
    assert max(report, key=lambda k: report[k]["evidence"]) == "Class_5"
    conf = json.loads(hc.evaluate_defence(truth))
    c5 = conf["class_5"]
    assert c5["TruePositive"]["numerator"] >= 17 and c5["FalsePositive"]["numerator"] <= 1
    ac = ActivationDefence(clf, x, y)
    ac_report, ac_clean = ac.detect_poison(nb_clusters=2, reduce="PCA", nb_dims=10)
    assert len(ac_clean) == len(is_clean) and set(json.loads(ac.evaluate_defence(truth))) == set(conf)
    with pytest.raises(ConfigError, match="unknown HeatmapClusteringDefence parameter"):
        hc.detect_poison(nb_clusters=3)
