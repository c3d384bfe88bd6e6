"""Operating kinde_rls: the statistics (kinde_rls_stats), the audit log (kinde_rls.log_refusals)
and the health check (kinde_rls_check()).

A cluster of its own (preloaded, also listening on 127.0.0.1), so that counters, log lines and
findings come only from these tests. The app connects as the non-superuser `app_user`, over
TCP, passing tokens as bind parameters the way drivers do.
"""

import contextlib
import os
import re
import time

import psycopg
import pytest

from helpers import one, refused, wait_for_setting
from issuer import MockIssuer
from kinde import Signer, hs256_resign, kinde_access_claims
from pg import Cluster, write_server_file

AUD = "api://todos"
COLUMNS = [
    "issuer", "verified", "cache_hits", "fast_path", "anonymous", "trusted_claims",
    "refused_format", "refused_algorithm", "refused_key", "refused_signature", "refused_exp",
    "refused_nbf", "refused_iss", "refused_aud", "refused_sub", "refused_scope", "fetches_ok", "fetches_failed",
    "fetches_rate_limited", "verify_time_us", "verify_time_max_us", "last_refusal",
    "log_suppressed", "clock_skew_s", "clock_skew_at", "scope", "stats_reset",
]


@pytest.fixture(scope="module")
def issuer():
    i = MockIssuer()
    yield i
    i.stop()


@pytest.fixture(scope="module")
def ops(issuer):
    c = Cluster("ops", preload=True, conf={"listen_addresses": "'127.0.0.1'"})
    try:
        with c.connect() as su:
            su.execute("CREATE DATABASE ops")
        with c.connect(dbname="ops") as su:
            su.execute("CREATE EXTENSION kinde_rls")
            su.execute("CREATE ROLE app_user LOGIN")
            su.execute("CREATE ROLE watcher LOGIN IN ROLE pg_monitor")
            su.execute(f"ALTER DATABASE ops SET kinde_rls.jwks_url = '{issuer.jwks_url}'")
            su.execute(f"ALTER DATABASE ops SET kinde_rls.issuer = '{issuer.iss}'")
            su.execute(f"ALTER DATABASE ops SET kinde_rls.audience = '{AUD}'")
        wait_for_setting(c, "kinde_rls.audience", AUD, dbname="ops")
        yield c
    finally:
        c.stop()


@contextlib.contextmanager
def role_settings(cluster, role="app_user", **settings):
    """kinde_rls settings for a role, set as a superuser would, reset afterwards."""
    with cluster.connect(dbname="ops") as su:
        for name, value in settings.items():
            su.execute(f"ALTER ROLE {role} SET kinde_rls.{name} = '{value}'")
    try:
        yield
    finally:
        with cluster.connect(dbname="ops") as su:
            for name in settings:
                su.execute(f"ALTER ROLE {role} RESET kinde_rls.{name}")


def tcp(cluster, user="app_user", dbname="ops"):
    """A connection over TCP to 127.0.0.1, as an app server makes one."""
    return psycopg.connect(f"host=127.0.0.1 port={cluster.port} user={user} dbname={dbname}",
                           autocommit=True)


def stats(cluster):
    """The view, read by a monitoring role: {issuer: {column: value}}."""
    with cluster.connect(user="watcher", dbname="ops") as w:
        cur = w.execute("SELECT * FROM kinde_rls_stats")
        assert [d.name for d in cur.description] == COLUMNS
        return {r[0]: dict(zip(COLUMNS, r)) for r in cur.fetchall()}


def reset(cluster):
    with cluster.connect(dbname="ops") as su:
        su.execute("SELECT kinde_rls_stats_reset()")


# Every token these tests hand to the server, for the last test's look at the whole log.
USED: list[str] = []


def as_user(conn, token, sql="SELECT get_user_id() FROM generate_series(1, 10)"):
    """One transaction with `token` as the request's token (bound, never in the SQL text)."""
    USED.append(token)
    with conn.transaction():
        conn.execute("SELECT set_config('kinde_rls.token', %s, true)", (token,))
        return conn.execute(sql).fetchall()


def findings(cluster, dbname="ops", user="watcher", setup=()):
    with cluster.connect(user=user, dbname=dbname) as c:
        for s in setup:
            c.execute(s)
        return [tuple(r) for r in c.execute("SELECT level, setting, message, hint FROM kinde_rls_check()")]


