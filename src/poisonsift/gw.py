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
from typing import Any, Protocol, Sequence

import numpy as np

from poisonsift.errors import ConfigError, DataError
from poisonsift.explain import PointCloud
from poisonsift.utils import progress

__all__ = ["GWKMeansConfig", "GWKMeansResult", "GWEngine", "PotEngine", "gw_kmeans", "gw_mds", "get_engine"]


@dataclass
class GWKMeansConfig:
    """Parameters of GW k-means (defaults: the paper's code, except ``warm_start``)."""

    k: int = 2
    epsilon: float = 0.1
    n_support: int = 10
    max_iter: int = 20
    gw_max_iter: int = 1000
    gw_tol: float = 1e-9
    bary_max_iter: int = 100
    bary_tol: float = 1e-9
    seed: int = 0
    #: k-means++ seeding: "cloud" uses the drawn clouds themselves as first centres (the paper's way,
    #: O(n^3) cloud-to-cloud GW); "compressed" first summarises each drawn cloud by its own
    #: ``n_support``-point GW barycenter, so every distance is cloud-to-centre. None: the engine's default.
    init: str | None = None
    #: Warm starts (on by default; beyond the paper, whose code starts every barycenter at
    #: random): each k-means iteration starts a cluster's barycenter from its previous centre
    #: (POT's ``init_C``), and each barycenter iteration starts every member's plan from its
    #: previous plan (POT's ``warmstartT``). Measured on 2,776 real LRP clouds
    #: (benchmarks/warm_start.py): 7.3x faster clustering, 100 % identical assignments.
    warm_start: bool = True

    def __post_init__(self) -> None:
        if self.k < 1 or self.n_support < 1 or self.max_iter < 1:
            raise ConfigError("k, n_support and max_iter must be >= 1")
        if self.epsilon <= 0:
            raise ConfigError(f"epsilon must be > 0, got {self.epsilon}")
        if self.init not in (None, "cloud", "compressed"):
            raise ConfigError(f"init must be 'cloud' or 'compressed', got {self.init!r}")


