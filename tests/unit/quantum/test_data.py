"""Datasets, the seeded split and the numpy preprocessing (checked against scikit-learn)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from quantum.data import load_dataset, split_dataset
from quantum.errors import DatasetError
from quantum.preprocess import fit_preprocessor


def test_split_is_stratified_seeded_and_disjoint() -> None:
    iris = load_dataset("iris")
    a = split_dataset(iris, test_fraction=0.3, seed=1)
    b = split_dataset(iris, test_fraction=0.3, seed=1)
    c = split_dataset(iris, test_fraction=0.3, seed=2)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert len(a.x_test) == 45
    assert len(a.x_train) == 105
    for label in ("setosa", "versicolor", "virginica"):
        assert int(np.sum(a.y_test == label)) == 15
    every = sorted(map(tuple, np.concatenate([a.x_train, a.x_test]).tolist()))
    assert every == sorted(map(tuple, iris.features.tolist()))  # each row once, in one part
    small = split_dataset(iris, test_fraction=0.3, seed=1, max_train=30)
    assert len(small.x_train) == 30
    assert sorted(set(small.y_train.tolist())) == ["setosa", "versicolor", "virginica"]


def test_pca_matches_scikit_learn_up_to_sign() -> None:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    digits = load_dataset("digits")
    x = digits.features[:500]
    pre = fit_preprocessor(x, 6)
    assert pre.components is not None
    assert pre.components.shape == (6, 64)
    z = StandardScaler().fit_transform(x)
    reference = PCA(n_components=6, svd_solver="full").fit(z).components_
    for ours, theirs in zip(pre.components, reference, strict=True):
        assert abs(abs(float(ours @ theirs)) - 1) < 1e-6
    angles = pre.transform(x)
    assert angles.shape == (500, 6)
    assert angles.min() == pytest.approx(0.0)
    assert angles.max() == pytest.approx(math.pi)


def test_constant_features_do_not_divide_by_zero() -> None:
    x = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    angles = fit_preprocessor(x, 2).transform(x)
    assert np.isfinite(angles).all()
    with pytest.raises(ValueError, match="cannot fill 3 qubits"):
        fit_preprocessor(x, 3)


def test_csv_with_a_named_label_column(tmp_path: Path) -> None:
    path = tmp_path / "points.csv"
    path.write_text("kind,a,b\nred,1,2\nblue,3,4\nred,5,6\n\n")
    data = load_dataset(str(path), label_column="kind")
    assert data.feature_names == ["a", "b"]
    np.testing.assert_array_equal(data.features, [[1, 2], [3, 4], [5, 6]])
    assert data.labels.tolist() == ["red", "blue", "red"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b,label\n1,2,x\n3,oops,y\n", "line 3"),
        ("a,b,label\n1,2,x\n3,4\n", "line 3: 2 cells"),
        ("a,b,label\n", "at least one data row"),
        ("a,b,label\n1,inf,x\n", "finite"),
    ],
)
def test_bad_csv_files_say_where(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(str(path))


def test_unknown_dataset_and_bad_splits() -> None:
    with pytest.raises(DatasetError, match=r"iris, digits or a \.csv"):
        load_dataset("mnist")
    with pytest.raises(DatasetError, match="test_fraction"):
        split_dataset(load_dataset("iris"), test_fraction=1.5, seed=0)
