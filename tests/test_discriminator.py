from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from auditor.discriminator import (
    CANDIDATES,
    SCHEMA,
    Discriminator,
    feature_names,
    features,
    make_pipeline,
)
from auditor.errors import BadInputError
from auditor.metrics import roc_auc

M = 30
DIGEST = "ab" * 32


def shadow_distances(seed: int, per_class: int = 12, num_keys: int = M) -> tuple[np.ndarray, np.ndarray]:
    """Infringing models reproduce keys closely (~0.10), innocent ones do not (~0.25)."""
    rng = np.random.default_rng(seed)
    infringing = np.clip(rng.normal(0.10, 0.03, size=(per_class, num_keys)), 0.0, 1.0)
    innocent = np.clip(rng.normal(0.25, 0.03, size=(per_class, num_keys)), 0.0, 1.0)
    labels = np.r_[np.ones(per_class, dtype=int), np.zeros(per_class, dtype=int)]
    return np.vstack([infringing, innocent]), labels


@pytest.fixture(scope="module")
def fitted() -> Discriminator:
    distances, labels = shadow_distances(0)
    return Discriminator(random_state=0).fit(distances, labels)


# -- features ------------------------------------------------------------------------------


def test_feature_names_order() -> None:
    assert feature_names(3) == [
        "sorted_distance_00",
        "sorted_distance_01",
        "sorted_distance_02",
        "mean",
        "median",
        "std",
        "min",
        "share_below_0.1",
        "share_below_delta0",
        "share_below_0.2",
    ]
    assert len(feature_names(M)) == M + 7
    assert feature_names(150)[0] == "sorted_distance_000"


def test_features_values_and_order() -> None:
    row = np.array([0.3, 0.05, 0.12, 0.17])
    x = features(row, delta0=0.15)
    assert x.shape == (1, 4 + 7)
    np.testing.assert_allclose(x[0, :4], [0.05, 0.12, 0.17, 0.3])
    np.testing.assert_allclose(
        x[0, 4:], [row.mean(), 0.145, row.std(), 0.05, 1 / 4, 2 / 4, 3 / 4], rtol=0, atol=1e-15
    )


def test_features_depend_on_delta0_and_not_on_key_order() -> None:
    distances, _ = shadow_distances(3, per_class=2)
    shuffled = distances[:, np.random.default_rng(0).permutation(M)]
    np.testing.assert_array_equal(features(distances, 0.15), features(shuffled, 0.15))
    assert features(distances, 0.15).shape == (4, M + 7)
    loose = features(np.array([0.12, 0.18]), 0.2)
    assert loose[0, -2] == 1.0  # both below delta0 = 0.2
    assert features(np.array([0.12, 0.18]), 0.15)[0, -2] == 0.5


@pytest.mark.parametrize(
    "bad",
    [
        np.array([0.1, np.nan]),
        np.array([[0.1, np.inf]]),
        np.zeros((2, 3, 4)),
        np.zeros((0, 3)),
        np.zeros((2, 0)),
    ],
)
def test_features_reject_bad_shapes_and_nan(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="distances"):
        features(bad, 0.15)


# -- fitting and scoring -------------------------------------------------------------------


def test_fit_separates_held_out_shadow_models(fitted: Discriminator) -> None:
    test_distances, test_labels = shadow_distances(1)
    proba = fitted.predict_proba(test_distances)
    assert proba.shape == (24,)
    assert np.all((proba > 0.0) & (proba < 1.0))
    # The bounded CV log-loss does not reward LDA's +-1000 logits on separable data.
    assert np.abs(fitted.decision_function(test_distances)).max() < 30
    assert roc_auc(test_labels, proba) == 1.0
    assert roc_auc(test_labels, fitted.decision_function(test_distances)) == 1.0
    np.testing.assert_array_equal(fitted.predict(test_distances), test_labels)
    record = fitted.record
    assert record.selection == "cross_validation"
    assert record.cv_folds == 5
    assert [s.id for s in record.cv_scores] == [c.id for c in CANDIDATES]
    assert all(len(s.fold_auc) == 5 for s in record.cv_scores)
    assert (record.n_train.innocent, record.n_train.infringing) == (12, 12)
    assert record.num_keys == M


def test_selection_is_best_auc_then_log_loss(fitted: Discriminator) -> None:
    scores = fitted.cv_scores
    best = max(s.mean_auc for s in scores)
    tied = [s for s in scores if s.mean_auc == best]
    assert fitted.candidate.id == min(tied, key=lambda s: s.mean_log_loss).id


