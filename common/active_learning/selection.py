"""Which unlabelled pool samples to label next: uncertainty, diversity and hybrid selection.

numpy and scipy only (no torch): the coordinator, the SDK and the benchmarks share it. The
inputs are a scored pool (see pool_scores.PoolScores): class probabilities [N, C], optionally
the embeddings the model's head sees [N, D] and MC-dropout passes [T, N, C].

Uncertainty measures (`uncertainty`; higher = more uncertain):

* least_confidence: 1 - max_c p_c.
* margin: 1 - (p_1 - p_2), the two largest probabilities; 1 for a two-way tie.
* entropy: -sum_c p_c log p_c (natural log; 0 for a one-hot row, log C for a uniform one).
* bald: the mutual information between the prediction and the model's weights, estimated from
  MC-dropout passes: the entropy of the mean prediction minus the mean entropy of the passes.
  About 0 when all passes agree (however unsure each is), high when confident passes disagree.

Strategies (`select`), each picking `count` pool indices outside `exclude`:

* random: a seeded uniform sample.
* least_confidence, margin, entropy, bald: the `count` highest uncertainties (ties broken by the
  seed).
* coreset: k-center greedy on the embeddings (Sener and Savarese, 2018): repeatedly pick the
  candidate farthest (L2) from every centre so far. The centres start as `labelled_embeddings`
  plus the embeddings of the excluded pool samples (already labelled, or in an open batch,
  so about to be); with neither, the first pick is a seeded random candidate.
* cluster_margin (after Citovsky et al., 2021): shortlist the CLUSTER_MARGIN_SHORTLIST * count
  lowest-margin candidates, cluster their embeddings into `count` clusters (average-linkage
  agglomerative clustering; k-means++ when the shortlist has more than CLUSTER_LINKAGE_MAX
  points), then visit the clusters from the smallest to the largest, round-robin, taking each
  cluster's lowest-margin member not yet picked. Small clusters first favours rare regions;
  one pick per cluster per round spreads the batch.
* hybrid (uncertainty-weighted diversity): shortlist the HYBRID_SHORTLIST * count highest-entropy
  candidates, then k-center greedy among them, the centres starting like coreset's; with no
  centres the first pick is the most uncertain candidate. The shortlist makes every pick an
  uncertain one; k-center within it stops the batch from being near-duplicates, which
  top-k uncertainty alone tends to produce.

class_balance=True: a first pass takes at most ceil(count / C) picks per predicted class (argmax
of the probabilities) in the strategy's own order; if that leaves the batch short (few
candidates of some classes), the rest is filled in the same order without the cap.

Selection.scores holds, per pick, the number the strategy chose it by: the uncertainty for the
uncertainty strategies; the margin uncertainty for cluster_margin; for coreset and hybrid the
L2 distance to the nearest centre when it was picked (a first pick without centres gets the
largest distance from it to any candidate, which the second pick then has); for random the
uniform draw in [0, 1) that ordered the sample.

Everything is deterministic for a given seed; only random, the tie-breaks, coreset's first pick
without centres and k-means depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

STRATEGIES = (
    "random",
    "least_confidence",
    "margin",
    "entropy",
    "bald",
    "coreset",
    "cluster_margin",
    "hybrid",
)
MEASURES = ("least_confidence", "margin", "entropy", "bald")
#: Strategies that need the pool's embeddings.
EMBEDDING_STRATEGIES = ("coreset", "cluster_margin", "hybrid")
#: cluster_margin clusters this many lowest-margin candidates per requested sample.
CLUSTER_MARGIN_SHORTLIST = 10
#: Above this many shortlisted points cluster_margin uses k-means instead of average linkage
#: (whose pairwise distances grow with the square of the shortlist).
CLUSTER_LINKAGE_MAX = 2000
#: hybrid runs k-center greedy among this many highest-entropy candidates per requested sample.
HYBRID_SHORTLIST = 4
#: Distance blocks hold at most this many entries (float64: 32 MiB).
_DISTANCE_BLOCK = 4_000_000
_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Selection:
    """The chosen pool indices, in the order the strategy picked them, and each one's score
    (see the module docstring for what the score is per strategy)."""

    indices: list[int]
    scores: list[float]
    strategy: str


def uncertainty(
    probabilities: ArrayLike, measure: str, mc_probabilities: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Per-sample uncertainty [N] of `probabilities` [N, C] by `measure` (one of MEASURES);
    higher = more uncertain. bald reads `mc_probabilities` [T, N, C] (T >= 2 MC-dropout passes)
    instead of `probabilities`, which then only fixes N and C."""
    if measure not in MEASURES:
        raise ValueError(f"measure {measure!r} is unknown; choose one of: {', '.join(MEASURES)}")
    probs = _check_probabilities(probabilities)
    if measure == "bald":
        passes = _check_mc_probabilities(mc_probabilities, probs.shape)
        return _bald(passes)
    if measure == "least_confidence":
        return 1.0 - probs.max(axis=1)
    if measure == "margin":
        return _margin(probs)
    return _entropy(probs)


