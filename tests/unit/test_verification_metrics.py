import numpy as np
import pytest

from faceanonymixer.evaluation.verification import equal_error_rate, match_rates, pair_distances


def test_pair_distances_split_genuine_and_impostor() -> None:
    embeddings = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    genuine, impostor = pair_distances(embeddings, ["a", "b", "a"])
    assert genuine.tolist() == pytest.approx([1.0])
    assert sorted(impostor.tolist()) == pytest.approx([np.sqrt(18.0), 5.0])


def test_eer_is_zero_for_separated_scores_and_half_for_identical_ones() -> None:
    assert equal_error_rate(np.array([0.1, 0.2]), np.array([0.8, 0.9]))[0] == 0.0
    same = np.linspace(0, 1, 101)
    assert equal_error_rate(same, same)[0] == pytest.approx(0.5, abs=0.01)


def test_eer_of_overlapping_scores() -> None:
    # one genuine pair in ten looks like an impostor and one impostor in ten like a genuine one
    genuine = np.array([0.1] * 9 + [0.9])
    impostor = np.array([0.8] * 9 + [0.2])
    eer, threshold = equal_error_rate(genuine, impostor)
    assert eer == pytest.approx(0.1)
    assert match_rates(genuine, impostor, threshold + 1e-9)[0] >= 0.9


def test_eer_needs_both_kinds_of_pairs() -> None:
    with pytest.raises(ValueError):
        equal_error_rate(np.array([0.1]), np.array([]))
