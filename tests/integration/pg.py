"""Throwaway PostgreSQL clusters for tests and the demo: initdb into /tmp, unix socket only,
run as the `postgres` OS user when we are root (initdb refuses root)."""

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg

PG_CONFIG = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")
BINDIR = subprocess.check_output([PG_CONFIG, "--bindir"], text=True).strip()

# What the postmaster logs when a child dies abnormally (a backend, a parallel worker, any
# server process): each means every session was reset, and the server recovered on its own,
# so pg_postmaster_start_time() does not change.
CRASH_LINES = re.compile(
    r"terminated by signal|server process \(PID \d+\) exited|was terminated"
    r"|terminating any other active server processes|all server processes terminated|PANIC:"
)


def _as_postgres(cmd, **kw):
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    return subprocess.run(cmd, check=True, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_server_file(path: str, text: str, mode: int):
    """A file the server (the postgres OS user) owns, with `mode`: e.g. a secret only it reads."""
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


class Cluster:
    def _place(self, name: str):
        """A directory for the cluster (owned by postgres), its data dir, log and a free port."""
        self.dir = tempfile.mkdtemp(prefix=f"kinde_rls-{name}-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.data = os.path.join(self.dir, "data")
        self.port = _free_port()
        self.log = os.path.join(self.dir, "server.log")

    def __init__(self, name: str, preload: bool = True, conf: dict | None = None):
        self._place(name)
        _as_postgres(
            [f"{BINDIR}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
             "--locale=C.UTF-8", "-E", "UTF8", "--no-sync"],
            stdout=subprocess.DEVNULL,
        )
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.dir}'",
            "port": str(self.port),
            "fsync": "off",
            "max_connections": "120",
            "log_min_messages": "warning",
        }
        if preload:
            settings["shared_preload_libraries"] = "'kinde_rls'"
        settings.update(conf or {})
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            for k, v in settings.items():
                f.write(f"{k} = {v}\n")
        self.start()

    @classmethod
    def standby_of(cls, primary: "Cluster", name: str = "standby") -> "Cluster":
        """A streaming hot standby of `primary` (pg_basebackup -R), on its own socket and port."""
        c = cls.__new__(cls)
        c._place(name)
        _as_postgres([f"{BINDIR}/pg_basebackup", "-D", c.data, "-h", primary.dir, "-p", str(primary.port),
                      "-U", "postgres", "-R", "-X", "stream", "-c", "fast", "--no-sync"],
                     stdout=subprocess.DEVNULL)
        with open(os.path.join(c.data, "postgresql.conf"), "a") as f:
            f.write(f"port = {c.port}\nunix_socket_directories = '{c.dir}'\nhot_standby = on\n")
        c.start()
        return c

    def start(self):
        _as_postgres([f"{BINDIR}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "start"],
                     stdout=subprocess.DEVNULL)

    def restart(self):
        _as_postgres([f"{BINDIR}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-m", "fast", "restart"],
                     stdout=subprocess.DEVNULL)

    def stop(self):
        try:
            _as_postgres([f"{BINDIR}/pg_ctl", "-D", self.data, "-w", "-m", "immediate", "stop"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def conninfo(self, user="postgres", dbname="postgres") -> str:
        return f"host={self.dir} port={self.port} user={user} dbname={dbname}"

    def connect(self, user="postgres", dbname="postgres", autocommit=True, **kw) -> psycopg.Connection:
        return psycopg.connect(self.conninfo(user, dbname), autocommit=autocommit, **kw)

    def psql(self, sql: str, user="postgres", dbname="postgres"):
        with self.connect(user, dbname) as c:
            c.execute(sql)

    def server_log(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.log)
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        """The server log written after `offset` (a log_size())."""
        try:
            with open(self.log, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @contextlib.contextmanager
    def no_crash(self, dbname="postgres"):
        """Assert that no server process crashes during the block.

        A backend that dies on a signal makes the postmaster end every other session and
        reinitialize; it does not restart, so pg_postmaster_start_time() stays the same. Two
        witnesses instead: a sentinel session opened before the block must still answer, as the
        same backend, after it; and the server log must have gained no crash line."""
        offset = self.log_size()
        sentinel = self.connect(dbname=dbname)
        pid = sentinel.info.backend_pid
        try:
            yield
        finally:
            # A child that died at the very end of the block: give the postmaster time to reap
            # it and reset the other sessions before looking.
            time.sleep(0.2)
            problems = []
            try:
                answer = sentinel.execute("SELECT 1, pg_backend_pid()").fetchone()
                if answer != (1, pid):
                    problems.append(f"the sentinel session answered {answer}, expected (1, {pid})")
            except psycopg.Error as e:
                problems.append(f"the sentinel session (backend {pid}) was lost: {str(e).strip()}")
            finally:
                sentinel.close()
            crashes = [line for line in self.log_since(offset).splitlines() if CRASH_LINES.search(line)]
            if crashes:
                problems.append("the server log reports a crash:\n  " + "\n  ".join(crashes[:10]))
            if problems:
                raise AssertionError("a server process crashed: " + "; ".join(problems))
