import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from kinde import CLIENT_SECRET, KINDE_ISS, Signer, jwks  # noqa: E402
from helpers import wait_for_setting  # noqa: E402
from pg import PG_CONFIG, Cluster, write_server_file  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TODOS_SQL = os.path.join(ROOT, "sql", "examples", "todos.sql")


@pytest.fixture(scope="session")
def signers():
    """One key per algorithm family, plus an RSA key the database never learns about."""
    return {
        "rsa": Signer("rsa"),
        "rsa_other": Signer("rsa"),
        "p256": Signer("p256"),
        "p384": Signer("p384"),
        "p521": Signer("p521"),
        "ed25519": Signer("ed25519"),
        "rsa1024": Signer("rsa1024"),
        "stranger": Signer("rsa"),
    }


@pytest.fixture(scope="session")
def cluster(signers):
    """The main cluster: kinde_rls in shared_preload_libraries, database `app` with the todo
    example, a non-superuser login role `app_user`, keys and issuer set as a superuser would."""
    c = Cluster("main", preload=True)
    try:
        c.psql("CREATE DATABASE app")
        with c.connect(dbname="app") as db:
            db.execute("CREATE EXTENSION kinde_rls")
            db.execute(open(TODOS_SQL).read())
            db.execute("CREATE ROLE app_user LOGIN")
            db.execute("GRANT authenticated TO app_user")
            db.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON todos TO app_user")
            keyset = jwks(*(signers[k] for k in ("rsa", "rsa_other", "p256", "p384", "p521", "ed25519")))
            db.execute(f"ALTER DATABASE app SET kinde_rls.jwks = '{keyset}'")
            db.execute(f"ALTER DATABASE app SET kinde_rls.issuer = '{KINDE_ISS}'")
            # The HMAC secret lives in a file only the server can read; the setting is a path.
            secret_path = os.path.join(c.dir, "kinde_client_secret")
            write_server_file(secret_path, CLIENT_SECRET + "\n", 0o600)
            db.execute(f"ALTER SYSTEM SET kinde_rls.secret_file = '{secret_path}'")
            db.execute("SELECT pg_reload_conf()")
        wait_for_setting(c, "kinde_rls.secret_file", secret_path)
        yield c
    finally:
        c.stop()


@pytest.fixture
def user_conn(cluster):
    """A fresh connection as the non-superuser `app_user`, the way an app connects."""
    with cluster.connect(user="app_user", dbname="app") as conn:
        yield conn


@pytest.fixture
def su_conn(cluster):
    with cluster.connect(dbname="app") as conn:
        yield conn


@pytest.fixture
def db_settings(cluster):
    """Set per-database settings as a superuser for one test; restored afterwards."""
    changed = []

    def set_(name, value):
        with cluster.connect(dbname="app") as c:
            c.execute(f"ALTER DATABASE app SET {name} = '{value}'")
        changed.append(name)

    yield set_
    if changed:
        with cluster.connect(dbname="app") as c:
            for name in changed:
                c.execute(f"ALTER DATABASE app RESET {name}")
        # Restore the session defaults the main fixture set.
        with cluster.connect(dbname="app") as c:
            for name in changed:
                if name == "kinde_rls.issuer":
                    c.execute(f"ALTER DATABASE app SET kinde_rls.issuer = '{KINDE_ISS}'")
                if name == "kinde_rls.jwks":
                    raise RuntimeError("tests must not replace the main key set")


# -- a green run means every test ran --------------------------------------------------------
# `make test` sets KINDE_RLS_FULL_SUITE=1: the run then fails when the number of tests collected
# is not the number the suite declares here (a module that stopped importing, a parametrization
# that came out empty, or tests added without saying so, which would let as many vanish later),
# or when any test is skipped or xfailed without being listed below. Update the count when
# adding tests; a skip that is part of the design gets an entry saying why.
DECLARED_TESTS = 462
EXPECTED_SKIPS: dict[str, str] = {
    # Between releases the current version has no frozen schema to compare with; the update test
    # still upgrades from the last release. Runs whenever Cargo.toml's version is released.
    "test_upgrade.py::test_released_schema_has_not_drifted": "the current version is not released yet",
}
# Signing in with a token is PostgreSQL 18's (oauth in pg_hba.conf): on 15 and 17 the module
# skips; on 18 it must run (a skip there fails the suite).
if int(subprocess.check_output([PG_CONFIG, "--version"], text=True).split()[1].split(".")[0]) < 18:
    EXPECTED_SKIPS["test_oauth.py::"] = "OAuth sign-in needs PostgreSQL 18"

_skipped: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    if hasattr(report, "wasxfail"):
        _skipped.append((report.nodeid, f"xfail: {report.wasxfail}"))
    elif report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, reason))


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("KINDE_RLS_FULL_SUITE") != "1":
        return
    problems = []
    if session.testscollected != DECLARED_TESTS:
        problems.append(f"collected {session.testscollected} tests, the suite declares {DECLARED_TESTS}")
    for nodeid, reason in _skipped:
        if not any(k in nodeid for k in EXPECTED_SKIPS):
            problems.append(f"unexpected skip or xfail: {nodeid} ({reason})")
    if problems:
        print("\nkinde_rls suite check failed:\n  " + "\n  ".join(problems))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
