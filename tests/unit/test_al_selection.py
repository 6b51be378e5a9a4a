"""Active-learning selection: uncertainty measures and the selection strategies."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matrec.common.active_learning.selection import (
    MEASURES,
    STRATEGIES,
    Selection,
    select,
    uncertainty,
)
from numpy.typing import NDArray


def softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True), dtype=np.float64)


def random_pool(
    n: int = 60, classes: int = 3, dim: int = 8, seed: int = 0
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Probabilities [n, classes], embeddings [n, dim] and 4 MC passes [4, n, classes]."""
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(scale=2.0, size=(n, classes)))
    embeddings = rng.normal(size=(n, dim))
    passes = softmax(rng.normal(scale=2.0, size=(4, n, classes)))
    return probs, embeddings, passes


def select_any(strategy: str, count: int, **kwargs: object) -> Selection:
    probs, embeddings, passes = random_pool()
    return select(strategy, count, probs, embeddings=embeddings, mc_probabilities=passes, **kwargs)


# --- uncertainty measures ------------------------------------------------------------------


@pytest.mark.parametrize("measure", ["least_confidence", "margin", "entropy"])
def test_uniform_is_more_uncertain_than_peaked(measure: str) -> None:
    probs = np.array([[1 / 3, 1 / 3, 1 / 3], [0.9, 0.05, 0.05], [1.0, 0.0, 0.0], [0.6, 0.3, 0.1]])
    scores = uncertainty(probs, measure)
    assert scores.shape == (4,)
    # uniform > 0.6/0.3/0.1 > 0.9/0.05/0.05 > one-hot
    assert list(np.argsort(-scores)) == [0, 3, 1, 2]
    assert scores[2] == pytest.approx(0.0, abs=1e-12)


def test_measure_values() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3]])
    assert uncertainty(probs, "least_confidence") == pytest.approx([0.5, 2 / 3])
    assert uncertainty(probs, "margin") == pytest.approx([0.8, 1.0])
    expected = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert uncertainty(probs, "entropy") == pytest.approx([expected, math.log(3)])


def test_margin_ranks_a_two_way_tie_above_a_clear_winner() -> None:
    # Entropy would rank the spread-out row first; margin looks only at the top two.
    probs = np.array([[0.45, 0.45, 0.10], [0.5, 0.25, 0.25], [0.8, 0.1, 0.1]])
    margin = uncertainty(probs, "margin")
    assert margin[0] == pytest.approx(1.0)
    assert margin[0] > margin[1] > margin[2]


def test_bald_is_zero_when_passes_agree_and_high_when_confident_passes_disagree() -> None:
    passes = np.empty((6, 3, 3))
    passes[:, 0] = [0.4, 0.35, 0.25]  # every pass gives the same unsure answer
    for t in range(6):  # every pass is confident, but each in another class
        passes[t, 1] = np.eye(3)[t % 3] * 0.96 + 0.04 / 3
    passes[:, 2] = [0.98, 0.01, 0.01]  # every pass gives the same confident answer
    mean = passes.mean(axis=0)
    bald = uncertainty(mean, "bald", mc_probabilities=passes)
    assert bald[0] == pytest.approx(0.0, abs=1e-9)
    assert bald[2] == pytest.approx(0.0, abs=1e-9)
    assert bald[1] > 0.8  # about log(3) - H(0.96, 0.02, 0.02) = 0.91
    # Entropy of the mean cannot tell the unsure-but-agreeing row from the disagreeing one as
    # clearly: both are high.
    assert uncertainty(mean, "entropy")[0] > 0.9


# --- ranking strategies --------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["least_confidence", "margin", "entropy"])
def test_uncertainty_strategies_pick_the_most_uncertain(strategy: str) -> None:
    probs, _, _ = random_pool(n=40)
    chosen = select(strategy, 5, probs)
    scores = uncertainty(probs, strategy)
    assert sorted(chosen.indices) == sorted(np.argsort(-scores)[:5].tolist())
    assert chosen.scores == pytest.approx(sorted(scores[chosen.indices], reverse=True))
    assert chosen.strategy == strategy


