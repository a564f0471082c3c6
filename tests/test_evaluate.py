"""Metrics as plain records: scikit-learn's figures, in the shape run.json and the reports read."""

import numpy as np
import pytest
import torch

from headstart.evaluate import classification_metrics
from headstart.train import balanced_accuracy


def one_hot_logits(predicted: list[int], num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predicted), num_classes).float()


def test_metrics_on_a_case_worked_by_hand():
    """Class a: 4 images, 2 right, one taken for b, one for c. Class b: 2 images, both right. Class c: no image
    but predicted once: it must not count in balanced accuracy, and its precision is 0."""
    labels = torch.tensor([0, 0, 0, 1, 1, 0])
    predicted = [0, 0, 1, 1, 1, 2]
    m = classification_metrics(one_hot_logits(predicted, 3), labels, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 1], [0, 2, 0], [0, 0, 0]]  # rows: true class, columns: predicted
    assert m["accuracy"] == pytest.approx(4 / 6) and m["n"] == 6
    assert m["balanced_accuracy"] == pytest.approx((2 / 4 + 2 / 2) / 2)  # mean recall of the classes present
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "support": 4}
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "support": 2}
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "support": 0}


def test_a_class_never_predicted_has_precision_zero_without_a_warning(recwarn):
    m = classification_metrics(one_hot_logits([0, 0, 0], 2), torch.tensor([0, 1, 1]), ["a", "b"])
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "support": 2}
    assert m["per_class"]["a"]["precision"] == pytest.approx(1 / 3) and not recwarn.list


def test_training_selects_on_the_balanced_accuracy_evaluate_reports():
    g = torch.Generator().manual_seed(0)
    for num_classes in (2, 3, 5):
        logits = torch.randn(40, num_classes, generator=g)
        labels = torch.randint(0, num_classes - 1, (40,), generator=g)  # the last class absent, as in tiny vals
        reported = classification_metrics(logits, labels, [str(c) for c in range(num_classes)])
        assert balanced_accuracy(logits, labels) == pytest.approx(reported["balanced_accuracy"])
        assert np.trace(reported["confusion_matrix"]) / 40 == pytest.approx(reported["accuracy"])
