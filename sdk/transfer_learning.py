"""The seed's module name for transfer learning: `from matrec.sdk.transfer_learning import
transfer_learn` works as in the seed. A thin alias of `matrec.sdk.transfer`."""

from __future__ import annotations

from matrec.sdk.transfer import TransferResult, transfer_learn

__all__ = ["TransferResult", "transfer_learn"]
