"""The HTML / Markdown report of a reproduction, and its rendering in a real (headless) browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from poisonsift import experiments as ex
from poisonsift.cli import main
from poisonsift.data import save_npz
from poisonsift.errors import DataError
from poisonsift.experiments import AttackSpec, Column, Row, RunSpec, TableSpec
from poisonsift.report import write_report

from conftest import make_tiny_data
from test_experiments import TINY_TRAIN, tiny_table


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> Path:
    """A tiny reproduction with Table "1" (AC, HC), Table "3" (raw PCA / ICA) and a fig6-like per-class table."""
    root = tmp_path_factory.mktemp("repro")
    data = root / "tiny.npz"
    save_npz(make_tiny_data(), data)
    t3 = ex.build_table("3")
    t3.rows = [Row(r.label, [RunSpec(AttackSpec("standard", 0.33), train=TINY_TRAIN)], r.detection) for r in t3.rows]
    fig6 = TableSpec("fig6", "per-class ASR", "amplitude",
                     [Row({"amplitude": a}, [RunSpec(AttackSpec("amplitude", 0.33, amp=a), train=TINY_TRAIN)]) for a in (255, 64)],
                     [Column("MASR", "metrics", "masr")])  # fmt: skip
    out = root / "out"
    ex.reproduce([tiny_table(detections=("AC", "HC"), ps=(0.33,)), t3, fig6], data=str(data), out=out,
                 cache=root / "cache")  # fmt: skip
    return out


def test_report_has_every_table_beside_the_paper(reproduced):
    page = (reproduced / "report.html").read_text()
    for name in ("1", "3", "fig6"):
        assert f"data-table='{name}'" in page
    # Table 3 lists the paper's numbers (PCA ACC 65.49, FastICA TPR 31.99) beside ours, with differences.
    assert "65.49" in page and "31.99" in page and "<tr class='diff'>" in page
    res = json.loads((reproduced / "results.json").read_text())
    ours = res["tables"]["3"]["rows"][0]["ours"]["ACC"]
    assert f"{ours:.2f}" in page
    md = (reproduced / "report.md").read_text()
    assert "## Table 3" in md and "| paper |" in md and "65.49" in md
    assert "Seconds per stage" in page and "Seconds per stage" in md


def test_results_and_report_say_what_produced_them(reproduced):
    """The code (version, git commit where there is one) and the training settings travel with the numbers."""
    import poisonsift
    from poisonsift.utils import source_commit

    res = json.loads((reproduced / "results.json").read_text())
    assert res["poisonsift"] == {"version": poisonsift.__version__, "commit": source_commit()}
    assert [c["epochs"] for c in res["train_configs"]] == [1]  # every tiny run: the cpu preset with TINY_TRAIN
    assert res["train_configs"][0]["max_steps"] == 3 and res["train_configs"][0]["schedule"] == "onecycle"
    md = (reproduced / "report.md").read_text()
    assert f"poisonsift {poisonsift.__version__}, commit {source_commit() or 'unknown'}" in md
    assert "epochs 1; max_steps 3; batch_size 16; lr 0.002" in md


def test_results_and_report_hold_no_absolute_path(reproduced):
    """The reproduction can be published as it is: nothing names the machine it ran on."""
    root = str(reproduced.parent)
    for name in ("results.json", "report.html", "report.md"):
        assert root not in (reproduced / name).read_text(), name
    res = json.loads((reproduced / "results.json").read_text())
    assert res["cache"] == "../cache" and res["data"] == "../tiny.npz"
    run = res["tables"]["1"]["rows"][0]["runs"][0]
    assert run.startswith("runs/") and (reproduced / res["cache"] / run / "metrics.json").is_file()


def test_report_figures_exist_and_are_linked(reproduced):
    page = (reproduced / "report.html").read_text()
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert {"figures/examples.png", "figures/heatmaps.png", "figures/per-class-asr-fig6.png"} <= set(srcs)
    assert any(s.startswith("figures/clusters-1-") for s in srcs)
    from PIL import Image

    for s in srcs:
        img = np.asarray(Image.open(reproduced / s).convert("L"))
        assert img.shape[0] > 50 and img.std() > 5, s  # a real picture, not an empty canvas
    assert "http://" not in page and "https://" not in page  # works offline


def test_report_cli_and_missing_results(tmp_path, reproduced, capsys):
    assert main(["report", str(reproduced), "--json"]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert Path(paths["html"]).exists() and Path(paths["md"]).exists()
    with pytest.raises(DataError, match="no results.json"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "poisonsift reproduce" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium(reproduced, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (.ci/run installs it)")
    url = (reproduced / "report.html").resolve().as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"<body[^>]*data-images=\"(\d+)\"[^>]*data-broken-images=\"(\d+)\"", dom)
    assert m, "the page's load handler did not run"
    n_images, broken = int(m.group(1)), int(m.group(2))
    assert n_images >= 4 and broken == 0
    assert dom.count("class=\"result\"") == 3  # the three tables are in the rendered DOM
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2400", url], capture_output=True, timeout=120)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"))
    assert img.std() > 10  # something was drawn
