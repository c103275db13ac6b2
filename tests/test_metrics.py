import numpy as np
import pytest

from poisonsift.errors import DataError
from poisonsift.metrics import attack_success_rate, clean_accuracy, mean_asr, per_class_asr


def test_clean_accuracy():
    assert clean_accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75


def test_asr():
    assert attack_success_rate(np.array([5, 5, 1, 5]), 5) == 0.75


def test_per_class_and_masr():
    pred = np.array([5, 5, 1, 5, 2, 2])
    true = np.array([1, 1, 1, 2, 2, 5])
    pc = per_class_asr(pred, true, 5)
    assert pc == {1: pytest.approx(2 / 3), 2: pytest.approx(0.5)}
    assert mean_asr(pc) == pytest.approx((2 / 3 + 0.5) / 2)  # unweighted over classes


def test_empty_or_misaligned_inputs():
    with pytest.raises(DataError):
        clean_accuracy(np.array([], dtype=int), np.array([], dtype=int))
    with pytest.raises(DataError):
        per_class_asr(np.array([1, 2]), np.array([1]), 5)
    with pytest.raises(DataError):
        mean_asr({})
