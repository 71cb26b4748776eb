"""metrics.py: error rates, per-class accuracy and the confusion by hand, and learning as an
error clearly below chance."""

from __future__ import annotations

import math

import pytest
import torch

from tinycnn.metrics import error_rates, per_class_accuracy

# (top-1 error, images, classes, learning?) after epoch 1 (results/README.md, "The not-learning
# warning"): healthy runs, then stuck ones.
AFTER_EPOCH_1 = [
    (0.7135, 960, 10, True),  # configs/quick.toml on the mini data: train (loss 2.286 ~ ln 10)
    (0.8020, 500, 10, True),  # the same run's val
    (0.8320, 500, 10, True),  # its val with train.seed=1, the weakest of seeds 0-2
    (0.9594, 99_968, 200, True),  # paper8 with batch norm, full data: train
    (0.9474, 10_000, 200, True),  # configs/paper/paper8_l2_5e-4.toml, full data: val
    (0.8781, 960, 10, False),  # quick.toml with optim.lr=10: train (loss 11.8)
    (0.8940, 500, 10, False),  # the same run's val
    (0.8862, 896, 10, False),  # the paper's as-written preset on the mini data: train (loss 5.50)
    (0.8896, 960, 10, False),  # quick.toml with optim.lr=1e-9: train
    (0.9929, 10_000, 200, False),  # the as-written preset on the full data: val
    (0.9936, 10_000, 200, False),  # the same with model.init = "caffe_xavier": val
    (0.9950, 0, 200, False),  # no images: no evidence
]


@pytest.mark.parametrize(("error", "count", "classes", "expected"), AFTER_EPOCH_1)
def test_learning_is_an_error_clearly_below_chance(
    error: float, count: int, classes: int, expected: bool
) -> None:
    from tinycnn.metrics import clearly_below_chance

    assert clearly_below_chance(error, count, classes) is expected


def test_error_rates_of_no_images_are_nan() -> None:
    rates = error_rates(torch.empty(0, 7), torch.empty(0, dtype=torch.int64))
    assert rates["count"] == 0
    assert all(math.isnan(rates[k]) for k in ("loss", "top1_error", "top5_error"))


def test_confusion_counts_repeated_mistakes() -> None:
    # Three images of class 1 all called class 2, two of class 0 right: cells above 1.
    logits = torch.tensor([[5.0, 0, 0], [5, 0, 0], [0, 0, 5], [0, 0, 5], [0, 0, 5]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    accuracy, confusion = per_class_accuracy(logits, labels, 3)
    assert confusion.tolist() == [[2, 0, 0], [0, 0, 3], [0, 0, 0]]
    assert accuracy[0] == 1.0 and accuracy[1] == 0.0 and math.isnan(accuracy[2])


def test_error_rates_by_hand() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    labels = torch.tensor([0, 2, 1, 1])
    rates = error_rates(logits, labels)
    assert rates["top1_error"] == 0.75 and rates["count"] == 4  # only row 0 is right
    assert rates["top5_error"] == 0.0  # 3 classes: everything is in the top 5
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert rates["loss"] == pytest.approx(expected)
    accuracy, confusion = per_class_accuracy(logits, labels, 3)
    assert accuracy[0] == 1.0 and accuracy[1] == 0.0 and accuracy[2] == 0.0
    assert confusion.tolist() == [[1, 0, 0], [1, 0, 1], [0, 1, 0]]


def test_top5_error_by_hand_with_seven_classes() -> None:
    # Each row's label sits at a chosen rank: top-1 and top-5 errors differ from each other and
    # from 0, and a top-4 (or top-6) error would differ from both.
    descending = [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    ascending = descending[::-1]
    logits = torch.tensor([descending, descending, descending, ascending, ascending, ascending])
    labels = torch.tensor([0, 4, 5, 2, 6, 0])  # ranks 1, 5, 6, 5, 1, 7
    rates = error_rates(logits, labels)
    assert rates["count"] == 6
    assert rates["top1_error"] == pytest.approx(4 / 6)  # rows 1, 2, 3, 5
    assert rates["top5_error"] == pytest.approx(2 / 6)  # rows 2 (rank 6) and 5 (rank 7)
    log_sum = math.log(sum(math.exp(v) for v in descending))
    by_hand = [
        log_sum - row[label] for row, label in zip(logits.tolist(), labels.tolist(), strict=True)
    ]
    assert rates["loss"] == pytest.approx(sum(by_hand) / 6)
    accuracy, confusion = per_class_accuracy(logits, labels, 7)
    assert confusion[0].tolist() == [1, 0, 0, 0, 0, 0, 1]  # row 0 right, row 5 said class 6
    assert confusion.sum() == 6 and confusion.diagonal().sum() == 2
    assert accuracy[0] == 0.5 and accuracy[6] == 1.0 and accuracy[4] == 0.0
    assert math.isnan(accuracy[1]) and math.isnan(accuracy[3])  # no images of that class


def test_tied_logits_count_the_argmax_as_every_other_figure_does() -> None:
    # All logits equal: argmax says class 0 for every image (so do training's error, the
    # confusion matrix and predictions); topk's first index is another class on CPU.
    labels = torch.cat([torch.zeros(30, dtype=torch.long), torch.arange(1, 8).repeat(10)])
    logits = torch.zeros(100, 10)
    rates = error_rates(logits, labels)
    assert rates["top1_error"] == pytest.approx(0.7)  # by hand: 30 of 100 images are class 0
    _, confusion = per_class_accuracy(logits, labels, 10)
    assert rates["top1_error"] == pytest.approx(1 - confusion.trace().item() / 100)
    assert rates["top5_error"] <= rates["top1_error"]  # a top-1 hit is a top-5 hit
