"""Fixtures for the control plane: a real PostgreSQL cluster started by the suite, a database
per test on SQLite *and* PostgreSQL (``db_url``), the real app served by uvicorn on loopback
(thread) or the real ``corral server`` CLI (subprocess), and tokens made as the CLI makes them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require

VENV_BIN = Path(sys.executable).parent
_names = itertools.count()


class Postgres:
    def __init__(self, root: Path, bin_dir: Path) -> None:
        self.root, self.bin = root, bin_dir
        self.sock = root / "sock"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.sock}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host=str(self.sock), user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]


def _as_postgres(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, user="postgres", group="postgres", check=True, text=True,
                          capture_output=True, **kwargs)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    require(bool(found), "PostgreSQL server binaries (Debian's postgresql; scripts/sysdeps.sh)")
    require(os.geteuid() == 0, "root (the suite runs PostgreSQL as the postgres user)")
    bin_dir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="corral-pg-"))
    shutil.chown(root, "postgres", "postgres")
    pg = Postgres(root, bin_dir)
    pg.sock.mkdir()
    shutil.chown(pg.sock, "postgres", "postgres")
    _as_postgres([str(bin_dir / "initdb"), "-D", str(root / "data"), "-A", "trust",
                  "-U", "postgres", "--no-sync", "-E", "UTF8"])
    _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"),
                  "-w", "-o", f"-k {pg.sock} -c listen_addresses='' -c fsync=off "
                  "-c max_connections=200", "start"])
    try:
        yield pg
    finally:
        _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate",
                      "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database on each backend."""
    from corral.server.db import Database
    from corral.server.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'server.db'}"
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        name = f"t{os.getpid()}_{next(_names)}"
        pg.admin(f"CREATE DATABASE {name}")
        url = pg.url(name)
    db = Database(url)
    upgrade(db.engine)
    db.dispose()
    yield url
    if request.param == "postgresql":
        with contextlib.suppress(Exception):
            pg.admin(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def kek_file(tmp_path: Path) -> Path:
    from corral.server.crypto import generate_key_file

    path = tmp_path / "kek"
    generate_key_file(path)
    return path


class Served:
    def __init__(self, url: str, db_url: str, kek: Path) -> None:
        self.url, self.db_url, self.kek = url, db_url, kek

    def token(self, role: str = "owner", team: str | None = None,
              ttl: dt.timedelta = dt.timedelta(days=1)) -> str:
        from corral.server.db import Database
        from corral.server.local import create_token

        db = Database(self.db_url)
        try:
            return create_token(db, name=f"test-{role}", role=role, team=team, ttl=ttl)
        finally:
            db.dispose()

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serve(kek_file: Path) -> Iterator[Callable[..., Served]]:
    """Start the real app under uvicorn on loopback, in a thread."""
    import uvicorn

    from corral.server.app import create_app
    from corral.server.config import ServerConfig

    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(url: str, **config: Any) -> Served:
        cfg = ServerConfig(db=url, kek_file=kek_file, **config)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(cfg), log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            assert time.monotonic() < deadline, "the server did not start in 20 s"
            time.sleep(0.01)
        running.append((server, thread))
        return Served(f"http://127.0.0.1:{port}", url, kek_file)

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def server(serve: Callable[..., Served], db_url: str) -> Served:
    return serve(db_url)


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    done = subprocess.run([str(VENV_BIN / "corral"), *args], env=full, input=stdin, text=True,
                          capture_output=True, timeout=60)
    if check:
        assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done


@pytest.fixture
def spawn_server(kek_file: Path, tmp_path: Path) -> Iterator[Callable[..., tuple[str, Any]]]:
    """Start ``corral server`` (the real CLI) as a subprocess; returns (URL, Popen)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(db_url: str, extra: str = "") -> tuple[str, Any]:
        port = free_port()
        config = tmp_path / f"server-{port}.yaml"
        config.write_text(f"kek_file: {kek_file}\n{extra}")
        env = {**os.environ, "CORRAL_DB_URL": db_url, "CORRAL_HOME": str(tmp_path / "home")}
        log = open(tmp_path / f"server-{port}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([str(VENV_BIN / "corral"), "server", "--listen",
                                 f"127.0.0.1:{port}", "--config", str(config)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / f"server-{port}.log").read_text()
            try:
                httpx.get(url + "/healthz", timeout=1)
                return url, proc
            except httpx.TransportError:
                assert time.monotonic() < deadline, "corral server did not start in 30 s"
                time.sleep(0.05)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