def test_decision_function_matches_sklearn_refit(fitted: Discriminator) -> None:
    distances, labels = shadow_distances(0)
    x = features(distances, 0.15)
    pipeline = make_pipeline(fitted.candidate).fit(x, labels)
    test_distances, _ = shadow_distances(1)
    x_test = features(test_distances, 0.15)
    np.testing.assert_allclose(
        fitted.decision_function(test_distances), pipeline.decision_function(x_test), rtol=1e-10, atol=1e-10
    )
    np.testing.assert_allclose(
        fitted.predict_proba(test_distances), pipeline.predict_proba(x_test)[:, 1], rtol=1e-10, atol=1e-12
    )


def test_lda_probability_is_the_sigmoid_of_its_decision_function() -> None:
    # Nearly overlapping classes, so held-out probabilities are not all saturated at 0 or 1.
    distances, labels = shadow_distances(5, per_class=8)
    held_out, _ = shadow_distances(6, per_class=8)
    distances[:8] += 0.14
    held_out[:8] += 0.14
    x, x_held_out = features(distances, 0.15), features(held_out, 0.15)
    (lda,) = [c for c in CANDIDATES if c.kind == "lda"]
    pipeline = make_pipeline(lda).fit(x, labels)
    sk_proba = pipeline.predict_proba(x_held_out)[:, 1]
    assert np.sum((sk_proba > 0.01) & (sk_proba < 0.99)) >= 4
    np.testing.assert_allclose(
        sk_proba, expit(pipeline.decision_function(x_held_out)), rtol=1e-12, atol=1e-15
    )

    ours = Discriminator().fit(distances, labels, candidates=[lda.id])
    assert ours.candidate.kind == "lda"
    np.testing.assert_allclose(ours.predict_proba(held_out), sk_proba, rtol=1e-9, atol=1e-12)


def test_fit_is_deterministic() -> None:
    distances, labels = shadow_distances(2)
    a = Discriminator(random_state=7).fit(distances, labels).to_dict()
    b = Discriminator(random_state=7).fit(distances, labels).to_dict()
    assert a == b


def test_a_single_member_class_skips_cross_validation() -> None:
    distances, labels = shadow_distances(4, per_class=5)
    keep = np.r_[0, 5:10]  # one infringing, five innocent
    model = Discriminator().fit(distances[keep], labels[keep])
    assert model.record.selection == "default"
    assert model.record.cv_folds is None
    assert model.cv_scores == ()
    assert model.candidate.id == "logreg_C1"


def test_folds_shrink_to_the_smallest_class() -> None:
    distances, labels = shadow_distances(6, per_class=6)
    keep = np.r_[0:3, 6:12]  # three infringing, six innocent
    model = Discriminator(cv_folds=5).fit(distances[keep], labels[keep])
    assert model.record.cv_folds == 3


@pytest.mark.parametrize(
    "labels",
    [np.ones(24, dtype=int), np.r_[np.ones(12), np.full(12, 2)], np.ones(23, dtype=int)],
)
def test_fit_rejects_bad_labels(labels: np.ndarray) -> None:
    distances, _ = shadow_distances(0)
    with pytest.raises(ValueError, match="labels|both"):
        Discriminator().fit(distances, labels)


def test_refuses_a_different_number_of_keys(fitted: Discriminator) -> None:
    distances, _ = shadow_distances(1, num_keys=20)
    message = "expected 30 distances per model (the discriminator was fit on 30 keys), got 20"
    with pytest.raises(ValueError) as excinfo:
        fitted.decision_function(distances)
    assert str(excinfo.value) == message
    with pytest.raises(ValueError, match="got 20"):
        fitted.predict_proba(distances[0])


def test_unfitted_discriminator_refuses_to_score() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        Discriminator().decision_function(np.zeros((1, M)))


def test_constructor_and_fit_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="delta0"):
        Discriminator(delta0=1.5)
    with pytest.raises(ValueError, match="cv_folds"):
        Discriminator(cv_folds=1)
    distances, labels = shadow_distances(0, per_class=3)
    with pytest.raises(ValueError, match="candidates"):
        Discriminator().fit(distances, labels, candidates=["svm"])


# -- persistence ---------------------------------------------------------------------------


