"""Break the headline features on purpose and check that their tests notice.

Usage: python scripts/mutation_check.py [--keep]     (make mutation-check)

Copies the working tree (tracked and untracked, not ignored, files: uncommitted edits
included) to a scratch folder, and for each scripted mutation below changes one file there,
runs the tests named for it with this venv's pytest, and expects every one of them to FAIL.
Prints a table mutation -> test -> killed/survived and exits non-zero when a test survived
(passed with its feature broken) or could not run (error).

The venv holds an editable install of the checkout it was made in, so a plain `import matrec`
would load that checkout, not the scratch copy. The scratch copy therefore gets a folder of its
own holding a regular `matrec` package whose subpackages are links to the copy's folders (as
pyproject.toml's package-dir maps them), and that folder goes first on PYTHONPATH: it wins over
the editable finder in pytest and in every process the tests start. Before each mutation the
script imports the mutated module in that environment and checks that it is the scratch file and
that it holds the mutation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    module: str  # the module that file is imported as
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids, each expected to fail


MUTATIONS = [
    Mutation(
        "auth table: SubmitJob -> viewer",
        "coordinator/auth.py",
        "matrec.coordinator.auth",
        '"/matrec.v1.JobService/SubmitJob": "operator"',
        '"/matrec.v1.JobService/SubmitJob": "viewer"',
        (
            "tests/integration/test_auth.py::test_every_rpc_has_the_expected_access_rule",
            "tests/integration/test_auth.py::"
            "test_every_rpc_refuses_missing_and_weak_tokens[JobService.SubmitJob]",
        ),
    ),
    Mutation(
        "auth table: CreateToken -> operator",
        "coordinator/auth.py",
        "matrec.coordinator.auth",
        '"/matrec.v1.TokenService/CreateToken": "admin"',
        '"/matrec.v1.TokenService/CreateToken": "operator"',
        (
            "tests/integration/test_auth.py::test_every_rpc_has_the_expected_access_rule",
            "tests/integration/test_auth.py::"
            "test_every_rpc_refuses_missing_and_weak_tokens[TokenService.CreateToken]",
        ),
    ),
    Mutation(
        "token TTL: an expired token is still accepted",
        "coordinator/auth.py",
        "matrec.coordinator.auth",
        "if record.expires_at is not None and record.expires_at <= utcnow():",
        "if False:",
        ("tests/integration/test_auth.py::test_a_token_past_its_ttl_is_refused",),
    ),
    Mutation(
        "certificate binding: Connect does not check the agent certificate's name",
        "coordinator/agent_service.py",
        "matrec.coordinator.agent_service",
        "if certified is not None and agent is not None and agent.name != certified:",
        "if False:",
        ("tests/integration/test_tls_cluster.py::test_an_agent_certificate_binds_the_agent_name",),
    ),
    Mutation(
        "rank sharding: every rank trains on the whole global batch",
        "agent/training/finetune.py",
        "matrec.agent.training.finetune",
        "shards = [batch[collective.rank :: collective.size] for batch in batches]",
        "shards = batches",
        (
            "tests/unit/test_distributed.py::"
            "test_two_ranks_take_the_same_steps_as_one_process[torch]",
            "tests/integration/test_gang_cluster.py::"
            "test_distributed_jobs_take_the_same_steps_as_one_process[torch-2 agents x 1 rank]",
        ),
    ),
    Mutation(
        "gang cancel: a gang whose job ended is never stopped",
        "coordinator/scheduler.py",
        "matrec.coordinator.scheduler",
        "if job.state in FINAL_JOB_STATES or job.cancel_requested:",
        "if False:",
        (
            "tests/unit/test_scheduler.py::"
            "test_a_gang_is_placed_all_at_once_and_stopped_all_at_once",
        ),
    ),
    Mutation(
        "gang cancel: the members of an ended job are requeued",
        "coordinator/scheduler.py",
        "matrec.coordinator.scheduler",
        'requeue, reason = False, f"its gang',
        'requeue, reason = True, f"its gang',
        (
            "tests/unit/test_scheduler.py::"
            "test_a_gang_is_placed_all_at_once_and_stopped_all_at_once",
        ),
    ),
    Mutation(
        "download resume: a partial download restarts at byte 0",
        "sdk/client.py",
        "matrec.sdk.client",
        "offset = partial.stat().st_size if partial.exists() else 0\n"
        "        request = jobs_pb2.DownloadArtifactRequest(job_id=job_id, uri=uri, kind=kind, "
        "offset=offset)\n"
        '        digest = ""\n'
        "        try:\n"
        '            with partial.open("ab") as file:',
        "offset = 0\n"
        "        request = jobs_pb2.DownloadArtifactRequest(job_id=job_id, uri=uri, kind=kind, "
        "offset=offset)\n"
        '        digest = ""\n'
        "        try:\n"
        '            with partial.open("wb") as file:',
        ("tests/integration/test_artifacts.py::test_an_interrupted_download_resumes",),
    ),
    Mutation(
        "failed trials: fed to TPE as the best possible loss",
        "coordinator/hpo/search.py",
        "matrec.coordinator.hpo.search",
        'result = {"status": STATUS_FAIL}',
        'result = {"status": STATUS_OK, "loss": 0.0}',
        ("tests/unit/test_hpo_search.py::test_failed_trials_count_for_the_search_as_bad_results",),
    ),
    Mutation(
        "failed trials: left out of TPE's history",
        "coordinator/hpo/search.py",
        "matrec.coordinator.hpo.search",
        "        for trial in history:\n            vals = self.encode(trial.params)",
        "        for trial in history:\n"
        '            if trial.state == "failed":\n'
        "                continue\n"
        "            vals = self.encode(trial.params)",
        ("tests/unit/test_hpo_search.py::test_failed_trials_count_for_the_search_as_bad_results",),
    ),
    Mutation(
        "fuzz: a request crashes the coordinator (GetJob exits the process)",
        "coordinator/job_service.py",
        "matrec.coordinator.job_service",
        "    ) -> jobs_pb2.GetJobResponse:\n",
        "    ) -> jobs_pb2.GetJobResponse:\n        __import__('os')._exit(1)\n",
        (
            "tests/integration/test_fuzz_rpcs.py::"
            "test_random_requests_never_break_the_coordinator[JobService.GetJob]",
        ),
    ),
    Mutation(
        "macro-F1: the mean of recalls instead of F1s",
        "agent/training/evaluation.py",
        "matrec.agent.training.evaluation",
        'return sum(s["f1"] for s in scores)',
        'return sum(s["recall"] for s in scores)',
        ("tests/unit/test_training_runs.py::test_epoch_metrics_include_macro_f1",),
    ),
    Mutation(
        "project preconditions: any job with a model may start a project",
        "coordinator/active_learning/projects.py",
        "matrec.coordinator.active_learning.projects",
        'if model_job.kind != "finetune" or model_job.state != JobState.SUCCEEDED:',
        "if False:",
        (
            "tests/integration/test_active_learning_cluster.py::"
            "test_a_project_needs_a_succeeded_finetune_model",
        ),
    ),
]


def copy_tree(scratch: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a deleted but still tracked file is skipped
            target = scratch / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def make_import_root(scratch: Path) -> Path:
    """A folder whose `matrec` package is the scratch copy (see the module docstring)."""
    with (scratch / "pyproject.toml").open("rb") as file:
        package_dirs = tomllib.load(file)["tool"]["setuptools"]["package-dir"]
    root = scratch / ".mutation-import"
    package = root / "matrec"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, folder in package_dirs.items():
        top, _, sub = name.partition(".")
        if top != "matrec" or "." in sub:
            raise SystemExit(f"unexpected package-dir entry {name!r} in pyproject.toml")
        (package / sub).symlink_to(scratch / folder, target_is_directory=True)
    return root


def check_imports(env: dict[str, str], scratch: Path, mutation: Mutation) -> None:
    """The mutated module, as the tests will import it, is the scratch file with the mutation."""
    probe = (
        "import importlib, os, sys; m = importlib.import_module(sys.argv[1]); "
        "print(os.path.realpath(m.__file__)); print(sys.argv[2] in open(m.__file__).read())"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, mutation.module, mutation.new],
        cwd=scratch, env=env, capture_output=True, text=True,
    )  # fmt: skip
    lines = result.stdout.split()
    expected = os.path.realpath(scratch / mutation.path)
    if result.returncode != 0 or lines != [expected, "True"]:
        raise SystemExit(
            f"{mutation.module} does not import from the mutated scratch copy "
            f"(got {result.stdout.strip() or result.stderr.strip()!r}, expected {expected})"
        )


def run_tests(env: dict[str, str], scratch: Path, tests: tuple[str, ...]) -> dict[str, str]:
    """Each selected test -> failed (any of its parametrisations failed), passed (all passed)
    or error (it did not run, or errored), from pytest's -rA summary."""
    command = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *tests]
    result = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)
    seen: dict[str, set[str]] = {test: set() for test in tests}
    for line in result.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR"):
            node = rest.split(" - ")[0].strip()
            for test in tests:
                if node == test or node.startswith(test + "["):
                    seen[test].add(word)
    outcomes = {
        test: "failed" if "FAILED" in words else "passed" if words == {"PASSED"} else "error"
        for test, words in seen.items()
    }
    if any(outcome == "error" for outcome in outcomes.values()):
        print(result.stdout[-3000:], result.stderr[-2000:], sep="\n", file=sys.stderr)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="matrec-mutation-"))
    rows: list[tuple[str, str, str]] = []
    try:
        copy_tree(scratch)
        import_root = make_import_root(scratch)
        path = [str(import_root), *filter(None, [os.environ.get("PYTHONPATH")])]
        # No bytecode: a restored file must never be run from the mutated file's cache.
        env = os.environ | {"PYTHONPATH": os.pathsep.join(path), "PYTHONDONTWRITEBYTECODE": "1"}
        print(f"scratch copy: {scratch}", flush=True)
        for mutation in MUTATIONS:
            target = scratch / mutation.path
            original = target.read_text()
            if original.count(mutation.old) != 1:
                raise SystemExit(
                    f"mutation {mutation.name!r}: its text occurs {original.count(mutation.old)} "
                    f"times in {mutation.path}, not once; update MUTATIONS in this script"
                )
            target.write_text(original.replace(mutation.old, mutation.new))
            try:
                check_imports(env, scratch, mutation)
                began = time.monotonic()
                outcomes = run_tests(env, scratch, mutation.tests)
            finally:
                target.write_text(original)
            verdicts = {"failed": "killed", "passed": "SURVIVED", "error": "ERROR"}
            for test, outcome in outcomes.items():
                rows.append((mutation.name, test, verdicts[outcome]))
            print(
                f"{mutation.name}: {', '.join(verdicts[o] for o in outcomes.values())} "
                f"({time.monotonic() - began:.0f} s)",
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'mutation':<{width}}  verdict   test")
    for name, test, verdict in rows:
        print(f"{name:<{width}}  {verdict:<8}  {test}")
    bad = [row for row in rows if row[2] != "killed"]
    print(
        f"\n{len(rows) - len(bad)} of {len(rows)} (mutation, test) pairs killed "
        f"in {time.monotonic() - started:.0f} s"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
