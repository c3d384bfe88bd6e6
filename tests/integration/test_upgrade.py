"""Upgrades: a database created with the previous release keeps its policies working through
`ALTER EXTENSION kinde_rls UPDATE`, and ends with exactly the objects a fresh install has.

Released schemas are frozen in sql/releases/kinde_rls--VERSION.sql; upgrade scripts are
sql/kinde_rls--FROM--TO.sql. The previous release is installed from its frozen script (the build
generates only the current version's), so `ALTER EXTENSION … UPDATE` really runs the upgrade
scripts; when the current version is itself released, its frozen script must also still match
what the build generates."""

import glob
import os
import re
import shutil
import subprocess

import psycopg
import pytest
from helpers import one, set_local
from kinde import KINDE_ISS, Signer, jwks, kinde_access_claims
from pg import PG_CONFIG, Cluster

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
EXTDIR = os.path.join(subprocess.check_output([PG_CONFIG, "--sharedir"], text=True).strip(), "extension")


def _version_key(v: str):
    return tuple(int(x) for x in re.findall(r"\d+", v))


def current_version() -> str:
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        return re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)


def released_versions() -> list[str]:
    found = [re.match(r"kinde_rls--(.+)\.sql$", os.path.basename(p)).group(1)
             for p in glob.glob(os.path.join(ROOT, "sql", "releases", "kinde_rls--*.sql"))]
    return sorted(found, key=_version_key)


VERSION = current_version()
RELEASES = released_versions()
EARLIER = [v for v in RELEASES if _version_key(v) < _version_key(VERSION)]
PREVIOUS = EARLIER[-1] if EARLIER else None
# The frozen schema of the current release is installed under this version name for the drift
# check, so it never collides with the script the build generates for the same version.
FROZEN = f"{VERSION}-frozen"


def test_release_files_are_consistent():
    assert RELEASES, "sql/releases/ must hold the frozen schema of at least the first release"
    assert _version_key(RELEASES[-1]) <= _version_key(VERSION)
    upgrades = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "sql", "kinde_rls--*--*.sql")))
    for name in upgrades:
        a, b = re.match(r"kinde_rls--(.+)--(.+)\.sql$", name).groups()
        assert _version_key(a) < _version_key(b) <= _version_key(VERSION), name
    assert PREVIOUS is not None, f"no release before {VERSION} is frozen in sql/releases: nothing to upgrade from"
    assert upgrades, f"{VERSION} follows release {PREVIOUS}: sql/kinde_rls--{PREVIOUS}--{VERSION}.sql is missing"


@pytest.fixture(scope="module")
def upc():
    """A cluster whose extension directory also holds the previous release's frozen script."""
    placed = []
    targets = {}
    assert PREVIOUS is not None
    # The build installs no script for an earlier version: the only way to it is the frozen one.
    assert not os.path.exists(os.path.join(EXTDIR, f"kinde_rls--{PREVIOUS}.sql")), "stale install script"
    targets[f"kinde_rls--{PREVIOUS}.sql"] = PREVIOUS
    if RELEASES and RELEASES[-1] == VERSION:
        targets[f"kinde_rls--{FROZEN}.sql"] = VERSION
    for name, release in targets.items():
        dst = os.path.join(EXTDIR, name)
        shutil.copyfile(os.path.join(ROOT, "sql", "releases", f"kinde_rls--{release}.sql"), dst)
        os.chmod(dst, 0o644)
        placed.append(dst)
    c = Cluster("upgrade", preload=False)
    try:
        yield c
    finally:
        c.stop()
        for p in placed:
            os.unlink(p)


SIGNER = Signer("rsa")

POLICY_SQL = """
CREATE TABLE notes (id serial PRIMARY KEY, owner text NOT NULL, body text NOT NULL,
                    org text NOT NULL DEFAULT 'org_95755120efb');
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON notes FOR SELECT USING (owner = get_user_id());
CREATE POLICY org_admin ON notes FOR SELECT USING (has_role('admin') AND org = get_org_code());
CREATE POLICY write_own ON notes FOR INSERT
  WITH CHECK (owner = get_user_id() AND has_permission('write:todos'));
CREATE VIEW my_notes AS SELECT id, body, get_claim('email') #>> '{}' AS email FROM notes
  WHERE owner = get_user_id();
ALTER VIEW my_notes SET (security_invoker = true);
INSERT INTO notes (owner, body, org) VALUES
  ('kp_alice', 'a1', 'org_95755120efb'), ('kp_alice', 'a2', 'org_95755120efb'),
  ('kp_bob', 'b1', 'org_95755120efb'), ('kp_carol', 'c1', 'org_other');
GRANT SELECT, INSERT ON notes TO note_user;
GRANT SELECT ON my_notes TO note_user;
GRANT USAGE ON SEQUENCE notes_id_seq TO note_user;
"""


