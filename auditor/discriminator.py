"""The statistical-level discriminator: infringing or innocent, from a model's M distances.

The instance-level audit thresholds each key's distance at delta0 and counts hits, which
throws away how far below or above delta0 each distance fell. The paper's
statistical-level attribution instead learns the decision from shadow models (models
fine-tuned with and without the owner's generations), using the whole sorted distance
profile plus a few summary statistics.

Shadow models are expensive, so there are a few dozen at most. Only linear candidates
are considered: they cannot memorise two dozen points the way trees or kernels can, and
a linear score is a handful of numbers. That is what makes the fitted discriminator
storable as plain JSON (scaler mean and scale, coefficients, intercept) instead of a
pickle, which would run arbitrary code on load and would tie the file to one
scikit-learn version. Scoring after fit uses only those stored numbers, so a saved and
reloaded discriminator gives bit-identical scores on any installation.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sklearn
from pydantic import Field, FiniteFloat, ValidationInfo, field_validator
from scipy.special import expit
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from auditor.config import FrozenModel
from auditor.documents import check_version, parse_json, read_bytes, validate
from auditor.fileio import atomic_write_text

SCHEMA = "t2i-auditor.discriminator/v1"
# what files written before the version field had its one name carry instead
LEGACY = {"format": "t2i-auditor-discriminator-v1"}
SUMMARY_FEATURES = (
    "mean",
    "median",
    "std",
    "min",
    "share_below_0.1",
    "share_below_delta0",
    "share_below_0.2",
)
DEFAULT_CANDIDATE = "logreg_C1"
_TIE = 1e-12  # CV means closer than this are a tie (float noise from fold order)


def feature_names(num_keys: int) -> list[str]:
    """Names of the features, in the order `features` returns them."""
    if isinstance(num_keys, bool) or not isinstance(num_keys, int) or num_keys < 1:
        raise ValueError(f"num_keys must be a positive integer, got {num_keys!r}")
    width = max(2, len(str(num_keys - 1)))
    return [f"sorted_distance_{i:0{width}d}" for i in range(num_keys)] + list(SUMMARY_FEATURES)


def _distance_matrix(distances: np.ndarray | Sequence[Any]) -> np.ndarray:
    try:
        matrix = np.asarray(distances, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"distances must be numbers, shape (n_models, M) or (M,) ({exc})") from None
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[0] < 1 or matrix.shape[1] < 1:
        raise ValueError(
            f"distances must have shape (n_models, M) or (M,) with M >= 1, got {np.shape(distances)}"
        )
    if not np.all(np.isfinite(matrix)):
        raise ValueError("distances must be finite; found NaN or infinity (was a key not audited?)")
    return matrix


def _check_delta0(delta0: float) -> float:
    value = float(delta0)
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        raise ValueError(f"delta0 must lie strictly between 0 and 1, got {delta0!r}")
    return value


def features(distances: np.ndarray | Sequence[Any], delta0: float) -> np.ndarray:
    """(n_models, M) distances -> (n_models, M + 7) features; a (M,) vector gives one row.

    Sorting makes the features independent of key order (which key a model reproduces
    carries no signal; how many and how closely does). The summary statistics repeat
    what the sorted profile already holds, but put the hit rate at delta0, the audit's
    own statistic, on one axis, which a linear model with few training points can use.
    """
    matrix = _distance_matrix(distances)
    delta0 = _check_delta0(delta0)
    ordered = np.sort(matrix, axis=1)
    # Exactly rounded sums (fsum): numpy's SIMD reductions may round differently with
    # memory alignment, and the same distances must always give the same features.
    mean = np.array([math.fsum(row) for row in ordered]) / ordered.shape[1]
    std = np.sqrt(np.array([math.fsum(row) for row in (ordered - mean[:, None]) ** 2]) / ordered.shape[1])
    summary = np.column_stack(
        [
            mean,
            np.median(ordered, axis=1),
            std,
            ordered[:, 0],
            (ordered < 0.1).mean(axis=1),
            (ordered < delta0).mean(axis=1),
            (ordered < 0.2).mean(axis=1),
        ]
    )
    return np.hstack([ordered, summary])


class Candidate(FrozenModel):
    """One linear model family and its hyper-parameters, as recorded in the JSON."""

    id: str
    kind: Literal["logistic_regression", "lda"]
    params: dict[str, float | str]


# Exact Newton steps: on a few dozen rows it converges to the optimum in a handful of
# iterations, ten times faster than lbfgs and without lbfgs's tolerance-dependent stop.
_SOLVER = "newton-cholesky"
CANDIDATES: tuple[Candidate, ...] = (
    Candidate(id="logreg_C0.01", kind="logistic_regression", params={"C": 0.01, "solver": _SOLVER}),
    Candidate(id="logreg_C0.1", kind="logistic_regression", params={"C": 0.1, "solver": _SOLVER}),
    Candidate(id="logreg_C1", kind="logistic_regression", params={"C": 1.0, "solver": _SOLVER}),
    Candidate(id="logreg_C10", kind="logistic_regression", params={"C": 10.0, "solver": _SOLVER}),
    Candidate(id="lda_shrinkage_auto", kind="lda", params={"solver": "lsqr", "shrinkage": "auto"}),
)


def _fit_quietly(pipeline: Pipeline, x: np.ndarray, y: np.ndarray) -> Pipeline:
    """Fit, silencing scikit-learn's small-sample warnings: a class of one or two shadow
    models in a CV fold is expected here, and the CV scores already say what it costs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pipeline.fit(x, y)


