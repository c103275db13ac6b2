"""poisonsift audit: an ImageFolder tree with a poisoned sub-folder -> flagged.csv names its files."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_data
from poisonsift.attacks import StandardBackdoor, StickerTrigger
from poisonsift.audit import FLAGGED_COLUMNS, write_clean_tree
from poisonsift.cli import main


def write_tree(root: Path, poisoned: bool) -> set[str]:
    """A 6-class ImageFolder tree of the tiny data (40 images a class); with ``poisoned``, 20 class-2
    images with a 5 x 5 sticker in ``c5/extra/`` (labelled 5 by their folder). Returns their paths."""
    data = make_tiny_data(n_per_class=40)
    pd = StandardBackdoor(p=0.33, source_class=2, target_class=5, trigger=StickerTrigger(size=5)).poison(data, seed=0)
    bad = set()
    for i, (x, y) in enumerate(zip(pd.x_train, pd.y_train)):
        if pd.poison_mask[i] and not poisoned:
            continue
        sub = Path(f"c{y}") / ("extra" if pd.poison_mask[i] else "")
        (root / sub).mkdir(parents=True, exist_ok=True)
        rel = (sub / f"img{i:04d}.png").as_posix()
        Image.fromarray(x).save(root / rel)
        if pd.poison_mask[i]:
            bad.add(rel)
    return bad


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


AUDIT = ["--preset", "cpu", "--epochs", "3", "--json"]


def test_audit_lists_every_poisoned_file_and_writes_a_clean_tree(tmp_path, capsys):
    tree = tmp_path / "tree"
    bad = write_tree(tree, poisoned=True)
    out = tmp_path / "out"
    assert main(["audit", str(tree), "--out", str(out), "--write-clean", *AUDIT]) == 0
    r = json.loads(capsys.readouterr().out)
    rows = read_csv(out / "flagged.csv")
    assert list(rows[0]) == list(FLAGGED_COLUMNS)
    flagged = {row["path"] for row in rows}
    assert bad <= flagged and len(flagged - bad) <= 2  # every poisoned file, almost nothing else
    assert {row["class_name"] for row in rows if row["path"] in bad} == {"c5"} and r["suspicious_classes"] == [5]
    assert r["n_images"] == 240 and r["n_flagged"] == len(rows)
    # no ground truth in an audit: no TPR / TNR anywhere
    scan = json.loads((out / "run" / "scan.json").read_text())
    assert "tpr" not in scan and "tnr" not in scan and set(scan["flagged_files"]) == flagged
    assert all("n_poisoned_true" not in e for e in scan["classes"])
    assert "img" in (out / "run" / "scan-report.md").read_text()  # the report names the flagged files
    # the clean tree: every file but the flagged ones, by the same relative path
    clean = out / "clean"
    kept = {p.relative_to(clean).as_posix() for p in clean.rglob("*.png")}
    every = {p.relative_to(tree).as_posix() for p in tree.rglob("*.png")}
    assert kept == every - flagged and not kept & bad
    assert r["clean"]["removed"] == len(flagged) and r["clean"]["files"] == len(kept)
    # again: the trained model is reused, the clean target is refused (not empty)
    assert main(["audit", str(tree), "--out", str(out), *AUDIT]) == 0
    assert json.loads(capsys.readouterr().out)["model_reused"] is True
    assert main(["audit", str(tree), "--out", str(out), "--write-clean", *AUDIT]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_audit_of_an_unpoisoned_tree_lists_nothing(tmp_path, capsys):
    tree = tmp_path / "tree"
    write_tree(tree, poisoned=False)
    assert main(["audit", str(tree), "--out", str(tmp_path / "out"), *AUDIT]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["suspicious_classes"] == [] and r["n_flagged"] == 0
    assert read_csv(tmp_path / "out" / "flagged.csv") == []


@pytest.mark.parametrize("flags, message", [
    (["--write-clean", "{tmp}/elsewhere"], "must be a folder inside --out"),
    (["--jobs", "0"], "--jobs"),
    (["--out", "{tree}/out"], "inside the audited folder"),
])  # fmt: skip
def test_audit_refuses_bad_arguments_before_any_work(tmp_path, capsys, flags, message):
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    flags = [f.format(tmp=tmp_path, tree=tree) for f in flags]
    argv = ["audit", str(tree), *(["--out", str(tmp_path / "out")] if "--out" not in flags else []), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") or "error:" in err.splitlines()[-1]
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "run").exists()  # nothing was started


def test_clean_tree_links_files_and_never_follows_a_link_out(tmp_path):
    src, outside = tmp_path / "src", tmp_path / "secret.txt"
    (src / "a").mkdir(parents=True)
    outside.write_text("not yours")
    for name in ("1.png", "2.png"):
        (src / "a" / name).write_bytes(b"x")
    os.symlink(outside, src / "a" / "leak.png")  # points out of the tree: skipped
    os.symlink(src / "a" / "1.png", src / "a" / "alias.png")  # inside: its file is copied
    os.symlink(tmp_path, src / "up")  # a folder link: not walked
    # a GTSRB annotation CSV loses the removed file's row
    (src / "a" / "GT-00000.csv").write_text("Filename;ClassId\n1.png;0\n2.png;0\n")
    c = write_clean_tree(src, tmp_path / "clean", {"a/2.png"})
    got = {p.relative_to(tmp_path / "clean").as_posix() for p in (tmp_path / "clean").rglob("*") if p.is_file()}
    assert got == {"a/1.png", "a/alias.png", "a/GT-00000.csv"}
    assert (tmp_path / "clean" / "a" / "GT-00000.csv").read_text() == "Filename;ClassId\n1.png;0\n"
    assert c["skipped_links"] == 2 and c["removed"] == 1
    assert os.stat(tmp_path / "clean" / "a" / "1.png").st_ino == os.stat(src / "a" / "1.png").st_ino  # a hard link


def test_prepare_records_source_paths(tmp_path):
    from poisonsift.data import load_npz, prepare, thin_tracks

    tree = tmp_path / "tree"
    write_tree(tree, poisoned=False)
    d = prepare(tree, tmp_path / "d.npz")
    assert d.path_train is not None and len(d.path_train) == len(d.y_train)
    for p, y in zip(d.path_train[:5], d.y_train[:5]):
        assert (tree / p).is_file() and p.split("/")[0] == d.classes[y]
        assert np.array_equal(np.asarray(Image.open(tree / p).convert("RGB")), d.x_train[list(d.path_train).index(p)])
    assert np.array_equal(load_npz(tmp_path / "d.npz").path_train, d.path_train)
    assert np.array_equal(thin_tracks(d, 2).path_train, d.path_train)  # no tracks here: every image kept
    assert len(d.y_train) + len(d.y_test) == 220
    whole = prepare(tree, test_fraction=0.0)
    assert len(whole.y_train) == 220 and len(whole.y_test) == 0  # an audit scans every file


def test_gtsrb_paths_name_the_files_and_survive_thinning(fake_gtsrb):
    from poisonsift.data import prepare, thin_tracks

    d = prepare(fake_gtsrb)
    assert all((fake_gtsrb / p).is_file() for p in d.path_train)
    assert all(p.split("/")[-2] == f"{y:05d}" for p, y in zip(d.path_train, d.y_train))  # GTSRB's class folders
    t = thin_tracks(d, 2)
    keep = [list(d.path_train).index(p) for p in t.path_train]
    assert np.array_equal(t.x_train, d.x_train[keep]) and len(t.path_train) < len(d.path_train)


def test_an_error_after_a_progress_bar_starts_its_own_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("POISONSIFT_QUIET")  # the bars on, as a user sees them (stderr here is no terminal)
    tree = tmp_path / "tree"
    write_tree(tree, poisoned=False)
    (tree / "c1" / "broken.png").write_bytes(b"not an image")
    assert main(["data", "prepare", "--source", str(tree), "--out", str(tmp_path / "d.npz")]) == 2
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1]
    assert "reading" in err and last.startswith("error: ") and "broken.png" in last and "\r" not in last


def test_scan_refuses_zero_jobs_before_the_lrp_pass(tmp_path, capsys):
    # the run does not even exist: the flag is refused first
    assert main(["scan", "--run", str(tmp_path / "none"), "--jobs", "0"]) == 2
    assert "--jobs" in capsys.readouterr().err
