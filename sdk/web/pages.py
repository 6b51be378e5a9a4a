"""The dashboard's HTML, rendered on the server. Every value that comes from the coordinator or
the request goes through `esc` (or `attr`) before it is put into the page; the page's scripts
insert live data only through textContent and DOM APIs. No inline script or style anywhere (the
Content-Security-Policy forbids them)."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from matrec.sdk.ctl.render import format_value
from matrec.sdk.evaluation import Evaluation
from matrec.sdk.job_pages import JobPage, JobPageQuery
from matrec.sdk.types import (
    JOB_STATES,
    TERMINAL_JOB_STATES,
    TRIAL_STATES,
    Agent,
    Artifact,
    ClusterSnapshot,
    Job,
    LabellingBatch,
    LearningProject,
    RetrainingTrigger,
    Study,
)
from matrec.sdk.web.security import CSRF_FIELD

#: Sortable columns of the runs list: (sort key, header).
RUN_COLUMNS = (
    ("name", "Name"),
    ("kind", "Kind"),
    ("state", "State"),
    ("created_at", "Created"),
    ("finished_at", "Finished"),
    ("val_accuracy", "Val acc"),
)


def esc(value: object) -> str:
    """Text content: every character that could open markup is escaped."""
    return html.escape(str(value), quote=True)


attr = esc  # quote=True makes the same escaping safe inside a quoted attribute


def format_utc(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def layout(
    title: str,
    body: str,
    *,
    user: str = "",
    role: str = "",
    csrf: str = "",
    scripts: Sequence[str] = (),
    auth: bool = False,
) -> str:
    who = ""
    if user:
        who = f'<span class="who">{esc(user)} ({esc(role)})</span>'
        if auth:
            who += (
                f'<form method="post" action="/logout" class="inline">{csrf_field(csrf)}'
                '<button type="submit">Sign out</button></form>'
            )
    tags = "".join(f'<script src="/static/{attr(name)}" defer></script>' for name in scripts)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · matrec</title>"
        '<link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/static/uPlot.min.css">'
        '<link rel="stylesheet" href="/static/style.css">'
        f"{tags}</head><body>"
        '<header><a class="brand" href="/runs">matrec</a>'
        '<nav><a href="/runs">Runs</a><a href="/studies">Studies</a>'
        '<a href="/projects">Active learning</a><a href="/cluster">Cluster</a></nav>'
        f"{who}</header><main>{body}</main></body></html>"
    )


def csrf_field(token: str) -> str:
    return f'<input type="hidden" name="{CSRF_FIELD}" value="{attr(token)}">'


def message_box(message: str, kind: str = "error") -> str:
    if not message:
        return ""
    return f'<p class="message {attr(kind)}" role="alert">{esc(message)}</p>'


def login_page(csrf: str, message: str = "") -> str:
    body = (
        "<h1>Sign in</h1>"
        f"{message_box(message)}"
        '<form method="post" action="/login" class="login">'
        f"{csrf_field(csrf)}"
        '<label>matrec token <input type="password" name="token" autocomplete="off" '
        "required autofocus></label>"
        '<button type="submit">Sign in</button></form>'
        "<p>Ask an admin for a token "
        "(<code>matrec-ctl tokens create NAME --role viewer</code>).</p>"
    )
    return layout("Sign in", body)


def _runs_url(query: JobPageQuery, **changes: Any) -> str:
    values: dict[str, Any] = {
        "state": query.states[0] if query.states else "",
        "kind": query.kind,
        "name": query.name_contains,
        "after": query.created_after.date().isoformat() if query.created_after else "",
        "before": query.created_before.date().isoformat() if query.created_before else "",
        "sort": query.sort,
        "order": "desc" if query.descending else "asc",
        "offset": query.offset,
        "size": query.page_size,
    }
    values.update(changes)
    return "/runs?" + urlencode({k: v for k, v in values.items() if v not in ("", None)})


def _options(values: Iterable[str], selected: str, blank: str) -> str:
    options = [f'<option value="">{esc(blank)}</option>']
    for value in values:
        chosen = " selected" if value == selected else ""
        options.append(f'<option value="{attr(value)}"{chosen}>{esc(value)}</option>')
    return "".join(options)


def runs_page(page: JobPage, query: JobPageQuery, **frame: Any) -> str:
    state = query.states[0] if query.states else ""
    after = query.created_after.date().isoformat() if query.created_after else ""
    before = query.created_before.date().isoformat() if query.created_before else ""
    filters = (
        '<form method="get" action="/runs" class="filters" id="run-filters">'
        f'<label>State <select name="state">{_options(JOB_STATES, state, "any")}</select></label>'
        f'<label>Kind <input name="kind" value="{attr(query.kind)}" size="10"></label>'
        f'<label>Name <input name="name" value="{attr(query.name_contains)}" size="16"></label>'
        f'<label>Created from <input type="date" name="after" value="{attr(after)}"></label>'
        f'<label>before <input type="date" name="before" value="{attr(before)}"></label>'
        f'<input type="hidden" name="sort" value="{attr(query.sort)}">'
        f'<input type="hidden" name="order" value="{"desc" if query.descending else "asc"}">'
        f'<input type="hidden" name="size" value="{attr(query.page_size)}">'
        '<button type="submit">Filter</button> <a href="/runs">clear</a></form>'
    )
    headers = ["<th>ID</th>"]
    for key, label in RUN_COLUMNS:
        descending = not (query.sort == key and query.descending)
        mark = ""
        if query.sort == key:
            mark = " ▼" if query.descending else " ▲"
        url = _runs_url(query, sort=key, order="desc" if descending else "asc", offset=0)
        headers.append(
            f'<th><a class="sort" data-sort="{attr(key)}" href="{attr(url)}">'
            f"{esc(label)}{mark}</a></th>"
        )
    headers.append("<th>Owner</th>")
    rows = []
    for job in page.jobs:
        rows.append(
            f'<tr data-job-id="{attr(job.id)}">'
            f'<td><a href="/runs/{attr(job.id)}">{esc(job.id)}</a></td>'
            f'<td class="name">{esc(job.name or "-")}</td>'
            f'<td class="kind">{esc(job.kind)}</td>'
            f'<td class="state state-{attr(job.state)}">{esc(job.state)}</td>'
            f'<td class="created">{esc(format_utc(job.created_at))}</td>'
            f'<td class="finished">{esc(format_utc(job.finished_at))}</td>'
            f'<td class="val-acc num">{esc(format_value(job.result.get("val_accuracy")))}</td>'
            f"<td>{esc(job.owner or '-')}</td></tr>"
        )
    first = query.offset + 1 if page.jobs else 0
    last = query.offset + len(page.jobs)
    pager = [f'<span id="run-count">{first}-{last} of {page.total}</span>']
    if query.offset > 0:
        previous = max(0, query.offset - query.page_size)
        url = _runs_url(query, offset=previous)
        pager.append(f'<a id="prev-page" href="{attr(url)}">&lsaquo; prev</a>')
    if last < page.total:
        url = _runs_url(query, offset=last)
        pager.append(f'<a id="next-page" href="{attr(url)}">next &rsaquo;</a>')
    body = (
        f"<h1>Runs</h1>{filters}"
        f'<table class="runs" id="runs"><thead><tr>{"".join(headers)}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        f'<p class="pager">{" ".join(pager)}</p>'
    )
    return layout("Runs", body, **frame)


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], table_id: str = "") -> str:
    ident = f' id="{attr(table_id)}"' if table_id else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def final_numbers(result: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The scalar entries of a job's result, as shown in its page's "Final numbers": (key, the
    value as a person reads it, the exact value as JSON)."""
    return [
        (key, format_value(value), json.dumps(value))
        for key, value in sorted(result.items())
        if isinstance(value, int | float | str) and not isinstance(value, bool)
    ]


