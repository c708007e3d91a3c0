"""Every command and option of the CLI, fed missing, empty, malformed and out-of-range values.

The cases are generated from the typer app itself (``corral.cli.app.command()``) and from
``corral run``'s own argparse parser, so a new command or option is covered without an edit
here. Each case runs the installed ``corral`` as a subprocess with fresh state/config dirs and
must end in exit 2 (125 for ``run``), exactly one line on stderr that names the argument (its
flag, its name or the bad value), and no traceback.
"""

from __future__ import annotations

import base64
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

CORRAL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "corral")

# Values that are well formed, for the required arguments around the one under test.
VALID = {"files": "builtin:github", "url": "https://api.github.com/", "name": "token",
         "ident": "abcd1234", "path": "-", "before": "90d", "file": "policy.yaml",
         "project": "demo", "team": "demo", "email": "a@example.com", "role": "member",
         "token_id": "1", "new_key_file": "kek.key", "sandbox_id": "abcd1234",
         "command": "true", "amount": "5", "period": "day"}
# Free text: any non-empty string is a legitimate value, so "garbage" is not an error.
FREE_TEXT = {("approvals", "approve", "reason"), ("approvals", "deny", "reason"),
             ("audit", "export", "output"), ("policy", "init", "path"),
             ("sandbox", "kill", "reason"),
             ("policy", "pull", "output"), ("sandbox", "exec", "command")}
# Commands whose option values are not validated yet: walked for unknown options and
# commands only. Keep this empty.
VALUES_NOT_YET_CHECKED: set[tuple[str, ...]] = set()
UNKNOWN: list[str] = []  # required parameters without a VALID example: a test failure
GARBAGE = "bad value%!"
NUMBERS_BAD = {int: ["abc", "-5", "99999999999999999999999"], float: ["abc", "-5", "1e400", "nan"]}
# Options that act instead of running the command (they must not be exercised here).
ACTIONS = {"--install-completion", "--show-completion", "--help", "--version"}


def _typer_cases() -> list[tuple[str, list[str], list[str]]]:
    """``(case id, argv, names the stderr line may use)`` for the whole typer tree."""
    from corral.cli.app import command
    from corral.cli.guard import walk

    cases: list[tuple[str, list[str], list[str]]] = []
    for path, cmd in walk(command()):
        words = list(path[1:])
        if words == ["run"]:
            continue  # its own parser, below
        cases.append((f"{' '.join(words) or 'corral'} --bogus", [*words, "--bogus-opt"],
                      ["--bogus-opt"]))
        if getattr(cmd, "commands", None) and words:
            cases.append((f"{' '.join(words)} nosuchcmd", [*words, "nosuchcmd"], ["nosuchcmd"]))
        if getattr(cmd, "commands", None) and not cmd.callback:
            continue
        args = [p for p in cmd.params if p.param_type_name == "argument"]
        needed = [p.name for p in cmd.params if p.required and p.name not in VALID]
        if needed:
            UNKNOWN.append(f"{' '.join(words)}: {needed}")
            continue
        required = [VALID[p.name] for p in args if p.required]
        required += [w for p in cmd.params if p.required and p.param_type_name == "option"
                     for w in (p.opts[0], VALID[p.name])]
        if {tuple(words[:1]), tuple(words[:2])} & VALUES_NOT_YET_CHECKED:
            continue

        def case(label: str, argv: list[str], p: Any, value: str | None,
                 words: list[str] = words) -> None:
            names = [*p.opts, p.name, p.name.upper(), *([p.metavar] if p.metavar else [])]
            if value and len(value) >= 3:
                names.append(value)
            cases.append((f"{' '.join(words)} {label}", argv, names))

        for p in cmd.params:
            opt = p.opts[0]
            if opt in ACTIONS:
                continue
            ann = p.type_descriptor.annotation
            if p.param_type_name == "argument":
                others = [VALID[q.name] if q is not p else "{}"
                          for q in args if q.required or q is p]

                def fill(value: str, others: list[str] = others) -> list[str]:
                    return [value if a == "{}" else a for a in others]

                if p.required:  # the arguments before it given, it and the rest missing
                    before = [VALID[q.name] for q in args[: args.index(p)] if q.required]
                    case(f"{p.name}:missing", [*words, *before], p, None)
                for value in ["", *([] if (*words, p.name) in FREE_TEXT else [GARBAGE])]:
                    case(f"{p.name}:{value!r}", [*words, *fill(value)], p, value)
                continue
            if getattr(p, "is_flag", False):
                case(f"{opt}=yes", [*words, *required, f"{opt}=yes"], p, None)
                continue
            case(f"{opt}:missing", [*words, *required, opt], p, None)
            values = [""]
            if ann in NUMBERS_BAD:
                values += NUMBERS_BAD[ann]
            elif (*words, p.name) not in FREE_TEXT:
                values.append(GARBAGE)
            for value in values:
                case(f"{opt}:{value!r}", [*words, *required, opt, value], p, value)
    return cases


