"""make demo: the kinde_rls story on a throwaway cluster.

Two Kinde users, Peter and Mia, each see only their own todos; a tampered token is refused with
its reason; an anonymous request sees nothing; a spoofed request.jwt.claims changes nothing.
Tokens are RS256, signed (PyJWT) by a stand-in Kinde issuer on 127.0.0.1 that serves OpenID
discovery and a JWKS; the database is told only the issuer's domain, fetches the keys itself,
and picks up a key rotation without a restart. Then the operator's view: what the verifier did
(kinde_rls_stats), the audit log, and the health check on a misconfigured and a healthy setup."""

import base64
import json
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import psycopg  # noqa: E402
import time  # noqa: E402

from issuer import MockIssuer  # noqa: E402
from pg import Cluster  # noqa: E402
from psycopg import sql  # noqa: E402

BOLD, DIM, RED, GREEN, OFF = ("\033[1m", "\033[2m", "\033[31m", "\033[32m", "\033[0m") if sys.stdout.isatty() else ("",) * 5


def say(text):
    print(f"\n{BOLD}{text}{OFF}")


def show_sql(text):
    for line in text.strip().splitlines():
        print(f"  {DIM}sql>{OFF} {line}")


def request(conn, role, token, query):
    """One PostgREST-style request: SET LOCAL ROLE, the bearer token, the query."""
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        if token:
            conn.execute("SELECT set_config('request.headers', %s, true)",
                         (json.dumps({"authorization": f"Bearer {token}"}),))
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else cur.rowcount


def table(rows, header):
    if not rows:
        print(f"  {DIM}(no rows){OFF}")
        return
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  " + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)))


