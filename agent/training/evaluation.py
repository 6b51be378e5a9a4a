"""Evaluation: predictions over a loader, and the metrics computed from them.

The metric functions take plain tensors (logits, labels), so they are checked by hand on small
fixed examples. Conventions: the confusion matrix has true classes as rows and predictions as
columns; precision of a class never predicted, recall of a class absent from the labels, and F1
where both are 0, are 0 (as scikit-learn's zero_division=0); macro-F1 is the unweighted mean
over all classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

#: Computes logits for (images, sample indices) on the model's device.
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Predictions:
    logits: torch.Tensor  # (n, classes), float32, on the CPU
    labels: torch.Tensor  # (n,), int64

    @property
    def loss(self) -> float:
        if len(self.labels) == 0:
            return math.nan
        return float(F.cross_entropy(self.logits, self.labels).item())

    @property
    def accuracy(self) -> float:
        if len(self.labels) == 0:
            return math.nan
        return float((self.logits.argmax(dim=1) == self.labels).float().mean().item())


def predict(
    forward: Forward, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> Predictions:
    """Run `forward` (in inference mode) over (images, labels, indices) batches."""
    logits: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    with torch.inference_mode():
        for images, batch_labels, indices in batches:
            logits.append(forward(images, indices).float().cpu())
            labels.append(batch_labels.cpu())
    if not logits:
        return Predictions(torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64))
    return Predictions(torch.cat(logits), torch.cat(labels))


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes x classes) counts: row = true class, column = predicted class."""
    flat = labels.to(torch.int64) * classes + predicted.to(torch.int64)
    return torch.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def per_class_scores(matrix: torch.Tensor) -> list[dict[str, float]]:
    """Precision, recall, F1 and support of each class, from a confusion matrix."""
    scores = []
    for c in range(matrix.shape[0]):
        true_positives = float(matrix[c, c])
        predicted = float(matrix[:, c].sum())
        support = float(matrix[c, :].sum())
        precision = true_positives / predicted if predicted else 0.0
        recall = true_positives / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append({"precision": precision, "recall": recall, "f1": f1, "support": int(support)})
    return scores


def macro_f1(matrix: torch.Tensor) -> float:
    scores = per_class_scores(matrix)
    return sum(s["f1"] for s in scores) / len(scores) if scores else math.nan


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of samples whose label is among the k highest logits (k capped at the classes)."""
    if len(labels) == 0:
        return math.nan
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return float((top == labels.unsqueeze(1)).any(dim=1).float().mean().item())


def evaluation_report(predictions: Predictions, classes: list[str], top_k: int) -> dict[str, Any]:
    """The result's "evaluation" entry."""
    matrix = confusion_matrix(predictions.logits.argmax(dim=1), predictions.labels, len(classes))
    scores = per_class_scores(matrix)
    return {
        "accuracy": predictions.accuracy,
        "macro_f1": macro_f1(matrix),
        "top_k_accuracy": top_k_accuracy(predictions.logits, predictions.labels, top_k),
        "top_k": min(top_k, len(classes)),
        "classes": list(classes),
        "per_class": dict(zip(classes, scores, strict=True)),
        "confusion_matrix": matrix.tolist(),
    }
