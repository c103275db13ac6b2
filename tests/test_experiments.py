"""Experiment specs, cache keys, resume, the Ray executor - on tiny data and tiny trainings."""

from __future__ import annotations

import dataclasses

import json
import sys

import numpy as np
import pytest

from poisonsift import experiments as ex
from poisonsift.cli import main
from poisonsift.data import save_npz
from poisonsift.errors import ConfigError
from poisonsift.experiments import AttackSpec, Column, DetectSpec, Row, RunSpec, TableSpec

from conftest import make_tiny_data

TINY_TRAIN = {"epochs": 1, "max_steps": 3, "batch_size": 16, "eval_batch_size": 64}


def tiny_table(detections=("AC", "PCA"), ps=(0.33, 0.2), name="1") -> TableSpec:
    """Standard attack on the tiny data; named "1" so its p = 33 row meets the paper's row."""
    dets = {"AC": DetectSpec("ac"), "PCA": DetectSpec("raw-pca"), "HC": DetectSpec("hc")}
    dets = {k: v for k, v in dets.items() if k in detections}
    rows = [Row({"p": round(p * 100)}, [RunSpec(AttackSpec("standard", p), train=TINY_TRAIN)]) for p in ps]
    cols = [Column("ASR", "metrics", "asr")]
    for a in dets:
        cols += [Column(f"{a} {m.upper()}", a, m) for m in ("acc", "tpr", "tnr")]
    return TableSpec(name, "tiny", "p", rows, cols, dets)