def test_bald_strategy_picks_the_disagreeing_samples() -> None:
    rng = np.random.default_rng(3)
    n, passes = 30, 8
    mc = np.tile(softmax(rng.normal(size=(n, 3))), (passes, 1, 1))  # agreement everywhere ...
    disagreeing = [4, 17, 22]
    for t in range(passes):
        for i in disagreeing:  # ... except on three samples, confidently different per pass
            mc[t, i] = np.eye(3)[(t + i) % 3] * 0.97 + 0.01
    chosen = select("bald", 3, mc.mean(axis=0), mc_probabilities=mc)
    assert sorted(chosen.indices) == disagreeing


def test_random_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    first = select_any("random", 10, seed=7)
    again = select_any("random", 10, seed=7)
    other = select_any("random", 10, seed=8)
    assert first == again
    assert first.indices != other.indices


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_is_deterministic_and_picks_distinct_allowed_indices(
    strategy: str,
) -> None:
    exclude = [0, 5, 9, 33, 59]
    first = select_any(strategy, 12, exclude=exclude, seed=3)
    again = select_any(strategy, 12, exclude=exclude, seed=3)
    assert first == again
    assert len(first.indices) == 12 == len(first.scores)
    assert len(set(first.indices)) == 12
    assert not set(first.indices) & set(exclude)
    assert all(0 <= i < 60 for i in first.indices)
    assert all(math.isfinite(s) for s in first.scores)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_can_take_all_that_is_left(strategy: str) -> None:
    exclude = list(range(0, 60, 2))
    chosen = select_any(strategy, 30, exclude=exclude)
    assert sorted(chosen.indices) == list(range(1, 60, 2))


def test_exclude_changes_an_uncertainty_pick() -> None:
    probs, _, _ = random_pool()
    best = select("entropy", 3, probs).indices
    without = select("entropy", 3, probs, exclude=best[:1]).indices
    assert best[0] not in without
    assert without[:2] == best[1:]


# --- class balance -------------------------------------------------------------------------


def class_skewed_pool() -> NDArray[np.float64]:
    """30 samples predicted class 0 with high entropy, 10 each of classes 1 and 2 that are
    confident: plain uncertainty sampling takes only class 0."""
    rows = [[0.4, 0.3, 0.3]] * 30 + [[0.1, 0.8, 0.1]] * 10 + [[0.1, 0.1, 0.8]] * 10
    jitter = np.linspace(0.0, 0.01, len(rows))[:, None] * np.array([[1.0, -0.5, -0.5]])
    return np.asarray(rows) + jitter


@pytest.mark.parametrize("strategy", ["random", "entropy", "coreset", "cluster_margin", "hybrid"])
def test_class_balance_caps_each_predicted_class(strategy: str) -> None:
    # 10 uncertain samples of class 0 and 10 confident ones each of classes 1 and 2: hybrid's
    # shortlist (4 x 6 = 24 by entropy) holds all three classes.
    probs = class_skewed_pool()[20:]
    embeddings = np.random.default_rng(1).normal(size=(len(probs), 4))
    count = 6
    plain = select("entropy", count, probs)
    assert {int(np.argmax(probs[i])) for i in plain.indices} == {0}
    balanced = select(strategy, count, probs, embeddings=embeddings, class_balance=True)
    predicted = [int(np.argmax(probs[i])) for i in balanced.indices]
    assert sorted(predicted) == [0, 0, 1, 1, 2, 2]


def test_class_balance_fills_when_a_class_runs_short() -> None:
    probs = class_skewed_pool()[:32]  # class 0: 30 samples, class 1: 2, class 2: none
    chosen = select("entropy", 9, probs, class_balance=True)
    predicted = sorted(int(np.argmax(probs[i])) for i in chosen.indices)
    assert predicted.count(1) == 2  # every class 1 sample, fewer than the cap of 3
    assert len(chosen.indices) == 9 == len(set(chosen.indices))


# --- diversity -----------------------------------------------------------------------------


def blobs(
    centres: NDArray[np.float64], per_blob: int, seed: int = 0
) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    rng = np.random.default_rng(seed)
    points = np.concatenate([c + rng.normal(scale=0.1, size=(per_blob, len(c))) for c in centres])
    return points, np.repeat(np.arange(len(centres)), per_blob)


