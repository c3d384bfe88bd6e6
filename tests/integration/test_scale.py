"""Scaling reads: parallel query workers see the same verified identity, and a streaming hot
standby verifies tokens and filters rows exactly like the primary (verification writes nothing).
All as the non-superuser app_user."""

import json
import time

import pytest
from helpers import one
from kinde import kinde_access_claims
from pg import Cluster

USERS = 50
ROWS = 200_000


@pytest.fixture(scope="module")
def big_table(cluster):
    with cluster.connect(dbname="app") as su:
        su.execute("CREATE TABLE big_todos (id bigint, user_id text NOT NULL, task text)")
        su.execute(f"INSERT INTO big_todos SELECT i, 'kp_user_' || (i % {USERS}), 'task ' || i "
                   f"FROM generate_series(1, {ROWS}) i")
        su.execute("ALTER TABLE big_todos ENABLE ROW LEVEL SECURITY")
        su.execute("CREATE POLICY own ON big_todos USING (user_id = get_user_id())")
        su.execute("GRANT SELECT ON big_todos TO app_user")
        su.execute("VACUUM ANALYZE big_todos")
    yield "big_todos"
    with cluster.connect(dbname="app") as su:
        su.execute("DROP TABLE big_todos")


@pytest.fixture
def no_crash(cluster):
    """No backend or parallel worker crashes while the test runs (see Cluster.no_crash)."""
    with cluster.no_crash(dbname="app"):
        yield


def force_parallel(conn):
    for s in ["parallel_setup_cost = 0", "parallel_tuple_cost = 0", "min_parallel_table_scan_size = 0",
              "max_parallel_workers_per_gather = 2"]:
        conn.execute(f"SET {s}")


@pytest.mark.parametrize("source", ["kinde_rls.token", "request.headers"])
def test_parallel_scan_under_rls_returns_exactly_the_users_rows(cluster, signers, big_table, no_crash, source):
    t = signers["rsa"].sign(kinde_access_claims("kp_user_7"), "RS256")
    value = t if source == "kinde_rls.token" else json.dumps({"authorization": f"Bearer {t}"})
    with cluster.connect(user="app_user", dbname="app") as c:
        force_parallel(c)
        warnings = []
        c.add_notice_handler(lambda d: warnings.append(d.message_primary))
        with c.transaction():
            c.execute("SELECT set_config(%s, %s, true)", (source, value))
            plan = "\n".join(r[0] for r in c.execute(
                "EXPLAIN (ANALYZE, COSTS OFF) SELECT count(*), count(DISTINCT user_id) FROM big_todos"))
            assert "Gather" in plan and "Workers Launched: 2" in plan, plan
            n, users = c.execute("SELECT count(*), count(DISTINCT user_id) FROM big_todos").fetchone()
            assert (n, users) == (ROWS // USERS, 1)
            assert one(c, "SELECT min(user_id) FROM big_todos") == "kp_user_7"
        # Another user in the next transaction of the same session: their rows only.
        t2 = signers["rsa"].sign(kinde_access_claims("kp_user_8"), "RS256")
        with c.transaction():
            c.execute("SELECT set_config('kinde_rls.token', %s, true)", (t2,))
            assert c.execute("SELECT count(*), min(user_id), max(user_id) FROM big_todos").fetchone() == \
                (ROWS // USERS, "kp_user_8", "kp_user_8")
        # And anonymous: nothing.
        assert one(c, "SELECT count(*) FROM big_todos") == 0
        # A token set per transaction is not a session-level token, in the workers either.
        assert warnings == []


def test_parallel_workers_refuse_a_bad_token_too(cluster, signers, big_table, no_crash):
    bad = signers["stranger"].sign(kinde_access_claims("kp_user_7"), "RS256")
    with cluster.connect(user="app_user", dbname="app") as c:
        force_parallel(c)
        import psycopg

        with c.transaction():
            c.execute("SELECT set_config('kinde_rls.token', %s, true)", (bad,))
            with pytest.raises(psycopg.Error) as ei:
                c.execute("SELECT count(*) FROM big_todos")
            assert ei.value.sqlstate == "28000"


@pytest.fixture(scope="module")
def standby(cluster):
    s = Cluster.standby_of(cluster)
    try:
        yield s
    finally:
        s.stop()


def wait_for_replay(primary, standby, timeout=20):
    with primary.connect() as p:
        lsn = one(p, "SELECT pg_current_wal_lsn()::text")
    deadline = time.time() + timeout
    with standby.connect() as s:
        while time.time() < deadline:
            if one(s, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)):
                return
            time.sleep(0.1)
    raise TimeoutError("the standby did not catch up")


def test_standby_verifies_and_filters_like_the_primary(cluster, standby, signers):
    peter = signers["rsa"].sign(kinde_access_claims("kp_peter_replica"), "RS256")
    mia = signers["p256"].sign(kinde_access_claims("kp_mia_replica"), "ES256")
    with cluster.connect(user="app_user", dbname="app") as c:
        for tok, task in [(peter, "read replicas"), (mia, "scale reads")]:
            with c.transaction():
                c.execute("SELECT set_config('kinde_rls.token', %s, true)", (tok,))
                c.execute("INSERT INTO todos (task) VALUES (%s)", (task,))
    wait_for_replay(cluster, standby)
    answers = {}
    for node in (cluster, standby):
        with node.connect(user="app_user", dbname="app") as c:
            row = []
            row.append(one(c, "SELECT pg_is_in_recovery()"))
            row.append(one(c, "SELECT verify_jwt(%s)->>'sub'", (peter,)))
            for tok in (peter, mia):
                with c.transaction():
                    c.execute("SELECT set_config('kinde_rls.token', %s, true)", (tok,))
                    row.append(c.execute("SELECT get_user_id(), array_agg(task ORDER BY task) FROM todos").fetchone())
            import psycopg

            with c.transaction():
                c.execute("SELECT set_config('kinde_rls.token', %s, true)",
                          (signers["stranger"].sign(kinde_access_claims("kp_peter_replica"), "RS256"),))
                with pytest.raises(psycopg.Error) as ei:
                    c.execute("SELECT count(*) FROM todos")
                row.append(ei.value.sqlstate)
            answers[node is standby] = row
    assert answers[False][0] is False and answers[True][0] is True
    assert answers[True][1:] == answers[False][1:]
    assert answers[True][2] == ("kp_peter_replica", ["read replicas"])
    assert answers[True][3] == ("kp_mia_replica", ["scale reads"])
    assert answers[True][4] == "28000"
    with cluster.connect(dbname="app") as su:
        su.execute("DELETE FROM todos WHERE user_id LIKE '%_replica'")