def _evaluation(job: Job) -> str:
    try:
        evaluation = Evaluation.from_result(job.result)
    except ValueError:
        return ""
    header = "".join(f"<th>{esc(name)}</th>" for name in evaluation.classes)
    matrix_rows = "".join(
        f"<tr><th>{esc(name)}</th>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
        for name, row in zip(evaluation.classes, evaluation.confusion_matrix, strict=True)
    )
    per_class = _table(
        ("class", "precision", "recall", "F1", "support"),
        (
            (name, format_value(m.precision), format_value(m.recall), format_value(m.f1), m.support)
            for name, m in evaluation.per_class.items()
        ),
        "per-class",
    )
    return (
        "<section><h2>Evaluation</h2>"
        f"<p>accuracy {esc(format_value(evaluation.accuracy))}, macro-F1 "
        f"{esc(format_value(evaluation.macro_f1))}, top-{esc(evaluation.top_k)} accuracy "
        f"{esc(format_value(evaluation.top_k_accuracy))}</p>"
        "<h3>Confusion matrix (rows true, columns predicted)</h3>"
        f'<table id="confusion"><thead><tr><th></th>{header}</tr></thead>'
        f"<tbody>{matrix_rows}</tbody></table>"
        f"<h3>Per class</h3>{per_class}</section>"
    )


