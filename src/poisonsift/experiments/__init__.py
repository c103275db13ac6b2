"""The paper's experiments (sections 6-7) as declarative, cached, resumable specs.

A :class:`TableSpec` lists rows; each row names the runs it needs (a
:class:`RunSpec`: attack + training) and the table's columns say which
metric of which run or detection (:class:`DetectSpec`) goes where.
:func:`reproduce` turns a set of tables into three stages of independent
units - clean surrogates, runs (poison -> train -> evaluate), detections -
executes them locally or as Ray tasks, and assembles every table beside the
paper's published values (``paper_results.json``, in percent as printed).

Cache. Every unit lives under a key derived from everything that determines
it: a run under ``CACHE/runs/<key>/`` (a :mod:`poisonsift.runs` directory)
with the key's material in ``spec.json``; a detection in that run's
``detections/<method>-<key>.json`` (+ ``.npz`` arrays); a surrogate under
``CACHE/surrogates/``. A second call, or another table that needs the same
model, finds them. Each step writes its artefact atomically and is skipped
when the artefact exists, so a killed run resumes at the step it was in
(a training that was interrupted starts again from its first epoch);
``force=True`` recomputes.

Choices where the paper is silent (stated once here):

* Table 5 follows the paper's text (label-consistent attack with the s = 3
  sticker; the caption's "standard sticker" is read as the sticker type): 10
  repeats with seeds 0..9, each seed a new random choice of images and new
  random trigger positions; one clean surrogate (seed 0) serves all repeats.
* Table 4 adds amplitude 255 (the issue's list) to the paper's 128 / 64 / 32.
* ``sizes``: the standard attack with s = 1, 2, 3 at p = 33 % (the paper
  mentions them, prints only s = 3).
* Spectral Signatures is an extra column ("SS") where AC and HC are shown.
"""

from poisonsift.defences.spec import DetectSpec
from poisonsift.executors import LocalExecutor, RayExecutor, make_executor
from poisonsift.experiments.reproduce import assemble, plan, reproduce
from poisonsift.report.reproduction import resolve_result_path  # results.json's format, read by the report
from poisonsift.experiments.specs import (
    CPU_LOW_RATE_EPOCHS,
    TABLES,
    AttackSpec,
    Column,
    Row,
    RunSpec,
    TableSpec,
    build_table,
    cpu_low_rate_epochs,
    paper_values,
)
from poisonsift.experiments.units import execute_detection, execute_run, execute_surrogate, run_dir

__all__ = [
    "AttackSpec",
    "RunSpec",
    "DetectSpec",
    "Column",
    "Row",
    "TableSpec",
    "TABLES",
    "CPU_LOW_RATE_EPOCHS",
    "cpu_low_rate_epochs",
    "build_table",
    "paper_values",
    "reproduce",
    "assemble",
    "resolve_result_path",
    "plan",
    "LocalExecutor",
    "RayExecutor",
    "make_executor",
    "execute_run",
    "execute_detection",
    "execute_surrogate",
    "run_dir",
]
