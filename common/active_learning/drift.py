"""Distribution shift of new images against the training data: two two-sample tests.

`detect_drift(reference, current)` compares a window of recent samples (`current`) with the
data the model was trained on (`reference`), through what the model makes of them:

1. **Output test** (always). For each of the C classes, a two-sample Kolmogorov-Smirnov test
   (scipy.stats.ks_2samp) compares that class's softmax probability over the reference with the
   same over the window. The C p-values are combined with Bonferroni:
   output_p_value = min(1, C * min_c p_c). KS needs no distributional assumption and looks at
   the whole distribution of each output, so it sees a change of confidence (blurred or dark
   images make the model less sure) as well as a change of predicted classes. Bonferroni is
   valid whatever the dependence between the classes (the columns of a softmax are strongly
   dependent: they sum to 1), at the price of being conservative.

2. **Embedding test** (when both embedding arrays are given). A shift can leave the outputs
   alone, e.g. unseen textures that the model maps confidently onto known classes, so the
   features the head sees are tested as well. The embeddings are reduced with PCA to
   `pca_components` directions (capped by the sample size and the dimension), which keeps the
   directions in which the data varies and makes the kernel test cheap and less noisy than in
   512 dimensions. On the reduced pooled sample, an RBF kernel with the median heuristic
   (bandwidth = median pairwise distance of the pooled sample) gives the unbiased estimate of
   the squared maximum mean discrepancy (MMD², Gretton et al. 2012), and a permutation test
   gives its p-value: the pooled samples are reassigned at random `permutations` times
   (seeded), and p = (1 + #{permuted MMD² >= observed}) / (1 + permutations), an exact,
   never-zero p-value. The kernel matrix is computed once; a permutation only reindexes it, so
   500 permutations cost one matrix product.

   The PCA is fitted on the pooled sample (reference and window together), not on the
   reference alone. Fitted on the reference alone, its top directions are those in which the
   *reference sample* happens to vary most: in a wide embedding (512 dimensions, a few hundred
   reference images) the reference's variance along them is inflated by chance, fresh samples
   from the same distribution have less, and the test fires on clean windows (measured: every
   one of 20 clean windows of isotropic 512-D Gaussian data). Fitted on the pooled sample, the
   projection, like the bandwidth, is a function of the pooled set alone, so the permutation
   test stays exact; and a window that moves away from the reference adds variance along the
   shift, which the pooled PCA picks up. The top directions come from a randomised SVD (a
   sketch with a fixed seed and power iterations, see _top_directions): the same subspace as
   the full SVD at a fraction of its cost.

**Decision.** Bonferroni over the two tests: drifted when either p-value is below alpha / 2
(below alpha when only the output test runs). The two tests are far from independent (the
softmax is a function of the embedding), so rules that assume independence, such as Fisher's
combination, would not hold their level; Bonferroni holds the false-alarm rate of a window at
or below alpha under any dependence, and keeps the report readable: each test's own p-value
says which one fired. Both parts are conservative or exact, so on windows drawn from the
reference distribution the alarm rate is at most alpha (in practice below it).

Known limits: a shift too small to show among the pooled sample's top `pca_components`
directions is removed by the PCA. The tests ask "is this window distributed like the
reference", so a model that is much more confident on its own training images than on new
ones from the same source would make clean windows look shifted; a held-out sample is then the
better reference (benchmarks/drift_detection.py measures both: with the demo model, the
training images and a held-out sample gave the same false-alarm rates). Deterministic for a
given seed. numpy and scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: Fewest samples accepted in the reference and in the window: below this neither the KS test
#: nor the permutation test can tell anything but gross shifts apart.
MIN_SAMPLES = 10
#: How far a probability row may sum from 1 (float16/float32 softmax outputs round).
_ROW_SUM_TOLERANCE = 1e-3
#: The randomised PCA (see _top_directions): extra sketch columns, power iterations, its seed.
_SKETCH_OVERSAMPLING = 10
_POWER_ITERATIONS = 4
_SKETCH_SEED = 20_121


@dataclass(frozen=True)
class DriftReport:
    """The outcome of `detect_drift` for one window."""

    drifted: bool
    alpha: float
    #: Bonferroni-adjusted p-value of the per-class KS tests on the softmax outputs.
    output_p_value: float
    #: The KS statistic of each class, in class order.
    output_statistics: list[float]
    #: Permutation p-value of the MMD test on PCA-reduced embeddings (None: no embeddings given).
    embedding_p_value: float | None
    #: Unbiased MMD² estimate on the reduced embeddings (can be slightly negative).
    mmd2: float | None
    reference_size: int
    current_size: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (Python floats, ints, bools, lists)."""
        return {
            "drifted": bool(self.drifted),
            "alpha": float(self.alpha),
            "output_p_value": float(self.output_p_value),
            "output_statistics": [float(s) for s in self.output_statistics],
            "embedding_p_value": (
                None if self.embedding_p_value is None else float(self.embedding_p_value)
            ),
            "mmd2": None if self.mmd2 is None else float(self.mmd2),
            "reference_size": int(self.reference_size),
            "current_size": int(self.current_size),
        }