def token(issuer, sub, **extra):
    extra.setdefault("aud", [AUD])
    t = issuer.token(sub, **extra)
    USED.append(t)
    return t


def forged(tok):
    """The same header and signature over a payload naming someone else."""
    import base64
    import json
    h, p, s = tok.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=="))
    claims["sub"] = "kp_victim"
    p2 = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    USED.append(f"{h}.{p2}.{s}")
    return f"{h}.{p2}.{s}"


# -- statistics -----------------------------------------------------------------------------------


def test_counters_move_exactly_for_a_scripted_mix(ops, issuer):
    reset(ops)
    goods = [token(issuer, f"kp_good{i}") for i in range(3)]
    expired = [token(issuer, f"kp_old{i}", exp=int(time.time()) - 3600) for i in range(2)]
    forgeries = [forged(goods[0]), forged(goods[1])]
    with tcp(ops) as app:
        for i, t in enumerate(goods):
            assert as_user(app, t) == [(f"kp_good{i}",)] * 10
        # The same token again, in a new transaction: from the token cache.
        assert as_user(app, goods[0]) == [("kp_good0",)] * 10
        for t in expired:
            with pytest.raises(psycopg.Error) as e:
                as_user(app, t)
            assert e.value.sqlstate == "28000" and "exp check failed" in str(e.value)
        for t in forgeries:
            with pytest.raises(psycopg.Error) as e:
                as_user(app, t)
            assert e.value.sqlstate == "28000" and "signature check failed" in str(e.value)
        # A Supabase anon key: anonymous, not refused.
        anon = hs256_resign({"role": "anon", "iss": "supabase", "exp": int(time.time()) + 60})
        assert as_user(app, anon, "SELECT get_user_id()") == [(None,)]
    # Two requests without a token, each on a new connection.
    for _ in range(2):
        with tcp(ops) as app:
            assert app.execute("SELECT get_user_id() FROM generate_series(1, 5)").fetchall() == [(None,)] * 5

    s = stats(ops)
    assert set(s) == {None, issuer.iss}, s.keys()
    row = s[issuer.iss]
    expect = dict.fromkeys(COLUMNS[1:18], 0)
    expect.update(verified=3, cache_hits=1, fast_path=4 * 9, refused_exp=2, refused_signature=2,
                  fetches_ok=1)
    assert {k: row[k] for k in expect} == expect
    assert 0 < row["verify_time_max_us"] <= row["verify_time_us"]
    assert row["last_refusal"] is not None and row["scope"] == "server"
    assert row["log_suppressed"] == 0
    nobody = s[None]
    expect = dict.fromkeys(COLUMNS[1:18], 0)
    # The anon key and the two requests without a token; the 4 further rows of each of the
    # two token-less requests took the fast path.
    expect.update(anonymous=3, fast_path=2 * 4)
    assert {k: nobody[k] for k in expect} == expect
    assert nobody["last_refusal"] is None


def test_refusals_before_an_issuer_is_known_count_under_no_issuer(ops, issuer):
    reset(ops)
    stranger = MockIssuer()
    try:
        with tcp(ops) as app:
            refused(app, "SELECT verify_jwt(%s)", ("not.a.token",), check="format")
            refused(app, "SELECT verify_jwt(%s)", (stranger.token("kp_x", aud=[AUD]),), check="iss")
            refused(app, "SELECT verify_jwt(%s)", (token(issuer, "kp_y", aud=["other"]),), check="aud")
            # An unknown kid: the set is fetched again at most once per kinde_rls.jwks_min_refresh.
            t = issuer.sign(issuer.claims("kp_z", aud=[AUD]), signer=Signer("rsa"))
            refused(app, "SELECT verify_jwt(%s)", (t,), check="key")
    finally:
        stranger.stop()
    s = stats(ops)
    assert s[None]["refused_format"] == 1
    assert s[None]["refused_iss"] == 1
    assert s[issuer.iss]["refused_aud"] == 1
    assert s[issuer.iss]["refused_key"] == 1
    # The fetch for the unknown kid was made, or refused by the rate limit: counted either way.
    assert s[issuer.iss]["fetches_ok"] + s[issuer.iss]["fetches_rate_limited"] >= 1


