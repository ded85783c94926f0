"""A throwaway PostgreSQL for tests, benchmarks and the fleet demo: Debian's server binaries,
`initdb` + `pg_ctl` into a temporary folder, on a free loopback port, gone afterwards.

PostgreSQL refuses to run as root; as root the server runs as the `postgres` system user
(which the Debian package creates), in a folder that user owns.

    with Postgres.start() as pg:
        pg.url        # postgresql://cg@127.0.0.1:PORT/classguard
        pg.stop(); pg.resume()   # an outage, for fault tests
    urls = create_roles(pg.url)   # config/postgres-roles.sql run there: {"owner": url, "service": ..., "oncall": ...}
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "cg"  # the superuser initdb makes
DATABASE = "classguard"
ROLES_SQL = Path(__file__).resolve().parent.parent / "config" / "postgres-roles.sql"
ROLES = ("owner", "service", "oncall")  # classguard_<role>, as the roles file names them


def server_bindir() -> Path | None:
    """Where Debian's PostgreSQL server binaries are (they are not on PATH), newest version first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    def __init__(self, bindir: Path, folder: Path, port: int) -> None:
        self.bindir, self.folder, self.port = bindir, folder, port
        self.data = folder / "data"
        self.url = f"postgresql://{USER}@127.0.0.1:{port}/{DATABASE}"

    @classmethod
    def start(cls, port: int | None = None) -> "Postgres":
        bindir = server_bindir()
        if bindir is None:
            raise FileNotFoundError("no PostgreSQL server binaries (apt-get install postgresql)")
        folder = Path(tempfile.mkdtemp(prefix="classguard-pg-"))
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        pg = cls(bindir, folder, port or free_port())
        pg._run("initdb", "-D", str(pg.data), "-A", "trust", "-U", USER, "--no-sync", "-E", "UTF8")
        with open(pg.data / "postgresql.conf", "a") as f:
            # a throwaway server: durability is not what tests measure (fsync stays on: a
            # benchmark should pay what production pays)
            f.write("max_connections = 300\nshared_buffers = 128MB\n")
        pg.resume()
        pg._run("createdb", "-h", "127.0.0.1", "-p", str(pg.port), "-U", USER, DATABASE)
        return pg

    def resume(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "30", "-l", str(self.folder / "server.log"),
                  "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60, cwd=self.folder)

    def __enter__(self) -> "Postgres":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_roles(url: str) -> dict[str, str]:
    """Run config/postgres-roles.sql, as it is, in the database at `url` as the superuser; each
    role's URL (the server trusts local logins: no passwords)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ROLES_SQL.read_text())
    return {role: url.replace(f"//{USER}@", f"//classguard_{role}@", 1) for role in ROLES}