def detect_drift(
    reference_probabilities: ArrayLike,
    current_probabilities: ArrayLike,
    *,
    reference_embeddings: ArrayLike | None = None,
    current_embeddings: ArrayLike | None = None,
    alpha: float = 0.05,
    pca_components: int = 10,
    permutations: int = 500,
    seed: int = 0,
) -> DriftReport:
    """Test whether `current_*` (a window of recent samples) is distributed like `reference_*`
    (the training data). Probabilities are [N, C] softmax outputs; embeddings, optional, are
    [N, D] features of the same samples (both or neither). See the module doc for the tests and
    the decision rule. Raises ValueError, naming the argument, for bad input.

    Time and memory grow with the square of (reference + window) samples (the kernel matrix),
    times `permutations` for the test: a reference of a few hundred to a few thousand samples
    is the intended size; subsample a larger training set (500 + 100 samples of 512-D
    embeddings with 500 permutations: under 0.1 s with one BLAS thread)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1 (got {alpha})")
    if pca_components < 1:
        raise ValueError(f"pca_components must be at least 1 (got {pca_components})")
    if permutations < 1:
        raise ValueError(f"permutations must be at least 1 (got {permutations})")
    if (reference_embeddings is None) != (current_embeddings is None):
        raise ValueError(
            "pass both reference_embeddings and current_embeddings, or neither "
            "(the embedding test compares the two)"
        )
    with_embeddings = reference_embeddings is not None
    tests = 2 if with_embeddings else 1
    per_test_alpha = alpha / tests
    if with_embeddings and 1.0 / (permutations + 1) >= per_test_alpha:
        needed = int(np.ceil(1.0 / per_test_alpha))
        raise ValueError(
            f"permutations={permutations} cannot give a p-value below alpha/{tests}="
            f"{per_test_alpha:g} (the smallest is 1/(permutations+1)); use at least {needed}"
        )

    reference = _probabilities("reference_probabilities", reference_probabilities)
    current = _probabilities("current_probabilities", current_probabilities)
    if reference.shape[1] != current.shape[1]:
        raise ValueError(
            f"reference_probabilities has {reference.shape[1]} classes (columns) but "
            f"current_probabilities has {current.shape[1]}; both must come from the same model"
        )
    output_p_value, statistics = _output_test(reference, current)

    embedding_p_value: float | None = None
    mmd2: float | None = None
    if reference_embeddings is not None and current_embeddings is not None:
        ref_emb = _matrix("reference_embeddings", reference_embeddings, len(reference))
        cur_emb = _matrix("current_embeddings", current_embeddings, len(current))
        if ref_emb.shape[1] != cur_emb.shape[1]:
            raise ValueError(
                f"reference_embeddings has dimension {ref_emb.shape[1]} but current_embeddings "
                f"has {cur_emb.shape[1]}; both must come from the same model"
            )
        mmd2, embedding_p_value = _embedding_test(
            ref_emb, cur_emb, pca_components, permutations, seed
        )

    p_values = [output_p_value] + ([] if embedding_p_value is None else [embedding_p_value])
    return DriftReport(
        drifted=min(p_values) < per_test_alpha,
        alpha=float(alpha),
        output_p_value=output_p_value,
        output_statistics=statistics,
        embedding_p_value=embedding_p_value,
        mmd2=mmd2,
        reference_size=len(reference),
        current_size=len(current),
    )


def _matrix(name: str, values: ArrayLike, rows: int | None = None) -> NDArray[np.float64]:
    """`values` as a finite float64 [N, K] array with N >= MIN_SAMPLES (and N == rows)."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a numeric [samples, columns] array ({error})") from None
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D [samples, columns] array (got shape {array.shape})")
    if len(array) < MIN_SAMPLES:
        raise ValueError(
            f"{name} has {len(array)} samples; the drift test needs at least {MIN_SAMPLES} "
            "(use a longer window)"
        )
    if rows is not None and len(array) != rows:
        raise ValueError(
            f"{name} has {len(array)} rows but the matching probabilities have {rows}; "
            "embeddings and probabilities must describe the same samples"
        )
    if not np.isfinite(array).all():
        bad = int(np.argwhere(~np.isfinite(array))[0][0])
        raise ValueError(f"{name} has a non-finite value (NaN or infinity) in row {bad}")
    return array