def _run_cases() -> list[tuple[str, list[str], list[str]]]:
    from corral.cli.run import _parser

    cases = [("run --bogus", ["run", "--bogus-opt", "true"], ["--bogus-opt"]),
             ("run no command", ["run"], ["command"])]
    for action in _parser()._actions:
        if not action.option_strings or action.nargs == 0:
            continue
        for opt in action.option_strings:
            cases.append((f"run {opt}:missing", ["run", opt], [opt]))
        opt = action.option_strings[-1]
        for value in ("", GARBAGE):
            cases.append((f"run {opt}:{value!r}", ["run", opt, value, "true"],
                          [opt, *([value] if value else [])]))
    return cases


CASES = _typer_cases() + _run_cases()


def test_the_walk_covers_the_cli() -> None:
    """Guard against a walk that silently finds nothing."""
    labels = " ".join(c[0] for c in CASES)
    for needle in ("audit list --limit:'-5'", "mcp --approval-ttl:'nan'",
                   "creds set name:missing", "policy explain --method:'bad value%!'",
                   "run --home:''", "sandbox list --json", "policy init --from:'bad value%!'",
                   "audit tail -n:'abc'"):
        assert needle in labels, needle
    assert len(CASES) > 200
    assert not UNKNOWN, f"add a well-formed example to VALID for: {UNKNOWN}"


@pytest.mark.timeout(1200)  # ~600 CLI processes; minutes on a loaded 2-core machine
def test_every_bad_value_is_one_line_naming_the_argument(tmp_path: Path) -> None:
    env = {**os.environ, "CORRAL_HOME": str(tmp_path / "state"),
           "CORRAL_CONFIG": str(tmp_path / "config"), "CORRAL_HOMES": str(tmp_path / "homes"),
           "NO_COLOR": "1", "COLUMNS": "200"}
    (tmp_path / "config").mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # The well-formed examples that name files exist, so only the value under test is bad.
    (cwd / VALID["file"]).write_text("name: walk\negress: []\n")
    (cwd / VALID["new_key_file"]).write_text(base64.b64encode(os.urandom(32)).decode() + "\n")

    def one(case: tuple[str, list[str], list[str]]) -> str | None:
        label, argv, names = case
        try:
            done = subprocess.run([CORRAL, *argv], env=env, cwd=cwd, capture_output=True,
                                  text=True, timeout=30, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"{label}: still running after 30 s (the bad value was accepted)"
        want = 125 if argv[0] == "run" else 2
        lines = done.stderr.splitlines()
        problems = []
        if done.returncode != want:
            problems.append(f"exit {done.returncode}, not {want}")
        if len(lines) != 1:
            problems.append(f"{len(lines)} lines on stderr")
        elif not lines[0].startswith("corral: ") or not any(
                n.lower() in lines[0].lower() for n in names if n):
            problems.append(f"does not name any of {names}")
        if "Traceback" in done.stderr + done.stdout:
            problems.append("traceback")
        if not problems:
            return None
        return f"{label} {argv}: {'; '.join(problems)}: {done.stderr[-300:]!r}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f for f in pool.map(one, CASES) if f]
    assert not failures, f"{len(failures)} of {len(CASES)} cases:\n" + "\n".join(failures)
    written = {p.name for p in cwd.iterdir()} - {VALID["file"], VALID["new_key_file"]}
    assert not written, f"a rejected command wrote {sorted(written)}"


@pytest.mark.parametrize("argv", [["--version"], ["run", "--help"], ["run", "-h"]])
def test_informational_flags_exit_0(argv: list[str]) -> None:
    done = subprocess.run([CORRAL, *argv], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout and not done.stderr
