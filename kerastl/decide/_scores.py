"""Transferability scores of frozen features (NumPy only), and the Pareto flag.

* :func:`logme`: the log marginal evidence of a Bayesian linear model on the
  features, per one-hot class target, maximised over its prior and noise
  precisions (You et al., "LogME: Practical Assessment of Pre-trained Models
  for Transfer Learning", ICML 2021). Closed form from one thin SVD of the
  feature matrix, then a fixed-point iteration on ``alpha`` / ``beta``.
* :func:`knn_loo_accuracy`: leave-one-out k-nearest-neighbour accuracy (cosine).
* :func:`linear_probe_accuracy`: cross-validated logistic-regression accuracy.
* :func:`pareto_flags`: which candidates no other one beats on both score and cost.
* :func:`subsets` and :func:`lead_sureness`: how sure a candidate's lead over the next
  one is, from their scores on random subsets of the examples (a lead within the noise
  of which examples were labelled is a near tie).

Example:
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(3), 20)
    >>> good = np.eye(3)[y] * 3 + rng.normal(size=(60, 3))
    >>> bad = rng.normal(size=(60, 3))
    >>> bool(logme(good, y) > logme(bad, y))
    True
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from kerastl.errors import DataError

#: Estimators :func:`score` knows; the first is the default. ``logme_centred`` is
#: :func:`logme` of the centred features (``center=True``).
ESTIMATORS = ("logme", "logme_centred", "knn", "probe")


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """NumPy's and SciPy's BLAS on one thread while inside.

    The scores are many small matrix products and decompositions (a few hundred rows).
    BLAS threads that wait for a busy core spin: beside one busy core, one candidate's
    scores took 2.5-3 x longer on BLAS's default two threads than on one; on a quiet
    machine one thread took 1.0-1.4 x as long (100-1000 examples;
    ``bench/results_score_threads.md``). Rank's scores are small next to its feature pass.

    Example:
        >>> with one_blas_thread():
        ...     float(np.linalg.svd(np.eye(3), compute_uv=False).sum())
        3.0
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _check(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if f.ndim != 2:
        raise DataError(f"features: expected a 2-D array (examples, dims), got shape {f.shape}.")
    if len(f) != len(y):
        raise DataError(f"labels: {len(y)} labels for {len(f)} feature rows.")
    if len(np.unique(y)) < 2:
        raise DataError("labels: a transferability score needs at least 2 classes.")
    if not np.all(np.isfinite(f)):
        raise DataError("features: contain NaN or infinity (a diverged backbone?).")
    return f, y


def _evidence(
    z: np.ndarray, sigma: np.ndarray, y_sq: float, n: int, d: int, max_iter: int = 100
) -> float:
    """Maximised log evidence / n of one target, from its projection ``z = U^T y``.

    ``sigma`` are the squared singular values of the ``(n, d)`` feature matrix
    (its rank ``r`` of them), ``y_sq = ||y||^2``; the part of ``y`` outside the
    column space of the features is ``y_sq - ||z||^2``.
    """
    r = len(sigma)
    outside = max(y_sq - float(z @ z), 0.0)
    alpha, beta, eps = 1.0, 1.0, 1e-12
    for _ in range(max_iter):
        shrink = beta * sigma / (alpha + beta * sigma)
        gamma = float(shrink.sum())
        m_sq = float(np.sum(shrink**2 * z**2 / sigma))  # ||m||^2 (sigma > 0: rank cut)
        res = float(np.sum((alpha / (alpha + beta * sigma)) ** 2 * z**2)) + outside
        new_alpha = gamma / (m_sq + eps)
        new_beta = max(n - gamma, eps) / (res + eps)
        done = abs(new_alpha / new_beta - alpha / beta) <= 1e-3 * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    shrink = beta * sigma / (alpha + beta * sigma)
    m_sq = float(np.sum(shrink**2 * z**2 / sigma))
    res = float(np.sum((alpha / (alpha + beta * sigma)) ** 2 * z**2)) + outside
    logdet = float(np.sum(np.log(alpha + beta * sigma))) + (d - r) * np.log(alpha)
    ev = (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - logdet / 2
        - beta / 2 * res
        - alpha / 2 * m_sq
        - n / 2 * np.log(2 * np.pi)
    )
    return float(ev / n)


def _nonzero_rms(f: np.ndarray) -> float:
    """The features' root mean square; all-zero features are a DataError."""
    rms = float(np.sqrt(np.mean(f**2)))
    if rms == 0.0:
        raise DataError("features: all zero; nothing to score.")
    return rms


def _mean_evidence(u: np.ndarray, sigma: np.ndarray, y: np.ndarray, d: int) -> float:
    """LogME's mean over classes of :func:`_evidence`, from the left singular vectors ``u``
    (``n`` rows) and squared singular values ``sigma`` of an ``(n, d)`` feature matrix."""
    n = len(y)
    scores = []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)
        scores.append(_evidence(u.T @ t, sigma, float(t @ t), n, d))
    return float(np.mean(scores))