def make_pipeline(candidate: Candidate) -> Pipeline:
    """The scikit-learn pipeline for a candidate: scaling, then the linear classifier."""
    if candidate.kind == "logistic_regression":
        classifier: Any = LogisticRegression(
            C=float(candidate.params["C"]), solver=str(candidate.params["solver"]), tol=1e-8, max_iter=1000
        )
    else:
        classifier = LinearDiscriminantAnalysis(
            solver=str(candidate.params["solver"]), shrinkage=candidate.params["shrinkage"]
        )
    return Pipeline([("scale", StandardScaler()), ("classify", classifier)])


class CandidateScore(FrozenModel):
    """Cross-validated scores of one candidate, kept so a reader can see how close the choice was.

    `mean_log_loss` is computed on probabilities bounded to [1/(n+2), 1 - 1/(n+2)], n the
    fold's training models (see `_cross_validate`).
    """

    id: str
    mean_auc: FiniteFloat
    mean_log_loss: FiniteFloat
    fold_auc: tuple[FiniteFloat, ...]


class ClassCounts(FrozenModel):
    innocent: int = Field(ge=1)
    infringing: int = Field(ge=1)


class DiscriminatorRecord(FrozenModel):
    """Everything needed to score a model, and to judge whether the discriminator fits the audit."""

    schema_version: Literal["t2i-auditor.discriminator/v1"] = SCHEMA
    sklearn_version: str = Field(
        description="the scikit-learn that fitted it (informational: scoring needs none)"
    )
    keyset_digest: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    num_keys: int = Field(ge=1, description="M: distances per model")
    distance: str = Field("l2", description="the distance the shadows were audited with")
    seeds_per_key: int = Field(
        1, ge=1, description="audit seeds per key the shadows had (the min over more seeds is lower)"
    )
    delta0: float = Field(gt=0.0, lt=1.0)
    feature_names: tuple[str, ...]
    scaler_mean: tuple[FiniteFloat, ...]
    scaler_scale: tuple[FiniteFloat, ...]
    coef: tuple[FiniteFloat, ...]
    intercept: FiniteFloat
    candidate: Candidate
    selection: Literal["cross_validation", "default"] = Field(
        description="default: a class had one member, so no cross-validation was possible"
    )
    cv_folds: int | None = Field(None, ge=2)
    random_state: int
    cv_scores: tuple[CandidateScore, ...] = ()
    n_train: ClassCounts

    @field_validator("feature_names")
    @classmethod
    def _names_match_keys(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        num_keys = info.data.get("num_keys")
        # lengths first: a file claiming 10**30 keys must not make us build 10**30 names
        if num_keys is not None and (
            len(value) != num_keys + len(SUMMARY_FEATURES) or list(value) != feature_names(num_keys)
        ):
            raise ValueError(
                f"expected the {num_keys + len(SUMMARY_FEATURES)} feature names for {num_keys} keys"
            )
        return value

    @field_validator("scaler_mean", "scaler_scale", "coef")
    @classmethod
    def _vector_length(cls, value: tuple[float, ...], info: ValidationInfo) -> tuple[float, ...]:
        num_keys = info.data.get("num_keys")
        if num_keys is not None and len(value) != num_keys + len(SUMMARY_FEATURES):
            raise ValueError(
                f"expected {num_keys + len(SUMMARY_FEATURES)} values ({num_keys} keys + "
                f"{len(SUMMARY_FEATURES)} summary features), got {len(value)}"
            )
        if info.field_name == "scaler_scale" and any(v <= 0.0 for v in value):
            raise ValueError("scales must be positive")
        return value


def _check_labels(labels: np.ndarray | Sequence[int], n_models: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n_models:
        raise ValueError(
            f"labels must be a 1-D array of {n_models} labels (one per model), got shape {y.shape}"
        )
    if y.dtype.kind not in "biuf" or not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must hold only 0 (innocent) and 1 (infringing)")
    return y.astype(np.int64)


def _cross_validate(
    candidate: Candidate, x: np.ndarray, y: np.ndarray, folds: StratifiedKFold
) -> CandidateScore:
    """Per-fold ROC AUC and log-loss of one candidate.

    The log-loss only breaks AUC ties, and on separable shadow models it would reward
    sheer overconfidence: LDA's within-class covariance is tiny there, its logits reach
    +-1000, its held-out log-loss rounds to 0 and its probabilities to exactly 0 and 1.
    A model fit on n models cannot support a probability beyond Laplace's rule of
    succession, (n+1)/(n+2), so probabilities are bounded to that before scoring: every
    candidate at least that confident ties, and the earlier, more regularised one wins.
    """
    aucs, losses = [], []
    for train, test in folds.split(x, y):
        model = _fit_quietly(make_pipeline(candidate), x[train], y[train])
        bound = 1.0 / (len(train) + 2)
        proba = np.clip(model.predict_proba(x[test])[:, 1], bound, 1.0 - bound)
        aucs.append(float(roc_auc_score(y[test], model.decision_function(x[test]))))
        losses.append(float(log_loss(y[test], proba, labels=[0, 1])))
    return CandidateScore(
        id=candidate.id,
        mean_auc=float(np.mean(aucs)),
        mean_log_loss=float(np.mean(losses)),
        fold_auc=tuple(aucs),
    )


class Discriminator:
    """Scores a model's M key distances: high = trained on the owner's generations.

    scikit-learn style (`fit`, `decision_function`, `predict_proba`, `predict`), but after
    `fit` it keeps only the numbers of the winning linear model, so `save` writes JSON
    and `load` never unpickles anything.
    """

    def __init__(
        self,
        delta0: float = 0.15,
        cv_folds: int = 5,
        random_state: int = 0,
        distance: str = "l2",
        seeds_per_key: int = 4,
    ) -> None:
        self.delta0 = _check_delta0(delta0)
        self.distance = distance
        self.seeds_per_key = int(seeds_per_key)
        if isinstance(cv_folds, bool) or not isinstance(cv_folds, int) or cv_folds < 2:
            raise ValueError(f"cv_folds must be an integer >= 2, got {cv_folds!r}")
        self.cv_folds = cv_folds
        self.random_state = int(random_state)
        self._record: DiscriminatorRecord | None = None

    # -- fitting ---------------------------------------------------------------------------

    def fit(
        self,
        distances: np.ndarray,
        labels: np.ndarray,
        *,
        candidates: Sequence[str] | None = None,
    ) -> Discriminator:
        """Choose a linear candidate by stratified CV ROC AUC, then refit it on every model.

        AUC rather than accuracy because the audit thresholds the score afterwards (at a
        calibrated FPR), so the ranking is what must be good; with a dozen models per
        class many candidates reach AUC 1, and the mean CV log-loss (of probabilities
        bounded by what the fold size supports) then prefers the better calibrated one,
        then the earlier (more regularised) candidate. Folds = min(cv_folds, smallest class), so each fold holds both
        classes; with a single member in a class no fold can, and the default candidate
        (logistic regression, C = 1) is taken and recorded as such. `candidates`
        restricts the search to these ids of `CANDIDATES`.
        """
        matrix = _distance_matrix(distances)
        y = _check_labels(labels, matrix.shape[0])
        n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
        if n_pos == 0 or n_neg == 0:
            raise ValueError(
                f"fitting needs both infringing and innocent shadow models, got {n_pos} infringing and {n_neg} innocent"
            )
        pool = self._candidate_pool(candidates)
        x = features(matrix, self.delta0)

        scores: list[CandidateScore] = []
        if min(n_pos, n_neg) < 2:
            by_id = {c.id: c for c in pool}
            chosen = by_id.get(DEFAULT_CANDIDATE, pool[0])
            selection: Literal["cross_validation", "default"] = "default"
            n_folds = None
        else:
            n_folds = max(2, min(self.cv_folds, n_pos, n_neg))
            splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=self.random_state)
            usable = []
            for candidate in pool:
                try:
                    scores.append(_cross_validate(candidate, x, y, splitter))
                    usable.append(candidate)
                except ValueError:  # e.g. LDA on a 2-model training fold: it needs more models than classes
                    continue
            if usable:
                ranked = sorted(
                    range(len(usable)),
                    key=lambda i: (
                        -round(scores[i].mean_auc / _TIE),
                        round(scores[i].mean_log_loss / _TIE),
                        i,
                    ),
                )
                chosen = usable[ranked[0]]
                selection = "cross_validation"
            else:
                chosen = {c.id: c for c in pool}.get(DEFAULT_CANDIDATE, pool[0])
                selection, n_folds = "default", None

        model = _fit_quietly(make_pipeline(chosen), x, y)
        scaler, classifier = model.named_steps["scale"], model.named_steps["classify"]
        self._set_record(
            DiscriminatorRecord(
                sklearn_version=sklearn.__version__,
                num_keys=matrix.shape[1],
                distance=self.distance,
                seeds_per_key=self.seeds_per_key,
                delta0=self.delta0,
                feature_names=tuple(feature_names(matrix.shape[1])),
                scaler_mean=tuple(float(v) for v in scaler.mean_),
                scaler_scale=tuple(float(v) for v in scaler.scale_),
                coef=tuple(float(v) for v in np.ravel(classifier.coef_)),
                intercept=float(np.ravel(classifier.intercept_)[0]),
                candidate=chosen,
                selection=selection,
                cv_folds=n_folds,
                random_state=self.random_state,
                cv_scores=tuple(scores),
                n_train=ClassCounts(innocent=n_neg, infringing=n_pos),
            )
        )
        return self

    @staticmethod
    def _candidate_pool(candidates: Sequence[str] | None) -> list[Candidate]:
        if candidates is None:
            return list(CANDIDATES)
        known = {c.id: c for c in CANDIDATES}
        unknown = [name for name in candidates if name not in known]
        if unknown or not candidates:
            raise ValueError(
                f"candidates must be a non-empty subset of {sorted(known)}, got {list(candidates)}"
            )
        return [c for c in CANDIDATES if c.id in set(candidates)]

    def _set_record(self, record: DiscriminatorRecord) -> None:
        self._record = record
        self.delta0 = record.delta0
        self.random_state = record.random_state
        self._mean = np.array(record.scaler_mean, dtype=np.float64)
        self._scale = np.array(record.scaler_scale, dtype=np.float64)
        self._coef = np.array(record.coef, dtype=np.float64)
        self._intercept = float(record.intercept)

    # -- fitted state ----------------------------------------------------------------------

    @property
    def record(self) -> DiscriminatorRecord:
        if self._record is None:
            raise ValueError("this Discriminator is not fitted yet; call fit() or Discriminator.load()")
        return self._record

    @property
    def num_keys(self) -> int:
        return self.record.num_keys

    @property
    def candidate(self) -> Candidate:
        return self.record.candidate

    @property
    def cv_scores(self) -> tuple[CandidateScore, ...]:
        return self.record.cv_scores

    @property
    def keyset_digest(self) -> str | None:
        """The keyset it was saved for; callers refuse to score audits of another keyset."""
        return self.record.keyset_digest

    # -- scoring ---------------------------------------------------------------------------

    def decision_function(self, distances: np.ndarray) -> np.ndarray:
        """The linear score per model (log-odds of infringing), from the stored numbers only."""
        record = self.record
        matrix = _distance_matrix(distances)
        if matrix.shape[1] != record.num_keys:
            raise ValueError(
                f"expected {record.num_keys} distances per model (the discriminator was fit on "
                f"{record.num_keys} keys), got {matrix.shape[1]}"
            )
        x = features(matrix, record.delta0)
        return ((x - self._mean) / self._scale) @ self._coef + self._intercept

    def predict_proba(self, distances: np.ndarray) -> np.ndarray:
        """P(infringing) per model, shape (n_models,) (not sklearn's (n, 2) pair).

        The sigmoid of the linear score for both candidate kinds: that is logistic
        regression's own probability, and scikit-learn's two-class
        LinearDiscriminantAnalysis.predict_proba is likewise the sigmoid (expit) of its
        decision_function, so no LDA-specific state needs storing (checked in
        tests/test_discriminator.py against scikit-learn itself).
        """
        return expit(self.decision_function(distances))

    def predict(self, distances: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """1 (infringing) where P(infringing) > threshold, else 0."""
        level = float(threshold)
        if not math.isfinite(level) or not 0.0 <= level <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
        return (self.predict_proba(distances) > level).astype(np.int64)

    # -- persistence -----------------------------------------------------------------------

    def to_dict(self, keyset_digest: str | None = None) -> dict[str, Any]:
        """The JSON-ready record; `keyset_digest` (if given) replaces the recorded one."""
        data = self.record.model_dump(mode="json")
        if keyset_digest is not None:
            data["keyset_digest"] = keyset_digest
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "discriminator record") -> Discriminator:
        """Validate a record (as from `to_dict`); errors are BadInputError naming `source` and the field."""
        data = check_version(data, source, SCHEMA, "discriminator", LEGACY)
        record = validate(DiscriminatorRecord, data, source)
        discriminator = cls(
            delta0=record.delta0, cv_folds=record.cv_folds or 5, random_state=record.random_state
        )
        discriminator._set_record(record)
        return discriminator

    def save(self, path: str | os.PathLike[str], keyset_digest: str | None = None) -> Path:
        """Write the JSON atomically, bound to the keyset it was trained for."""
        record = validate(DiscriminatorRecord, self.to_dict(keyset_digest), str(path))
        text = json.dumps(record.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"
        written = atomic_write_text(path, text)
        self._set_record(record)
        return written

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Discriminator:
        """Read and validate a saved discriminator; nothing in the file is executed."""
        where = str(Path(path))
        return cls.from_dict(parse_json(read_bytes(path, "discriminator file"), where), source=where)
