"""Active learning's numerical core, shared by the coordinator, the SDK and the benchmarks:
uncertainty and diversity selection (selection.py) and distribution-shift tests (drift.py)."""