def test_a_thousand_made_up_issuers_do_not_grow_the_table(ops):
    reset(ops)
    forger = Signer("rsa")
    with tcp(ops) as app:
        for i in range(300):
            t = forger.sign(kinde_access_claims("kp", iss=f"https://evil{i}.example"), "RS256")
            refused(app, "SELECT verify_jwt(%s)", (t,), check="iss")
    s = stats(ops)
    assert len(s) <= 2
    assert s[None]["refused_iss"] == 300


def test_who_may_read_and_reset(ops):
    with tcp(ops) as app:
        for sql in ("SELECT * FROM kinde_rls_stats", "SELECT * FROM kinde_rls_stats()",
                    "SELECT kinde_rls_stats_reset()", "SELECT * FROM kinde_rls_check()"):
            with pytest.raises(psycopg.Error) as e:
                app.execute(sql)
            assert e.value.sqlstate == "42501", sql
        for sql in ("SET kinde_rls.log_refusals = on", "SET kinde_rls.log_refusals_per_second = 10000"):
            with pytest.raises(psycopg.Error) as e:
                app.execute(sql)
            assert e.value.sqlstate == "42501", sql
    with ops.connect(user="watcher", dbname="ops") as w:
        assert one(w, "SELECT count(*) > 0 FROM kinde_rls_stats") is True
        w.execute("SELECT * FROM kinde_rls_check()")
        with pytest.raises(psycopg.Error) as e:
            w.execute("SELECT kinde_rls_stats_reset()")
        assert e.value.sqlstate == "42501"


def test_reset_zeroes_the_counters_and_says_when(ops, issuer):
    with tcp(ops) as app:
        as_user(app, token(issuer, "kp_r"))
    before = stats(ops)[issuer.iss]
    assert before["verified"] >= 1
    reset(ops)
    after = stats(ops)[issuer.iss]
    assert all(after[k] == 0 for k in COLUMNS[1:18] + ["verify_time_us", "verify_time_max_us", "log_suppressed"])
    assert after["last_refusal"] is None
    assert after["stats_reset"] > before["stats_reset"]


def test_a_parallel_query_is_one_request(ops, issuer):
    """Workers answer rows of the leader's request: every row is counted once, the request is
    verified (or refused, and logged) once, by the leader."""
    with ops.connect(dbname="ops") as su:
        su.execute("CREATE TABLE IF NOT EXISTS big AS SELECT g FROM generate_series(1, 200000) g")
        su.execute("GRANT SELECT ON big TO app_user")
    with role_settings(ops, log_refusals="on"):
        reset(ops)
        start = ops.log_size()
        t = token(issuer, "kp_par")
        # Compared with a column, so that it is evaluated per row (not once, as a constant).
        query = "SELECT count(*) FROM big WHERE g::text <> get_user_id()"
        with tcp(ops) as app:
            for setting in ("parallel_setup_cost", "parallel_tuple_cost", "min_parallel_table_scan_size"):
                app.execute(f"SET {setting} = 0")
            plan = "\n".join(r[0] for r in app.execute("EXPLAIN " + query))
            assert "Gather" in plan and "Workers Planned" in plan, plan
            assert as_user(app, t, query) == [(200000,)]
            row = stats(ops)[issuer.iss]
            assert row["verified"] == 1 and row["cache_hits"] == 0
            # One call per row, and one more when the planner estimates the selectivity.
            assert 200000 <= row["verified"] + row["fast_path"] <= 200001
            # Forged tokens: the workers' errors reach the leader while it may be writing its
            # own audit line; the session stays sound.
            for _ in range(10):
                with pytest.raises(psycopg.Error) as e:
                    as_user(app, forged(t), query)
                assert e.value.sqlstate == "28000"
            assert as_user(app, t, "SELECT get_user_id()") == [("kp_par",)]
        assert stats(ops)[issuer.iss]["refused_signature"] == 10
        time.sleep(0.3)
        log = ops.log_since(start)
        assert log.count("kinde_rls: JWT refused: signature check failed") == 10
        assert "client=local" not in log


