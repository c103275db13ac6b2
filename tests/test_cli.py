import json

import numpy as np
import pytest

from poisonsift.cli import main
from poisonsift.data import save_npz
from poisonsift.training import save_checkpoint


def run_json(capsys, *argv):
    assert main(list(argv) + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_pipeline_end_to_end(tiny_data, tmp_path, capsys):
    data = tmp_path / "tiny.npz"
    save_npz(tiny_data, data)
    run = tmp_path / "run"
    s = run_json(capsys, "poison", "--data", str(data), "--attack", "standard", "--p", "0.33", "--out", str(run))
    assert s["n_poisoned"] == 12 and s["target_class_size"] == 36
    assert s["poison_share"] == pytest.approx(1 / 3)
    with np.load(run / "poisoned.npz") as z:
        assert {"x_train", "y_train", "poison_mask", "source_index", "x_test", "y_test"} <= set(z.files)
    assert json.loads((run / "attack.json").read_text())["trigger"]["color"] == [245, 255, 0]
    t = run_json(capsys, "train", "--run", str(run), "--epochs", "1")
    assert t["epochs_run"] == 1 and (run / "model.pt").is_file() and (run / "train.json").is_file()
    assert json.loads((run / "train.json").read_text())["bf16_used"] in (True, False)
    m = run_json(capsys, "evaluate", "--run", str(run))
    assert 0 <= m["clean_accuracy"] <= 1 and 0 <= m["asr"] <= 1 and m["precision"] == "float32"
    # bfloat16 autocast: recorded, and the same predictions up to rounding (logits within bf16's 3 digits)
    b = run_json(capsys, "evaluate", "--run", str(run), "--precision", "bfloat16")
    assert b["precision"] == "bfloat16" and abs(b["clean_accuracy"] - m["clean_accuracy"]) <= 2 / 48
    assert json.loads((run / "metrics.json").read_text()) == b
    a = run_json(capsys, "evaluate", "--run", str(run), "--precision", "auto")
    assert a["precision"] in ("float32", "bfloat16")  # auto resolves to a real precision before it is recorded
    assert main(["evaluate", "--run", str(run), "--precision", "fp8"]) == 2


def test_label_consistent_cli_with_given_surrogate(tiny_data, tmp_path, capsys):
    from poisonsift.models import SmallInception
    from poisonsift.training import Normalizer

    data = tmp_path / "tiny.npz"
    save_npz(tiny_data, data)
    save_checkpoint(tmp_path / "s.pt", SmallInception(num_classes=6), Normalizer((0.5,) * 3, (0.25,) * 3))
    run = tmp_path / "lc"
    s = run_json(capsys, "poison", "--data", str(data), "--attack", "amplitude", "--amp", "64", "--p", "0.25",
                 "--surrogate", str(tmp_path / "s.pt"), "--out", str(run))
    assert s["n_poisoned"] == 6 and s["poison_share"] == pytest.approx(6 / 24)
    save_checkpoint(run / "model.pt", SmallInception(num_classes=6), Normalizer((0.5,) * 3, (0.25,) * 3))
    m = run_json(capsys, "evaluate", "--run", str(run))
    assert set(m["per_class_asr"]) == {"0", "1", "2", "3", "4"}
    assert m["masr"] == pytest.approx(np.mean(list(m["per_class_asr"].values())))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["poison", "--data", "/nonexistent/x.npz", "--attack", "standard", "--out", "o"], "no such file"),
        (["train", "--run", "/nonexistent/run"], "run `poisonsift poison"),
        (["data", "prepare", "--source", "/nonexistent", "--out", "x.npz"], "no such folder"),
        (["train", "--run", "r", "--arch", "resnet21"], "unknown architecture 'resnet21'"),
        (["data", "prepare", "--source", ".", "--out", "x.npz", "--size", "4"], "at least 8 pixels"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("error: ")


def test_zero_poison_cli(tiny_data, tmp_path, capsys):
    save_npz(tiny_data, tmp_path / "d.npz")
    rc = main(["poison", "--data", str(tmp_path / "d.npz"), "--attack", "standard", "--p", "0.01", "--out", str(tmp_path / "r")])
    assert rc == 2 and "yields 0 poisoned samples" in capsys.readouterr().err


def test_control_run_p0_measures_the_floor(tiny_data, tmp_path, capsys):
    """--p 0: the unpoisoned control run; evaluate measures the floor ASR, detect and scan still run."""
    save_npz(tiny_data, tmp_path / "d.npz")
    run = tmp_path / "control"
    s = run_json(capsys, "poison", "--data", str(tmp_path / "d.npz"), "--attack", "standard", "--p", "0",
                 "--out", str(run))  # fmt: skip
    assert s["n_poisoned"] == 0 and json.loads((run / "attack.json").read_text())["p"] == 0
    lc = run_json(capsys, "poison", "--data", str(tmp_path / "d.npz"), "--attack", "label-consistent", "--p", "0",
                  "--out", str(tmp_path / "lc0"))  # fmt: skip
    assert lc["n_poisoned"] == 0  # and no surrogate was trained for it
    assert main(["train", "--run", str(run), "--epochs", "1"]) == 0
    capsys.readouterr()
    m = run_json(capsys, "evaluate", "--run", str(run))
    assert 0 <= m["asr"] <= 1 and 0 < m["clean_accuracy"] <= 1
    d = run_json(capsys, "detect", "--run", str(run), "--method", "ac")
    assert d["n_poisoned_true"] == 0 and d["tnr"] == pytest.approx(1 - d["n_flagged"] / d["n"])
    scan = run_json(capsys, "scan", "--run", str(run), "--method", "ac")
    assert scan["n_poisoned_true"] == 0 and len(scan["classes"]) == 6
    assert main(["poison", "--data", str(tmp_path / "d.npz"), "--attack", "standard", "--p", "-0.1",
                 "--out", str(tmp_path / "neg")]) == 2  # fmt: skip
    assert "control run" in capsys.readouterr().err


def test_corrupt_checkpoint_cli(tiny_data, tmp_path, capsys):
    save_npz(tiny_data, tmp_path / "d.npz")
    run = tmp_path / "r"
    assert main(["poison", "--data", str(tmp_path / "d.npz"), "--attack", "standard", "--out", str(run)]) == 0
    (run / "model.pt").write_bytes(b"\x00" * 10)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err


def test_detect_cli_contract(tiny_data, tmp_path, capsys):
    data = tmp_path / "tiny.npz"
    save_npz(tiny_data, data)
    run = tmp_path / "run"
    assert main(["poison", "--data", str(data), "--attack", "standard", "--p", "0.33", "--out", str(run)]) == 0
    assert main(["train", "--run", str(run), "--epochs", "1"]) == 0
    capsys.readouterr()
    keys = {"method", "class", "n", "n_poisoned_true", "n_flagged", "acc", "tpr", "tnr", "precision", "f1",
            "auroc", "cluster_sizes", "seconds"}  # fmt: skip
    for method in ("raw-pca", "raw-ica", "ac", "spectral"):
        d = run_json(capsys, "detect", "--run", str(run), "--method", method)
        assert keys <= set(d) and d["class"] == 5 and d["n"] == 36 and d["n_poisoned_true"] == 12
        assert all(0 <= d[k] <= 1 for k in ("acc", "tpr", "tnr", "precision", "f1", "auroc"))
        assert json.loads((run / f"detection-{method}.json").read_text()) == d
    assert d["config"]["ac_reduce"] == "pca-whiten"  # the last method run was spectral: the field is carried
    paper_ac = run_json(capsys, "detect", "--run", str(run), "--method", "ac", "--ac-reduce", "pca")
    assert paper_ac["config"]["ac_reduce"] == "pca" and paper_ac["n"] == 36
    auto = run_json(capsys, "detect", "--run", str(run), "--method", "ac", "--class", "auto")
    assert len(auto["ranking"]) == 6 and auto["class"] == auto["ranking"][0]["class"]
    hc = run_json(capsys, "detect", "--run", str(run), "--method", "hc", "--view-samples", "0")
    assert keys <= set(hc) and hc["lrp_rule"] == "paper" and hc["rule"] == "mixture-tail" and "mixture" in hc
    assert hc["config"]["decision"]["min_separation"] == 2.0
    egb = run_json(capsys, "detect", "--run", str(run), "--method", "hc", "--lrp-rule", "epsilon-gamma-box",
                   "--lrp-precision", "bfloat16", "--rule", "smaller", "--view-samples", "0")  # fmt: skip
    assert egb["lrp_precision"] == "bfloat16" and egb["config"]["lrp_rule"] == "epsilon-gamma-box"
    assert egb["rule"] == "smaller" and egb["n_flagged"] == min(egb["cluster_sizes"])
    low = run_json(capsys, "detect", "--run", str(run), "--method", "hc", "--lrp-precision", "bfloat16", "--view-samples", "0")
    assert low["lrp_precision"] == "bfloat16" and low["config"]["lrp_rule"] == "paper"
    assert main(["detect", "--run", str(run), "--method", "hc", "--lrp-precision", "fp8"]) == 2
    assert "fp8" in capsys.readouterr().err
    assert main(["detect", "--run", str(run), "--method", "ac", "--layer", "nope"]) == 2
    assert "valid layer names" in capsys.readouterr().err
    assert main(["detect", "--run", str(run), "--method", "ac", "--class", "40"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_on_tiny_data(tiny_data, tmp_path, capsys):
    save_npz(tiny_data, tmp_path / "tiny.npz")
    d = run_json(capsys, "demo", "--data", str(tmp_path / "tiny.npz"), "--out", str(tmp_path / "demo"),
                 "--epochs", "1", "--hc-subset", "4", "--relabel")  # fmt: skip
    assert {"clean_accuracy", "asr", "n_poisoned", "detection"} <= set(d)
    assert [x["method"] for x in d["detection"]] == ["ac", "hc"]
    # --every 2 (the default): one frame in two of each 4-frame track, 12 of each class's 24, and
    # 6 poisoned -> the target class holds 18
    assert d["detection"][1]["n"] == 4 and d["detection"][0]["n"] == 18 and d["n_poisoned"] == 6
    assert d["detection"][1]["heatmaps"] == "scan"  # the scan ran first; HC read the class's heatmaps from it
    from poisonsift.utils import bfloat16_pays, default_device

    # --lrp-precision auto (the demo's default) resolves to a real precision before it is keyed
    assert d["detection"][1]["lrp_precision"] == ("bfloat16" if bfloat16_pays(default_device()) else "float32")
    for name in ("poisoned.npz", "attack.json", "model.pt", "train.json", "metrics.json", "detection-ac.json",
                 "scan.json", "scan.npz", "scan-report.html", "scan-report.md", "figures/scan-evidence.png"):
        assert (tmp_path / "demo" / name).is_file()
    # the demo ends with scan -> clean -> retrain: the cleaned run lost exactly the scan's flags
    assert d["scan"]["top_class"] in range(6) and d["clean"]["removed"] == d["scan"]["n_flagged"]
    assert {"clean_accuracy_before", "clean_accuracy_after", "asr_before", "asr_after"} <= set(d["clean"])
    assert d["clean"]["asr_before"] == d["asr"] and (tmp_path / "demo-clean" / "model.pt").is_file()
    # both trainings take the demo preset (the cpu preset without augmentation)
    cfgs = [json.loads((tmp_path / r / "train.json").read_text())["config"] for r in ("demo", "demo-clean")]
    assert cfgs[0] == cfgs[1] and cfgs[0]["augment"]["enabled"] is False and cfgs[0]["epochs"] == 1
    # --relabel: a third run from the same flags, each flag relabelled or removed, and retrained
    rel = d["relabel"]
    assert rel["relabelled"] + rel["removed"] == d["scan"]["n_flagged"] and rel["relabel_from"].endswith("demo-clean")
    assert sum(rel["relabelled_to"].values()) == rel["relabelled"] and "asr_after" in rel
    assert (tmp_path / "demo-relabel" / "model.pt").is_file()


@pytest.fixture
def tiny_npz(tiny_data, tmp_path):
    save_npz(tiny_data, tmp_path / "tiny.npz")
    return tmp_path / "tiny.npz"


def test_poison_bad_seed_and_out_file_are_one_error_line(tiny_npz, tmp_path, capsys):
    out_file = tmp_path / "taken"
    out_file.write_text("not a folder")
    assert main(["poison", "--data", str(tiny_npz), "--attack", "standard", "--seed", "-1",
                 "--out", str(tmp_path / "r")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "seed" in err[0] and "Traceback" not in err[0]
    assert main(["poison", "--data", str(tiny_npz), "--attack", "standard", "--out", str(out_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "existing file" in err[0]


def test_artefacts_take_the_umask_mode(tiny_npz, tmp_path, capsys):
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert main(["poison", "--data", str(tiny_npz), "--attack", "standard", "--out", str(tmp_path / "r")]) == 0
    finally:
        os.umask(old)
    for name in ("poisoned.npz", "attack.json"):
        assert stat.S_IMODE((tmp_path / "r" / name).stat().st_mode) == 0o644