def logme(features: np.ndarray, labels: np.ndarray, center: bool = False) -> float:
    """LogME of ``features`` for class ``labels``: mean over classes of the evidence / n.

    Higher is better; values of different candidates on the same data compare.
    Invariant to the order of examples, to renaming classes and to any rotation
    of the feature space.

    Args:
        features: ``(n, d)`` frozen features.
        labels: ``(n,)`` class ids.
        center: subtract the features' mean first (the targets are left as they are),
            so that the mean feature vector earns no evidence for the targets' mean:
            a linear head has a bias that fits it anyway. Estimator ``logme_centred``
            of :func:`score`; measured against the plain one by ``bench/rank.py``.

    Example:
        >>> y = np.array([0, 0, 1, 1, 2, 2] * 5)
        >>> f = np.eye(3)[y] + 0.1 * np.random.default_rng(1).normal(size=(30, 3))
        >>> shuffled = np.random.default_rng(2).permutation(y)
        >>> bool(logme(f, y) > logme(f, shuffled))
        True
    """
    f, y = _check(features, labels)
    n, d = f.shape
    rms = _nonzero_rms(f)
    if center:
        f = f - f.mean(axis=0)
        centred = float(np.sqrt(np.mean(f**2)))
        if centred <= 1e-6 * rms:  # what is left is rounding noise
            raise DataError("features: the same for every example (center=True); nothing to score.")
        rms = centred
    # The evidence is exactly invariant to the features' scale (alpha absorbs it); dividing
    # by the RMS keeps the fixed point well conditioned for tiny (1e-12) or huge features.
    u, s, _ = np.linalg.svd(f / rms, full_matrices=False)
    keep = s > s.max() * max(n, d) * np.finfo(np.float64).eps if s.size else s > 0
    u, sigma = u[:, keep], s[keep] ** 2
    return _mean_evidence(u, sigma, y, d)