def run_page(
    job: Job,
    artifacts: Sequence[Artifact],
    *,
    message: str = "",
    **frame: Any,
) -> str:
    csrf = frame.get("csrf", "")
    cancel = ""
    if job.state not in TERMINAL_JOB_STATES:
        cancel = (
            f'<form method="post" action="/runs/{attr(job.id)}/cancel" class="inline" '
            f'id="cancel-form">{csrf_field(csrf)}'
            '<button type="submit" id="cancel">Cancel run</button></form>'
        )
    numbers = "".join(
        f'<tr><th>{esc(key)}</th><td data-key="{attr(key)}" data-value="{attr(exact)}">'
        f"{esc(shown)}</td></tr>"
        for key, shown, exact in final_numbers(job.result)
    )
    tasks = _table(
        ("task", "state", "attempt", "agent", "error"),
        (
            (t.id, t.state, f"{t.attempt}/{t.max_attempts}", t.agent_id or "-", t.error or "")
            for t in job.tasks
        ),
        "tasks",
    )
    history = _table(
        ("time", "task", "attempt", "event", "message"),
        ((format_utc(e.time), e.task_id or "-", e.attempt, e.kind, e.message) for e in job.history),
        "history",
    )
    files = "".join(
        f'<li><a href="/runs/{attr(job.id)}/artifacts?uri={attr(_quote(a.uri))}" download>'
        f"{esc(a.kind)}</a> {esc(a.uri)} "
        f"({esc('not visible' if a.size_bytes is None else f'{a.size_bytes:,} B')})</li>"
        for a in artifacts
    )
    spec = json.dumps(
        {
            "name": job.name,
            "kind": job.kind,
            "config": job.spec.config,
            "labels": job.spec.labels,
            "max_attempts": job.spec.max_attempts,
        },
        indent=2,
        sort_keys=True,
    )
    body = (
        f'<h1>Run <span id="run-name">{esc(job.name or job.id)}</span></h1>'
        f"{message_box(message)}"
        f'<p class="summary" id="run" data-job-id="{attr(job.id)}">'
        f'{esc(job.id)} · {esc(job.kind)} · state <b id="run-state" '
        f'class="state state-{attr(job.state)}">{esc(job.state)}</b> · owner {esc(job.owner)} · '
        f"created {esc(format_utc(job.created_at))} · "
        f'<a id="report-link" href="/runs/{attr(job.id)}/report.html">report</a> {cancel}</p>'
        f'<p class="error" id="run-error">{esc(job.error)}</p>'
        "<section><h2>Learning curves</h2>"
        '<p class="live">metric points: <span id="point-count">0</span> · updates: '
        '<span id="update-count">0</span> · <span id="stream-state">connecting</span></p>'
        '<div class="charts"><div id="chart-loss"></div><div id="chart-accuracy"></div>'
        '<div id="chart-lr"></div></div></section>'
        "<section><h2>Final numbers</h2>"
        f'<table id="final"><tbody>{numbers}</tbody></table></section>'
        f"{_evaluation(job)}"
        f"<section><h2>Tasks and attempts</h2>{tasks}</section>"
        f'<section><h2>Artifacts</h2><ul id="artifacts">{files}</ul></section>'
        f"<section><h2>History</h2>{history}</section>"
        '<section><h2>Log</h2><pre id="log" class="log"></pre></section>'
        f'<section><h2>Spec</h2><pre id="spec">{esc(spec)}</pre></section>'
    )
    scripts = ["uPlot.iife.min.js", "run.js"]
    return layout(f"Run {job.name or job.id}", body, scripts=scripts, **frame)


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _agent_row(agent: Agent) -> list[object]:
    usage = agent.usage
    gpu = "-"
    if usage is not None and usage.gpu_utilization:
        gpu = ", ".join(
            f"{u:.0f}% {m / 2**30:.1f} GiB"
            for u, m in zip(usage.gpu_utilization, usage.gpu_memory_used_bytes, strict=False)
        )
    return [
        agent.name,
        agent.hostname,
        agent.state,
        f"{agent.free.cpus:g}/{agent.total.cpus:g}",
        f"{agent.free.gpus}/{agent.total.gpus}",
        "-" if usage is None else f"{usage.cpu_percent:.0f}%",
        gpu,
        len(agent.running_task_ids),
    ]