def _make_db(c: Cluster, name: str, version: str):
    c.psql(f"DROP DATABASE IF EXISTS {name}")
    c.psql(f"CREATE DATABASE {name}")
    c.psql("DO $$ BEGIN CREATE ROLE note_user LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    with c.connect(dbname=name) as db:
        db.execute(f"CREATE EXTENSION kinde_rls VERSION '{version}'")
        db.execute(f"ALTER DATABASE {name} SET kinde_rls.jwks = '{jwks(SIGNER)}'")
        db.execute(f"ALTER DATABASE {name} SET kinde_rls.issuer = '{KINDE_ISS}'")


def _observe(c: Cluster, dbname: str) -> dict:
    """What the policies let each user see and do, from fresh non-superuser connections."""
    seen = {}
    for sub, roles in [("kp_alice", []), ("kp_bob", [{"id": "r1", "key": "admin", "name": "Admin"}])]:
        token = SIGNER.sign(kinde_access_claims(sub, roles=roles), "RS256")
        with c.connect(user="note_user", dbname=dbname, autocommit=False) as conn:
            set_local(conn, "kinde_rls.token", token)
            rows = conn.execute("SELECT body FROM notes ORDER BY body").fetchall()
            view = conn.execute("SELECT body, email FROM my_notes ORDER BY body").fetchall()
            conn.execute("INSERT INTO notes (owner, body) VALUES (%s, 'new')", (sub,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO notes (owner, body) VALUES ('kp_carol', 'forged')")
            conn.rollback()
            seen[sub] = ([r[0] for r in rows], view)
        with c.connect(user="note_user", dbname=dbname) as conn:
            assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 0  # no token: no rows
    return seen


EXPECTED = {
    "kp_alice": (["a1", "a2"], [("a1", "kp_alice@example.com"), ("a2", "kp_alice@example.com")]),
    # bob owns b1 and, as an admin of org_95755120efb, sees that org's notes too.
    "kp_bob": (["a1", "a2", "b1"], [("b1", "kp_bob@example.com")]),
}


def _fingerprint(c: Cluster, dbname: str) -> list:
    """Every object the extension owns, with what matters to callers and to security."""
    with c.connect(dbname=dbname) as db:
        members = db.execute("""
            SELECT pg_describe_object(d.classid, d.objid, 0)
            FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
            WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'kinde_rls'
            ORDER BY 1""").fetchall()
        functions = db.execute("""
            SELECT p.oid::regprocedure::text, pg_get_function_arguments(p.oid),
                   pg_get_function_result(p.oid), p.provolatile, p.proisstrict, p.proparallel,
                   p.prosecdef, p.proleakproof, p.proconfig, p.prosrc, p.probin,
                   p.procost, p.prorows, coalesce(p.proacl::text, '(default)')
            FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
            JOIN pg_extension e ON e.oid = d.refobjid AND d.deptype = 'e'
            WHERE e.extname = 'kinde_rls' ORDER BY 1""").fetchall()
        relations = db.execute("""
            SELECT c.oid::regclass::text, c.relkind, coalesce(c.relacl::text, '(default)'),
                   CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END
            FROM pg_class c JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass
            JOIN pg_extension e ON e.oid = d.refobjid AND d.deptype = 'e'
            WHERE e.extname = 'kinde_rls' ORDER BY 1""").fetchall()
        # What the extension's scripts granted and revoked: pg_dump restores these.
        init_privs = db.execute("""
            SELECT pg_describe_object(i.classoid, i.objoid, i.objsubid), i.privtype, i.initprivs::text
            FROM pg_init_privs i JOIN pg_depend d ON d.objid = i.objoid AND d.classid = i.classoid
            JOIN pg_extension e ON e.oid = d.refobjid AND d.deptype = 'e'
            WHERE e.extname = 'kinde_rls' ORDER BY 1""").fetchall()
    return [members, functions, relations, init_privs]


def test_policies_survive_update_from_previous_release(upc):
    _make_db(upc, "upgraded", PREVIOUS)
    with upc.connect(dbname="upgraded") as db:
        db.execute(POLICY_SQL)
    assert _observe(upc, "upgraded") == EXPECTED
    with upc.connect(dbname="upgraded") as db:
        assert one(db, "SELECT extversion FROM pg_extension WHERE extname = 'kinde_rls'") == PREVIOUS != VERSION
        db.execute("ALTER EXTENSION kinde_rls UPDATE")
        assert one(db, "SELECT extversion FROM pg_extension WHERE extname = 'kinde_rls'") == VERSION
    assert _observe(upc, "upgraded") == EXPECTED


def test_update_path_reaches_current_version(upc):
    with upc.connect() as db:
        assert one(db, "SELECT default_version FROM pg_available_extensions WHERE name = 'kinde_rls'") == VERSION
        path = one(db, "SELECT path FROM pg_extension_update_paths('kinde_rls') WHERE source = %s AND target = %s",
                   (PREVIOUS, VERSION))
        assert path is not None, f"no update path {PREVIOUS} -> {VERSION}"


def test_upgraded_database_matches_fresh_install(upc):
    _make_db(upc, "fresh", VERSION)
    _make_db(upc, "updated", PREVIOUS)
    before = _fingerprint(upc, "updated")
    with upc.connect(dbname="updated") as db:
        db.execute("ALTER EXTENSION kinde_rls UPDATE")
        assert one(db, "SELECT extversion FROM pg_extension WHERE extname = 'kinde_rls'") == VERSION
    fresh = _fingerprint(upc, "fresh")
    assert any("get_user_id()" in f[0] for f in fresh[1])
    assert _fingerprint(upc, "updated") == fresh
    # The frozen previous release is what was installed: it differs from this version (0.1.0's
    # jwks_status() has six columns; 0.2.0 has no jws_verify()), so the comparison above is not
    # of a schema with itself.
    if (PREVIOUS, VERSION) in {("0.1.0", "0.2.0"), ("0.2.0", "0.3.0")}:
        assert before != fresh


def test_released_schema_has_not_drifted(upc):
    """When the current version is a release, its frozen script is what the build generates:
    an added or changed function needs a version bump and an upgrade script, not an edit under
    a version users already run."""
    if RELEASES[-1] != VERSION:
        pytest.skip(f"{VERSION} is not released yet; the update test covers {PREVIOUS} -> {VERSION}")
    _make_db(upc, "frozen", FROZEN)
    _make_db(upc, "fresh2", VERSION)
    assert _fingerprint(upc, "frozen") == _fingerprint(upc, "fresh2")