def test_save_load_round_trip_is_exact(fitted: Discriminator, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "disc.json", keyset_digest=DIGEST)
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == SCHEMA
    assert raw["keyset_digest"] == DIGEST
    assert isinstance(raw["sklearn_version"], str) and raw["sklearn_version"]
    loaded = Discriminator.load(path)
    assert loaded.keyset_digest == DIGEST
    assert loaded.num_keys == M
    assert loaded.candidate == fitted.candidate
    test_distances, _ = shadow_distances(1)
    np.testing.assert_array_equal(
        loaded.decision_function(test_distances), fitted.decision_function(test_distances)
    )
    np.testing.assert_array_equal(loaded.predict_proba(test_distances), fitted.predict_proba(test_distances))
    assert loaded.to_dict() == fitted.to_dict()
    again = Discriminator.from_dict(fitted.to_dict())
    np.testing.assert_array_equal(
        again.decision_function(test_distances), fitted.decision_function(test_distances)
    )


def test_save_refuses_a_malformed_keyset_digest(fitted: Discriminator, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="keyset_digest"):
        fitted.save(tmp_path / "disc.json", keyset_digest="not-a-digest")
    assert not (tmp_path / "disc.json").exists()


def _corrupt(data: dict, change: str) -> dict:
    if change == "version":
        data["schema_version"] = "t2i-auditor.discriminator/v0"
    elif change == "missing_coef":
        del data["coef"]
    elif change == "short_coef":
        data["coef"] = data["coef"][:-1]
    elif change == "short_mean":
        data["scaler_mean"] = data["scaler_mean"][:5]
    elif change == "infinite_intercept":
        data["intercept"] = float("inf")
    elif change == "nan_coef":
        data["coef"][3] = float("nan")
    elif change == "zero_scale":
        data["scaler_scale"][0] = 0.0
    elif change == "num_keys":
        data["num_keys"] = 20
    elif change == "extra":
        data["pickle"] = "gASV"
    elif change == "digest":
        data["keyset_digest"] = "xyz"
    return data


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("version", "schema_version"),
        ("missing_coef", "coef"),
        ("short_coef", "coef"),
        ("short_mean", "scaler_mean"),
        ("infinite_intercept", "Infinity"),
        ("nan_coef", "NaN"),
        ("zero_scale", "scaler_scale"),
        ("num_keys", "feature_names"),
        ("extra", "pickle"),
        ("digest", "keyset_digest"),
    ],
)
def test_load_refuses_corrupted_files(fitted: Discriminator, tmp_path: Path, change: str, field: str) -> None:
    path = tmp_path / "disc.json"
    data = _corrupt(fitted.to_dict(DIGEST), change)
    path.write_text(json.dumps(data))  # allow_nan: json writes NaN/Infinity, as a careless editor might
    with pytest.raises(BadInputError) as excinfo:
        Discriminator.load(path)
    message = str(excinfo.value)
    assert str(path) in message
    # a field by name, or a value the strict JSON reader refuses before validation
    assert re.search(rf"field '{re.escape(field)}(\.[0-9]+)?'|{field} is not a number", message) or (
        field == "schema_version" and "schema_version" in message
    ), message


def test_files_written_before_the_version_field_was_renamed_still_load(fitted, tmp_path: Path) -> None:
    data = fitted.to_dict(DIGEST)
    data["format"] = data.pop("schema_version").replace(
        "t2i-auditor.discriminator/v1", "t2i-auditor-discriminator-v1"
    )
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert Discriminator.load(tmp_path / "old.json").to_dict() == fitted.to_dict(DIGEST)
    data["format"] = "t2i-auditor-discriminator-v0"
    (tmp_path / "older.json").write_text(json.dumps(data))
    with pytest.raises(BadInputError, match="expected schema_version 't2i-auditor.discriminator/v1'"):
        Discriminator.load(tmp_path / "older.json")


def test_load_refuses_non_json_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "disc.json"
    path.write_bytes(b"\x80\x04\x95 not json")
    with pytest.raises(BadInputError, match="expected JSON"):
        Discriminator.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(BadInputError, match="JSON object"):
        Discriminator.load(path)
    with pytest.raises(BadInputError, match="not found"):
        Discriminator.load(tmp_path / "absent.json")


def test_fit_on_five_shadows_skips_candidates_a_fold_cannot_fit():
    """3 + 2 shadows give 2-fold CV with 2-model training folds, too few for LDA: it is
    dropped from the search instead of failing the fit."""
    rng = np.random.default_rng(5)
    distances = np.concatenate([rng.uniform(0.05, 0.12, (3, 10)), rng.uniform(0.2, 0.3, (2, 10))])
    model = Discriminator().fit(distances, np.array([1, 1, 1, 0, 0]))
    assert model.candidate.kind == "logistic_regression"
    assert all(not s.id.startswith("lda") for s in model.cv_scores) or model.record.selection == "default"
    assert model.predict(distances).tolist() == [1, 1, 1, 0, 0]
