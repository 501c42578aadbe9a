"""pytest plugin: a throwaway PostgreSQL server for the tests marked ``postgres``.

``postgres_url`` (session scope) starts a cluster of Debian's ``postgresql`` package on 127.0.0.1
at a free port in a temporary folder, yields a SQLAlchemy URL of an empty database, and stops and
removes the cluster at teardown.  Tests are skipped, with the reason, only when the server
binaries or a PostgreSQL driver cannot be found (scripts/test.sh installs both when it can).
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER_TOOLS = ("initdb", "pg_ctl", "createdb")


def find_bindir() -> Path | None:
    """The folder holding initdb/pg_ctl: PATH first, then Debian's /usr/lib/postgresql/<v>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent  # Debian links only some tools onto PATH
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def driver() -> str | None:
    """The SQLAlchemy driver name to put in the URL: psycopg (v3) or psycopg2, whichever is installed."""
    return next((m for m in ("psycopg", "psycopg2") if importlib.util.find_spec(m)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """One running server; ``url(driver)`` is the SQLAlchemy URL of its test database."""
    bindir: Path
    root: Path
    port: int
    as_user: list[str]
    dbname: str = "nas_test"

    def run(self, tool: str, *args: str) -> None:
        cmd = [*self.as_user, str(self.bindir / tool), *args]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if p.returncode:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}{tail}")

    def url(self, drv: str) -> str:
        return f"postgresql+{drv}://postgres@127.0.0.1:{self.port}/{self.dbname}"

    def start(self) -> "Cluster":
        data = str(self.root / "data")
        # trust auth on 127.0.0.1 only; no fsync: a test cluster is thrown away anyway.
        self.run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                 "--locale=C", "--no-sync")
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F -c max_connections=100"
        self.run("pg_ctl", "-D", data, "-o", opts, "-l", str(self.root / "server.log"), "-w",
                 "-t", "60", "start")
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.dbname)
        return self

    def stop(self) -> None:
        try:
            self.run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> Cluster:
    """Start a server or raise RuntimeError saying why it cannot be started here."""
    bindir = find_bindir()
    if bindir is None or not all((bindir / t).exists() for t in SERVER_TOOLS):
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's "
                           "'postgresql' package (scripts/test.sh does so when run as root)")
    root = Path(tempfile.mkdtemp(prefix="nas-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        runuser = shutil.which("runuser")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pw = None
        if runuser is None or pw is None:
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError("running as root, and there is no 'postgres' user or no runuser "
                               "to start the server as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    cluster = Cluster(bindir=bindir, root=root, port=free_port(), as_user=as_user)
    try:
        return cluster.start()
    except Exception:
        shutil.rmtree(root, ignore_errors=True)
        raise


@pytest.fixture(scope="session")
def postgres_url():
    drv = driver()
    if drv is None:
        pytest.skip("no PostgreSQL driver: pip install 'more-nas[postgres]' (psycopg)")
    try:
        cluster = start_cluster()
    except RuntimeError as e:
        pytest.skip(str(e))
    try:
        yield cluster.url(drv)
    finally:
        cluster.stop()