def test_a_cancel_while_a_refusal_is_logged_is_an_ordinary_cancel(ops):
    """statement_timeout firing while an audit line is written: 57014, and the session works."""
    with role_settings(ops, log_refusals="on", log_refusals_per_second="10000"):
        with ops.no_crash(dbname="ops"):
            for _ in range(10):
                with tcp(ops) as app:
                    app.execute("SET statement_timeout = '150ms'")
                    with pytest.raises(psycopg.Error) as e:
                        app.execute("""DO $$ BEGIN LOOP BEGIN PERFORM verify_jwt('x.y.z');
                                       EXCEPTION WHEN invalid_authorization_specification THEN NULL;
                                       END; END LOOP; END $$""")
                    assert e.value.sqlstate == "57014", str(e.value)
                    app.execute("SET statement_timeout = 0")
                    refused(app, "SELECT verify_jwt(%s)", ("a.b.c",), check="format")
                    assert one(app, "SELECT get_user_id()") is None


# -- audit log ------------------------------------------------------------------------------------


def test_refusals_are_logged_without_the_token(ops, issuer):
    with role_settings(ops, log_refusals="on"):
        # The rate limit counts per second: start in a second of our own.
        time.sleep(1.1)
        start = ops.log_size()
        old = token(issuer, "kp_expired_user", exp=int(time.time()) - 600)
        forgery = forged(token(issuer, "kp_real"))
        nl = issuer.sign(issuer.claims("kp_x", aud=[AUD]), headers={"kid": "k\nLOG:  forged line"})
        # Line breaks for Unicode-aware readers, and a bidirectional override.
        u = Signer("rsa").sign(kinde_access_claims("kp_u", iss="https://evil\u2028LOG:  u\u0085v\u202ew"), "RS256")
        good = token(issuer, "kp_fine")
        used = [old, forgery, nl, good, u]
        with tcp(ops) as app:
            # Lines go to the server log only, whatever the client asks to be told.
            told = []
            app.add_notice_handler(lambda d: told.append(d.message_primary))
            app.execute("SET client_min_messages = log")
            with pytest.raises(psycopg.Error):
                as_user(app, old)
            with pytest.raises(psycopg.Error):
                as_user(app, forgery)
            with pytest.raises(psycopg.Error):
                app.execute("SELECT verify_jwt(%s)", (nl,))
            with pytest.raises(psycopg.Error):
                app.execute("SELECT verify_jwt(%s)", (u,))
            assert as_user(app, good, "SELECT get_user_id()") == [("kp_fine",)]
            assert not [m for m in told if "kinde_rls:" in m], told
        time.sleep(0.3)
        log = ops.log_since(start)
        lines = [l for l in log.splitlines() if "kinde_rls: JWT refused" in l]
        assert len(lines) == 4, log
        assert 'claimed issuer="https://evil\\u2028LOG:  u\\u0085v\\u202ew"' in log
        assert "\u2028" not in log and "\u0085" not in log and "\u202e" not in log
        details = [l for l in log.splitlines() if l.startswith(tuple(["DETAIL:", "\tDETAIL:"])) or "DETAIL:" in l]
        exp_detail = next(d for d in details if "kp_expired_user" in d)
        assert f'issuer="{issuer.iss}"' in exp_detail
        assert 'sub="kp_expired_user"' in exp_detail
        assert 'role="app_user"' in exp_detail and "client=127.0.0.1" in exp_detail
        sig_line = log[log.index("signature check failed"):]
        sig_detail = sig_line.splitlines()[1]
        assert "DETAIL:" in sig_detail and f'issuer="{issuer.iss}"' in sig_detail
        # The signature did not verify: the sub it names is nobody's word, and is not logged.
        assert "kp_victim" not in log and "sub=" not in sig_detail
        # A kid with a newline cannot start a log line of its own.
        assert 'kid="k\\nLOG:  forged line"' in log
        assert not any(l.startswith("LOG:  forged line") or "\nLOG:  forged line" in l for l in log.splitlines())
        assert "forged line\n" not in log.replace('forged line"', "")
        for t in used:
            assert t not in log
            assert t.split(".")[2] not in log, "a signature reached the log"
            assert t.split(".")[1] not in log, "a payload reached the log"


def test_the_log_is_off_by_default(ops, issuer):
    start = ops.log_size()
    with tcp(ops) as app:
        refused(app, "SELECT verify_jwt(%s)", ("a.b.c",), check="format")
    time.sleep(0.3)
    assert "kinde_rls: JWT refused" not in ops.log_since(start)


