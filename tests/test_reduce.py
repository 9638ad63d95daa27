"""Data reduction: PCA / whitening, feature selection, coresets (fast; sklearn digits and breast-cancer)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from condense.core.errors import ConfigError, InputFileError
from condense.data.base import ArrayDataset, make_splits
from condense.reduce import (
    CoresetConfig,
    FeatureSelection,
    PCAConfig,
    PCATransform,
    SelectConfig,
    embed,
    fit_pca,
    k_center_greedy,
    kmeans_select,
    reduce_data,
    select_coreset,
)


@pytest.fixture(scope="module")
def cancer():
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return make_splits("breast_cancer", d.data, d.target, seed=0)


# -- PCA ---------------------------------------------------------------------------------------------
def test_pca_matches_sklearn_and_is_fitted_on_train_only(cancer):
    from sklearn.decomposition import PCA

    res = reduce_data(cancer, PCAConfig(n_components=5, whiten=True))
    ref = PCA(n_components=5, whiten=True, svd_solver="full").fit(cancer.train.inputs.double().numpy())
    for split in ("train", "val", "test"):
        got = getattr(res.data, split).inputs.numpy()
        want = ref.transform(getattr(cancer, split).inputs.double().numpy())
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    tf = res.transform
    np.testing.assert_allclose(tf.mean, cancer.train.inputs.mean(0).numpy(), atol=1e-5)
    all_x = torch.cat([cancer.train.inputs, cancer.val.inputs, cancer.test.inputs])
    assert not np.allclose(tf.mean, all_x.mean(0).numpy(), atol=1e-3)  # val / test never used to fit
    # whitened on train: unit variance there, not (exactly) on test
    np.testing.assert_allclose(res.data.train.inputs.var(0, correction=1).numpy(), np.ones(5), atol=1e-3)
    assert res.data.input_shape == (5,)
    assert res.data.info["reduce"][-1]["n_components"] == 5
    assert torch.equal(res.data.test.targets, cancer.test.targets)
    assert cancer.train.inputs.shape[1] == 30  # caller's data untouched


def test_pca_roundtrip_module_and_variance_fraction(cancer, tmp_path):
    tf = fit_pca(cancer.train, PCAConfig(n_components=0.9))
    assert 1 <= tf.n_components < 30 and tf.explained_variance_ratio.sum() >= 0.9
    assert tf.explained_variance_ratio[:-1].sum() < 0.9  # the smallest count that reaches 90 %
    path = tf.save(tmp_path / "pca.json")
    back = PCATransform.load(path)
    x = cancer.test.inputs
    torch.testing.assert_close(back.transform(x), tf.transform(x))
    mod = tf.as_module()
    assert not list(mod.parameters())  # frozen constants, nothing for an optimizer
    torch.testing.assert_close(mod(x), tf.transform(x))
    full = fit_pca(cancer.train, PCAConfig())
    torch.testing.assert_close(full.inverse_transform(full.transform(x)), x, atol=1e-3, rtol=1e-3)
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(InputFileError, match="bad.json"):
        PCATransform.load(tmp_path / "bad.json")


def test_pca_on_teacher_features(digits_splits):
    from condense.models import build_model

    torch.manual_seed(0)
    teacher = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=4).eval()
    res = reduce_data(digits_splits, PCAConfig(n_components=3, on="features"), model=teacher)
    feats = embed(teacher, digits_splits.val)
    assert feats.shape == (len(digits_splits.val), 16)
    torch.testing.assert_close(res.data.val.inputs, res.transform.transform(feats))
    with pytest.raises(ConfigError, match="no model"):
        reduce_data(digits_splits, PCAConfig(n_components=3, on="features"))


def test_pca_more_components_than_features_is_an_error(cancer):
    with pytest.raises(ConfigError, match=r"n_components=31.*30 features"):
        reduce_data(cancer, PCAConfig(n_components=31))
    with pytest.raises(ConfigError, match="variance fraction"):
        PCAConfig(n_components=1.5)
    with pytest.raises(ConfigError, match="unknown key"):
        reduce_data(cancer, {"method": "pca", "n_component": 3})


# -- feature selection -------------------------------------------------------------------------------
@pytest.mark.parametrize("score", ["f_classif", "chi2", "mutual_info"])
def test_feature_selection_keeps_k_features(cancer, score, tmp_path):
    res = reduce_data(cancer, {"method": "select", "k": 7, "score": score})
    tf = res.transform
    assert isinstance(tf, FeatureSelection) and tf.k == 7 and len(set(tf.support.tolist())) == 7
    assert res.data.train.inputs.shape == (len(cancer.train), 7)
    assert res.data.test.inputs.shape == (len(cancer.test), 7)
    assert torch.equal(res.data.test.inputs, cancer.test.inputs[:, torch.as_tensor(tf.support)])
    # the kept features are the k best-scoring ones
    order = np.argsort(-tf.scores, kind="stable")
    assert set(tf.support.tolist()) == set(order[:7].tolist()) or np.isclose(
        tf.scores[order[6]], tf.scores[order[7]])
    back = FeatureSelection.load(tf.save(tmp_path / "sel.json"))
    assert back.support.tolist() == tf.support.tolist()
    torch.testing.assert_close(tf.as_module()(cancer.val.inputs), res.data.val.inputs)


def test_feature_selection_matches_sklearn_on_train_only(cancer):
    from sklearn.feature_selection import SelectKBest, f_classif

    res = reduce_data(cancer, SelectConfig(k=5))
    ref = SelectKBest(f_classif, k=5).fit(cancer.train.inputs.double().numpy(), cancer.train.targets.numpy())
    assert res.transform.support.tolist() == sorted(ref.get_support(indices=True).tolist())


def test_feature_selection_bad_input(cancer):
    with pytest.raises(ConfigError, match=r"k=31.*30 features"):
        reduce_data(cancer, SelectConfig(k=31))
    with pytest.raises(ConfigError, match="unlabelled"):
        reduce_data(cancer.train.without_labels(), SelectConfig(k=3))


# -- coresets -----------------------------------------------------------------------------------------
def test_k_center_greedy_picks_the_farthest_point():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0], [0.0, 3.0]])
    # from point 0 the farthest is (10, 0); then nearest-centre distances are 1, 2, 3 for
    # (1, 0), (2, 0), (0, 3) -> (0, 3); then 1, 2 -> (2, 0)
    assert k_center_greedy(x, 4, initial=[0]).tolist() == [0, 3, 4, 2]
    assert k_center_greedy(x, 1, initial=[2]).tolist() == [2]


def test_kmeans_select_takes_the_sample_nearest_each_centroid():
    x = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.3]])
    got = sorted(kmeans_select(x, 2, seed=0).tolist())
    assert got == [1, 4]  # the medoid-like sample of each tight cluster


@pytest.mark.parametrize("strategy", ["k_center", "kmeans", "random"])
def test_coreset_is_deterministic_and_covers_every_class(digits_splits, strategy):
    data = digits_splits.train
    cfg = CoresetConfig(size=40, strategy=strategy, on="inputs", seed=3)
    a, b = select_coreset(data, cfg), select_coreset(data, cfg)
    assert a.positions.tolist() == b.positions.tolist()
    assert set(a.data.targets.tolist()) == set(range(10))
    assert len(set(a.positions.tolist())) == len(a.positions) >= 40
    assert torch.equal(a.data.indices, data.indices[torch.as_tensor(a.positions)])
    other = select_coreset(data, cfg.replace(seed=4))
    assert other.positions.tolist() != a.positions.tolist()


def test_coreset_tops_up_missing_classes():
    # 20 samples of class 0 spread out, 2 of class 1 sitting in the middle: k-center with k=3 misses class 1
    x = torch.cat([torch.linspace(-10, 10, 20)[:, None], torch.zeros(2, 1)])
    y = torch.tensor([0] * 20 + [1] * 2)
    data = ArrayDataset(x, y, torch.arange(22))
    res = select_coreset(data, CoresetConfig(size=2, strategy="k_center", on="inputs", seed=0))
    assert res.info["classes_topped_up"] == [1]
    assert len(res.data) == 3 and set(res.data.targets.tolist()) == {0, 1}
    off = select_coreset(data, CoresetConfig(size=2, strategy="k_center", on="inputs", seed=0, cover_classes=False))
    assert len(off.data) == 2
    unl = select_coreset(data.without_labels(), CoresetConfig(size=2, on="inputs"))  # no labels: nothing to cover
    assert len(unl.data) == 2 and unl.data.targets is None


def test_coreset_on_teacher_embeddings_and_splits(digits_splits):
    from condense.models import build_model

    torch.manual_seed(0)
    teacher = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=4).eval()
    res = reduce_data(digits_splits, CoresetConfig(fraction=0.1), model=teacher)
    assert res.method == "coreset" and res.data.train is not digits_splits.train
    assert abs(len(res.data.train) - round(0.1 * len(digits_splits.train))) <= 10
    assert res.data.test is digits_splits.test  # only the training split shrinks
    assert res.data.info["reduce"][-1]["strategy"] == "k_center"


def test_coreset_larger_than_the_data_is_an_error(digits_splits):
    n = len(digits_splits.train)
    with pytest.raises(ConfigError, match=rf"size {n + 1} is larger than the data \({n} samples\)"):
        reduce_data(digits_splits.train, CoresetConfig(size=n + 1, on="inputs"))
    with pytest.raises(ConfigError, match="exactly one"):
        CoresetConfig(size=3, fraction=0.5)
    with pytest.raises(ConfigError, match="no model"):
        reduce_data(digits_splits.train, CoresetConfig(size=3))
    with pytest.raises(ConfigError, match="needs 'method'"):
        reduce_data(digits_splits.train, {"size": 3})
    with pytest.raises(ConfigError, match="did you mean"):
        reduce_data(digits_splits.train, {"method": "corset", "size": 3})


def test_stratify_by_predicted_class_splits_the_budget(digits_splits):
    from condense.reduce.coreset import predicted_classes, proportional_budgets

    assert proportional_budgets([100, 10, 1], 10) == [8, 1, 1]
    assert proportional_budgets([3, 0, 7], 10) == [3, 0, 7]
    assert sum(proportional_budgets([5, 5, 5], 2)) == 2

    class ByFirstPixel(torch.nn.Module):  # a "teacher" that predicts class = first pixel bucket
        def forward(self, x):
            return torch.nn.functional.one_hot((x.flatten(1)[:, 10] > 0).long(), 2).float()

    data = digits_splits.train
    model = ByFirstPixel()
    pred = predicted_classes(model, data)
    res = select_coreset(data, CoresetConfig(size=50, on="inputs", stratify="predicted", cover_classes=False), model)
    counts = np.bincount(pred[res.positions], minlength=2)
    want = proportional_budgets(np.bincount(pred, minlength=2).tolist(), 50)
    assert counts.tolist() == want and len(res.positions) == 50
    with pytest.raises(ConfigError, match="stratify"):
        select_coreset(data, CoresetConfig(size=5, on="inputs", stratify="predicted"))