def blob_centres(count: int, dim: int = 5, seed: int = 0) -> NDArray[np.float64]:
    return np.random.default_rng(seed).normal(scale=10.0, size=(count, dim))


def uniform_probs(n: int, classes: int = 3) -> NDArray[np.float64]:
    return np.full((n, classes), 1.0 / classes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coreset_picks_one_point_per_blob_before_a_second_in_any(seed: int) -> None:
    points, blob = blobs(blob_centres(5, seed=seed), per_blob=20, seed=seed)
    chosen = select("coreset", 7, uniform_probs(len(points)), embeddings=points, seed=seed)
    assert sorted(blob[chosen.indices[:5]].tolist()) == [0, 1, 2, 3, 4]
    # The distance to the nearest centre only shrinks as centres are added.
    assert all(a >= b for a, b in zip(chosen.scores, chosen.scores[1:], strict=False))
    assert chosen.scores[4] > 5.0 > chosen.scores[5]


def test_coreset_avoids_regions_the_labelled_set_covers() -> None:
    centres = blob_centres(4)
    points, blob = blobs(centres, per_blob=15)
    labelled = centres[:2] + 0.05  # blobs 0 and 1 already have a label
    chosen = select(
        "coreset", 2, uniform_probs(len(points)), embeddings=points, labelled_embeddings=labelled
    )
    assert sorted(blob[chosen.indices].tolist()) == [2, 3]


def test_coreset_counts_excluded_samples_as_covered() -> None:
    points, blob = blobs(blob_centres(4), per_blob=15)
    chosen = select(
        "coreset", 2, uniform_probs(len(points)), embeddings=points, exclude=[0, 15]
    )  # one sample of blob 0 and one of blob 1 are in an open batch
    assert sorted(blob[chosen.indices].tolist()) == [2, 3]


def test_coreset_first_pick_depends_on_the_seed() -> None:
    points, _ = blobs(blob_centres(3), per_blob=30)
    firsts = {
        select("coreset", 1, uniform_probs(len(points)), embeddings=points, seed=s).indices[0]
        for s in range(6)
    }
    assert len(firsts) > 1


def test_coreset_handles_a_large_pool_in_chunks() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(10_000, 512)).astype(np.float32)
    labelled = rng.normal(size=(9_000, 512)).astype(np.float32)
    chosen = select(
        "coreset", 20, uniform_probs(10_000), embeddings=points, labelled_embeddings=labelled
    )
    assert len(set(chosen.indices)) == 20
    # The first pick is the pool point farthest from the labelled set: check it against a
    # brute-force distance for it and a few others.
    picked = points[chosen.indices[0]].astype(np.float64)
    nearest_of_pick = np.sqrt(((labelled - picked) ** 2).sum(axis=1)).min()
    assert chosen.scores[0] == pytest.approx(nearest_of_pick, rel=1e-6)
    for other in rng.choice(10_000, size=5, replace=False):
        distance = np.sqrt(((labelled - points[other].astype(np.float64)) ** 2).sum(axis=1))
        assert distance.min() <= nearest_of_pick + 1e-6


def test_cluster_margin_spreads_picks_over_clusters() -> None:
    # Four blobs; blob 0 has the lowest margins throughout: margin alone takes blob 0 only.
    points, blob = blobs(blob_centres(4, seed=5), per_blob=10, seed=5)
    half_gap = np.where(blob == 0, 0.01, 0.1) + np.linspace(0, 0.01, len(blob))
    probs = np.stack([0.45 + half_gap, 0.45 - half_gap, np.full(len(blob), 0.1)], axis=1)
    assert {int(blob[i]) for i in select("margin", 4, probs).indices} == {0}
    chosen = select("cluster_margin", 4, probs, embeddings=points)
    assert sorted(blob[chosen.indices].tolist()) == [0, 1, 2, 3]