def select(
    strategy: str,
    count: int,
    probabilities: ArrayLike,
    *,
    embeddings: ArrayLike | None = None,
    mc_probabilities: ArrayLike | None = None,
    labelled_embeddings: ArrayLike | None = None,
    exclude: Sequence[int] = (),
    class_balance: bool = False,
    seed: int = 0,
) -> Selection:
    """Pick `count` pool indices to label next by `strategy` (see the module docstring).

    `probabilities` [N, C] are the model's predictions on the pool; `embeddings` [N, D] (coreset,
    cluster_margin, hybrid) what its head sees; `mc_probabilities` [T, N, C] MC-dropout passes
    (bald); `labelled_embeddings` [M, D] the already-labelled samples outside the pool (coreset
    and hybrid treat them as centres); `exclude` pool indices never to pick.
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"strategy {strategy!r} is unknown; choose one of: {', '.join(STRATEGIES)}"
        )
    probs = _check_probabilities(probabilities)
    n, classes = probs.shape
    excluded = _check_exclude(exclude, n)
    candidates = np.setdiff1d(np.arange(n), excluded)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if count > len(candidates):
        raise ValueError(
            f"count {count} is larger than the pool has left: {len(candidates)} of {n} samples "
            f"are not excluded; ask for at most {len(candidates)}"
        )
    emb: NDArray[np.float64] | None = None
    labelled: NDArray[np.float64] | None = None
    if strategy in EMBEDDING_STRATEGIES:
        if embeddings is None:
            raise ValueError(
                f"strategy {strategy!r} needs the pool's embeddings; score the pool with a "
                "model and pass embeddings=[N, D]"
            )
        emb = _check_matrix(embeddings, "embeddings", rows=n)
        if labelled_embeddings is not None:
            labelled = _check_matrix(
                labelled_embeddings, "labelled_embeddings", columns=emb.shape[1]
            )
    mc: NDArray[np.float64] | None = None
    if strategy == "bald":
        mc = _check_mc_probabilities(mc_probabilities, probs.shape)

    rng = np.random.default_rng(seed)
    predicted = probs[candidates].argmax(axis=1)
    cap = math.ceil(count / classes) if class_balance else count
    picks: list[int]
    scores: list[float]
    if strategy == "random":
        keys = rng.random(len(candidates))
        picks, scores = _take_ranked(keys, count, predicted, cap, rng)
    elif strategy in MEASURES:
        values = _bald(mc) if mc is not None else uncertainty(probs, strategy)
        picks, scores = _take_ranked(values[candidates], count, predicted, cap, rng)
    elif strategy == "cluster_margin":
        assert emb is not None
        picks, scores = _cluster_margin(
            emb[candidates], _margin(probs)[candidates], count, predicted, cap, rng, seed
        )
    else:
        assert emb is not None
        centres = emb[excluded]
        if labelled is not None:
            centres = np.concatenate([labelled, centres])
        if strategy == "coreset":
            shortlist = np.arange(len(candidates))
            first = int(rng.integers(len(candidates)))
        else:
            entropy = _entropy(probs)[candidates]
            size = min(len(candidates), HYBRID_SHORTLIST * count)
            shortlist = _ranked_order(entropy, rng)[:size]
            first = 0  # the shortlist is ordered: its head is the most uncertain candidate
        local, scores = _k_center_greedy(
            emb[candidates[shortlist]], centres, count, first, predicted[shortlist], cap
        )
        picks = [int(shortlist[i]) for i in local]
    return Selection(indices=[int(candidates[i]) for i in picks], scores=scores, strategy=strategy)


def _entropy(probs: NDArray[np.float64]) -> NDArray[np.float64]:
    # 0 * log 0 counts as 0.
    logs = np.log(np.where(probs > 0.0, probs, 1.0))
    return np.asarray(-(probs * logs).sum(axis=-1), dtype=np.float64)


def _margin(probs: NDArray[np.float64]) -> NDArray[np.float64]:
    if probs.shape[1] == 1:
        return 1.0 - probs[:, 0]
    top_two = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
    return np.asarray(1.0 - (top_two[:, 1] - top_two[:, 0]), dtype=np.float64)


def _bald(passes: NDArray[np.float64]) -> NDArray[np.float64]:
    mutual_information = _entropy(passes.mean(axis=0)) - _entropy(passes).mean(axis=0)
    # Jensen: never negative in exact arithmetic; clip rounding noise.
    return np.maximum(mutual_information, 0.0)


def _ranked_order(values: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.intp]:
    """Indices of `values` from the highest down; equal values in a seeded random order."""
    tie_break = rng.permutation(len(values))
    return np.lexsort((tie_break, -values))


def _take_ranked(
    values: NDArray[np.float64],
    count: int,
    predicted: NDArray[np.intp],
    cap: int,
    rng: np.random.Generator,
) -> tuple[list[int], list[float]]:
    """The `count` highest `values`, at most `cap` per predicted class in a first pass."""
    order = _ranked_order(values, rng)
    picks = _capped_pass(order, count, predicted, cap)
    if len(picks) < count:
        chosen = set(picks)
        picks += [int(i) for i in order if int(i) not in chosen][: count - len(picks)]
    return picks, [float(values[i]) for i in picks]


def _capped_pass(
    order: NDArray[np.intp], count: int, predicted: NDArray[np.intp], cap: int
) -> list[int]:
    picks: list[int] = []
    per_class: dict[int, int] = {}
    for index in order:
        label = int(predicted[index])
        if per_class.get(label, 0) < cap:
            picks.append(int(index))
            per_class[label] = per_class.get(label, 0) + 1
            if len(picks) == count:
                break
    return picks


def _squared_norms(points: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.einsum("ij,ij->i", points, points)


def _min_distances(
    points: NDArray[np.float64], centres: NDArray[np.float64]
) -> NDArray[np.float64]:
    """For each row of `points`, the L2 distance to its nearest row of `centres`, computed in
    blocks of centres so that memory stays bounded (10k x 10k x 512 works)."""
    best = np.full(len(points), np.inf)
    point_norms = _squared_norms(points)
    rows = max(1, _DISTANCE_BLOCK // max(1, len(points)))
    for start in range(0, len(centres), rows):
        block = centres[start : start + rows]
        squared = point_norms[:, None] + _squared_norms(block)[None, :] - 2.0 * points @ block.T
        np.minimum(best, squared.min(axis=1), out=best)
    return np.sqrt(np.maximum(best, 0.0))


def _k_center_greedy(
    points: NDArray[np.float64],
    centres: NDArray[np.float64],
    count: int,
    first: int,
    predicted: NDArray[np.intp],
    cap: int,
) -> tuple[list[int], list[float]]:
    """k-center greedy over `points`: pick the point farthest from every centre so far, `count`
    times; `first` starts when there are no `centres`. A class at `cap` picks is skipped while
    other classes still have points; then the cap is lifted."""
    n = len(points)
    taken = np.zeros(n, dtype=bool)
    per_class = np.zeros(int(predicted.max()) + 1, dtype=np.int64)
    picks: list[int] = []
    scores: list[float] = []
    norms = _squared_norms(points)

    def distances_from(index: int) -> NDArray[np.float64]:
        squared = norms + norms[index] - 2.0 * (points @ points[index])
        return np.sqrt(np.maximum(squared, 0.0))

    def take(index: int, score: float) -> None:
        picks.append(index)
        scores.append(score)
        taken[index] = True
        per_class[predicted[index]] += 1

    if len(centres):
        nearest = _min_distances(points, centres)
    else:
        nearest = distances_from(first)
        take(first, float(nearest.max()))
    while len(picks) < count:
        open_mask = ~taken & (per_class[predicted] < cap)
        if not open_mask.any():
            open_mask = ~taken
        index = int(np.argmax(np.where(open_mask, nearest, -np.inf)))
        take(index, float(nearest[index]))
        np.minimum(nearest, distances_from(index), out=nearest)
    return picks, scores


def _cluster_margin(
    points: NDArray[np.float64],
    margins: NDArray[np.float64],
    count: int,
    predicted: NDArray[np.intp],
    cap: int,
    rng: np.random.Generator,
    seed: int,
) -> tuple[list[int], list[float]]:
    order = _ranked_order(margins, rng)
    shortlist = order[: min(len(order), CLUSTER_MARGIN_SHORTLIST * count)]
    labels = _cluster(points[shortlist], count, seed)
    # Each cluster's members, most uncertain first (the shortlist is in that order already).
    members: dict[int, list[int]] = {}
    for index, label in zip(shortlist, labels, strict=True):
        members.setdefault(int(label), []).append(int(index))
    clusters = sorted(members.values(), key=lambda group: (len(group), -margins[group[0]]))
    picks: list[int] = []
    per_class: dict[int, int] = {}
    picked_any = True
    while len(picks) < count and picked_any:
        picked_any = False
        for group in clusters:
            allowed = [i for i in group if per_class.get(int(predicted[i]), 0) < cap]
            if not allowed:
                continue
            index = allowed[0]
            group.remove(index)
            picks.append(index)
            per_class[int(predicted[index])] = per_class.get(int(predicted[index]), 0) + 1
            picked_any = True
            if len(picks) == count:
                break
    if len(picks) < count:  # the cap left the batch short: fill by margin, uncapped
        chosen = set(picks)
        picks += [int(i) for i in shortlist if int(i) not in chosen][: count - len(picks)]
    return picks, [float(margins[i]) for i in picks]


def _cluster(points: NDArray[np.float64], clusters: int, seed: int) -> NDArray[np.intp]:
    """Cluster labels for `points`: at most `clusters` groups."""
    # Imported here: scipy.cluster costs a quarter second, and the SDK and the coordinator's
    # --help import this module.
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.cluster.vq import kmeans2

    if len(points) <= 1 or clusters <= 1:
        return np.zeros(len(points), dtype=np.intp)
    if len(points) <= CLUSTER_LINKAGE_MAX:
        tree = linkage(points, method="average", metric="euclidean")
        return np.asarray(fcluster(tree, t=clusters, criterion="maxclust"), dtype=np.intp)
    _, labels = kmeans2(points, min(clusters, len(points)), minit="++", seed=seed)
    return np.asarray(labels, dtype=np.intp)


def _check_probabilities(probabilities: ArrayLike) -> NDArray[np.float64]:
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] < 1 or probs.shape[1] < 1:
        raise ValueError(
            f"probabilities must be a non-empty [N, C] array (one row per pool sample), "
            f"got shape {probs.shape}"
        )
    _check_distribution(probs, "probabilities")
    return np.maximum(probs, 0.0)  # rounding can leave -1e-17


def _check_mc_probabilities(
    mc_probabilities: ArrayLike | None, shape: tuple[int, ...]
) -> NDArray[np.float64]:
    if mc_probabilities is None:
        raise ValueError(
            "bald needs mc_probabilities [T, N, C]; score the pool with mc_dropout_passes >= 2"
        )
    passes = np.asarray(mc_probabilities, dtype=np.float64)
    if passes.ndim != 3 or passes.shape[1:] != tuple(shape):
        raise ValueError(
            f"mc_probabilities must have shape [T, {shape[0]}, {shape[1]}] to match "
            f"probabilities, got {passes.shape}"
        )
    if passes.shape[0] < 2:
        raise ValueError(
            f"mc_probabilities holds {passes.shape[0]} pass; bald needs two or more: score the "
            "pool with mc_dropout_passes >= 2"
        )
    _check_distribution(passes, "mc_probabilities")
    return np.maximum(passes, 0.0)


def _check_distribution(values: NDArray[np.float64], name: str) -> None:
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (values < -_SUM_TOLERANCE).any():
        raise ValueError(f"{name} contains negative values; pass softmax outputs, not logits")
    sums = values.sum(axis=-1)
    worst = float(np.abs(sums - 1.0).max())
    if worst > _SUM_TOLERANCE:
        raise ValueError(
            f"{name} rows must sum to 1 (one is off by {worst:.3g}); pass softmax outputs, "
            "not logits or scores"
        )


def _check_matrix(
    values: ArrayLike, name: str, *, rows: int | None = None, columns: int | None = None
) -> NDArray[np.float64]:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [rows, D], got shape {matrix.shape}")
    if rows is not None and matrix.shape[0] != rows:
        raise ValueError(
            f"{name} has {matrix.shape[0]} rows but probabilities has {rows}; they must "
            "describe the same pool samples"
        )
    if columns is not None and matrix.shape[1] != columns:
        raise ValueError(
            f"{name} has {matrix.shape[1]} columns but embeddings has {columns}; both must "
            "come from the same model"
        )
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return matrix


def _check_exclude(exclude: Sequence[int], n: int) -> NDArray[np.intp]:
    excluded = np.unique(np.asarray(list(exclude), dtype=np.int64))
    if len(excluded) and (excluded[0] < 0 or excluded[-1] >= n):
        bad = int(excluded[0] if excluded[0] < 0 else excluded[-1])
        raise ValueError(f"exclude holds {bad}, outside the pool's indices 0..{n - 1}")
    return excluded.astype(np.intp)