def _probabilities(name: str, values: ArrayLike) -> NDArray[np.float64]:
    array = _matrix(name, values)
    sums = array.sum(axis=1)
    bad = (np.abs(sums - 1.0) > _ROW_SUM_TOLERANCE) | (array < -_ROW_SUM_TOLERANCE).any(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"{name} must hold softmax probabilities (non-negative rows summing to 1); row {row} "
            f"sums to {sums[row]:.4g}, smallest value {array[row].min():.4g}. Pass the "
            "probabilities, not logits"
        )
    return array


def _output_test(
    reference: NDArray[np.float64], current: NDArray[np.float64]
) -> tuple[float, list[float]]:
    """Per-class KS tests, Bonferroni over the classes: (adjusted p-value, KS statistics)."""
    # Imported here: scipy.stats costs half a second, paid by every coordinator start and --help.
    from scipy.stats import ks_2samp

    classes = reference.shape[1]
    result = ks_2samp(reference, current, axis=0)
    p_values = np.atleast_1d(np.asarray(result.pvalue, dtype=np.float64))
    statistics = np.atleast_1d(np.asarray(result.statistic, dtype=np.float64))
    # A class whose probability is the same constant on both sides gives NaN: no evidence.
    p_values = np.where(np.isnan(p_values), 1.0, p_values)
    statistics = np.where(np.isnan(statistics), 0.0, statistics)
    adjusted = min(1.0, classes * float(p_values.min()))
    return adjusted, [float(s) for s in statistics]


def _embedding_test(
    reference: NDArray[np.float64],
    current: NDArray[np.float64],
    pca_components: int,
    permutations: int,
    seed: int,
) -> tuple[float, float]:
    """Pooled PCA, RBF-kernel unbiased MMD², permutation p-value: (mmd2, p)."""
    reduced_reference, reduced_current = _pca_reduce(reference, current, pca_components)
    pooled = np.concatenate([reduced_reference, reduced_current])
    kernel = _rbf_kernel(pooled)
    np.fill_diagonal(kernel, 0.0)  # the unbiased estimate leaves out the i == j terms
    n, total = len(reference), len(pooled)

    rng = np.random.default_rng(seed)
    # Row 0: the observed split (the reference first); each further row a random reassignment
    # of the pooled samples. Rows are 0/1 "is in X" masks, all evaluated by the same product so
    # that a permutation equal to the observed split gives exactly the observed value.
    order = np.argsort(rng.random((permutations, total)), axis=1)
    masks = np.zeros((permutations + 1, total))
    masks[0, :n] = 1.0
    np.put_along_axis(masks[1:], order[:, :n], 1.0, axis=1)

    values = _unbiased_mmd2(kernel, masks, n)
    statistic, null = values[0], values[1:]
    p_value = (1.0 + np.count_nonzero(null >= statistic)) / (1.0 + permutations)
    return float(statistic), float(p_value)