def test_cluster_margin_visits_small_clusters_first() -> None:
    centres = blob_centres(2, seed=2)
    big, _ = blobs(centres[:1], per_blob=15)
    small, _ = blobs(centres[1:], per_blob=3)
    points = np.concatenate([big, small])
    chosen = select("cluster_margin", 2, uniform_probs(len(points)), embeddings=points)
    assert chosen.indices[0] >= 15  # the first pick comes from the 3-point cluster
    assert chosen.indices[1] < 15


def test_hybrid_picks_uncertain_and_spread_out_samples() -> None:
    # Blobs 0-2 (4 points each) are uncertain, blob 3 confident; blob 0 is the most uncertain.
    # entropy takes near-duplicates from blob 0; hybrid's shortlist (4 x 3 = 12) is blobs 0-2,
    # and k-center among them takes one of each.
    points, blob = blobs(blob_centres(4, seed=4), per_blob=4, seed=4)
    spread = np.linspace(0.0, 0.02, len(blob))
    first = np.where(blob == 3, 0.9, 0.34 + np.where(blob == 0, 0.0, 0.05) + spread)
    probs = np.stack([first, (1 - first) / 2, (1 - first) / 2], axis=1)
    entropy_blobs = {int(blob[i]) for i in select("entropy", 3, probs).indices}
    assert len(entropy_blobs) == 1
    chosen = select("hybrid", 3, probs, embeddings=points)
    assert sorted(blob[chosen.indices].tolist()) == [0, 1, 2]


# --- errors --------------------------------------------------------------------------------


def test_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"strategy 'badge' is unknown.*random.*hybrid"):
        select_any("badge", 3)


def test_unknown_measure_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="measure 'variance' is unknown"):
        uncertainty(uniform_probs(3), "variance")
    assert set(MEASURES) <= set(STRATEGIES)


@pytest.mark.parametrize("count", [0, -2])
def test_count_must_be_positive(count: int) -> None:
    with pytest.raises(ValueError, match="count must be a positive integer"):
        select_any("random", count)


def test_count_larger_than_what_is_left_says_how_many_are_left() -> None:
    with pytest.raises(ValueError, match=r"count 58 is larger.*57 of 60 samples"):
        select_any("entropy", 58, exclude=[1, 2, 3])


def test_exclude_out_of_range() -> None:
    with pytest.raises(ValueError, match="exclude holds 60"):
        select_any("entropy", 2, exclude=[60])


def test_bald_without_mc_passes_says_how_to_get_them() -> None:
    probs, _, passes = random_pool()
    with pytest.raises(ValueError, match="mc_dropout_passes >= 2"):
        select("bald", 3, probs)
    with pytest.raises(ValueError, match="mc_dropout_passes >= 2"):
        select("bald", 3, probs, mc_probabilities=passes[:1])
    with pytest.raises(ValueError, match=r"mc_probabilities must have shape \[T, 60, 3\]"):
        select("bald", 3, probs, mc_probabilities=passes[:, :50])


@pytest.mark.parametrize("strategy", ["coreset", "cluster_margin", "hybrid"])
def test_embedding_strategies_need_embeddings(strategy: str) -> None:
    probs, _, _ = random_pool()
    with pytest.raises(ValueError, match=f"strategy '{strategy}' needs the pool's embeddings"):
        select(strategy, 3, probs)


def test_mismatched_shapes() -> None:
    probs, embeddings, _ = random_pool()
    with pytest.raises(ValueError, match="embeddings has 59 rows but probabilities has 60"):
        select("coreset", 3, probs, embeddings=embeddings[:59])
    with pytest.raises(ValueError, match="labelled_embeddings has 7 columns"):
        select("coreset", 3, probs, embeddings=embeddings, labelled_embeddings=embeddings[:4, :7])
    with pytest.raises(ValueError, match=r"probabilities must be a non-empty \[N, C\]"):
        select("random", 1, probs[0])


def test_logits_are_refused() -> None:
    with pytest.raises(ValueError, match="softmax outputs, not logits"):
        select("entropy", 1, np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]]))


def test_ties_are_broken_by_the_seed_not_by_position() -> None:
    probs = uniform_probs(50)  # every sample equally uncertain
    picks = [tuple(select("entropy", 5, probs, seed=s).indices) for s in range(4)]
    assert len(set(picks)) > 1
    assert picks[0] != (0, 1, 2, 3, 4)
