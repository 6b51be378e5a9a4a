"""Who did what, on a real coordinator started with --auth and real agents: every job and
study carries its submitter; `jobs --mine` / `--owner` filter by it; operators cancel only
their own jobs and studies (an admin cancels anyone's); a script job needs the `scripts`
permission; an agent without --allow-scripts never starts a script task (the job waits, with
the reason in its history) and one with it does; a token limited to one running task runs its
jobs one at a time while another token's job runs beside them, and its queued-job limit refuses
the next submission; the audit log lists every state-changing call with who, what and outcome,
and no secret reaches it or the database."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from matrec.sdk import Client, MatrecError
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster
from support.cluster_jobs import finetune_spec, wait_until

CTL = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]
#: More GPUs than any test agent has: such a job stays queued whatever runs.
NEVER_FITS = {"gpus": 64}


@dataclass
class Secured:
    cluster: LocalCluster
    admin: str
    alice: str
    bob: str
    scripter: str
    other_scripter: str

    def client(self, token: str) -> Client:
        return Client(self.cluster.address, token=token)

    def start_agent(self, index: int, *, allow_scripts: bool) -> None:
        with self.client(self.admin) as admin:
            token = admin.create_token(self.cluster.agent_name(index), "agent")[1]
        self.cluster.allow_scripts = allow_scripts
        self.cluster.agent_args = ["--token", token]
        self.cluster.start_agent(index)

    def ensure_script_agent(self) -> None:
        """Agent 1 runs script tasks (the script test starts it; alone, this test does)."""
        with self.client(self.admin) as admin:
            if any(a.allow_scripts and a.state == "connected" for a in admin.list_agents()):
                return
            self.start_agent(1, allow_scripts=True)
            wait_until(
                lambda: any(
                    a.allow_scripts and a.state == "connected" for a in admin.list_agents()
                ),
                30,
                "a script agent",
            )


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("ownership")
    admin_file = root / "admin.token"
    args = ["--auth", "--admin-token-file", str(admin_file)]
    with LocalCluster(
        root / "cluster", agents=0, coordinator_args=args, allow_scripts=False
    ) as cluster:
        admin = admin_file.read_text().strip()
        with Client(cluster.address, token=admin) as client:
            alice = client.create_token("alice", "operator")[1]
            bob = client.create_token("bob", "operator")[1]
            scripter = client.create_token("scripter", "operator", permissions=["scripts"])[1]
            other = client.create_token("other", "operator", permissions=["scripts"])[1]
        yield Secured(cluster, admin, alice, bob, scripter, other)


def queued_job(client: Client, dataset: DemoDatasetInfo, name: str) -> str:
    spec = finetune_spec(dataset, 1) | {"name": name, "resources": NEVER_FITS}
    return client.submit_job(spec).id


def test_jobs_carry_their_owner_and_filter_by_it(
    secured: Secured, small_dataset: DemoDatasetInfo
) -> None:
    with secured.client(secured.alice) as alice, secured.client(secured.bob) as bob:
        alices = {queued_job(alice, small_dataset, "a1"), queued_job(alice, small_dataset, "a2")}
        bobs = queued_job(bob, small_dataset, "b1")
        assert alice.get_job(bobs).owner == "bob"
        assert {j.id for j in alice.list_jobs(mine=True)} >= alices
        assert bobs not in {j.id for j in alice.list_jobs(mine=True)}
        assert {j.owner for j in alice.list_jobs(mine=True)} == {"alice"}
        assert [j.id for j in alice.list_jobs(owner="bob")] == [bobs]
        assert alice.list_jobs(owner="nobody-at-all") == []
    env = {k: v for k, v in os.environ.items() if k != "MATREC_TOKEN"}
    base = [*CTL, "-c", secured.cluster.address, "--token", secured.bob, "jobs"]
    mine = subprocess.run([*base, "--mine"], capture_output=True, text=True, env=env)
    assert mine.returncode == 0, mine.stderr
    assert bobs in mine.stdout and not any(a in mine.stdout for a in alices)
    theirs = subprocess.run(
        [*base, "--owner", "alice", "--json"], capture_output=True, text=True, env=env
    )
    assert theirs.returncode == 0, theirs.stderr
    assert all(a in theirs.stdout for a in alices) and bobs not in theirs.stdout
    shown = subprocess.run(
        [*CTL, "-c", secured.cluster.address, "--token", secured.bob, "show", bobs],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert shown.returncode == 0 and "owner" in shown.stdout and "bob" in shown.stdout


def test_operators_cancel_only_their_own_jobs_and_an_admin_anyones(
    secured: Secured, small_dataset: DemoDatasetInfo
) -> None:
    with (
        secured.client(secured.alice) as alice,
        secured.client(secured.bob) as bob,
        secured.client(secured.admin) as admin,
    ):
        job = queued_job(alice, small_dataset, "mine")
        with pytest.raises(MatrecError) as refused:
            bob.cancel_job(job)
        assert refused.value.code == "PERMISSION_DENIED"
        assert "belongs to 'alice'" in str(refused.value) and "cancel-any" in str(refused.value)
        untouched = alice.get_job(job)
        assert untouched.state == "queued" and not untouched.cancel_requested
        assert admin.cancel_job(job).cancelled_by == "bootstrap-admin"
        own = queued_job(bob, small_dataset, "own")
        cancelled = bob.cancel_job(own)
        assert (cancelled.state, cancelled.cancelled_by) == ("cancelled", "bob")
        assert any("cancelled by bob" in e.message for e in bob.get_job(own).history)


def test_a_study_and_its_trial_jobs_belong_to_its_creator(
    secured: Secured, small_dataset: DemoDatasetInfo
) -> None:
    trial = finetune_spec(small_dataset, 1) | {"resources": NEVER_FITS}
    del trial["config"]["learning_rate"]  # searched
    spec = {
        "objective": "val/accuracy",
        "search_space": {"learning_rate": {"type": "float", "min": 0.001, "max": 0.1}},
        "trial": trial,
        "max_trials": 2,
        "max_parallel": 1,
    }
    with secured.client(secured.alice) as alice, secured.client(secured.bob) as bob:
        study = alice.create_study(spec)
        assert study.owner == "alice"
        wait_until(lambda: bool(alice.get_study(study.id).trials), 30, "a first trial")
        (first, *_) = alice.get_study(study.id).trials
        assert alice.get_job(first.job_id).owner == "alice"
        with pytest.raises(MatrecError) as refused:
            bob.cancel_study(study.id)
        assert refused.value.code == "PERMISSION_DENIED"
        cancelled = alice.cancel_study(study.id)
        assert (cancelled.state, cancelled.cancelled_by) == ("cancelled", "alice")
    env = {k: v for k, v in os.environ.items() if k != "MATREC_TOKEN"}
    shown = subprocess.run(
        [*CTL, "-c", secured.cluster.address, "--token", secured.bob, "hpo", "show", study.id],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    owner_line = next(line for line in shown.stdout.splitlines() if " owner " in line)
    assert "alice" in owner_line
    assert any("cancelled by" in line and "alice" in line for line in shown.stdout.splitlines())


def test_script_jobs_need_the_scripts_permission_and_a_host_that_allows_them(
    secured: Secured, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    spec = {
        "kind": "script",
        "config": {"command": ["python", "-c", f"open({str(marker)!r}, 'w').write('x')"]},
    }
    with secured.client(secured.alice) as alice:
        with pytest.raises(MatrecError) as refused:
            alice.submit_job(spec)
        assert refused.value.code == "PERMISSION_DENIED"
        assert "'scripts' permission" in str(refused.value)
    secured.start_agent(0, allow_scripts=False)
    with secured.client(secured.scripter) as scripter:
        wait_until(lambda: len(scripter.list_agents()) == 1, 30, "agent 0 connected")
        assert not scripter.list_agents()[0].allow_scripts
        job = scripter.submit_job(spec).id

        def waiting() -> bool:
            return any(e.kind == "waiting" for e in scripter.get_job(job).history)

        wait_until(waiting, 30, "the waiting reason")
        held = scripter.get_job(job)
        reason = next(e.message for e in held.history if e.kind == "waiting")
        assert "--allow-scripts" in reason
        assert held.state == "queued" and held.tasks[0].attempt == 0
        assert not marker.exists()
        secured.start_agent(1, allow_scripts=True)
        done = scripter.wait(job, 120)
        assert done.state == "succeeded", done.error
        allowing = {a.id for a in scripter.list_agents() if a.allow_scripts}
        assert [t.agent_id for t in done.tasks] == [*allowing] and len(allowing) == 1
        assert marker.read_text() == "x"
        assert sum(e.kind == "waiting" for e in done.history) == 1


def test_an_active_learning_project_records_who_did_what(
    secured: Secured, small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    """alice trains and owns the project (and so its jobs); bob selects a batch and fires the
    triggers by hand; scripter labels."""
    pool = tmp_path / "pool"
    pool.mkdir()
    for image in sorted((small_dataset.path / "val").glob("*/*.png"))[:6]:
        shutil.copy(image, pool / f"{image.parent.name}-{image.name}")
    with secured.client(secured.admin) as admin:
        if not any(a.state == "connected" for a in admin.list_agents()):
            secured.start_agent(0, allow_scripts=False)
    with (
        secured.client(secured.alice) as alice,
        secured.client(secured.bob) as bob,
        secured.client(secured.scripter) as labeller,
    ):
        config = {"model": "resnet18", "image_size": 32, "dense_units": 16}
        model = alice.wait(alice.submit_job(finetune_spec(small_dataset, 1, **config)).id, 300)
        assert model.state == "succeeded", model.error
        project = alice.create_learning_project(
            {
                "dataset_path": str(small_dataset.path),
                "pool_path": str(pool),
                "model_job_id": model.id,
                "triggers": {"feedback_threshold": 1, "drift": False},
            }
        )
        assert project.owner == "alice"
        scoring = alice.wait(project.pool_scoring_job_id, 300)
        assert scoring.state == "succeeded" and scoring.owner == "alice"
        batch = bob.select_samples(project.id, 2)
        assert batch.created_by == "bob"
        sample = batch.candidates[0]
        labelled, _ = labeller.record_feedback(batch.id, sample.sample_id, sample.predicted_class)
        assert labelled.labelled_by == "scripter"
        fired = bob.check_triggers(project.id)
        assert [(t.kind, t.fired_by) for t in fired] == [("feedback_count", "bob")]
        assert alice.get_batch(batch.id).candidates[0].labelled_by == "scripter"
    env = {k: v for k, v in os.environ.items() if k != "MATREC_TOKEN"}
    shown = subprocess.run(
        [*CTL, "-c", secured.cluster.address, "--token", secured.bob, "active-learning",
         "status", project.id],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "owner" in shown.stdout and "alice" in shown.stdout


def sleeper(seconds: float) -> dict[str, object]:
    return {
        "kind": "script",
        "config": {"command": ["python", "-c", f"import time; time.sleep({seconds})"]},
        "resources": {"cpus": 0.25},
    }


def test_a_token_limited_to_one_running_task_runs_its_jobs_one_at_a_time(
    secured: Secured,
) -> None:
    secured.ensure_script_agent()
    with secured.client(secured.admin) as admin:
        limited = next(t for t in admin.list_tokens() if t.name == "scripter")
        assert admin.set_token_limits(limited.id, max_running_tasks=1).limits.max_running_tasks == 1
    with secured.client(secured.scripter) as mine, secured.client(secured.other_scripter) as other:
        queued = [mine.submit_job(sleeper(1.5)).id for _ in range(3)]
        beside = other.submit_job(sleeper(3)).id
        done = [mine.wait(job, 120) for job in queued]
        theirs = other.wait(beside, 120)
        for job in [*done, theirs]:
            assert job.state == "succeeded", job.error
        spans = sorted((j.started_at, j.finished_at) for j in done)
        for (_, finished), (started, _) in itertools.pairwise(spans):
            assert finished is not None and started is not None and started >= finished, spans
        # The other token's job ran while one of the limited token's jobs ran.
        assert any(
            s < theirs.finished_at and theirs.started_at < f  # type: ignore[operator]
            for s, f in spans
        ), (spans, theirs.started_at, theirs.finished_at)
        reasons = {
            e.message for j in queued for e in mine.get_job(j).history if e.kind == "waiting"
        }
        assert reasons == {"waiting: its token's limit of 1 running tasks is reached "
                           "(matrec-ctl tokens limit)"}  # fmt: skip


def test_the_queued_job_limit_refuses_the_next_submission(
    secured: Secured, small_dataset: DemoDatasetInfo
) -> None:
    with secured.client(secured.admin) as admin:
        secret = admin.create_token("carol", "operator")[1]
    with secured.client(secret) as carol:
        held = [queued_job(carol, small_dataset, f"c{i}") for i in range(2)]
        env = {k: v for k, v in os.environ.items() if k != "MATREC_TOKEN"}
        limited = subprocess.run(
            [*CTL, "-c", secured.cluster.address, "--token", secured.admin, "tokens", "limit",
             "carol", "--max-queued-jobs", "2"],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        assert limited.returncode == 0, limited.stderr
        assert "2 queued jobs" in limited.stdout
        with pytest.raises(MatrecError) as refused:
            queued_job(carol, small_dataset, "c-too-many")
        assert refused.value.code == "RESOURCE_EXHAUSTED"
        assert "max_queued_jobs" in str(refused.value) and "2 queued jobs" in str(refused.value)
        stored = carol.list_jobs(mine=True)
        assert sorted(j.id for j in stored) == sorted(held)
        assert {j.state for j in stored} == {"queued"}


def test_the_audit_log_lists_every_state_changing_call_and_no_secret(
    secured: Secured, small_dataset: DemoDatasetInfo
) -> None:
    with secured.client(secured.alice) as alice, secured.client(secured.bob) as bob:
        job = queued_job(alice, small_dataset, "audited")
        with pytest.raises(MatrecError):
            bob.cancel_job(job)
        alice.cancel_job(job)
    stranger = Client(secured.cluster.address, token="mtk_not-a-token")
    with stranger, pytest.raises(MatrecError):
        stranger.cancel_job(job)
    with secured.client(secured.alice) as alice, pytest.raises(MatrecError) as refused:
        alice.audit_log()
    assert refused.value.code == "PERMISSION_DENIED"  # admin only
    with secured.client(secured.admin) as admin:
        entries = admin.audit_log()
    calls = [(e.who, e.method.rsplit("/", 1)[-1], e.outcome) for e in entries]
    assert ("bootstrap-admin", "CreateToken", "allowed") in calls
    mine = [e for e in entries if e.targets.get("job_id") == job]
    assert [(e.who, e.method.rsplit("/", 1)[-1], e.outcome) for e in mine] == [
        ("alice", "SubmitJob", "allowed"),
        ("bob", "CancelJob", "refused"),
        ("alice", "CancelJob", "allowed"),
        ("anonymous", "CancelJob", "refused"),
    ]
    assert mine[1].reason.startswith("PERMISSION_DENIED: job") and "alice" in mine[1].reason
    assert mine[3].reason.startswith("UNAUTHENTICATED")
    assert all(e.peer.startswith(("ipv4:", "ipv6:")) for e in mine)
    assert all(e.token_id.startswith("tok") for e in mine[:3])
    # Nothing matrec stores, and nothing the audit command prints, holds a token's secret.
    env = {k: v for k, v in os.environ.items() if k != "MATREC_TOKEN"}
    printed = subprocess.run(
        [*CTL, "-c", secured.cluster.address, "--token", secured.admin, "audit", "--json",
         "--since", "1h"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert job in printed.stdout
    database = b"".join(
        p.read_bytes() for p in (secured.cluster.workdir / "coordinator").glob("matrec.db*")
    )
    secrets = (secured.admin, secured.alice, secured.bob, secured.scripter)
    for secret in secrets:
        assert secret not in printed.stdout
        assert secret.encode() not in database
