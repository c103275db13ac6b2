"""What every attack shares: the poisoned data set it returns, the interface, and the choice of
which rows to poison (source -> target or all-to-one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from poisonsift.data import ImageData
from poisonsift.errors import ConfigError

__all__ = ["PoisonedData", "Attack", "n_poison_standard", "ALL", "SourceClass"]

#: ``source_class`` of an all-to-one attack: images of every class but the target are poisoned.
ALL = "all"
SourceClass = int | str


@dataclass
class PoisonedData:
    """A poisoned training set with its ground truth.

    Attributes:
        x_train: (N, H, W, 3) uint8, poisoned rows in place of their clean originals.
        y_train: (N,) int64 training labels after the attack.
        poison_mask: (N,) bool, True for poisoned rows (the images that carry the backdoor:
            relabelled payloads, or a label-consistent attack's stamped target images).
        source_index: (N,) int64, index of the clean original in the input set, -1 for clean rows.
        x_test, y_test: the untouched test set.
        classes, group_train: carried over from the clean data.
        cover_mask: (N,) bool or None: *cover* rows (WaNet's noise mode, adaptive-blend's covers),
            images changed by the attack that keep their own label. They teach the network what
            the trigger is not; they carry no backdoor and count as clean in every metric.
        path_train: (N,) str or None: each row's source file (:attr:`ImageData.path_train`);
            attacks change rows in place, so a row keeps its file's name.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    poison_mask: np.ndarray
    source_index: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    group_train: np.ndarray
    cover_mask: np.ndarray | None = None
    path_train: np.ndarray | None = None

    @property
    def n_poisoned(self) -> int:
        return int(self.poison_mask.sum())

    @property
    def n_cover(self) -> int:
        return 0 if self.cover_mask is None else int(self.cover_mask.sum())

    def as_image_data(self) -> ImageData:
        return ImageData(self.x_train, self.y_train, self.x_test, self.y_test, self.classes, self.group_train,
                         self.path_train)  # fmt: skip


def n_poison_standard(p: float, n_target: int) -> int:
    """Poisoned copies to add so that they make a share ``p`` of the target class.

    n / (n_target + n) = p  =>  n = round(p * n_target / (1 - p)).
    """
    return int(round(p * n_target / (1.0 - p)))


def check_rate(p: float, what: str = "poison rate p") -> None:
    # p = 0 is the control run: nothing poisoned, the trigger kept so that ASR measures the floor.
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"{what} must be in [0, 1) (0: an unpoisoned control run), got {p}")


def check_source(source_class: SourceClass, target_class: int) -> None:
    if source_class == ALL:
        return
    if isinstance(source_class, bool) or not isinstance(source_class, (int, np.integer)):
        raise ConfigError(f"source class must be a class index or 'all' (all-to-one), got {source_class!r}")
    if source_class == target_class:
        raise ConfigError("source and target class must differ (or use source class 'all' for all-to-one)")


def check_class(c: int, data: ImageData, what: str) -> None:
    if not 0 <= c < data.num_classes:
        raise ConfigError(f"{what} class {c} does not exist (data has classes 0..{data.num_classes - 1})")


def control(data: ImageData) -> PoisonedData:
    """The unpoisoned control run of ``p = 0``: the data as it is, no row poisoned."""
    n = len(data.y_train)
    return PoisonedData(
        data.x_train.copy(), data.y_train.copy(), np.zeros(n, dtype=bool), np.full(n, -1, dtype=np.int64),
        data.x_test, data.y_test, list(data.classes), data.group_train, path_train=data.path_train,
    )  # fmt: skip


