"""Human approvals for tool calls, persisted so that another process can decide them.

The store is one SQLite file under ``dirs.state_dir()/approvals`` (directory 0700, file 0600:
root-only, like the rest of the state dir). ``corral mcp`` writes pending requests there and
``corral approvals list|approve|deny`` (a separate process, run by the human) decides them.

Invariants:
- An approval binds the exact call: (tool, sha256 of the canonical JSON of its arguments,
  policy digest), the principal that asked and its workspace. A grant for one call never lets a
  call with other arguments, under another policy, from another principal or in another
  workspace (another server's ephemeral one included) through.
- A grant is single-use: ``consume`` marks it used in the same transaction that finds it.
  Only "always" widens it, to (tool, scope, workspace, policy digest) where the scope is the
  command for exec (so the same command under other cwd/timeout) and the arguments otherwise.
- A pending request expires (default 10 min) and then counts as denied; a grant must be used
  within the same time after its decision.
- Every decision records who (the OS user, ``SUDO_USER`` when run under sudo), when and why;
  every request, decision, use and expiry goes to the ``AuditSink``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from corral import dirs
from corral.errors import CorralError, UserInputError

__all__ = [
    "DEFAULT_TTL",
    "Approval",
    "ApprovalStore",
    "AuditSink",
    "NullAudit",
    "StandingRule",
    "args_digest",
    "current_user",
]

DEFAULT_TTL = 600.0
Status = Literal["pending", "approved", "denied", "expired", "used"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, tool TEXT NOT NULL, args TEXT NOT NULL, args_digest TEXT NOT NULL,
    scope_digest TEXT NOT NULL, policy_digest TEXT NOT NULL, workspace TEXT NOT NULL,
    summary TEXT NOT NULL, why TEXT NOT NULL, principal TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL, status TEXT NOT NULL,
    decided_by TEXT, decided_at REAL, reason TEXT, always INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS approvals_binding ON approvals (tool, args_digest, policy_digest);
CREATE TABLE IF NOT EXISTS always_rules (
    tool TEXT NOT NULL, scope_digest TEXT NOT NULL, workspace TEXT NOT NULL,
    policy_digest TEXT NOT NULL, summary TEXT NOT NULL, created_by TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (tool, scope_digest, workspace, policy_digest)
);
"""


class AuditSink(Protocol):
    """Where approval events go; the lead wires this to ``corral.audit``."""

    def emit(self, event_type: str, **fields: Any) -> None: ...


class NullAudit:
    def emit(self, event_type: str, **fields: Any) -> None:
        return None


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def args_digest(args: Mapping[str, Any]) -> str:
    return _digest(canonical(dict(args)))