def _pca_reduce(
    reference: NDArray[np.float64], current: NDArray[np.float64], components: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Project both onto the top principal directions of the pooled sample (see the module doc
    for why pooled), centred on its mean."""
    pooled = np.concatenate([reference, current])
    mean = pooled.mean(axis=0)
    # Centring removes one degree of freedom: at most N-1 directions carry variance.
    k = min(components, pooled.shape[1], len(pooled) - 1)
    basis = _top_directions(pooled - mean, k).T
    return (reference - mean) @ basis, (current - mean) @ basis


def _top_directions(centred: NDArray[np.float64], k: int) -> NDArray[np.float64]:
    """The top `k` right singular vectors of `centred`, as rows [k, D].

    A full SVD of a 600 x 512 matrix costs tens of milliseconds on an idle core and several
    times that on a busy one, for the 10 directions that are kept; a randomised range finder
    (Halko, Martinsson and Tropp 2011: a Gaussian sketch of k + 10 columns, sharpened by power
    iterations) finds the same subspace with a few thin matrix products. Its sketch has a fixed
    seed, so the directions are a function of the data alone, as the permutation test needs.
    """
    rows, dims = centred.shape
    width = k + _SKETCH_OVERSAMPLING
    if 2 * width >= min(rows, dims):  # small problem: the exact SVD is as cheap
        _, _, directions = np.linalg.svd(centred, full_matrices=False)
        return directions[:k]
    sketch = np.random.default_rng(_SKETCH_SEED).standard_normal((dims, width))
    range_basis, _ = np.linalg.qr(centred @ sketch)
    for _ in range(_POWER_ITERATIONS):
        row_basis, _ = np.linalg.qr(centred.T @ range_basis)
        range_basis, _ = np.linalg.qr(centred @ row_basis)
    _, _, directions = np.linalg.svd(range_basis.T @ centred, full_matrices=False)
    return directions[:k]


def _rbf_kernel(points: NDArray[np.float64]) -> NDArray[np.float64]:
    """exp(-d² / (2 sigma²)), sigma the median pairwise distance (the median heuristic)."""
    norms = np.einsum("ij,ij->i", points, points)
    squared = np.maximum(norms[:, None] + norms[None, :] - 2.0 * points @ points.T, 0.0)
    off_diagonal = squared[np.triu_indices(len(points), k=1)]
    median = float(np.median(off_diagonal))
    if median <= 0.0:
        # More than half the pairs coincide: fall back to the mean of the distinct pairs.
        positive = off_diagonal[off_diagonal > 0.0]
        if len(positive) == 0:  # every point is the same: the kernel is constant, MMD² is 0
            return np.ones_like(squared)
        median = float(positive.mean())
    return np.exp(-squared / (2.0 * median))


def _unbiased_mmd2(
    kernel: NDArray[np.float64], masks: NDArray[np.float64], n: int
) -> NDArray[np.float64]:
    """Unbiased MMD² for each 0/1 row of `masks` (1: the sample is in X, which has n members;
    the rest form Y), from a kernel matrix with a zero diagonal. With a the mask, r the row
    sums and S the sum of the matrix: sum_XX = a'Ka, sum_XY = r'a - sum_XX and
    sum_YY = S - 2 r'a + sum_XX, so every permutation costs one row of a matrix product."""
    m = kernel.shape[0] - n
    row_sums = kernel.sum(axis=1)
    total = float(row_sums.sum())
    sum_xx = np.einsum("pi,pi->p", masks @ kernel, masks)
    r_a = masks @ row_sums
    sum_xy = r_a - sum_xx
    sum_yy = total - 2.0 * r_a + sum_xx
    result: NDArray[np.float64] = (
        sum_xx / (n * (n - 1)) + sum_yy / (m * (m - 1)) - 2.0 * sum_xy / (n * m)
    )
    return result