def knn_loo_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out accuracy of a cosine k-nearest-neighbour vote (ties: nearest wins).

    Example:
        >>> f = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
        >>> knn_loo_accuracy(f, [0, 0, 1, 1], k=1)
        1.0
    """
    f, y = _check(features, labels)
    f = f - f.mean(axis=0)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    k = max(1, min(k, len(y) - 1))
    nn = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    classes, yi = np.unique(y, return_inverse=True)
    votes = np.zeros((len(y), len(classes)))
    weights = 1.0 + 1e-6 * np.arange(k, 0, -1)  # the nearest breaks ties
    np.add.at(votes, (np.repeat(np.arange(len(y)), k), yi[nn].ravel()), np.tile(weights, len(y)))
    return float(np.mean(votes.argmax(axis=1) == yi))


def linear_probe_accuracy(
    features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0
) -> float:
    """Stratified k-fold accuracy of a ridge classifier (one-hot least squares) on standardised features.

    The ridge penalty is chosen inside each training fold (generalised cross-validation),
    which keeps the probe closed-form: fast even with more dimensions than examples.

    Example:
        >>> y = np.repeat([0, 1], 10)
        >>> f = np.c_[y * 4.0, np.random.default_rng(0).normal(size=20)]
        >>> linear_probe_accuracy(f, y)
        1.0
    """
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f, y = _check(features, labels)
    folds = max(2, min(folds, int(np.bincount(np.unique(y, return_inverse=True)[1]).min())))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-2, 4, 7)))
    with warnings.catch_warnings():
        # a class of one example cannot be in every fold; callers say so in their own words
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        return float(np.mean(cross_val_score(clf, f, y, cv=cv)))


def score(features: np.ndarray, labels: np.ndarray, estimator: str = "logme") -> float:
    """One estimator by name (:data:`ESTIMATORS`).

    Example:
        >>> y = np.repeat([0, 1], 6)
        >>> score(np.eye(2)[y], y, "knn")
        1.0
    """
    if estimator == "logme":
        return logme(features, labels)
    if estimator == "logme_centred":
        return logme(features, labels, center=True)
    if estimator == "knn":
        return knn_loo_accuracy(features, labels)
    if estimator == "probe":
        return linear_probe_accuracy(features, labels)
    from kerastl.errors import choice_error

    raise choice_error("score", estimator, ESTIMATORS)


def pareto_flags(scores: Sequence[float], costs: Sequence[float | None]) -> list[bool]:
    """True where no other candidate is at least as good on both and better on one.

    Higher score is better, lower cost is better. A candidate without a cost
    (``None``) is judged on its score alone against the others.

    Example:
        >>> pareto_flags([0.9, 0.8, 0.5], [10.0, 2.0, 5.0])
        [True, True, False]
    """
    out = []
    for i, (si, ci) in enumerate(zip(scores, costs)):
        dominated = False
        for j, (sj, cj) in enumerate(zip(scores, costs)):
            if i == j:
                continue
            if ci is None or cj is None:
                better_cost, cost_ok = False, True
            else:
                better_cost, cost_ok = cj < ci, cj <= ci
            if sj >= si and cost_ok and (sj > si or better_cost):
                dominated = True
                break
        out.append(not dominated)
    return out


def subsets(
    labels: np.ndarray, n: int = 20, fraction: float = 0.8, seed: int = 0, most: int = 300
) -> list[np.ndarray]:
    """``n`` random subsets of the examples (indices, sorted), ``fraction`` of each class,
    or fewer where that would be more than ``most`` examples (scoring time grows with it;
    :func:`lead_standard_error` scales any subset size to the whole).

    Every subset has the same size (per class ``round(fraction * size)``, at least 1).

    Example:
        >>> y = np.array([0] * 5 + [1] * 10)
        >>> [np.bincount(y[h]).tolist() for h in subsets(y, n=2)]
        [[4, 8], [4, 8]]
        >>> [len(h) for h in subsets(np.arange(1000) % 4, n=2)]
        [300, 300]
    """
    y = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    classes = [np.flatnonzero(y == c) for c in np.unique(y)]
    fraction = min(fraction, most / max(len(y), 1))
    take = [max(1, round(fraction * len(idx))) for idx in classes]
    return [
        np.sort(
            np.concatenate([rng.choice(idx, k, replace=False) for idx, k in zip(classes, take)])
        )
        for _ in range(n)
    ]


def subset_scores(
    features: np.ndarray, labels: np.ndarray, parts: Sequence[np.ndarray], estimator: str
) -> np.ndarray:
    """:func:`score` on each of :func:`subsets`; NaN where one cannot be scored (fewer than
    2 classes, features the same for every example)."""
    f, y = np.asarray(features), np.asarray(labels).reshape(-1)
    out = np.full(len(parts), np.nan)
    for i, h in enumerate(parts):
        try:
            wide = estimator == "logme" and len(h) < f.shape[1]
            out[i] = logme_of_gram(f[h], y[h]) if wide else score(f[h], y[h], estimator)
        except DataError:
            pass
    return out


def logme_of_gram(features: np.ndarray, labels: np.ndarray) -> float:
    """:func:`logme` from the eigenvalues of the ``(n, n)`` Gram matrix, for ``n < d``:
    the same value (the Gram matrix's eigenvectors are the left singular vectors, its
    eigenvalues the squared singular values), several times faster than the SVD of a
    wide matrix. Directions below 1e-12 of the largest eigenvalue count as none.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(40) % 4
        >>> f = np.eye(4)[y] @ rng.normal(size=(4, 300)) + rng.normal(size=(40, 300))
        >>> bool(abs(logme_of_gram(f, y) - logme(f, y)) < 1e-8)
        True
    """
    f, y = _check(features, labels)
    rms = _nonzero_rms(f)
    f = f / rms
    w, u = np.linalg.eigh(f @ f.T)
    keep = w > w.max() * 1e-12
    u, sigma = u[:, keep], w[keep]
    return _mean_evidence(u, sigma, y, f.shape[1])


def lead_standard_error(
    upper: np.ndarray, lower: np.ndarray, n: int, m: int, least: int = 5
) -> float | None:
    """Standard error of one candidate's lead over another on ``n`` examples, from both
    candidates' scores on the same random subsets of ``m`` of them (:func:`subsets`).

    A subset drawn without replacement varies about the whole by ``1/m - 1/n`` of what a
    fresh sample of ``n`` varies by ``1/n`` (for a mean): the subsets' spread of the lead
    times ``sqrt(m / (n - m))``. ``None`` where fewer than ``least`` subsets have both
    scores, or ``m >= n``.

    Example:
        >>> a, b = np.array([1.0, 1.2, 0.8, 1.1, 0.9]), np.zeros(5)
        >>> round(lead_standard_error(a, b, n=50, m=40), 3)  # 0.158 on the subsets, x 2
        0.316
    """
    import math

    ok = np.isfinite(upper) & np.isfinite(lower)
    if ok.sum() < least or m >= n:
        return None
    return float(np.std(upper[ok] - lower[ok], ddof=1)) * math.sqrt(m / (n - m))


def lead_sureness(
    lead: float, upper: np.ndarray, lower: np.ndarray, n: int, m: int, least: int = 5
) -> float | None:
    """How sure a lead of ``lead`` (score of one candidate minus the next's, on all ``n``
    examples) is, given both candidates' scores on the same subsets of ``m`` examples:
    the normal probability that the lead is above zero, with the standard error of
    :func:`lead_standard_error` (``None`` where that has none).

    Example:
        >>> a, b = np.array([1.0, 1.2, 0.8, 1.1, 0.9]), np.zeros(5)
        >>> round(lead_sureness(1.0, a, b, n=50, m=40), 3)  # 3.2 standard errors
        0.999
        >>> round(lead_sureness(0.1, a, b, n=50, m=40), 3)
        0.624
    """
    import math

    spread = lead_standard_error(upper, lower, n, m, least)
    if spread is None:
        return None
    if spread == 0.0:  # the same scores on every subset: only the sign of the lead is left
        return 0.5 if lead == 0 else float(lead > 0)
    return 0.5 * (1.0 + math.erf(lead / spread / math.sqrt(2.0)))