def choose_relabelled(data: ImageData, p: float, source_class: SourceClass, target_class: int,
                      rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Sorted rows of a label-flipping attack's payload.

    Source -> target (``source_class`` an index): ``round(p * n_target / (1 - p))`` source-class
    images, so that the payload makes a share ``p`` of the target class after the attack (the
    paper's). All-to-one (``source_class == "all"``): ``round(p * N)`` images of every class but
    the target, ``p`` a share of the whole training set (BackdoorBench's and backdoor-toolbox's
    poison rate; target-class images are left out, as relabelling them would change nothing).
    """
    check_class(target_class, data, "target")
    if source_class == ALL:
        pool = np.flatnonzero(data.y_train != target_class)
        n = int(round(p * len(data.y_train)))
        where = f"{len(data.y_train)} training images"
    else:
        check_class(int(source_class), data, "source")
        pool = np.flatnonzero(data.y_train == source_class)
        n_target = int((data.y_train == target_class).sum())
        n = n_poison_standard(p, n_target)
        where = f"{n_target} target-class images"
    if n == 0:
        raise ConfigError(f"p={p} with {where} yields 0 poisoned samples; raise --p")
    if n > len(pool):
        has = f"there are only {len(pool)} non-target images" if source_class == ALL else \
            f"class {source_class} has only {len(pool)}"
        raise ConfigError(f"p={p} needs {n} source-class images but {has}; lower --p")
    return np.sort(rng.choice(pool, size=n, replace=False))


def choose_covers(n_rows: int, n: int, exclude: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sorted rows of ``n`` cover images, any class, none of them in ``exclude`` (the payload)."""
    pool = np.setdiff1d(np.arange(n_rows), exclude)
    if n > len(pool):
        raise ConfigError(f"{n} cover images asked for but only {len(pool)} images are not poisoned; lower the cover rate")
    return np.sort(rng.choice(pool, size=n, replace=False))


def assemble(data: ImageData, x: np.ndarray, y: np.ndarray, poisoned: np.ndarray,
             covers: np.ndarray | None = None) -> PoisonedData:  # fmt: skip
    """The :class:`PoisonedData` of an attack that changed rows ``poisoned`` (and ``covers``) in place."""
    n = len(y)
    mask = np.zeros(n, dtype=bool)
    mask[poisoned] = True
    source_index = np.full(n, -1, dtype=np.int64)
    source_index[poisoned] = poisoned
    cover_mask = None
    if covers is not None:
        cover_mask = np.zeros(n, dtype=bool)
        cover_mask[covers] = True
    return PoisonedData(x, y, mask, source_index, data.x_test, data.y_test, list(data.classes), data.group_train,
                        cover_mask, data.path_train)  # fmt: skip


class Attack:
    """Interface: ``poison(data, seed) -> PoisonedData``, ``asr_images(data, seed)`` and ``config()``.

    ``source_class`` is a class index, ``"all"`` (all-to-one) or None (a label-consistent attack,
    whose poison keeps its labels).
    """

    name: ClassVar[str]
    target_class: int
    source_class: SourceClass | None = None
    trigger: Any

    def poison(self, data: ImageData, seed: int = 0) -> PoisonedData:
        raise NotImplementedError

    def stamp_test(self, images: np.ndarray, seed: int = 0) -> np.ndarray:
        """Put the test trigger (:meth:`for_test` of the trigger: full amplitude, the test alpha) on
        (B, H, W, 3) uint8 test images (seeded positions)."""
        rng = np.random.default_rng([seed, 1])
        return self.trigger.for_test().apply(images, rng)

    def asr_images(self, data: ImageData | PoisonedData, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Test images to measure ASR on, stamped, with their true labels: the source class's for a
        source -> target attack (paper 5.1), every non-target image for all-to-one and
        label-consistent attacks."""
        if isinstance(self.source_class, (int, np.integer)) and self.source_class != ALL:
            idx = np.flatnonzero(data.y_test == self.source_class)
        else:
            idx = np.flatnonzero(data.y_test != self.target_class)
        return self.stamp_test(data.x_test[idx], seed), data.y_test[idx]

    def config(self) -> dict[str, Any]:
        raise NotImplementedError
