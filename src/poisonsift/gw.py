"""k-means under the entropic Gromov-Wasserstein distance (paper 5.3, 5.5).

Each sample is a metric-measure space (C, p) - see
:class:`poisonsift.explain.PointCloud`. k-means here:

1. k-means++ initialisation: the first centre is a sample drawn with the seed;
   each further centre is drawn with probability proportional to the squared
   GW distance to the nearest centre already chosen;
2. assignment: every sample goes to the centre at the smallest entropic GW
   distance (square loss, ``epsilon``);
3. update: every centre becomes the entropic GW barycenter of its members
   (``n_support`` points, uniform weights);

until the assignments stop changing or ``max_iter`` iterations. An empty
cluster keeps its previous centre.

The engine computing distances and barycenters is a swappable part
(:class:`GWEngine`); ``pot`` calls POT's ``entropic_gromov_wasserstein2`` and
``entropic_gromov_barycenters`` pair by pair, as the paper's code does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from poisonsift.errors import ConfigError, DataError
from poisonsift.explain import PointCloud
from poisonsift.utils import progress

__all__ = ["GWKMeansConfig", "GWKMeansResult", "GWEngine", "PotEngine", "gw_kmeans", "get_engine"]


@dataclass
class GWKMeansConfig:
    """Parameters of GW k-means (defaults: the paper's code)."""

    k: int = 2
    epsilon: float = 0.1
    n_support: int = 10
    max_iter: int = 20
    gw_max_iter: int = 1000
    gw_tol: float = 1e-9
    bary_max_iter: int = 100
    bary_tol: float = 1e-9
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.n_support < 1 or self.max_iter < 1:
            raise ConfigError("k, n_support and max_iter must be >= 1")
        if self.epsilon <= 0:
            raise ConfigError(f"epsilon must be > 0, got {self.epsilon}")


class GWEngine(Protocol):
    """Computes entropic GW distances and barycenters."""

    name: str

    def distances(self, clouds: Sequence[PointCloud], centre: tuple[np.ndarray, np.ndarray], cfg: GWKMeansConfig) -> np.ndarray:
        """(N,) entropic GW distances from every cloud to one centre (C, p)."""

    def barycenter(self, members: Sequence[PointCloud], cfg: GWKMeansConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Entropic GW barycenter (C (m, m), p (m,)) of ``members`` with ``cfg.n_support`` points."""


class PotEngine:
    """Reference engine: POT, one pair at a time (float64)."""

    name = "pot"

    def distances(self, clouds, centre, cfg):
        import ot

        Cc, pc = centre
        out = np.empty(len(clouds))
        for i, c in enumerate(clouds):
            out[i] = ot.gromov.entropic_gromov_wasserstein2(
                c.C, Cc, c.p, pc, loss_fun="square_loss", epsilon=cfg.epsilon,
                max_iter=cfg.gw_max_iter, tol=cfg.gw_tol,
            )  # fmt: skip
        return out

    def barycenter(self, members, cfg, seed):
        import ot

        m = cfg.n_support
        C = ot.gromov.entropic_gromov_barycenters(
            m, [c.C for c in members], [c.p for c in members], p=np.full(m, 1.0 / m),
            lambdas=[1.0 / len(members)] * len(members), loss_fun="square_loss", epsilon=cfg.epsilon,
            max_iter=cfg.bary_max_iter, tol=cfg.bary_tol, random_state=seed,
        )  # fmt: skip
        return np.asarray(C, dtype=np.float64), np.full(m, 1.0 / m)


ENGINES: dict[str, type] = {"pot": PotEngine}


def get_engine(name: str) -> GWEngine:
    """An engine by name; unknown names are a :class:`ConfigError`."""
    if name not in ENGINES:
        raise ConfigError(f"unknown GW engine {name!r}; available: {sorted(ENGINES)}")
    return ENGINES[name]()


@dataclass
class GWKMeansResult:
    """Assignments and distances of GW k-means.

    Attributes:
        labels: (N,) int cluster of each sample.
        distances: (N, k) entropic GW distance of each sample to each final centre.
        centres: the k centres as (C, p).
        n_iter: k-means iterations run.
        seconds: {"init": ..., "iterations": ...}.
    """

    labels: np.ndarray
    distances: np.ndarray
    centres: list[tuple[np.ndarray, np.ndarray]]
    n_iter: int
    seconds: dict[str, float] = field(default_factory=dict)


def gw_kmeans(clouds: Sequence[PointCloud], cfg: GWKMeansConfig, engine: str | GWEngine = "pot") -> GWKMeansResult:
    """Cluster point clouds with k-means under entropic GW (see module docstring).

    Degenerate input: fewer samples than ``k`` is a :class:`DataError`.
    """
    eng = get_engine(engine) if isinstance(engine, str) else engine
    n, k = len(clouds), cfg.k
    if n < k:
        raise DataError(f"GW k-means needs at least k={k} samples, got {n}")
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    first = int(rng.integers(n))
    centres = [(clouds[first].C, clouds[first].p)]
    dist = np.empty((n, k))
    with progress(total=k - 1, desc="GW k-means++", unit="centre") as bar:
        dist[:, 0] = eng.distances(clouds, centres[0], cfg)
        for j in range(1, k):
            d2 = np.maximum(dist[:, :j].min(1), 0) ** 2
            probs = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
            nxt = int(rng.choice(n, p=probs))
            centres.append((clouds[nxt].C, clouds[nxt].p))
            dist[:, j] = eng.distances(clouds, centres[j], cfg)
            bar.update(1)
    t_init = time.perf_counter() - t0
    labels = dist.argmin(1)
    it = 0
    with progress(total=cfg.max_iter, desc="GW k-means", unit="it") as bar:
        for it in range(1, cfg.max_iter + 1):
            for j in range(k):
                members = [clouds[i] for i in np.flatnonzero(labels == j)]
                if members:  # an empty cluster keeps its centre
                    centres[j] = eng.barycenter(members, cfg, seed=cfg.seed + it * k + j)
            for j in range(k):
                dist[:, j] = eng.distances(clouds, centres[j], cfg)
            new = dist.argmin(1)
            bar.update(1)
            if np.array_equal(new, labels):
                break
            labels = new
    return GWKMeansResult(labels, dist.copy(), centres, it, {"init": t_init, "iterations": time.perf_counter() - t0 - t_init})