def test_a_flood_is_rate_limited_and_the_rest_counted(ops):
    with role_settings(ops, log_refusals="on", log_refusals_per_second="5"):
        reset(ops)
        start = ops.log_size()
        n = 300
        with tcp(ops) as app:
            t0 = time.time()
            for i in range(n):
                refused(app, "SELECT verify_jwt(%s)", (f"flood{i}.x.y",), check="format")
            elapsed = time.time() - t0
            # The next second's first refusal says how many were not logged.
            time.sleep(1.1)
            refused(app, "SELECT verify_jwt(%s)", ("last.x.y",), check="format")
        time.sleep(0.3)
        log = ops.log_since(start)
        logged = log.count("kinde_rls: JWT refused")
        suppressed = stats(ops)[None]["log_suppressed"]
        assert logged + suppressed == n + 1
        assert suppressed > 0
        assert logged <= 5 * (int(elapsed) + 3)
        # At most 5 lines in any second of the server's clock.
        per_second = {}
        for line in log.splitlines():
            if "kinde_rls: JWT refused" in line:
                per_second[line[:19]] = per_second.get(line[:19], 0) + 1
        assert max(per_second.values()) <= 5, per_second
        said = sum(int(m) for m in re.findall(r"\((\d+) earlier refusals were not logged", log))
        assert said == suppressed


def test_trusting_request_claims_is_logged_once_per_session(ops, issuer):
    with ops.connect(dbname="ops") as su:
        su.execute("DO $$ BEGIN CREATE ROLE realtime LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        su.execute("ALTER ROLE realtime SET kinde_rls.trust_request_claims = on")
        su.execute("ALTER ROLE realtime SET kinde_rls.log_refusals = on")
    reset(ops)
    start = ops.log_size()
    claims = issuer.claims("kp_rt", aud=[AUD])
    import json
    with tcp(ops, user="realtime") as rt:
        for _ in range(3):
            with rt.transaction():
                rt.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
                assert one(rt, "SELECT get_user_id()") == "kp_rt"
        # Expired trusted claims read as anonymous, and are a refusal in the log.
        stale = dict(claims, exp=int(time.time()) - 3600)
        with rt.transaction():
            rt.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(stale),))
            assert one(rt, "SELECT get_user_id()") is None
    time.sleep(0.3)
    log = ops.log_since(start)
    assert log.count("trusting request.jwt.claims without a signature") == 1
    assert log.count("kinde_rls: JWT refused: exp check failed") == 1
    row = stats(ops)[issuer.iss]
    assert row["trusted_claims"] == 3 and row["refused_exp"] == 1


def test_a_session_trusting_claims_is_logged_once_the_log_is_turned_on(ops, issuer):
    """The line is owed to a session that trusted claims while the audit log was off."""
    import json
    with ops.connect(dbname="ops") as su:
        su.execute("DO $$ BEGIN CREATE ROLE realtime LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        su.execute("ALTER ROLE realtime SET kinde_rls.trust_request_claims = on")
        su.execute("ALTER ROLE realtime RESET kinde_rls.log_refusals")
    claims = json.dumps(issuer.claims("kp_rt2", aud=[AUD]))
    start = ops.log_size()
    with tcp(ops, user="realtime") as rt:
        def use():
            with rt.transaction():
                rt.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims,))
                assert one(rt, "SELECT get_user_id()") == "kp_rt2"
        use()
        with ops.connect(dbname="ops") as su:
            su.execute("ALTER SYSTEM SET kinde_rls.log_refusals = on")
            su.execute("SELECT pg_reload_conf()")
        try:
            deadline = time.time() + 30
            while one(rt, "SHOW kinde_rls.log_refusals") != "on":
                assert time.time() < deadline
                time.sleep(0.1)
            use()
            use()
        finally:
            with ops.connect(dbname="ops") as su:
                su.execute("ALTER SYSTEM RESET kinde_rls.log_refusals")
                su.execute("SELECT pg_reload_conf()")
    time.sleep(0.3)
    assert ops.log_since(start).count("trusting request.jwt.claims without a signature") == 1


# -- health check ---------------------------------------------------------------------------------


def test_a_healthy_setup_has_no_findings(ops, issuer):
    with tcp(ops) as app:
        as_user(app, token(issuer, "kp_h"))
    assert findings(ops) == []


def settings_of(rows):
    return [(level, setting) for level, setting, _, _ in rows]


