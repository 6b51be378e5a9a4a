"""Fuzz every RPC of a real coordinator for longer than the test suite does.

    python benchmarks/fuzz_rpcs.py [--seconds-per-rpc 20]

The same strategies and checks as tests/integration/test_fuzz_rpcs.py (requests built from each
method's descriptor by hypothesis; UNKNOWN, INTERNAL or a hung unary call counts as broken), but
with fresh randomness and a time budget per RPC instead of a fixed number of examples. Prints how
many inputs each RPC got and every broken answer, then whether the coordinator is still healthy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import grpc
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from matrec.sdk.local_cluster import LocalCluster
from support.fuzz import messages
from support.rpcs import BROKEN, METHODS, answer

BATCH = 10  # examples per hypothesis run; runs repeat until the RPC's time is up


def fuzz_one(
    channel: grpc.Channel, method: MethodDescriptor, seconds: float, broken: list[str]
) -> int:
    """Random requests to one RPC for `seconds`; returns how many were sent."""
    name = f"{method.containing_service.name}.{method.name}"
    sent = 0

    @settings(
        max_examples=BATCH, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(request=messages(method.input_type))
    def fuzz(request: object) -> None:
        nonlocal sent
        sent += 1
        code = answer(channel, method, request)
        if code in BROKEN:
            broken.append(f"{name}: {code.name} for {request!r}"[:500])

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fuzz()
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds-per-rpc", type=float, default=20.0)
    args = parser.parse_args(argv)
    broken: list[str] = []
    counts: dict[str, int] = {}
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as root,
        LocalCluster(Path(root) / "c", agents=0) as cluster,
        grpc.insecure_channel(cluster.address) as channel,
    ):
        for method in METHODS:
            name = f"{method.containing_service.name}.{method.name}"
            counts[name] = fuzz_one(channel, method, args.seconds_per_rpc, broken)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    print("| RPC | inputs |")
    print("|---|---|")
    for name, count in counts.items():
        print(f"| {name} | {count:,} |")
    print(
        f"\n{sum(counts.values()):,} inputs in {time.monotonic() - started:.0f} s; "
        f"{len(broken)} broken answers; coordinator "
        f"{health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}"
    )
    for line in broken:
        print("BROKEN", line)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