def _digest(text: str) -> str:
    # A lone surrogate (JSON can carry "\ud800") has no UTF-8 form: hashed by its code point.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable(text: str) -> str:
    """Agent text SQLite can hold: a lone surrogate becomes its escape, as ``visible`` shows it."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def current_user() -> str:
    """The human deciding: ``SUDO_USER`` under sudo, else the OS user."""
    # SUDO_USER means something only when sudo made us root; otherwise anyone could set it.
    sudo = os.environ.get("SUDO_USER") if os.getuid() == 0 else None
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = f"uid {os.getuid()}"
    return f"{sudo} (via sudo as {name})" if sudo else name


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    tool: str
    args: dict[str, Any]
    args_digest: str
    policy_digest: str
    workspace: str
    summary: str
    why: str
    principal: str
    created: float
    expires: float
    status: Status
    decided_by: str | None
    decided_at: float | None
    reason: str | None
    always: bool

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> Approval:
        return cls(
            id=row["id"], tool=row["tool"], args=json.loads(row["args"]),
            args_digest=row["args_digest"], policy_digest=row["policy_digest"],
            workspace=row["workspace"], summary=row["summary"], why=row["why"],
            principal=row["principal"], created=row["created"], expires=row["expires"],
            status=row["status"], decided_by=row["decided_by"], decided_at=row["decided_at"],
            reason=row["reason"], always=bool(row["always"]),
        )


@dataclass(frozen=True, slots=True)
class StandingRule:
    """An "approve always": later calls with this tool and scope, in this workspace, under this
    policy digest, are approved without asking until it is revoked."""

    id: int
    tool: str
    summary: str
    workspace: str
    policy_digest: str
    created_by: str
    created: float


class ApprovalStore:
    """The pending/decided approvals, shared by the server and the ``corral approvals`` CLI."""

    def __init__(
        self, root: Path | None = None, *, ttl: float = DEFAULT_TTL, audit: AuditSink | None = None
    ) -> None:
        self.root = root if root is not None else dirs.state_dir() / "approvals"
        self.ttl = ttl
        self.audit: AuditSink = audit or NullAudit()
        self.path = self.root / "approvals.db"
        try:
            if root is None:
                dirs.ensure_state_dir()
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.root.chmod(0o700)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
            self.path.chmod(0o600)
            with self._db() as db:
                db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise CorralError(f"cannot open the approvals store {self.path}: "
                              f"{getattr(err, 'strerror', None) or err} (it is root-only: "
                              "run corral as root, e.g. with sudo)") from None

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _expire(self, db: sqlite3.Connection, now: float) -> None:
        rows = db.execute(
            "SELECT id, tool FROM approvals WHERE status = 'pending' AND expires <= ?", (now,)
        ).fetchall()
        for row in rows:
            db.execute("UPDATE approvals SET status = 'expired', decided_at = ?, "
                       "decided_by = 'timeout', reason = 'expired without a decision' "
                       "WHERE id = ?", (now, row["id"]))
            self.audit.emit("approval.decide", request_id=row["id"], decision="expired",
                            by="timeout", tool=row["tool"], reason="expired without a decision")

    # -- the server side -----------------------------------------------------------------------

    def allowed_always(self, tool: str, scope: str, workspace: str, policy_digest: str) -> bool:
        with self._db() as db:
            row = db.execute(
                "SELECT 1 FROM always_rules WHERE tool = ? AND scope_digest = ? AND workspace = ? "
                "AND policy_digest = ?", (tool, _digest(scope), workspace, policy_digest)
            ).fetchone()
        return row is not None

    def consume(
        self,
        tool: str,
        args: Mapping[str, Any],
        policy_digest: str,
        principal: str = "local",
        workspace: str | None = None,
    ) -> Approval | None:
        """Use up a grant for exactly this call by this principal, if there is a live one."""
        digest = args_digest(args)
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM approvals WHERE tool = ? AND args_digest = ? AND policy_digest = ? "
                "AND principal = ? AND status = 'approved' AND decided_at > ? "
                "AND (? IS NULL OR workspace = ?) ORDER BY decided_at LIMIT 1",
                (tool, digest, policy_digest, principal, now - self.ttl, workspace, workspace),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE approvals SET status = 'used' WHERE id = ?", (row["id"],))
        self.audit.emit("approval.use", request_id=row["id"], tool=tool)
        return Approval._from_row(row)

    def recent_denial(
        self, tool: str, args: Mapping[str, Any], policy_digest: str, principal: str
    ) -> Approval | None:
        """A human's denial of exactly this call within the last ``ttl`` seconds, if any."""
        with self._db() as db:
            row = db.execute(
                "SELECT * FROM approvals WHERE tool = ? AND args_digest = ? AND policy_digest = ? "
                "AND principal = ? AND status = 'denied' AND decided_at > ? "
                "ORDER BY decided_at DESC LIMIT 1",
                (tool, args_digest(args), policy_digest, principal, time.time() - self.ttl),
            ).fetchone()
        return Approval._from_row(row) if row is not None else None

    def request(
        self,
        tool: str,
        args: Mapping[str, Any],
        *,
        policy_digest: str,
        workspace: str,
        summary: str,
        why: str,
        scope: str | None = None,
        principal: str = "local",
    ) -> Approval:
        """The pending request for this exact call: an existing live one, or a new one."""
        digest = args_digest(args)
        now = time.time()
        with self._tx() as db:
            self._expire(db, now)
            row = db.execute(
                "SELECT * FROM approvals WHERE tool = ? AND args_digest = ? AND policy_digest = ? "
                "AND principal = ? AND status = 'pending'",
                (tool, digest, policy_digest, principal),
            ).fetchone()
            if row is not None:
                return Approval._from_row(row)
            ident = secrets.token_hex(4)
            db.execute(
                "INSERT INTO approvals (id, tool, args, args_digest, scope_digest, policy_digest,"
                " workspace, summary, why, principal, created, expires, status) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                (ident, tool, json.dumps(dict(args), sort_keys=True, ensure_ascii=True), digest,
                 _digest(scope if scope is not None else canonical(dict(args))), policy_digest,
                 workspace, _storable(summary), _storable(why), principal, now,
                 now + self.ttl),
            )
            row = db.execute("SELECT * FROM approvals WHERE id = ?", (ident,)).fetchone()
        self.audit.emit("approval.request", request_id=ident, tool=tool, summary=summary,
                        reason=why, args_digest=digest, policy_digest=policy_digest)
        return Approval._from_row(row)

    # -- the human side ------------------------------------------------------------------------

    def get(self, ident: str) -> Approval:
        with self._tx() as db:
            self._expire(db, time.time())
            row = db.execute("SELECT * FROM approvals WHERE id = ?", (ident,)).fetchone()
        if row is None:
            raise UserInputError(f"no approval request {ident!r} (see `corral approvals list`)")
        return Approval._from_row(row)

    def list(self, *, include_decided: bool = False) -> list[Approval]:
        with self._tx() as db:
            self._expire(db, time.time())
            query = "SELECT * FROM approvals"
            if not include_decided:
                query += " WHERE status = 'pending'"
            rows = db.execute(query + " ORDER BY created").fetchall()
        return [Approval._from_row(r) for r in rows]

    def decide(
        self,
        ident: str,
        *,
        approve: bool,
        by: str | None = None,
        reason: str | None = None,
        always: bool = False,
    ) -> Approval:
        """Approve or deny a pending request. Deciding twice, or too late, is refused."""
        by = by or current_user()
        now = time.time()
        status = "approved" if approve else "denied"
        with self._tx() as db:
            self._expire(db, now)
            row = db.execute("SELECT * FROM approvals WHERE id = ?", (ident,)).fetchone()
            if row is None:
                raise UserInputError(f"no approval request {ident!r} (see `corral approvals list`)")
            if row["status"] != "pending":
                raise CorralError(f"approval {ident} is already {row['status']}")
            db.execute(
                "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?, reason = ?, "
                "always = ? WHERE id = ?", (status, by, now, reason, int(always and approve), ident)
            )
            if approve and always:
                db.execute(
                    "INSERT OR REPLACE INTO always_rules VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row["tool"], row["scope_digest"], row["workspace"], row["policy_digest"],
                     row["summary"], by, now),
                )
            row = db.execute("SELECT * FROM approvals WHERE id = ?", (ident,)).fetchone()
        self.audit.emit("approval.decide", request_id=ident, decision=status, by=by,
                        tool=row["tool"], reason=reason, always=bool(always and approve))
        return Approval._from_row(row)

    def standing(self) -> tuple[StandingRule, ...]:
        """Every "approve always" in force, oldest first."""
        with self._db() as db:
            rows = db.execute("SELECT rowid, * FROM always_rules ORDER BY created").fetchall()
        return tuple(StandingRule(row["rowid"], row["tool"], row["summary"], row["workspace"],
                                  row["policy_digest"], row["created_by"], row["created"])
                     for row in rows)

    def revoke_standing(self, ident: int, by: str | None = None) -> StandingRule:
        """End one "approve always": the next matching call asks a human again."""
        by = by or current_user()
        with self._tx() as db:
            row = db.execute("SELECT rowid, * FROM always_rules WHERE rowid = ?",
                             (ident,)).fetchone()
            if row is None:
                raise UserInputError(f"no standing approval {ident} "
                                     "(see `corral approvals standing`)")
            db.execute("DELETE FROM always_rules WHERE rowid = ?", (ident,))
        rule = StandingRule(row["rowid"], row["tool"], row["summary"], row["workspace"],
                            row["policy_digest"], row["created_by"], row["created"])
        self.audit.emit("approval.revoke", standing=ident, by=by, tool=rule.tool,
                        summary=rule.summary, workspace=rule.workspace)
        return rule

    def wait(self, ident: str, timeout: float, poll: float = 0.2) -> Approval:
        """Block until the request is no longer pending or ``timeout`` passes."""
        end = time.monotonic() + timeout
        while True:
            approval = self.get(ident)
            if approval.status != "pending" or time.monotonic() >= end:
                return approval
            time.sleep(poll)
