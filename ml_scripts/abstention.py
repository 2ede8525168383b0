"""When the model should say "I don't know": an out-of-distribution score and a confidence floor, fitted on data.

Two reasons to abstain, decided after the softmax (``inference.output_fn``):

- ``out_of_distribution``: the image's penultimate features are far from every
  class. The score is the Mahalanobis distance of Lee et al. 2018 ("A Simple
  Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
  Attacks"): class means and one shared covariance, fitted on the *train* split's
  centre crops, with the minimum over classes as the score. The features are
  L2-normalised first (Mueller & Hein 2025, "Mahalanobis++"), and the covariance
  is shrunk towards a scaled identity with the Ledoit-Wolf coefficient (Ledoit &
  Wolf 2004), because a small data set has far fewer images than the backbone
  has feature dimensions (80 train images, 1280 dimensions in the tests).
  Why not energy (Liu et al. 2020) or max-softmax: on the digits data a lightly
  trained head gives photos *lower* energy than digits (AUROC 0.33 in the test
  fixture, docs/benchmarks.md), while the pretrained backbone's features
  separate them almost perfectly; energy is still measured beside it.
- ``low_confidence``: the calibrated top-1 probability (softmax of logits / T,
  T from ``model_meta.json``'s ``temperature`` when present) is below a floor.

Both thresholds are calibrated on the *valid* split with the split-conformal
quantile (Vovk et al. 2005; Angelopoulos & Bates 2021): with ``n`` valid
scores, the OOD threshold is the ``ceil((n + 1)(1 - a))``-th smallest, so an
in-distribution image exceeds it with probability at most ``a``
(:data:`OOD_VALID_SHARE`); the confidence floor is the ``floor((n + 1) a)``-th
smallest top-1 probability (:data:`CONFIDENCE_VALID_SHARE`), or 0 (never)
when the split is too small for that. A plain 95th percentile of 20 valid
scores would let about 9% of test images through as OOD, not 5%.

The fitted statistics live in :data:`STATS_FILE` in the model directory (so they
travel in ``model.tar.gz``), the thresholds in ``model_meta.json``'s
``"abstention"``. The covariance is stored as its top :data:`MAX_COMPONENTS`
eigenvectors plus one variance for the rest of the space, so a 4,096-dimension
VGG feature costs megabytes, not a 64 MB precision matrix. numpy only: the
serving and training containers have no scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from contract import ABSTAIN_PARAMETER, LOW_CONFIDENCE, OUT_OF_DISTRIBUTION

METHOD = "mahalanobis"
SCORE_DESCRIPTION = (
    "Mahalanobis distance (Lee et al. 2018) of the L2-normalised penultimate features to the nearest class mean, "
    "shared covariance with Ledoit-Wolf shrinkage, fitted on the train split; higher is less familiar"
)
#: ``inference.predict_fn``'s private key: why ``output_fn`` should abstain (None: answer); never sent.
ABSTAIN_REASON = "_abstain_reason"
#: The model directory's file with the fitted class means and covariance.
STATS_FILE = "abstention.npz"
#: At most this share of in-distribution images abstains as out of distribution (conformal, on valid).
OOD_VALID_SHARE = 0.05
#: At most this share of in-distribution images abstains for low confidence (conformal, on valid).
CONFIDENCE_VALID_SHARE = 0.05
#: The least shrinkage used: Ledoit-Wolf's own coefficient (0.12 on the test fixture's 80 images) left
#: 10% of digits test images out of distribution; 0.5 separated photos and noise fully (AUROC 1.0).
MIN_SHRINKAGE = 0.5
#: Eigenvectors of the shared covariance kept exactly; the rest of the space shares one variance.
MAX_COMPONENTS = 256


@dataclass
class GaussianStats:
    """Class means and a shrunk shared covariance of L2-normalised features, as its eigen-decomposition."""

    #: (classes, dim) float32 means of the normalised features.
    means: np.ndarray
    #: (dim, r) float32 orthonormal eigenvectors of the shrunk covariance, largest first.
    components: np.ndarray
    #: (r,) the shrunk covariance's variance along each component.
    variances: np.ndarray
    #: The shrunk variance of every direction orthogonal to ``components``.
    residual_variance: float
    #: The Ledoit-Wolf coefficient used (0: the sample covariance, 1: a scaled identity).
    shrinkage: float

    def save(self, path: str | Path) -> None:
        np.savez(
            path,
            means=self.means.astype(np.float32),
            components=self.components.astype(np.float32),
            variances=self.variances.astype(np.float64),
            residual_variance=np.float64(self.residual_variance),
            shrinkage=np.float64(self.shrinkage),
        )

    @classmethod
    def load(cls, path: str | Path) -> GaussianStats:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                means=np.asarray(data["means"], dtype=np.float32),
                components=np.asarray(data["components"], dtype=np.float32),
                variances=np.asarray(data["variances"], dtype=np.float64),
                residual_variance=float(data["residual_variance"]),
                shrinkage=float(data["shrinkage"]),
            )

    def score(self, features: np.ndarray) -> np.ndarray:
        """The squared Mahalanobis distance of each row of ``features`` (N, dim) to its nearest class mean.

        On the eigen-decomposition: the distance along the kept components, plus the
        rest of the difference over the residual variance. Batched in chunks of rows.
        """
        z = normalise(np.asarray(features, dtype=np.float64))
        means = self.means.astype(np.float64)
        components = self.components.astype(np.float64)
        z_proj, m_proj = z @ components, means @ components  # (N, r), (classes, r)
        full = (z**2).sum(axis=1)[:, None] - 2 * z @ means.T + (means**2).sum(axis=1)[None, :]  # (N, classes)
        out = np.empty(len(z), dtype=np.float64)
        chunk = max(1, 2**21 // max(1, means.shape[0] * components.shape[1]))
        for start in range(0, len(z), chunk):
            diff = z_proj[start : start + chunk, None, :] - m_proj[None, :, :]  # (rows, classes, r)
            along = (diff**2 / self.variances).sum(axis=2)
            rest = (
                np.maximum(full[start : start + chunk] - (diff**2).sum(axis=2), 0.0) / self.residual_variance
            )
            out[start : start + chunk] = (along + rest).min(axis=1)
        return out


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def fit_gaussian(features: np.ndarray, labels: np.ndarray, num_classes: int) -> GaussianStats:
    """Class means and the Ledoit-Wolf shrunk shared covariance of the normalised ``features``.

    A class with no image gets the mean of all images (it can never be the
    nearest class by accident of a zero vector). The work is on the smaller of
    the (n, n) Gram matrix and the (d, d) covariance.
    """
    x = normalise(np.asarray(features, dtype=np.float64))
    labels = np.asarray(labels, dtype=np.int64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 train images to fit the out-of-distribution score, got {n}")
    overall = x.mean(axis=0)
    means = np.stack(
        [x[labels == c].mean(axis=0) if np.any(labels == c) else overall for c in range(num_classes)]
    )
    z = x - means[labels]
    if n <= d:
        gram = z @ z.T / n  # same non-zero eigenvalues as the covariance
        eigenvalues, vectors = np.linalg.eigh(gram)
        eigenvalues = np.clip(eigenvalues[::-1], 0.0, None)
        vectors = vectors[:, ::-1]
        keep = eigenvalues > eigenvalues[0] * 1e-9 if eigenvalues[0] > 0 else np.zeros(n, dtype=bool)
        components = (z.T @ vectors[:, keep]) / np.sqrt(n * eigenvalues[keep])
        # z_k' S z_k = (1/n) sum_j (z_k . z_j)^2, read off the Gram matrix.
        quad = (gram**2).sum(axis=1) * n
        all_eigenvalues = np.concatenate([eigenvalues[keep], np.zeros(d - int(keep.sum()))])
        kept = eigenvalues[keep]
    else:
        cov = z.T @ z / n
        eigenvalues, vectors = np.linalg.eigh(cov)
        all_eigenvalues = np.clip(eigenvalues[::-1], 0.0, None)
        components, kept = vectors[:, ::-1], all_eigenvalues
        quad = np.einsum("nd,nd->n", z @ cov, z)
    # Ledoit-Wolf (2004), shrinking towards mu * I with mu = trace / d.
    mu = float(all_eigenvalues.sum()) / d
    frob = float((all_eigenvalues**2).sum())  # ||S||_F^2
    delta = max(frob - 2 * mu * float(all_eigenvalues.sum()) + mu * mu * d, 0.0)  # ||S - mu I||_F^2
    sq_norms = (z**2).sum(axis=1)
    beta_bar = float((sq_norms**2 - 2 * quad + frob).sum()) / (n * n)  # (1/n^2) sum ||z z' - S||_F^2
    shrinkage = 1.0 if delta <= 0 else min(max(beta_bar, 0.0), delta) / delta
    shrinkage = max(shrinkage, MIN_SHRINKAGE)
    r = min(MAX_COMPONENTS, len(kept))
    shrunk = (1 - shrinkage) * all_eigenvalues + shrinkage * mu
    rest = shrunk[r:]
    residual = float(rest.mean()) if len(rest) else float(shrunk[-1])
    residual = max(residual, 1e-12)
    return GaussianStats(
        means=means.astype(np.float32),
        components=np.ascontiguousarray(components[:, :r]).astype(np.float32),
        variances=np.maximum(shrunk[:r], 1e-12),
        residual_variance=residual,
        shrinkage=float(shrinkage),
    )


def conformal_upper(scores: np.ndarray, share: float) -> float:
    """The ``ceil((n + 1)(1 - share))``-th smallest score (the largest when that is past the end)."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    k = math.ceil((len(ordered) + 1) * (1 - share))
    return float(ordered[min(k, len(ordered)) - 1])