AGENT_HEADERS = (
    "agent", "host", "state", "free cpus", "free gpus", "cpu", "gpu use, memory", "tasks",
)  # fmt: skip
ACTIVE_JOB_HEADERS = ("job", "name", "state", "created")


def cluster_data(snapshot: ClusterSnapshot) -> dict[str, Any]:
    """What the cluster page shows, as plain text cells: rendered here for the first view and
    sent as JSON to the page's script for every later snapshot (which sets them as text)."""
    counts = ", ".join(f"{k} {v}" for k, v in sorted(snapshot.jobs_by_state.items()))
    return {
        "queue_depth": str(snapshot.queue_depth),
        "summary": f"metric points/s {format_value(snapshot.metric_points_per_second)} · "
        f"jobs: {counts or 'none'} · at {format_utc(snapshot.time)}",
        "agents": [[str(c) for c in _agent_row(a)] for a in snapshot.agents],
        "jobs": [[j.id, j.name, j.state, format_utc(j.created_at)] for j in snapshot.active_jobs],
    }


def cluster_page(snapshot: ClusterSnapshot, **frame: Any) -> str:
    data = cluster_data(snapshot)
    body = (
        '<h1>Cluster</h1><p id="cluster-summary">queue depth '
        f'<b id="queue-depth">{esc(data["queue_depth"])}</b> · '
        f'<span id="cluster-text">{esc(data["summary"])}</span></p>'
        f"<h2>Agents</h2>{_table(AGENT_HEADERS, data['agents'], 'agents')}"
        f"<h2>Active jobs</h2>{_table(ACTIVE_JOB_HEADERS, data['jobs'], 'active-jobs')}"
    )
    return layout("Cluster", body, scripts=["cluster.js"], **frame)


