"""The seed's module name for hyperparameter optimisation: `from
matrec.sdk.hyperparameter_optimization import optimize_hyperparameters` works as in the seed.
A thin alias of `matrec.sdk.hpo`."""

from __future__ import annotations

from matrec.sdk.hpo import DEFAULT_HP_SPACE, HPOResult, StudyFailedError, optimize_hyperparameters

__all__ = ["DEFAULT_HP_SPACE", "HPOResult", "StudyFailedError", "optimize_hyperparameters"]
