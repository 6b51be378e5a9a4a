"""README's reference parts against the code: every matrec-ctl command has a row in its table and
every option a row names exists, every make target is listed, and the job kinds and the config
tables of diagnostic and score jobs match the specs."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from matrec.common.specs import JOB_KINDS
from matrec.sdk.ctl.app import app
from support.tools import make

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CODE = re.compile(r"`([^`]+)`")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z-]*)")


def cli_commands() -> dict[str, set[str]]:
    """Every leaf command of matrec-ctl ("hpo submit"), with its long options."""
    found: dict[str, set[str]] = {}

    def walk(command: object, path: list[str]) -> None:
        children = getattr(command, "commands", None)
        if children:
            for name, child in children.items():
                walk(child, [*path, name])
            return
        params = getattr(command, "params", [])
        found[" ".join(path)] = {
            o for p in params if p.param_type_name == "option" for o in p.opts + p.secondary_opts
        }

    walk(typer.main.get_command(app), [])
    return found


def table_rows() -> list[tuple[list[str], str]]:
    """(commands of the row, its description) for each row of the command table."""
    rows = []
    for line in README.splitlines():
        if not line.startswith("| `matrec-ctl "):
            continue
        first, description = line.strip("|").split(" | ", 1)
        named = [c.removeprefix("matrec-ctl ") for c in CODE.findall(first)]
        group = named[0].split()[0]
        commands = [named[0]] + [
            c if c.split()[0] == group or " " not in named[0] else f"{group} {c}" for c in named[1:]
        ]
        rows.append((commands, description))
    return rows


def test_every_command_has_a_row_and_every_named_option_exists() -> None:
    commands = cli_commands()
    rows = table_rows()
    documented = {command for named, _ in rows for command in named}
    assert sorted(set(commands) - documented) == [], "commands missing from README's table"
    assert sorted(documented - set(commands)) == [], "README's table names unknown commands"
    for named, description in rows:
        known = set().union(*(commands[c] for c in named))
        unknown = set(OPTION.findall(description)) - known
        assert not unknown, f"README's row for {named} names options they lack: {unknown}"


def test_make_help_targets_are_all_listed() -> None:
    shown = make("help")
    targets = set(re.findall(r"^  ([a-z][a-z-]*)  ", shown, re.MULTILINE))
    tools = shown.split("one target each (setup runs them all):")[1].split("\n")[1].split()
    sentence = README.split("`make help` lists every target:")[1].split("\n\n")[0]
    listed = set(CODE.findall(sentence))
    assert targets and tools, shown
    assert sorted(targets | set(tools)) == sorted(listed)


def config_table(kind: str) -> list[str]:
    """The fields of README's `kind` config table, in order."""
    rest = README.split(f"**`{kind}` config**", 1)[1].split("\n| field |", 1)[1]
    rows = rest.split("\n\n", 1)[0].splitlines()[2:]
    return [CODE.findall(row)[0] for row in rows]


def test_job_kinds_and_their_config_tables_match_the_specs() -> None:
    kind_row = next(line for line in README.splitlines() if line.startswith("| `kind` |"))
    assert set(CODE.findall(kind_row.split(" | ")[2])) == set(JOB_KINDS)
    for kind in ("finetune", "diagnostic", "score"):
        assert config_table(kind), kind
    for kind in ("diagnostic", "score"):
        assert config_table(kind) == list(JOB_KINDS[kind].model_fields), kind