def studies_page(studies: Sequence[Study], **frame: Any) -> str:
    rows = "".join(
        f'<tr><td><a href="/studies/{attr(s.id)}">{esc(s.id)}</a></td><td>{esc(s.name)}</td>'
        f"<td>{esc(s.state)}</td><td>{esc(len(s.trials))}</td>"
        f"<td>{esc(format_utc(s.created_at))}</td></tr>"
        for s in studies
    )
    body = (
        '<h1>Studies</h1><table id="studies"><thead><tr><th>ID</th><th>Name</th><th>State</th>'
        f"<th>Trials</th><th>Created</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return layout("Studies", body, **frame)


def study_page(study_id: str, query_string: str, **frame: Any) -> str:
    """The study page's frame: its data (aggregated by the coordinator) comes as JSON from
    /studies/ID/summary.json and is put into the page by study.js, as text."""
    body = (
        f'<h1>Study <span id="study-name"></span></h1>'
        f'<p class="summary" id="study" data-study-id="{attr(study_id)}" '
        f'data-query="{attr(query_string)}">'
        '<span id="study-id"></span> · state <b id="study-state"></b> · '
        '<span id="study-settings"></span> · <span id="study-counts"></span> · '
        '<span id="stream-state">loading</span></p>'
        '<p id="study-best"></p>'
        '<section><h2>Optimisation history</h2><div id="chart-history"></div></section>'
        "<section><h2>Intermediate values (best trials; pruned ones dashed)</h2>"
        '<div id="chart-curves"></div><p>pruned per rung: <span id="pruned-by-rung"></span></p>'
        "</section>"
        "<section><h2>Parameter importance (correlation ratio, a quick estimate)</h2>"
        '<div id="importance"></div></section>'
        '<section><h2>Parallel coordinates</h2><canvas id="parallel" width="960" '
        'height="320"></canvas></section>'
        '<section><h2>Objective against each parameter</h2><div class="charts" '
        'id="param-charts"></div></section>'
        '<section><h2>Trials</h2><form method="get" id="trial-filters" class="filters">'
        '<label>State <select name="state"><option value="">any</option>'
        + "".join(f'<option value="{s}">{s}</option>' for s in TRIAL_STATES)
        + "</select></label>"
        '<label>Parameter <select name="param" id="param-select"><option value="">-</option>'
        "</select></label>"
        '<label>from <input name="min" size="8"></label><label>to <input name="max" size="8">'
        "</label>"
        '<label>Sort <select name="sort"><option value="number">number</option>'
        '<option value="value">objective</option></select></label>'
        '<label>Order <select name="order"><option value="asc">ascending</option>'
        '<option value="desc">descending</option></select></label>'
        '<button type="submit">Filter</button></form>'
        '<p><span id="trial-count"></span> <a id="trials-prev" hidden>&lsaquo; prev</a> '
        '<a id="trials-next" hidden>next &rsaquo;</a></p>'
        '<table id="trials"><thead><tr><th>#</th><th>state</th><th>objective</th>'
        "<th>parameters</th><th>pruned at</th><th>job</th></tr></thead><tbody></tbody></table>"
        "</section>"
    )
    scripts = ["uPlot.iife.min.js", "study.js"]
    return layout(f"Study {study_id}", body, scripts=scripts, **frame)


def projects_page(projects: Sequence[LearningProject], **frame: Any) -> str:
    rows = (
        (p.id, p.spec.get("name", ""), p.current_version, p.pending_feedback, p.total_feedback)
        for p in projects
    )
    links = "".join(
        f'<li><a href="/projects/{attr(p.id)}">{esc(p.id)}</a> {esc(p.spec.get("name", ""))}</li>'
        for p in projects
    )
    table = _table(("project", "name", "version", "pending labels", "labels"), rows, "projects")
    return layout(
        "Active learning",
        f'<h1>Active learning</h1><ul id="project-links">{links}</ul>{table}',
        **frame,
    )


def project_page(
    project: LearningProject,
    batches: Sequence[LabellingBatch],
    triggers: Sequence[RetrainingTrigger],
    **frame: Any,
) -> str:
    """A project: its model versions with their validation accuracy, the triggers fired and
    why, its batches (each linked to its labelling page)."""
    versions = _table(
        ("version", "job", "val accuracy", "feedback samples", "state", "created"),
        (
            (
                v.version,
                v.job_id,
                format_value(v.val_accuracy),
                v.feedback_samples,
                v.state,
                format_utc(v.created_at),
            )
            for v in project.versions
        ),
        "versions",
    )
    fired = _table(
        ("trigger", "kind", "state", "fired", "why", "job"),
        (
            (
                t.id,
                t.kind,
                t.state,
                format_utc(t.fired_at),
                json.dumps(t.details, sort_keys=True),
                t.job_id or "-",
            )
            for t in triggers
        ),
        "triggers",
    )
    batch_rows = "".join(
        f'<tr><td><a href="/labelling/{attr(b.id)}">{esc(b.id)}</a></td><td>{esc(b.strategy)}'
        f"</td><td>{esc(b.state)}</td><td>{esc(b.labelled)} of {esc(b.size)}</td>"
        f"<td>{esc(format_utc(b.created_at))}</td></tr>"
        for b in batches
    )
    body = (
        f"<h1>Project {esc(project.spec.get('name') or project.id)}</h1>"
        f"<p>{esc(project.id)} · classes {esc(', '.join(project.classes))} · labels "
        f"{esc(project.total_feedback)} ({esc(project.pending_feedback)} not yet trained on)</p>"
        f"<h2>Model versions</h2>{versions}<h2>Triggers</h2>{fired}"
        '<h2>Batches</h2><table id="batches"><thead><tr><th>batch</th><th>strategy</th>'
        "<th>state</th><th>labelled</th><th>created</th></tr></thead>"
        f"<tbody>{batch_rows}</tbody></table>"
    )
    return layout(f"Project {project.id}", body, **frame)


def labelling_page(batch: LabellingBatch, classes: Sequence[str], **frame: Any) -> str:
    """A batch to label: thumbnails (served through the coordinator), the model's prediction
    and uncertainty, the label so far; label.js records labels with the keyboard."""
    buttons = "".join(
        f'<button type="button" class="class-button" data-label="{attr(name)}">'
        f"<kbd>{index}</kbd> {esc(name)}</button>"
        for index, name in enumerate(classes, 1)
    )
    items = []
    for candidate in batch.candidates:
        image = f"/labelling/{_quote(batch.id)}/images/{_quote(candidate.sample_id)}"
        scores = ", ".join(f"{k} {format_value(v)}" for k, v in sorted(candidate.scores.items()))
        items.append(
            f'<li class="candidate" tabindex="-1" data-sample-id="{attr(candidate.sample_id)}">'
            f'<img src="{attr(image)}" alt="{attr(candidate.sample_id)}" width="160">'
            f'<div><p class="sample">{esc(candidate.sample_id)}</p>'
            f"<p>predicted <b>{esc(candidate.predicted_class or '-')}</b> · score "
            f'{esc(format_value(candidate.score))}</p><p class="scores">{esc(scores)}</p>'
            f'<p>label <b class="label">{esc(candidate.label or "")}</b></p></div></li>'
        )
    body = (
        f"<h1>Label batch {esc(batch.id)}</h1>"
        f'<div id="labelling" data-batch-id="{attr(batch.id)}" '
        f'data-csrf="{attr(frame.get("csrf", ""))}">'
        f"<p>project {esc(batch.project_id)} · strategy {esc(batch.strategy)} · "
        f'<span id="progress">{esc(batch.labelled)} of {esc(batch.size)} labelled</span></p>'
        '<p class="help">Keys: <kbd>1</kbd>-<kbd>9</kbd> label the selected image '
        "(with <kbd>Shift</kbd>: replace a different label), <kbd>j</kbd>/<kbd>↓</kbd> next, "
        "<kbd>k</kbd>/<kbd>↑</kbd> previous, <kbd>u</kbd> undo the last change of a label.</p>"
        f'<p id="classes">{buttons}</p>'
        '<p id="label-message" class="message" role="status"></p>'
        f'<ol id="candidates">{"".join(items)}</ol></div>'
    )
    return layout(f"Label {batch.id}", body, scripts=["label.js"], **frame)


def error_page(status: int, message: str, **frame: Any) -> str:
    return layout(f"Error {status}", f"<h1>Error {status}</h1>{message_box(message)}", **frame)
