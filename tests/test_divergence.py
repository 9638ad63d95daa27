"""A run whose loss ends above where it started is named (a collapse to chance with finite losses
passed silently in the Hinton protocol); a run that learns is not."""
from __future__ import annotations

import warnings

import pytest

import condense
from condense.train.fit import DivergenceWarning, warn_if_diverged


def test_a_loss_that_ends_higher_than_it_started_warns_with_both_numbers():
    with pytest.warns(DivergenceWarning, match=r"last epoch's train loss 2\.3 is above the first epoch's 0\.9"):
        warn_if_diverged([{"train_loss": 0.9}, {"train_loss": 0.5}, {"train_loss": 2.3}])


@pytest.mark.parametrize("history", [
    [{"train_loss": 2.0}, {"train_loss": 1.0}, {"train_loss": 0.5}],  # learning
    [{"train_loss": 0.9}, {"train_loss": 2.3}],  # too short to judge
    [{"train_loss": float("nan")}, {"train_loss": 1.0}, {"train_loss": 3.0}],  # the non-finite guard's business
    [{"val_loss": 1.0}, {"val_loss": 2.0}, {"val_loss": 3.0}],  # no train loss recorded
])
def test_no_warning_otherwise(history):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        warn_if_diverged(history)


def test_a_normal_fit_does_not_warn():
    splits = condense.load_dataset("digits")
    model = condense.build_model("mlp", in_channels=1, image_size=8, hidden=[16])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        condense.train_model(model, splits.train, condense.TrainConfig(epochs=3, lr=3e-3, progress="off"))