def main():
    say("1. A throwaway PostgreSQL cluster with kinde_rls preloaded")
    c = Cluster("demo", preload=True)
    try:
        print(f"  data directory {c.data}, unix socket only")
        kinde = MockIssuer()
        print(f"  a stand-in Kinde issuer at {kinde.base} (for https://<business>.kinde.com)")
        with c.connect() as su:
            su.execute("CREATE DATABASE app")
        with c.connect(dbname="app") as su:
            show_sql("CREATE EXTENSION kinde_rls;")
            su.execute("CREATE EXTENSION kinde_rls")
            show_sql(r"\i sql/examples/todos.sql   -- Kinde's todo example, RLS on get_user_id()")
            su.execute(open(os.path.join(ROOT, "sql", "examples", "todos.sql")).read())

            say("2. A superuser tells the database its Kinde domain: that is the whole configuration")
            show_sql(f"ALTER SYSTEM SET kinde_rls.domain = '{kinde.base}';")
            show_sql("ALTER SYSTEM SET kinde_rls.jwks_min_refresh = 2;   -- demo only: 30 s by default")
            show_sql("ALTER SYSTEM SET kinde_rls.log_refusals = on;      -- the audit log")
            show_sql("SELECT pg_reload_conf();")
            su.execute(f"ALTER SYSTEM SET kinde_rls.domain = '{kinde.base}'")
            su.execute("ALTER SYSTEM SET kinde_rls.jwks_min_refresh = 2")
            su.execute("ALTER SYSTEM SET kinde_rls.log_refusals = on")
            su.execute("SELECT pg_reload_conf()")
            print("  the domain is the accepted issuer; keys come from its discovery document's jwks_uri")

        peter_t = kinde.token("kp_peter")
        mia_t = kinde.token("kp_mia")
        say("3. Kinde signs access tokens for Peter and Mia (RS256, kid in the header)")
        print(f"  Peter: {peter_t[:40]}…  sub = kp_peter")
        print(f"  Mia:   {mia_t[:40]}…  sub = kp_mia")

        with c.connect(user="authenticator", dbname="app") as api:
            say("4. Each adds todos through the API role (SET LOCAL ROLE authenticated + bearer token)")
            request(api, "authenticated", peter_t, "INSERT INTO todos (task) VALUES ('Buy milk'), ('Ship kinde_rls')")
            request(api, "authenticated", mia_t, "INSERT INTO todos (task) VALUES ('Water the plants')")
            print("  user_id is filled in by DEFAULT get_user_id() from the verified token")

            say("5. Peter asks for all todos and gets only his")
            table(request(api, "authenticated", peter_t, "SELECT id, task, user_id FROM todos ORDER BY id"), ["id", "task", "user_id"])
            say("   Mia asks the same and gets only hers")
            table(request(api, "authenticated", mia_t, "SELECT id, task, user_id FROM todos ORDER BY id"), ["id", "task", "user_id"])
            n = request(api, "authenticated", mia_t, "DELETE FROM todos WHERE user_id = 'kp_peter'")
            print(f"  Mia tries DELETE FROM todos WHERE user_id = 'kp_peter': {n} rows deleted")

            say("6. Someone swaps Mia's sub into Peter's token, keeping Peter's signature")
            h, _, sig = peter_t.split(".")
            forged_body = base64.urlsafe_b64encode(json.dumps(kinde.claims("kp_mia")).encode()).rstrip(b"=").decode()
            try:
                request(api, "authenticated", f"{h}.{forged_body}.{sig}", "SELECT * FROM todos")
                print(f"  {RED}accepted — this must never happen{OFF}")
                sys.exit(1)
            except psycopg.Error as e:
                print(f"  {GREEN}refused{OFF}: SQLSTATE {e.sqlstate}: {e.diag.message_primary}")
                print(f"  DETAIL: {e.diag.message_detail}")

            say("7. An anonymous request (no token, role anon) sees nothing")
            table(request(api, "anon", None, "SELECT count(*) FROM todos"), ["count"])

            say("8. The old recipe trusted request.jwt.claims, which any session can SET. Not here:")
            show_sql("""SELECT set_config('request.jwt.claims', '{"sub":"kp_peter"}', true);""")
            with api.transaction():
                api.execute("SET LOCAL ROLE authenticated")
                api.execute("""SELECT set_config('request.jwt.claims', '{"sub":"kp_peter"}', true)""")
                uid, n = api.execute("SELECT get_user_id(), count(*) FROM todos").fetchone()
            print(f"  get_user_id() = {uid!r}, todos visible = {n}")

            say("9. Why is an expired token refused? jwt_explain() says, check by check")
            old = kinde.sign(kinde.claims("kp_peter", lifetime=-7200))
            rows = request(api, "authenticated", None, f"SELECT \"check\", ok, detail FROM jwt_explain('{old}')")
            table([(r[0], {True: "ok", False: "FAILED", None: "-"}[r[1]], r[2]) for r in rows], ["check", "ok", "detail"])
            say("10. The keys were fetched once, for every session (shared memory cache)")
            rows = request(api, "authenticated", None, "SELECT source, keys, fetched_at IS NOT NULL, last_error FROM jwks_status()")
            table(rows, ["source", "keys", "fetched", "last_error"])
            print(f"  requests the issuer served: discovery {kinde.count('discovery')}, JWKS {kinde.count('jwks')}")
            ignored, warning = request(api, "authenticated", None, "SELECT ignored_keys, warning FROM jwks_status()")[0]
            print(f"  keys of the set it ignores, and why: {'; '.join(ignored)}")
            print(f"  what it warns about: {warning}")

            say("11. Kinde rotates its signing key; no restart, no new setting")
            time.sleep(2.1)
            kinde.rotate()
            print(f"  new kid {kinde.signer.kid}; the old key is gone from the JWKS")
            new_t = kinde.token("kp_peter")
            rows = request(api, "authenticated", new_t, "SELECT get_user_id(), count(*) FROM todos")
            print(f"  Peter's new token: get_user_id() = {rows[0][0]!r}, todos visible = {rows[0][1]} "
                  f"(the unknown kid triggered one refetch: JWKS requests now {kinde.count('jwks')})")
            try:
                request(api, "authenticated", peter_t, "SELECT * FROM todos")
                print(f"  {RED}the retired key was accepted — this must never happen{OFF}")
                sys.exit(1)
            except psycopg.Error as e:
                print(f"  Peter's old token, signed with the retired key: {GREEN}refused{OFF}: {e.diag.message_primary}")
        with c.connect(dbname="app") as su:
            say("12. What the verifier did, per issuer: the kinde_rls_stats view (pg_monitor may read it)")
            show_sql("SELECT issuer, verified, cache_hits, fast_path, anonymous, refused_signature, refused_key, fetches_ok FROM kinde_rls_stats;")
            rows = su.execute("SELECT coalesce(issuer, '(none)'), verified, cache_hits, fast_path, anonymous, "
                              "refused_signature, refused_key, fetches_ok FROM kinde_rls_stats ORDER BY 1").fetchall()
            table(rows, ["issuer", "verified", "cache", "fast_path", "anon", "bad_sig", "bad_key", "fetches"])
            print("  and in the server log (kinde_rls.log_refusals = on), each refusal without the token:")
            for line in c.server_log().splitlines():
                if "kinde_rls: JWT refused" in line or ("DETAIL:" in line and "role=" in line):
                    print(f"  {DIM}{line.split('  ', 1)[-1][:150]}{OFF}")

            say("13. Is the setup safe? kinde_rls_check(), as it is now (no audience, a generous leeway)")
            su.execute("ALTER SYSTEM SET kinde_rls.leeway = 600")
            su.execute("SELECT pg_reload_conf()")
            show_sql("ALTER SYSTEM SET kinde_rls.leeway = 600;  SELECT pg_reload_conf();")
            show_sql("SELECT level, setting, message FROM kinde_rls_check();")
            time.sleep(0.5)
            with c.connect(dbname="app") as fresh:
                rows = fresh.execute("SELECT level, setting, message FROM kinde_rls_check()").fetchall()
            for level, setting, message in rows:
                print(f"  {RED if level == 'error' else ''}{level}{OFF} {setting}: {message[:110]}…")
            if not rows:
                print(f"  {RED}no findings — the check missed both mistakes{OFF}")
                sys.exit(1)
            say("    Fixed: the API's audience is required, the leeway back to its default")
            show_sql("ALTER SYSTEM SET kinde_rls.audience = 'api://todos';  ALTER SYSTEM RESET kinde_rls.leeway;")
            su.execute("ALTER SYSTEM SET kinde_rls.audience = 'api://todos'")
            su.execute("ALTER SYSTEM RESET kinde_rls.leeway")
            su.execute("SELECT pg_reload_conf()")
            time.sleep(0.5)
            with c.connect(dbname="app") as fresh:
                rows = fresh.execute("SELECT level, setting, message FROM kinde_rls_check()").fetchall()
                uid = fresh.execute("SELECT verify_jwt(%s)->>'sub'",
                                    (kinde.token("kp_mia", aud=["api://todos"]),)).fetchone()[0]
            if rows:
                for r in rows:
                    print(f"  {RED}{r}{OFF}")
                sys.exit(1)
            print(f"  {GREEN}no findings{OFF}; a token for api://todos verifies: sub = {uid!r}")
        say("The end: the cluster and the issuer are stopped, the cluster removed.")
    finally:
        c.stop()
        kinde.stop()


if __name__ == "__main__":
    main()
