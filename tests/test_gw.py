import numpy as np
import ot
import pytest

from poisonsift.errors import DataError
from poisonsift.explain import point_cloud
from poisonsift.gw import GWKMeansConfig, PotEngine, gw_kmeans


def blob_heatmap(rng, kind: str, size: int = 10) -> np.ndarray:
    """'one': a single compact blob; 'two': two blobs far apart (a different shape)."""
    h = rng.random((size, size)) * 0.01
    r, c = rng.integers(1, size - 3, 2)
    h[r : r + 2, c : c + 2] += 1.0
    if kind == "two":
        h[(r + 5) % (size - 2) : (r + 5) % (size - 2) + 2, (c + 5) % (size - 2) : (c + 5) % (size - 2) + 2] += 1.0
    return h


def test_pot_engine_matches_direct_call():
    rng = np.random.default_rng(0)
    a, b = point_cloud(blob_heatmap(rng, "one")), point_cloud(blob_heatmap(rng, "two"))
    cfg = GWKMeansConfig()
    d = PotEngine().distances([a], (b.C, b.p), cfg)[0]
    ref = ot.gromov.entropic_gromov_wasserstein2(a.C, b.C, a.p, b.p, "square_loss", epsilon=0.1)
    assert np.isclose(d, ref)


def test_gw_kmeans_separates_shapes_and_is_deterministic():
    rng = np.random.default_rng(1)
    kinds = ["one"] * 8 + ["two"] * 4
    clouds = [point_cloud(blob_heatmap(rng, k)) for k in kinds]
    cfg = GWKMeansConfig(seed=3, bary_max_iter=20)
    res = gw_kmeans(clouds, cfg)
    truth = np.array([k == "two" for k in kinds])
    agree = np.mean(res.labels == truth)
    assert max(agree, 1 - agree) == 1.0
    again = gw_kmeans(clouds, cfg)
    assert np.array_equal(res.labels, again.labels)
    assert res.distances.shape == (12, 2) and len(res.centres[0][1]) == cfg.n_support


def test_gw_kmeans_needs_k_samples():
    with pytest.raises(DataError, match="at least k=2"):
        gw_kmeans([point_cloud(np.eye(3))], GWKMeansConfig())
