"""A fine-tune's evaluation on its validation set, as a typed view of the job's result.

The finetune task stores it under ``result["evaluation"]``. Through the coordinator the result is
a protobuf Struct, whose only number type is float; `Evaluation.from_result` turns the counts
(supports, confusion-matrix cells, k) back into ints, so an in-process result and one read back
from the cluster compare equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


class EvaluationMissingError(ValueError):
    """A result holds no (or a malformed) ``evaluation`` entry."""


@dataclass(frozen=True)
class ClassMetrics:
    """One class's precision, recall and F1 on the validation set; `support` is its image count."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Evaluation:
    """Validation metrics of a trained model.

    `confusion_matrix[i][j]` counts images of class ``classes[i]`` predicted as ``classes[j]``
    (rows true, columns predicted). `top_k_accuracy` is the share of images whose true class is
    among the `top_k` highest scores.
    """

    accuracy: float
    macro_f1: float
    top_k_accuracy: float
    top_k: int
    classes: list[str]
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]

    @property
    def support(self) -> int:
        """Validation images in total."""
        return sum(sum(row) for row in self.confusion_matrix)

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> Evaluation:
        """The evaluation of a finetune result dict (a job's `result` or `FinetuneResult`'s
        dict). Raises EvaluationMissingError when it has none."""
        raw = result.get("evaluation")
        if not isinstance(raw, Mapping):
            raise EvaluationMissingError("the result holds no evaluation")
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Evaluation:
        """Build from the ``evaluation`` mapping itself. Raises EvaluationMissingError."""
        try:
            classes = [str(name) for name in raw["classes"]]
            per_class = {
                str(name): ClassMetrics(
                    precision=float(values["precision"]),
                    recall=float(values["recall"]),
                    f1=float(values["f1"]),
                    support=_count(values["support"]),
                )
                for name, values in raw["per_class"].items()
            }
            matrix = [[_count(cell) for cell in row] for row in raw["confusion_matrix"]]
            return cls(
                accuracy=float(raw["accuracy"]),
                macro_f1=float(raw["macro_f1"]),
                top_k_accuracy=float(raw["top_k_accuracy"]),
                top_k=_count(raw["top_k"]),
                classes=classes,
                per_class=per_class,
                confusion_matrix=matrix,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EvaluationMissingError(f"malformed evaluation: {exc!r}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, the shape the finetune task stores."""
        return asdict(self)


def _count(value: Any) -> int:
    """An int that may have travelled as a float (``3.0``); refuses 2.5 or True."""
    if isinstance(value, bool):
        raise TypeError(f"expected a count, got {value!r}")
    if isinstance(value, int):
        return value
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"expected a whole count, got {value!r}")
    return int(number)
