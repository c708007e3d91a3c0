"""Every documented ``corral`` command runs as the documentation says.

Every fenced ``sh`` and ``console`` block of README.md and docs/*.md is read; each ``corral``
command line in it (``$ `` lines of a console block; in an ``sh`` block, lines that run
corral, directly, after ``sudo`` or at the end of a pipe) is executed with bash, in a copy of
docs/examples/, with fresh CORRAL_HOME and CORRAL_CONFIG directories per document (one
``corral run -- true`` has run there, so an audit trail exists, as on any machine in use),
in document order (so ``creds set`` before ``creds list`` works). It must exit 0, or the
status a trailing ``# exit N`` comment names.

What cannot run here is marked where a reader sees it, and only that is skipped: a block whose
info string has ``not-run`` (e.g. ```` ```sh not-run ````), or a line with a
``# not run: <why>`` comment. Nothing in the repository may point at the design notes the
project was built from (``../shared``, ``/work/shared``): they do not ship.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require_root

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^([ \t]*)```([^\n`]*)\n(.*?)^\1```[ \t]*$", re.M | re.S)
RUNS_CORRAL = re.compile(r"(?:^|\|\s*|&&\s*|;\s*)(?:sudo\s+(?:-n\s+)?)?(?:\.venv/bin/)?corral\s")
EXIT = re.compile(r"#\s*exit\s+(\d+)\b")
NOT_RUN = re.compile(r"#\s*not run:\s*\S")
# A stand-in for the secret a reader would paste; the examples pipe it from these variables.
SECRETS = {"GITHUB_TOKEN": "ghp_docs_test_token", "ANTHROPIC_API_KEY": "sk-ant-docs-test",
           "OPENAI_API_KEY": "sk-docs-test"}


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str
    expect: int | None  # None: skipped (marked not run)

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _lines(body: str) -> list[tuple[int, str]]:
    """(offset, logical line): backslash continuations joined."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for n, raw in enumerate(body.splitlines()):
        if not pending:
            start = n
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        out.append((start, pending + raw))
        pending = ""
    return out


def collect() -> list[Command]:
    found: list[Command] = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        rel = str(path.relative_to(REPO))
        for block in FENCE.finditer(text):
            indent, info = len(block.group(1)), block.group(2).split()
            if not info or info[0] not in ("sh", "console"):
                continue
            first = text.count("\n", 0, block.start(3)) + 1
            skip_block = "not-run" in info[1:]
            body = "\n".join(raw[indent:] for raw in block.group(3).splitlines())
            for offset, line in _lines(body):
                if info[0] == "console":
                    if not line.startswith("$ "):
                        continue
                    line = line[2:]
                stripped = line.strip()
                if stripped.startswith("#") or not RUNS_CORRAL.search(stripped):
                    continue
                skip = skip_block or NOT_RUN.search(stripped) is not None
                code = EXIT.search(stripped)
                expect = None if skip else int(code.group(1)) if code else 0
                found.append(Command(rel, first + offset, stripped, expect))
    return found


COMMANDS = collect()


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, str]]]:
    """Per document, created on first use: (cwd, environment)."""
    return {}


def _workdir(cache: dict[str, tuple[Path, dict[str, str]]], doc: str,
             factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    if doc not in cache:
        base = factory.mktemp("docs")
        cwd = base / "examples"
        shutil.copytree(REPO / "docs" / "examples", cwd)
        for sub in ("config", "home"):
            (base / sub).mkdir()
        cache[doc] = cwd, {
            **os.environ, **SECRETS, "CORRAL_HOME": str(base / "state"),
            "CORRAL_CONFIG": str(base / "config"), "HOME": str(base / "home"),
            "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"}
        subprocess.run(["corral", "run", "--", "true"], cwd=cwd, env=cache[doc][1],
                       check=True, capture_output=True, timeout=60)
    return cache[doc]


def test_the_docs_have_commands() -> None:
    assert len([c for c in COMMANDS if c.expect is not None]) >= 20
    assert {c.doc for c in COMMANDS} >= {"README.md", "docs/policy.md", "docs/agents.md"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.id for c in COMMANDS])
def test_documented_command(cmd: Command, workdirs: dict[str, tuple[Path, dict[str, str]]],
                            tmp_path_factory: pytest.TempPathFactory) -> None:
    if cmd.expect is None:
        pytest.skip(f"marked not run in the doc: {cmd.text}")
    require_root()
    cwd, env = _workdir(workdirs, cmd.doc, tmp_path_factory)
    text = cmd.text.replace("sudo -n ", "").replace("sudo ", "")  # the suite runs as root
    text = text.replace(".venv/bin/corral", "corral")  # the checkout's, first on PATH
    done = subprocess.run(["bash", "-c", text], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == cmd.expect, (
        f"{cmd.id}: `{cmd.text}` exited {done.returncode}, the doc says {cmd.expect}\n"
        f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}")


def test_nothing_points_at_the_unshipped_design_notes() -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    bad = []
    for name in files:
        path = REPO / name
        if name == "tests/test_docs.py" or not path.is_file() or path.stat().st_size > 1 << 20:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if "../shared" in text or "/work/shared" in text:
            bad.append(name)
    assert not bad, f"these point at design notes that do not ship: {bad}"


def test_the_sdk_recipe_shown_is_the_one_tested() -> None:
    """docs/agents.md shows examples/agents/anthropic_agent.py, which tests/agents runs."""
    doc = (REPO / "docs" / "agents.md").read_text(encoding="utf-8")
    code = (REPO / "examples" / "agents" / "anthropic_agent.py").read_text(encoding="utf-8")
    body = code.split('"""', 2)[2].lstrip("\n")
    assert f"```python\n{body}```" in doc
