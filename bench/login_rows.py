"""Per-row get_user_id() in a session signed in with a token (PostgreSQL 18 oauth, kinde_rls as
the validator) against the same session with a request token, side by side in one psql session:
five alternating EXPLAIN ANALYZE runs of a 2,000,000-row scan filtered by get_user_id(). The login
identity's fast path reads the (coarse) wall clock per row; this shows what that costs.

    PG=18 PG_CONFIG=/opt/kinde_rls/pg18/bin/pg_config ~/.cache/kinde_rls/venv/bin/python bench/login_rows.py

Needs the release build installed (`make install PG=18`)."""
import os
import re
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import test_oauth as t
from issuer import MockIssuer
from pg import Cluster, write_server_file
k = MockIssuer()
prov = f'[{{"issuer": "{k.iss}", "jwks_url": "{k.jwks_url}", "audience": "{t.AUD}"}}]'
c = Cluster("lb", preload=True, conf={"listen_addresses": "'127.0.0.1'", "oauth_validator_libraries": "'kinde_rls'",
        "kinde_rls.providers": "'" + prov + "'", "max_parallel_workers_per_gather": "0"})
try:
    write_server_file(os.path.join(c.data, "pg_hba.conf"), "local all all trust\n" + t.hba_line("analyst", k), 0o600)
    write_server_file(os.path.join(c.data, "pg_ident.conf"), "kinde /^.*$ analyst\n", 0o600)
    with c.connect() as su:
        su.execute("CREATE DATABASE app")
    with c.connect(dbname="app") as db:
        db.execute("CREATE EXTENSION kinde_rls")
        db.execute("CREATE ROLE analyst LOGIN")
        db.execute("CREATE TABLE big AS SELECT g, 'kp_' || (g % 100) AS user_id FROM generate_series(1, 2000000) g")
        db.execute("GRANT SELECT ON big TO analyst")
    c.restart()
    tok = t.token_for(k, "kp_7", lifetime=3600)
    q = "EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON) SELECT count(*) FROM big WHERE user_id = get_user_id();"
    script = ""
    for i in range(5):
        script += f"SELECT 'login';\n{q}\nBEGIN; SET LOCAL kinde_rls.token = '{tok}';\nSELECT 'request';\n{q}\nCOMMIT;\n"
    code, out, err = t.sign_in(c, k, tok, script)
    res = {"login": [], "request": []}
    cur = None
    for line in out.splitlines():
        if line in ("login", "request"): cur = line
        m = re.search(r"Execution Time: ([\d.]+) ms", line)
        if m: res[cur].append(float(m.group(1)))
    for kk, v in res.items():
        print(kk, sorted(v), "median ns/row %.1f" % (sorted(v)[2] * 1e6 / 2e6))
    print("ratio login/request: %.2f" % (sorted(res["login"])[2] / sorted(res["request"])[2]))
finally:
    c.stop(); k.stop()