def test_each_misconfiguration_is_found(ops, issuer):
    def with_db(*sets):
        return findings(ops, user="postgres", setup=sets)

    assert settings_of(with_db("SET kinde_rls.audience = ''")) == [("warning", "kinde_rls.audience")]
    rows = with_db("SET kinde_rls.issuer = ''")
    assert settings_of(rows) == [("warning", "kinde_rls.issuer")]
    assert "whatever their iss says" in rows[0][2]
    rows = with_db("SET kinde_rls.leeway = 600")
    assert settings_of(rows) == [("warning", "kinde_rls.leeway")] and "600 s" in rows[0][2]
    # Never fetched is no fault (the first token fetches them): a notice, which alerts ignore.
    rows = with_db("SET kinde_rls.jwks_url = 'http://127.0.0.1:9/never'")
    assert settings_of(rows) == [("notice", "kinde_rls.jwks_url")]
    assert "never fetched" in rows[0][2]
    # A failing fetch.
    with ops.connect(dbname="ops") as su:
        su.execute("SET kinde_rls.jwks_url = 'http://127.0.0.1:9/down'")
        with pytest.raises(psycopg.Error):
            su.execute("SELECT refresh_jwks()")
        rows = [tuple(r) for r in su.execute("SELECT * FROM kinde_rls_check()")]
    assert settings_of(rows) == [("warning", "kinde_rls.jwks_url")]
    assert "failed" in rows[0][2]