class GWEngine(Protocol):
    """Computes entropic GW distances and barycenters over a prepared set of clouds."""

    name: str
    default_init: str

    def prepare(self, clouds: Sequence[PointCloud]) -> Any:
        """Whatever the engine needs to hold the clouds (done once per k-means run)."""

    def distances(self, clouds: Any, centre: tuple[np.ndarray, np.ndarray], cfg: GWKMeansConfig,
                  index: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """Entropic GW distances from the prepared clouds (or those at ``index``) to one centre (C, p)."""

    def barycenter(self, clouds: Any, cfg: GWKMeansConfig, seed: int, index: np.ndarray | None = None,
                   init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Entropic GW barycenter (C (m, m), p (m,)) of the clouds at ``index`` (all by default),
        starting from ``init`` (m, m) if given, else from POT's random structure seeded by ``seed``."""

    def compress(self, clouds: Any, cfg: GWKMeansConfig, seed: int, index: np.ndarray | None = None) -> np.ndarray:
        """(B, m, m): each cloud at ``index`` (all by default) alone summarised by its own barycenter."""


class PotEngine:
    """Reference engine: POT, one pair at a time (float64)."""

    name = "pot"
    default_init = "cloud"

    def prepare(self, clouds):
        return list(clouds)

    def distances(self, clouds, centre, cfg, index=None):
        import ot

        Cc, pc = centre
        chosen = clouds if index is None else [clouds[i] for i in index]
        out = np.empty(len(chosen))
        for i, c in enumerate(chosen):
            out[i] = ot.gromov.entropic_gromov_wasserstein2(
                c.C, Cc, c.p, pc, loss_fun="square_loss", epsilon=cfg.epsilon,
                max_iter=cfg.gw_max_iter, tol=cfg.gw_tol,
            )  # fmt: skip
        return out

    def barycenter(self, clouds, cfg, seed, index=None, init=None):
        import ot

        members = clouds if index is None else [clouds[i] for i in index]
        m = cfg.n_support
        C = ot.gromov.entropic_gromov_barycenters(
            m, [c.C for c in members], [c.p for c in members], p=np.full(m, 1.0 / m),
            lambdas=[1.0 / len(members)] * len(members), loss_fun="square_loss", epsilon=cfg.epsilon,
            max_iter=cfg.bary_max_iter, tol=cfg.bary_tol, random_state=seed, init_C=init,
            warmstartT=cfg.warm_start,
        )  # fmt: skip
        return np.asarray(C, dtype=np.float64), np.full(m, 1.0 / m)

    def compress(self, clouds, cfg, seed, index=None):
        index = np.arange(len(clouds)) if index is None else index
        return np.stack([self.barycenter(clouds, cfg, seed, index=np.array([i]))[0] for i in index])


ENGINE_NAMES = ("pot", "fast")


def get_engine(name: str) -> GWEngine:
    """An engine by name (``pot`` or ``fast``); unknown names are a :class:`ConfigError`."""
    if name == "pot":
        return PotEngine()
    if name == "fast":
        from poisonsift.gw_fast import FastEngine

        return FastEngine()
    raise ConfigError(f"unknown GW engine {name!r}; available: {', '.join(ENGINE_NAMES)}")


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
    init = cfg.init or eng.default_init
    handle = eng.prepare(clouds)

    def seed_centre(i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        if init == "cloud":
            return clouds[i].C, clouds[i].p
        # cloud i compressed to n_support points: its own barycenter (GWEngine.compress, for one cloud)
        return eng.barycenter(handle, cfg, seed=cfg.seed + 1000 + j, index=np.array([i]))

    first = int(rng.integers(n))
    centres = [seed_centre(first, 0)]
    dist = np.empty((n, k))
    with progress(total=k - 1, desc="GW k-means++", unit="centre") as bar:
        dist[:, 0] = eng.distances(handle, centres[0], cfg)
        for j in range(1, k):
            d2 = np.maximum(dist[:, :j].min(1), 0) ** 2
            probs = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
            nxt = int(rng.choice(n, p=probs))
            centres.append(seed_centre(nxt, j))
            dist[:, j] = eng.distances(handle, centres[j], cfg)
            bar.update(1)
    t_init = time.perf_counter() - t0
    labels = dist.argmin(1)
    it = 0
    with progress(total=cfg.max_iter, desc="GW k-means", unit="it") as bar:
        for it in range(1, cfg.max_iter + 1):
            for j in range(k):
                members = np.flatnonzero(labels == j)
                if len(members):  # an empty cluster keeps its centre
                    prev = centres[j][0]
                    warm = prev if cfg.warm_start and prev.shape == (cfg.n_support, cfg.n_support) else None
                    centres[j] = eng.barycenter(handle, cfg, seed=cfg.seed + it * k + j, index=members, init=warm)
            for j in range(k):
                dist[:, j] = eng.distances(handle, centres[j], cfg)
            new = dist.argmin(1)
            bar.update(1)
            if np.array_equal(new, labels):
                break
            labels = new
    return GWKMeansResult(labels, dist.copy(), centres, it, {"init": t_init, "iterations": time.perf_counter() - t0 - t_init})


def gw_mds(clouds: Sequence[PointCloud], cfg: GWKMeansConfig, engine: str | GWEngine = "fast", n: int = 300,
           seed: int = 0, centres: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """A 2-D metric MDS embedding of the clouds' pairwise GW distances, for plots.

    All pairwise GW between full clouds would be O(N^2) solves of O(n^3) each
    (hours for one class); instead a seeded subset of ``n`` clouds is
    compressed to ``cfg.n_support`` points each (its own GW barycenter, as the
    ``compressed`` k-means++ seeding does), the entropic GW values between all
    pairs of compressions (and the k-means ``centres``, which live in the same
    space) are computed in one batch (:func:`poisonsift.gw_fast.pairwise_gw`),
    and scikit-learn's SMACOF embeds the GW distances (square roots of the
    square-loss values) from a classical-MDS start.

    Returns (index (S,) of the embedded clouds, sorted; embedding (S, 2);
    centre embedding (len(centres), 2)).
    """
    from sklearn.manifold import MDS

    from poisonsift.gw_fast import pairwise_gw

    eng = get_engine(engine) if isinstance(engine, str) else engine
    N = len(clouds)
    idx = np.arange(N) if n >= N else np.sort(np.random.default_rng(seed).choice(N, n, replace=False))
    if len(idx) + len(centres) < 3:
        raise DataError(f"an MDS view needs at least 3 spaces, got {len(idx) + len(centres)}")
    m = cfg.n_support
    Cs = [eng.compress(eng.prepare([clouds[i] for i in idx]), cfg, seed=cfg.seed)]
    ps = [np.full((len(idx), m), 1.0 / m)]
    for C, p in centres:
        if C.shape != (m, m):
            raise DataError(f"centres must have {m} support points, got {C.shape[0]}")
        Cs.append(np.asarray(C)[None])
        ps.append(np.asarray(p)[None])
    gw2 = pairwise_gw(np.concatenate(Cs), np.concatenate(ps), cfg.epsilon, cfg.gw_max_iter, cfg.gw_tol)
    dist = np.sqrt(np.maximum(gw2, 0.0))
    emb = MDS(n_components=2, metric="precomputed", init="classical_mds", random_state=seed).fit_transform(dist)
    return idx, emb[: len(idx)], emb[len(idx) :]