def conformal_lower(values: np.ndarray, share: float) -> float:
    """The ``floor((n + 1) share)``-th smallest value, or 0.0 when there are too few values for one."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    k = math.floor((len(ordered) + 1) * share)
    return float(ordered[k - 1]) if k >= 1 else 0.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    e = np.exp(scaled)
    return e / e.sum(axis=1, keepdims=True)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Liu et al. 2020's energy, ``-T logsumexp(logits / T)``: measured beside the chosen score (lower: familiar)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    top = scaled.max(axis=1)
    return -temperature * (top + np.log(np.exp(scaled - top[:, None]).sum(axis=1)))


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` telling out- from in-distribution (ties count a half)."""
    a, b = np.asarray(in_scores, dtype=np.float64), np.asarray(out_scores, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    greater = (b[:, None] > a[None, :]).sum()
    ties = (b[:, None] == a[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(a) * len(b)))


@dataclass
class Abstainer:
    """The serving-side decision: which reason, if any, to abstain for."""

    stats: GaussianStats
    confidence_threshold: float
    ood_threshold: float

    def reason(self, top_probability: float, features: np.ndarray) -> str | None:
        """``out_of_distribution`` (it wins when both apply), ``low_confidence`` or None."""
        if float(self.stats.score(np.asarray(features).reshape(1, -1))[0]) > self.ood_threshold:
            return OUT_OF_DISTRIBUTION
        if top_probability < self.confidence_threshold:
            return LOW_CONFIDENCE
        return None

    def reasons(self, top_probabilities: np.ndarray, scores: np.ndarray) -> list[str | None]:
        """:meth:`reason` for precomputed OOD ``scores`` (training-time figures)."""
        out: list[str | None] = []
        for p, s in zip(top_probabilities, scores):
            out.append(
                OUT_OF_DISTRIBUTION
                if s > self.ood_threshold
                else LOW_CONFIDENCE
                if p < self.confidence_threshold
                else None
            )
        return out


def load(model_dir: str | Path, meta: dict[str, Any]) -> Abstainer | None:
    """The model's abstainer, or None for a model trained before abstention (it never abstains).

    A ``model_meta.json`` that names abstention without its statistics file is a
    broken artifact: that raises, it does not silently serve without abstention.
    """
    section = meta.get("abstention")
    if not section:
        return None
    if section.get("method") != METHOD:
        raise ValueError(
            f"model_meta.json abstention method {section.get('method')!r}; this code knows {METHOD!r}"
        )
    path = Path(model_dir) / str(section.get("stats_file") or STATS_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"model_meta.json names abstention, but {path.name} is not in the model directory"
        )
    return Abstainer(
        GaussianStats.load(path), float(section["confidence_threshold"]), float(section["ood_threshold"])
    )


@dataclass
class SplitOutputs:
    """Logits, penultimate features and labels of one split, in loader order."""

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray


def fit(
    train: SplitOutputs,
    valid: SplitOutputs,
    test: SplitOutputs | None,
    num_classes: int,
    temperature: float = 1.0,
) -> tuple[GaussianStats, dict[str, Any], dict[str, Any]]:
    """Fit the score on ``train``, both thresholds on ``valid``; report ``test``.

    Returns the statistics (saved as :data:`STATS_FILE`), the ``model_meta.json``
    section and the ``evaluation.json`` section (issue 13's contract).
    """
    stats = fit_gaussian(train.features, train.labels, num_classes)
    valid_scores = stats.score(valid.features)
    valid_probs = softmax(valid.logits, temperature)
    ood_threshold = conformal_upper(valid_scores, OOD_VALID_SHARE)
    confidence_threshold = conformal_lower(valid_probs.max(axis=1), CONFIDENCE_VALID_SHARE)
    abstainer = Abstainer(stats, confidence_threshold, ood_threshold)
    meta = {
        "method": METHOD,
        "confidence_threshold": confidence_threshold,
        "ood_threshold": ood_threshold,
        "temperature_applied": temperature != 1.0,
        "temperature": temperature,
        "stats_file": STATS_FILE,
        "feature_dim": int(stats.means.shape[1]),
        "components": int(stats.components.shape[1]),
        "shrinkage": stats.shrinkage,
        "ood_valid_share": OOD_VALID_SHARE,
        "confidence_valid_share": CONFIDENCE_VALID_SHARE,
        "fitted_on": {"score": "train", "thresholds": "valid"},
    }
    evaluation = {
        "method": METHOD,
        "score": SCORE_DESCRIPTION,
        "confidence_threshold": confidence_threshold,
        "ood_threshold": ood_threshold,
        "valid": split_figures(abstainer, valid, valid_scores, temperature),
    }
    if test is not None and len(test.labels):
        evaluation["test"] = split_figures(abstainer, test, stats.score(test.features), temperature)
    return stats, meta, evaluation


def split_figures(
    abstainer: Abstainer, split: SplitOutputs, scores: np.ndarray, temperature: float
) -> dict[str, Any]:
    """Coverage, accuracy of the answered images, and the share abstaining for each reason."""
    probs = softmax(split.logits, temperature)
    reasons = abstainer.reasons(probs.max(axis=1), scores)
    n = len(reasons)
    answered = np.array([r is None for r in reasons], dtype=bool)
    correct = probs.argmax(axis=1) == split.labels
    return {
        "images": n,
        "coverage": float(answered.mean()) if n else 0.0,
        "accuracy": float(correct[answered].mean()) if answered.any() else None,
        "accuracy_without_abstention": float(correct.mean()) if n else None,
        "abstained_share": float(1 - answered.mean()) if n else 0.0,
        "low_confidence_share": sum(r == LOW_CONFIDENCE for r in reasons) / n if n else 0.0,
        "out_of_distribution_share": sum(r == OUT_OF_DISTRIBUTION for r in reasons) / n if n else 0.0,
    }


class AbstainParameterError(ValueError):
    """An Accept header's ``abstain`` parameter that is neither ``true`` nor ``false``."""


def abstain_allowed(accept: str | None) -> bool:
    """False when the Accept header asks for the raw answer: a JSON range with ``abstain=false``.

    Why an Accept parameter: it is the one request field that reaches ``output_fn``
    in every serving path (the toolkit, the local runtime), and InvokeEndpoint
    carries it as it is. A value other than ``true`` or ``false`` is an :class:`AbstainParameterError` (``output_fn``: a 406).
    """
    for item in (accept or "").split(","):
        for param in item.split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() != ABSTAIN_PARAMETER:
                continue
            value = value.strip().strip('"').lower()
            if value not in ("true", "false"):
                raise AbstainParameterError(f"abstain={value!r} in Accept: use abstain=true or abstain=false")
            if value == "false":
                return False
    return True


def apply_abstention(prediction: dict[str, Any], allowed: bool = True) -> dict[str, Any]:
    """The client's answer: ``"abstained"`` always; when abstaining ``label``/``probability`` null and a ``reason``.

    ``top_k`` is kept either way, so a client can still show the candidates.
    """
    answer = {key: value for key, value in prediction.items() if key != ABSTAIN_REASON}
    reason = prediction.get(ABSTAIN_REASON) if allowed else None
    if reason is None:
        answer["abstained"] = False
        return answer
    answer.update({"label": None, "probability": None, "abstained": True, "reason": reason})
    return answer