@pytest.fixture
def tiny_npz(tmp_path):
    path = tmp_path / "tiny.npz"
    save_npz(make_tiny_data(), path)
    return str(path)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: AttackSpec(kind="blend"), "unknown attack kind"),
        (lambda: AttackSpec(p=-0.1), "must be in \\[0, 1\\)"),
        (lambda: AttackSpec(p=1.5), "must be in \\[0, 1\\)"),
        (lambda: AttackSpec("wanet", 0.05, params={"warp": 2}), "bad wanet attack options"),
        (lambda: AttackSpec(kind="amplitude", amp=0), "amplitude must be in 1..255"),
        (lambda: AttackSpec(size=0), "trigger size"),
        (lambda: DetectSpec("magic"), "unknown detection method"),
        (lambda: DetectSpec("hc", subset=1), "subset must be >= 2"),
        (lambda: RunSpec(preset="gpu"), "unknown preset"),
        (lambda: RunSpec(train={"epochz": 3}), "bad training override"),
        (lambda: ex.build_table("9"), "unknown table"),
        (lambda: ex.build_table("5", repeats=0), "repeats must be >= 1"),
        (lambda: TableSpec("x", "t", "p", [Row({"p": 1}, [RunSpec()])], [Column("A", "nowhere", "acc")]), "unknown source"),
        (lambda: TableSpec("x", "t", "p", [], [Column("ASR", "metrics", "asr")]), "no rows"),
        (lambda: Row({"p": 1}, []), "no runs"),
        (lambda: ex.make_executor("dask"), "unknown executor"),
        (lambda: ex.make_executor("local", address="ray://x:10001"), "needs --executor ray"),
    ],
)
def test_spec_validation_errors(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_cli_reports_bad_spec_without_traceback(capsys, tiny_npz):
    assert main(["reproduce", "--table", "1", "--data", tiny_npz, "--ray-address", "ray://nowhere:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_paper_tables_match_the_paper():
    paper = ex.paper_values()
    assert [r["p"] for r in paper["1"]["rows"]] == [33, 15, 10, 5, 2]
    assert paper["1"]["rows"][0]["HC ACC"] == 99.96 and paper["3"]["rows"][1]["TPR"] == 31.99
    t1 = ex.build_table("1")
    assert [r.label["p"] for r in t1.rows] == [33, 15, 10, 5, 2]
    assert {r.runs[0].attack.kind for r in t1.rows} == {"standard"}
    # the cpu preset's rare backdoors train longer (ex.CPU_LOW_RATE_EPOCHS); an explicit override wins
    low_std, low_lc = ex.CPU_LOW_RATE_EPOCHS[("standard", 0.02)], ex.CPU_LOW_RATE_EPOCHS[("label-consistent", 0.05)]
    assert low_std > 4 and low_lc > 4
    assert [r.runs[0].train_config().epochs for r in t1.rows] == [4, 4, 4, 4, low_std]
    assert {r.runs[0].train_config().epochs for r in ex.build_table("1", train={"epochs": 2}).rows} == {2}
    assert [r.runs[0].train_config().epochs for r in ex.build_table("2").rows] == [4, 4, 4, low_lc, low_lc]
    t2 = ex.build_table("2")  # one surrogate for every row, whatever the row's own epochs
    assert len({r.runs[0].surrogate_config().to_dict()["epochs"] for r in t2.rows}) == 1
    assert ex.cpu_low_rate_epochs("amplitude", 0.02) is None and ex.cpu_low_rate_epochs("standard", 0.05) is None
    assert {r.runs[0].train_config().epochs for r in ex.build_table("1", preset="paper").rows} == {100}
    t5 = ex.build_table("5", repeats=3)
    assert [len(r.runs) for r in t5.rows] == [3, 3]
    assert len({rs.seed for rs in t5.rows[0].runs}) == 3  # new images and trigger places per repeat
    assert [c.name for c in t5.columns][:2] == ["MASR", "AC ACC"]  # each repeat's attack, learned or not
    # Table 3 and Table 1's p = 33 % row are the same run: the cache serves both.
    fp = "f" * 16
    assert ex.build_table("3").rows[0].runs[0].key(fp) == t1.rows[0].runs[0].key(fp)
    # Figure 6 reuses Table 4's runs.
    assert [r.runs[0].key(fp) for r in ex.build_table("fig6").rows] == [r.runs[0].key(fp) for r in ex.build_table("4").rows]


# --------------------------------------------------------------------------- cache keys


def test_run_keys_change_with_every_parameter_and_only_then(monkeypatch):
    fp = "0123456789abcdef"
    base = RunSpec(AttackSpec("standard", 0.33), train={"epochs": 2})
    assert base.key(fp) == RunSpec(AttackSpec("standard", 0.33), train={"epochs": 2}).key(fp)
    changed = [
        RunSpec(AttackSpec("standard", 0.15), train={"epochs": 2}),
        RunSpec(AttackSpec("standard", 0.33, size=2), train={"epochs": 2}),
        RunSpec(AttackSpec("standard", 0.33), train={"epochs": 3}),
        RunSpec(AttackSpec("standard", 0.33), train={"epochs": 2}, seed=1),
        RunSpec(AttackSpec("standard", 0.33), train={"epochs": 2}, preset="paper"),
        RunSpec(AttackSpec("label-consistent", 0.33), train={"epochs": 2}),
    ]
    keys = {base.key(fp)} | {r.key(fp) for r in changed}
    assert len(keys) == len(changed) + 1
    assert base.key("fedcba9876543210") != base.key(fp)  # other data
    # The surrogate's epochs matter to label-consistent runs only.
    lc = RunSpec(AttackSpec("label-consistent", 0.33))
    assert lc.key(fp) != RunSpec(AttackSpec("label-consistent", 0.33, surrogate_epochs=1)).key(fp)
    assert RunSpec(AttackSpec("standard", 0.33)).key(fp) == RunSpec(AttackSpec("standard", 0.33, surrogate_epochs=1)).key(fp)
    # model_train changes the poisoned model only: the runs keep one surrogate; JSON round trip keeps the key
    amp = RunSpec(AttackSpec("amplitude", 0.33, amp=128))
    longer = RunSpec(AttackSpec("amplitude", 0.33, amp=128), model_train={"epochs": 8, "augment": {"resample": "torchvision"}})
    assert longer.surrogate_config() == amp.surrogate_config() and longer.key(fp) != amp.key(fp)
    assert (longer.train_config().epochs, longer.train_config().augment.resample) == (8, "torchvision")
    assert longer.train_config().augment.rotation == amp.train_config().augment.rotation  # only what was named
    assert RunSpec(**json.loads(json.dumps(longer.to_dict()))).key(fp) == longer.key(fp)
    with pytest.raises(ConfigError, match="augmentation override"):
        RunSpec(model_train={"augment": {"rotate": 10}})
    both = RunSpec(train={"augment": {"hue": 0.05}}, model_train={"augment": {"resample": "torchvision"}})
    assert (both.train_config().augment.hue, both.train_config().augment.resample) == (0.05, "torchvision")
    assert DetectSpec("ac").key() == DetectSpec("ac").key() != DetectSpec("ac", layer="relu_fc1").key()
    # HC's view size is part of HC keys only: an AC result stays cached when it changes.
    assert DetectSpec("hc").key() != DetectSpec("hc", view_samples=0).key()
    assert DetectSpec("ac").key() == DetectSpec("ac", view_samples=0).key()
    import poisonsift.explain
    from poisonsift.experiments.units import _stored_spec

    hc, ac = DetectSpec("hc").key(), DetectSpec("ac").key()
    monkeypatch.setitem(poisonsift.explain.LRP_CONFIGS, "paper", "another LRP")  # new heatmaps: HC recomputes, AC not
    assert DetectSpec("hc").key() != hc and DetectSpec("ac").key() == ac
    # The LRP rule and the decision rule are part of the keys they change.
    assert DetectSpec("hc", lrp_rule="epsilon-gamma-box").key() != DetectSpec("hc").key()
    assert DetectSpec("ac", lrp_rule="epsilon-gamma-box").key() == DetectSpec("ac").key()
    assert DetectSpec("hc", rule="smaller").key() != DetectSpec("hc").key()
    assert DetectSpec("ac", rule="mixture").key() != DetectSpec("ac").key()
    assert DetectSpec("ac").rule == "smaller" and DetectSpec("hc").rule == "mixture-tail"
    # AC's reduction keys AC and the gate only; the paper's tables pin the paper's PCA for "AC".
    assert DetectSpec("ac", ac_reduce="pca").key() != DetectSpec("ac").key()
    assert DetectSpec("ac-hc", ac_reduce="pca").key() != DetectSpec("ac-hc").key()
    assert DetectSpec("hc", ac_reduce="pca").key() == DetectSpec("hc").key()
    assert DetectSpec("spectral", ac_reduce="pca").key() == DetectSpec("spectral").key()
    t1 = ex.build_table("1").detections
    assert (t1["AC"].ac_reduce, t1["AC"].rule, t1["AC*"].ac_reduce) == ("pca", "smaller", "pca-whiten")
    with pytest.raises(ConfigError, match="unknown AC reduction"):
        DetectSpec("ac", ac_reduce="umap")
    with pytest.raises(ConfigError, match="view_samples"):
        DetectSpec("hc", view_samples=-1)
    # LRP precision: HC keys only; the default keys as before the field existed, and a cached
    # detection written before it (no such entry in its stored spec) is still this spec.
    egb = DetectSpec("hc", lrp_rule="epsilon-gamma-box")
    assert DetectSpec("hc", lrp_rule="epsilon-gamma-box", lrp_precision="bfloat16").key() != egb.key()
    assert DetectSpec("ac", lrp_precision="bfloat16").key() == DetectSpec("ac").key()
    old = dataclasses.asdict(DetectSpec("hc"))
    del old["lrp_precision"]
    assert _stored_spec(old) == DetectSpec("hc") != egb
    assert _stored_spec({"method": "hc", "removed_field": 1}) is None
    with pytest.raises(ConfigError, match="LRP precision"):
        DetectSpec("hc", lrp_precision="float16")
    assert DetectSpec("hc", lrp_precision="bfloat16").key() != DetectSpec("hc").key()


def test_reproduce_caches_and_reuses(tmp_path, tiny_npz):
    cache, out = tmp_path / "cache", tmp_path / "out"
    before = ex.plan([tiny_table()], data=tiny_npz, cache=cache)  # computes and writes nothing
    assert not cache.exists() and [r["status"] for r in before["runs"]] == ["poison", "poison"]
    assert before["to_compute"] == {"surrogates": 0, "trainings": 2, "training_epochs": 2 * before["runs"][0]["epochs"],
                                    "evaluations": 2, "detections": 4, "detections_total": 4, "scans": 0,
                                    "retrainings": 0}  # fmt: skip
    first = ex.reproduce([tiny_table()], data=tiny_npz, out=out, cache=cache, report=False)
    assert first["computed"] == {"runs": 2, "detections": 4, "units": 6}
    after = ex.plan([tiny_table()], data=tiny_npz, cache=cache)
    assert [r["status"] for r in after["runs"]] == ["cached", "cached"] and after["runs"][0]["tables"] == ["1"]
    assert {k: v for k, v in after["to_compute"].items() if k != "detections_total"} == dict.fromkeys(
        ("surrogates", "trainings", "training_epochs", "evaluations", "detections", "scans", "retrainings"), 0)
    assert {r["key"] for r in after["runs"]} == {p.split("/")[-1] for row in first["tables"]["1"]["rows"] for p in row["runs"]}
    t = first["tables"]["1"]
    assert t["columns"] == ["ASR", "AC ACC", "AC TPR", "AC TNR", "PCA ACC", "PCA TPR", "PCA TNR"]
    row = t["rows"][0]
    assert row["paper"]["ASR"] == 100 and row["diff"]["ASR"] == pytest.approx(row["ours"]["ASR"] - 100)
    assert t["rows"][1]["paper"] is None  # p = 20 is not a paper row
    for v in row["ours"].values():
        assert 0.0 <= v <= 100.0
    metrics = json.loads((tmp_path / "cache" / "runs" / first["tables"]["1"]["rows"][0]["runs"][0].split("/")[-1] / "metrics.json").read_text())
    assert row["ours"]["ASR"] == pytest.approx(100 * metrics["asr"])

    again = ex.reproduce([tiny_table()], data=tiny_npz, out=out, cache=cache, report=False)
    assert again["computed"] == {"runs": 0, "detections": 0, "units": 6}
    assert again["tables"] == first["tables"]
    assert again["seconds"] < 30
    # the cost of the units is carried from their records, so a report from the cache still tells it
    assert again["unit_seconds"] == first["unit_seconds"] and first["unit_seconds"]["runs"] > 0
    assert first["unit_seconds"]["detections"] > 0

    # A changed parameter misses: one more detection, the runs are reused.
    more = ex.reproduce([tiny_table(detections=("AC", "PCA"))] + [TableSpec(
        "x", "t", "p", tiny_table().rows[:1], [Column("ICA ACC", "ICA", "acc")], {"ICA": DetectSpec("raw-ica")})],
        data=tiny_npz, out=out, cache=cache, report=False)  # fmt: skip
    assert more["computed"]["runs"] == 0 and more["computed"]["detections"] == 1

    forced = ex.reproduce([tiny_table(ps=(0.33,))], data=tiny_npz, out=out, cache=cache, report=False, force=True)
    assert forced["computed"] == {"runs": 1, "detections": 2, "units": 3}
    assert forced["tables"]["1"]["rows"][0]["ours"] == first["tables"]["1"]["rows"][0]["ours"]  # same seed, same numbers


def test_repeated_rows_give_mean_and_variance(tmp_path, tiny_npz):
    # Table 5's shape: one row, several seeds; every column becomes "<name> mean" / "<name> var"
    row = Row({"p": 33}, [RunSpec(AttackSpec("standard", 0.33), train=TINY_TRAIN, seed=s) for s in (0, 1)])
    table = TableSpec("5", "tiny repeats", "p", [row], [Column("ASR", "metrics", "asr"), *tiny_table(("AC",)).columns[1:]],
                      {"AC": DetectSpec("ac")})  # fmt: skip
    res = ex.reproduce([table], data=tiny_npz, out=tmp_path / "out", cache=tmp_path / "cache", report=False)
    r = res["tables"]["5"]["rows"][0]
    assert res["tables"]["5"]["columns"] == ["ASR mean", "ASR var", "AC ACC mean", "AC ACC var", "AC TPR mean",
                                             "AC TPR var", "AC TNR mean", "AC TNR var"]  # fmt: skip
    asr = [100 * json.loads((tmp_path / "cache" / d / "metrics.json").read_text())["asr"] for d in r["runs"]]
    assert len(set(r["runs"])) == 2  # two seeds, two poisoned sets and models
    assert r["ours"]["ASR mean"] == pytest.approx(np.mean(asr)) and r["ours"]["ASR var"] == pytest.approx(np.var(asr, ddof=1))
    assert r["paper"]["AC ACC mean"] == 90.36 and r["diff"]["AC ACC var"] == pytest.approx(r["ours"]["AC ACC var"] - 6.81)
    # each repeat's own values travel along, so the mean and variance can be checked (and merged)
    assert [pr["seed"] for pr in r["per_run"]] == [0, 1] and [pr["ASR"] for pr in r["per_run"]] == pytest.approx(asr)
    tpr = [pr["AC TPR"] for pr in r["per_run"]]
    assert r["ours"]["AC TPR mean"] == pytest.approx(np.mean(tpr)) and r["ours"]["AC TPR var"] == pytest.approx(np.var(tpr, ddof=1))
    from poisonsift.report.reproduction import per_run_rows

    head, cells = per_run_rows(res["tables"]["5"])
    assert head == ["p", "seed", "ASR", "AC ACC", "AC TPR", "AC TNR"] and [c[1] for c in cells] == ["0", "1"]
    assert per_run_rows({"rows": [{"label": {"p": 33}, "ours": {}}]}) is None  # one run a row: no such table
    from poisonsift.report import write_report

    md = write_report(tmp_path / "out", figures=False)["md"].read_text()
    assert "Each run:" in md and "| p | seed | ASR | AC ACC | AC TPR | AC TNR |" in md


def test_resume_after_a_killed_run(tmp_path, tiny_npz, monkeypatch):
    import poisonsift.runs as runs

    calls = {"poison": 0, "train": 0}
    real_train, real_poison = runs.train_run, runs.poison_run

    def dying_train(*a, **k):
        calls["train"] += 1
        if calls["train"] == 2:
            raise KeyboardInterrupt  # the user hits Ctrl-C during the second training
        return real_train(*a, **k)

    def counting_poison(*a, **k):
        calls["poison"] += 1
        return real_poison(*a, **k)

    monkeypatch.setattr(runs, "train_run", dying_train)
    monkeypatch.setattr(runs, "poison_run", counting_poison)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        ex.reproduce([tiny_table()], data=tiny_npz, out=tmp_path / "out", cache=cache, report=False)
    dirs = sorted((cache / "runs").iterdir())
    assert len(dirs) == 2
    done = [d for d in dirs if (d / "metrics.json").exists()]
    half = [d for d in dirs if not (d / "metrics.json").exists()]
    assert len(done) == 1 and len(half) == 1
    assert (half[0] / "poisoned.npz").exists() and not (half[0] / "model.pt").exists()

    calls.update(poison=0, train=0)
    monkeypatch.setattr(runs, "train_run", lambda *a, **k: (calls.__setitem__("train", calls["train"] + 1), real_train(*a, **k))[1])
    res = ex.reproduce([tiny_table()], data=tiny_npz, out=tmp_path / "out", cache=cache, report=False)
    assert calls == {"poison": 0, "train": 1}  # only the interrupted training runs again
    assert res["computed"]["runs"] == 1


def test_cached_run_with_a_foreign_spec_is_refused(tmp_path, tiny_npz):
    cache = tmp_path / "cache"
    res = ex.reproduce([tiny_table(ps=(0.33,))], data=tiny_npz, out=tmp_path / "o", cache=cache, report=False)
    d = cache / "runs" / res["tables"]["1"]["rows"][0]["runs"][0].split("/")[-1]
    spec = json.loads((d / "spec.json").read_text())
    spec["material"]["poison_seed"] = 99
    (d / "spec.json").write_text(json.dumps(spec))
    from poisonsift.errors import DataError

    with pytest.raises(DataError, match="does not match its key"):
        ex.reproduce([tiny_table(ps=(0.33,))], data=tiny_npz, out=tmp_path / "o", cache=cache, report=False)


# --------------------------------------------------------------------------- Ray


def test_ray_executor_gives_the_local_results(tmp_path, tiny_npz):
    pytest.importorskip("ray")
    table = tiny_table()
    local = ex.reproduce([table], data=tiny_npz, out=tmp_path / "a", cache=tmp_path / "ca", report=False, threads=1)
    executor = ex.RayExecutor(num_cpus=2)
    try:
        remote = ex.reproduce([table], data=tiny_npz, out=tmp_path / "b", cache=tmp_path / "cb", report=False,
                              executor=executor, threads=1)  # fmt: skip
    finally:
        executor.shutdown()
    assert remote["executor"] == "ray" and remote["computed"] == local["computed"]
    for a, b in zip(local["tables"]["1"]["rows"], remote["tables"]["1"]["rows"]):
        assert a["ours"] == b["ours"]  # bit-identical numbers
    # the trained weights are identical too
    import torch

    wa = torch.load(tmp_path / "ca" / local["tables"]["1"]["rows"][0]["runs"][0] / "model.pt", weights_only=True)
    wb = torch.load(tmp_path / "cb" / remote["tables"]["1"]["rows"][0]["runs"][0] / "model.pt", weights_only=True)
    for k in wa["state_dict"]:
        assert torch.equal(wa["state_dict"][k], wb["state_dict"][k]), k


def test_local_jobs_give_the_serial_results(tmp_path, tiny_npz):
    import torch

    table = tiny_table()
    before = torch.get_num_threads()
    serial = ex.reproduce([table], data=tiny_npz, out=tmp_path / "a", cache=tmp_path / "ca", report=False, threads=1)
    assert torch.get_num_threads() == before  # units restore the caller's thread count
    pooled = ex.reproduce([table], data=tiny_npz, out=tmp_path / "b", cache=tmp_path / "cb", report=False, jobs=2)
    assert pooled["computed"] == serial["computed"] and pooled["computed"]["runs"] == len(table.rows)
    for a, b in zip(serial["tables"]["1"]["rows"], pooled["tables"]["1"]["rows"]):
        assert a["ours"] == b["ours"]  # 1 thread per unit either way: bit-identical numbers


def test_surrogates_train_beside_the_runs_that_need_none(tmp_path, tiny_npz):
    seen = []

    class Recording(ex.LocalExecutor):
        def map(self, fn, tasks, gpu=None, desc=""):
            seen.append((desc, [(t["unit"], t["spec"]["attack"]["kind"], t["spec"]["train"]["epochs"]) for t in tasks
                                if "unit" in t]))  # fmt: skip
            return super().map(fn, tasks, gpu, desc)

    rows = [Row({"p": 33}, [RunSpec(AttackSpec("standard", 0.33), train=TINY_TRAIN)]),
            Row({"p": 34}, [RunSpec(AttackSpec("label-consistent", 0.33), train=TINY_TRAIN)]),
            Row({"p": 20}, [RunSpec(AttackSpec("standard", 0.2), train={**TINY_TRAIN, "epochs": 2})])]  # fmt: skip
    table = TableSpec("x", "t", "p", rows, [Column("ASR", "metrics", "asr")], {})
    res = ex.reproduce([table], data=tiny_npz, out=tmp_path / "o", cache=tmp_path / "c", report=False,
                       executor=Recording(1))  # fmt: skip
    # stage 1: the surrogate beside the standard runs, longest training first; stage 2: the runs on it
    assert seen[0] == ("surrogates and runs", [("run", "standard", 2), ("surrogate", "label-consistent", 1),
                                               ("run", "standard", 1)])  # fmt: skip
    assert seen[1] == ("runs on a surrogate", [("run", "label-consistent", 1)])
    assert res["computed"]["runs"] == 3
    assert all(0 <= r["ours"]["ASR"] <= 100 for r in res["tables"]["x"]["rows"])


def test_cli_poison_shares(capsys, tiny_npz):
    from poisonsift.cli import build_parser

    args = build_parser().parse_args(["reproduce", "--table", "1,2", "--p", "0.05,0.02"])
    assert args.p == [0.05, 0.02]
    assert [r.label["p"] for r in ex.build_table("2", ps=args.p).rows] == [5, 2]
    assert main(["reproduce", "--table", "1", "--p", "5", "--data", tiny_npz]) == 2
    err = capsys.readouterr().err
    assert "poison shares in (0, 1)" in err and "Traceback" not in err


def test_cli_plan_lists_what_is_left(capsys, tiny_npz, tmp_path):
    assert main(["reproduce", "--table", "1,sizes", "--p", "0.33", "--data", tiny_npz, "--cache", str(tmp_path / "c"),
                 "--plan", "--json"]) == 0  # fmt: skip
    pl = json.loads(capsys.readouterr().out)
    # table 1's p = 33 % run is the sizes table's s = 3 row: one run serves both
    assert sorted((r["size"], r["tables"] == ["1", "sizes"]) for r in pl["runs"]) == [(1, False), (2, False), (3, True)]
    assert pl["to_compute"]["trainings"] == 3 and not (tmp_path / "c").exists()
    assert main(["reproduce", "--table", "1", "--p", "0.33", "--data", tiny_npz, "--cache", str(tmp_path / "c"), "--plan"]) == 0
    assert "to compute: 0 surrogates, 1 trainings (4 epochs)" in capsys.readouterr().out


def test_jobs_validation():
    with pytest.raises(ConfigError, match="jobs must be >= 1"):
        ex.make_executor("local", jobs=0)
    with pytest.raises(ConfigError, match="--jobs is for --executor local"):
        ex.make_executor("ray", jobs=2)


def test_ray_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match="pip install 'poisonsift\\[ray\\]'"):
        ex.make_executor("ray")


def test_detections_save_their_arrays(tmp_path, tiny_npz):
    res = ex.reproduce([tiny_table(ps=(0.33,), detections=("AC",))], data=tiny_npz, out=tmp_path / "o",
                       cache=tmp_path / "c", report=False)  # fmt: skip
    rel = res["tables"]["1"]["rows"][0]["detections"]["AC"][0]
    assert not rel.startswith("/") and rel.startswith("runs/")  # results.json holds no absolute path
    path = str(ex.resolve_result_path(tmp_path / "o", res, rel))
    with np.load(path.replace(".json", ".npz")) as z:
        n = len(z["rows"])
        assert z["embedding"].shape == (n, 2) and z["truth"].dtype == bool and z["scores"].shape == (n,)
        assert z["truth"].sum() > 0
    meta = json.loads(open(path).read())
    assert meta["spec"]["method"] == "ac" and meta["config"]["method"] == "ac"


def test_attacks_table_scans_retrains_and_reads_the_floor(tmp_path, tiny_npz):
    """The attacks table on tiny data: a source -> target and an all-to-one row, each detected, scanned
    (the default scan), cleaned and retrained; one unpoisoned model gives both rows' floors."""
    from poisonsift.experiments.specs import attacks_table

    rows = [("standard", 0.33, {}), ("blended", 0.05, {"source_class": "all", "target_class": 5})]
    table = attacks_table(train=TINY_TRAIN, rows=rows)
    cache, out = tmp_path / "cache", tmp_path / "out"
    pl = ex.plan([table], data=tiny_npz, cache=cache)
    assert pl["to_compute"]["trainings"] == 3 and pl["to_compute"]["scans"] == 2 and pl["to_compute"]["retrainings"] == 2
    assert sorted(r["tables"][0] for r in pl["runs"]) == ["attacks", "attacks", "floor"]
    res = ex.reproduce([table], data=tiny_npz, out=out, cache=cache)
    assert res["computed"] == {"runs": 3, "detections": 6, "scans": 2, "floors": 2, "units": 13}
    t = res["tables"]["attacks"]
    assert [r["label"] for r in t["rows"]] == [{"attack": "standard", "p": 33.0, "of": "class"},
                                               {"attack": "blended all-to-one", "p": 5.0, "of": "set"}]  # fmt: skip
    assert {"scan TPR", "scan AUROC", "scan rank", "whole TNR", "ASR after", "floor", "HC AUROC"} <= set(t["columns"])
    for row in t["rows"]:
        run = cache / row["runs"][0]
        scan = json.loads(next((run / "scans").glob("*/scan.json")).read_text())
        rec = json.loads(next((run / "scans").glob("*/row.json")).read_text())
        order = [c["class"] for c in scan["classes"]]
        assert row["ours"]["scan rank"] == order.index(5) + 1 and scan["method"] == "hc"  # the default scan
        assert row["ours"]["whole TPR"] == pytest.approx(100 * scan["tpr"]) and rec["whole_tnr"] == scan["tnr"]
        cleaned = json.loads((run / "scans" / rec_dir(run) / "clean" / "metrics.json").read_text())
        assert row["ours"]["ASR after"] == pytest.approx(100 * cleaned["asr"])
        for k, v in row["ours"].items():
            assert v is not None and (0 <= v <= 100 or k == "scan rank"), (k, v)
        assert row["paper"] is None  # our own table: no paper values
    # one unpoisoned model, each row's floor read with its own test trigger
    floors = list((cache / "runs").glob("*/floors/*/metrics.json"))
    assert len(floors) == 2 and len({f.parents[2] for f in floors}) == 1
    assert {json.loads(f.read_text())["attack"] for f in floors} == {"standard", "blended"}
    again = ex.reproduce([table], data=tiny_npz, out=out, cache=cache, report=False)
    assert again["computed"]["runs"] == again["computed"]["scans"] == again["computed"]["floors"] == 0
    assert again["tables"] == res["tables"]
    assert (out / "report.md").read_text().count("blended all-to-one") >= 1


def rec_dir(run):
    return next((run / "scans").iterdir()).name


def test_attacks_table_rows_by_name(capsys, tiny_npz, tmp_path):
    """``--rows`` picks rows of the attacks table by name, in the table's order, for one sitting."""
    names = [ex.specs.attack_row_name(k, prm) for k, _, prm in ex.specs.ATTACK_ROWS]
    assert names == ["standard", "blended", "standard-all-to-one", "blended-all-to-one", "sig", "wanet",
                     "adaptive-blend"]  # fmt: skip
    t = ex.build_table("attacks", rows=["sig", "blended-all-to-one"])
    assert [r.label["attack"] for r in t.rows] == ["blended all-to-one", "sig"]
    assert [r.runs[0].key("f") for r in t.rows] == [r.runs[0].key("f") for r in ex.build_table("attacks").rows[3:5]]
    with pytest.raises(ConfigError, match="unknown attacks-table row blendd; choose from standard, blended"):
        ex.build_table("attacks", rows=["blendd"])
    with pytest.raises(ConfigError, match="only in the attacks table"):
        ex.build_table("1", rows=["sig"])
    assert main(["reproduce", "--table", "attacks", "--rows", "wanet", "--data", tiny_npz, "--cache",
                 str(tmp_path / "c"), "--plan", "--json"]) == 0  # fmt: skip
    pl = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in pl["runs"]] == ["wanet", "standard"]  # the row and the floor's unpoisoned run
    assert main(["reproduce", "--table", "1", "--rows", "sig", "--data", tiny_npz, "--plan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: rows are chosen by name only in the attacks table") and "Traceback" not in err