def test_trust_for_everyone_is_found_and_for_one_role_is_not(ops):
    with ops.connect(dbname="ops") as su:
        su.execute("ALTER DATABASE ops SET kinde_rls.trust_request_claims = on")
    try:
        rows = findings(ops)
        assert settings_of(rows) == [("warning", "kinde_rls.trust_request_claims")]
        assert "ALTER DATABASE" in rows[0][2]
    finally:
        with ops.connect(dbname="ops") as su:
            su.execute("ALTER DATABASE ops RESET kinde_rls.trust_request_claims")
    # Per role (how the README sets it for Realtime): no finding, even as that role.
    with ops.connect(dbname="ops") as su:
        su.execute("DO $$ BEGIN CREATE ROLE realtime LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        su.execute("ALTER ROLE realtime SET kinde_rls.trust_request_claims = on")
        su.execute("GRANT pg_monitor TO realtime")
    assert findings(ops, user="realtime") == []
    # So is a function's SET clause: trust only while that function runs.
    with ops.connect(dbname="ops") as su:
        su.execute("CREATE OR REPLACE FUNCTION public.apply_rls_like() RETURNS int LANGUAGE sql "
                   "SET kinde_rls.trust_request_claims = on AS 'SELECT 1'")
    try:
        assert findings(ops, user="realtime") == []
    finally:
        with ops.connect(dbname="ops") as su:
            su.execute("DROP FUNCTION public.apply_rls_like()")


def test_a_secret_file_others_can_read_is_found(ops):
    path = os.path.join(ops.dir, "loose_secret")
    write_server_file(path, "k" * 48 + "\n", 0o644)
    rows = findings(ops, user="postgres", setup=[f"SET kinde_rls.secret_file = '{path}'"])
    # The configuration refuses it, and the check says so with the configuration's words.
    assert settings_of(rows) == [("error", "kinde_rls.secret_file")]
    assert "readable" in rows[0][2]
    os.chmod(path, 0o600)
    assert findings(ops, user="postgres", setup=[f"SET kinde_rls.secret_file = '{path}'"]) == []


def test_a_clock_far_from_the_issuers_is_found(ops, issuer):
    with ops.connect(dbname="ops") as su:
        issuer.date_offset = -600
        try:
            assert one(su, "SELECT refresh_jwks()") >= 1
        finally:
            issuer.date_offset = 0
    rows = findings(ops)
    assert settings_of(rows) == [("warning", None)]
    assert "ahead of" in rows[0][2] and issuer.iss in rows[0][2]
    # Only the issuers of the configuration the check runs under are judged.
    assert findings(ops, user="postgres", setup=["SET kinde_rls.issuer = 'https://elsewhere.example'"]) == []
    skew = stats(ops)[issuer.iss]["clock_skew_s"]
    assert 598 <= skew <= 602
    with ops.connect(dbname="ops") as su:
        su.execute("SELECT refresh_jwks()")
    assert findings(ops) == []


def test_without_preloading_secrets_other_roles_can_read_are_found():
    secret = "s3cr3t-" + "x" * 41
    c = Cluster("ops-nopreload", preload=False,
                conf={"kinde_rls.secret": "'" + "z" * 48 + "'", "kinde_rls.issuer": "'https://acme.kinde.com'",
                      "kinde_rls.audience": "'api'"})
    try:
        with c.connect() as su:
            su.execute("CREATE ROLE nobody LOGIN")
            su.execute("CREATE ROLE watcher LOGIN IN ROLE pg_monitor")
            # A session that has not loaded the library stores the value unchecked.
            su.execute(f"ALTER ROLE watcher SET kinde_rls.secret = '{secret}'")
            su.execute(f"CREATE FUNCTION f() RETURNS int LANGUAGE sql SET kinde_rls.secret = '{secret}' AS 'SELECT 1'")
            # PostgreSQL matches setting names in any case, and so must the check.
            su.execute("CREATE ROLE other")
            su.execute(f"ALTER ROLE other SET \"KINDE_RLS.SECRET\" = '{secret}'")
        with c.connect(user="nobody") as nobody:
            # Both findings are true: a role with no privilege reads both secrets.
            assert one(nobody, "SELECT current_setting('kinde_rls.secret')") == "z" * 48
            rows = nobody.execute("SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting").fetchall()
            assert any(secret in (r[0] or "") for r in rows)
        with c.connect() as su:
            su.execute("CREATE EXTENSION kinde_rls")
            su.execute("GRANT pg_monitor TO nobody")
        with c.connect(user="nobody") as mon:
            rows = [tuple(r) for r in mon.execute("SELECT * FROM kinde_rls_check()")]
            assert settings_of(rows) == [("error", "kinde_rls.secret"), ("error", "kinde_rls.secret"),
                                         ("notice", "shared_preload_libraries")]
            text = " ".join(map(str, rows))
            assert "pg_db_role_setting" in text and "(3 of them)" in text and "shared_preload_libraries" in text
            assert secret not in text and "z" * 48 not in text
            assert one(mon, "SELECT DISTINCT scope FROM kinde_rls_stats") == "session"
    finally:
        c.stop()


def test_the_readmes_alert_queries_run_as_a_monitoring_role(ops, issuer):
    """The "Two example alerts" of the README, run as written, fire when they should."""
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    readme = open(os.path.join(root, "README.md")).read()
    part = readme[readme.index("### Two example alerts"):readme.index("## Security model")]
    queries = re.findall(r"```sql\n(.*?)```", part, re.S)
    assert len(queries) == 2
    reset(ops)
    with tcp(ops) as app:
        as_user(app, token(issuer, "kp_a"))
        for _ in range(3):
            with pytest.raises(psycopg.Error):
                as_user(app, forged(token(issuer, "kp_b")))
    with ops.connect(user="watcher", dbname="ops") as w:
        assert w.execute(queries[0]).fetchall() == [(issuer.iss, 3, 0.75)]
        assert w.execute(queries[1]).fetchall() == []
    with ops.connect(dbname="ops") as su:
        su.execute("ALTER ROLE watcher IN DATABASE ops SET kinde_rls.jwks_url = 'http://127.0.0.1:9/never'")
    try:
        with ops.connect(user="watcher", dbname="ops") as w:
            # Never fetched is a notice: no alert.
            assert w.execute(queries[1]).fetchall() == []
            # A failed fetch is a warning.
            refused(w, "SELECT verify_jwt(%s)", (token(issuer, "kp_c"),), check="key")
            assert [r[1] for r in w.execute(queries[1]).fetchall()] == ["kinde_rls.jwks_url"]
    finally:
        with ops.connect(dbname="ops") as su:
            su.execute("ALTER ROLE watcher IN DATABASE ops RESET kinde_rls.jwks_url")


def test_the_check_is_not_answered_by_objects_on_the_search_path(ops):
    """A database owner's schema first on the search_path must neither run code as the
    superuser who runs the check nor hide a finding."""
    with ops.connect(dbname="ops") as su:
        su.execute("DO $$ BEGIN CREATE ROLE dbowner LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        su.execute("GRANT CREATE ON DATABASE ops TO dbowner")
    with ops.connect(user="dbowner", dbname="ops") as owner:
        owner.execute("CREATE SCHEMA evil")
        owner.execute("CREATE TABLE evil.marks (who text)")
        owner.execute("GRANT ALL ON evil.marks TO PUBLIC")
        owner.execute("""CREATE FUNCTION evil.f() RETURNS TABLE(setdatabase oid, setrole oid, setconfig text[])
                         LANGUAGE plpgsql AS $$ BEGIN INSERT INTO evil.marks VALUES (current_user); RETURN; END $$""")
        owner.execute("CREATE VIEW evil.pg_db_role_setting AS SELECT * FROM evil.f()")
        owner.execute("""CREATE FUNCTION evil.g() RETURNS text
                         LANGUAGE plpgsql AS $$ BEGIN INSERT INTO evil.marks VALUES (current_user); RETURN 'user'; END $$""")
        owner.execute("CREATE VIEW evil.pg_settings AS SELECT name, evil.g() AS source FROM pg_catalog.pg_settings")
        owner.execute("CREATE FUNCTION evil.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$")
        owner.execute("GRANT USAGE ON SCHEMA evil TO PUBLIC")
        owner.execute("GRANT SELECT ON ALL TABLES IN SCHEMA evil TO PUBLIC")
    try:
        with ops.connect(dbname="ops") as su:
            su.execute("SET search_path = evil, pg_catalog, public")
            su.execute("SET kinde_rls.trust_request_claims = on")
            su.execute("ALTER DATABASE ops SET kinde_rls.trust_request_claims = on")
            rows = [tuple(r) for r in su.execute("SELECT * FROM public.kinde_rls_check()")]
            assert ("warning", "kinde_rls.trust_request_claims") in settings_of(rows)
            assert one(su, "SELECT count(*) FROM evil.marks") == 0
    finally:
        with ops.connect(dbname="ops") as su:
            su.execute("ALTER DATABASE ops RESET kinde_rls.trust_request_claims")
            su.execute("DROP SCHEMA evil CASCADE")


def test_trust_for_a_whole_database_is_found_from_a_role_that_also_has_it(ops):
    with ops.connect(dbname="ops") as su:
        su.execute("DO $$ BEGIN CREATE ROLE realtime LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        su.execute("ALTER ROLE realtime SET kinde_rls.trust_request_claims = on")
        su.execute("GRANT pg_monitor TO realtime")
        su.execute("ALTER DATABASE ops SET kinde_rls.trust_request_claims = 'TRUE'")
    try:
        rows = findings(ops, user="realtime")
        assert settings_of(rows) == [("warning", "kinde_rls.trust_request_claims")]
        assert "ALTER DATABASE" in rows[0][2]
    finally:
        with ops.connect(dbname="ops") as su:
            su.execute("ALTER DATABASE ops RESET kinde_rls.trust_request_claims")
    assert findings(ops, user="realtime") == []


def test_the_check_reads_only_and_works_on_a_hot_standby(ops, issuer):
    with ops.connect(user="watcher", dbname="ops") as w:
        with w.transaction():
            w.execute("SET TRANSACTION READ ONLY")
            w.execute("SELECT * FROM kinde_rls_check()")
            w.execute("SELECT * FROM kinde_rls_stats")
            assert one(w, "SELECT txid_current_if_assigned()") is None
    standby = Cluster.standby_of(ops)
    try:
        with standby.connect(user="watcher", dbname="ops") as w:
            assert one(w, "SELECT pg_is_in_recovery()") is True
            rows = [tuple(r) for r in w.execute("SELECT level, setting FROM kinde_rls_check()")]
            # The standby has fetched nothing yet: a notice, nothing worse.
            assert rows == [("notice", "kinde_rls.jwks_url")]
            assert one(w, "SELECT DISTINCT scope FROM kinde_rls_stats") == "server"
    finally:
        standby.stop()


def test_verify_jwt_per_row_counts_each_call_from_the_token_cache(ops, issuer):
    reset(ops)
    t = token(issuer, "kp_rows")
    with tcp(ops) as app:
        assert one(app, "SELECT count(verify_jwt(%s)) FROM generate_series(1, 100)", (t,)) == 100
    row = stats(ops)[issuer.iss]
    assert (row["verified"], row["cache_hits"], row["fast_path"]) == (1, 99, 0)


def test_no_token_reached_the_server_log(ops):
    """Last: the whole server log of this module's cluster, refusals logged and not, against
    every token the tests above used — no token, payload or signature."""
    log = ops.server_log()
    assert "kinde_rls: JWT refused" in log
    assert len(USED) > 40
    for t in set(USED):
        _, payload, signature = t.split(".")
        assert t not in log
        assert payload not in log
        if signature:
            assert signature not in log
