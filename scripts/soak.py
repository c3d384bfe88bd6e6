"""make soak: a bounded concurrency soak. CLIENTS sessions for SECONDS seconds, as the
non-superuser app_user on a throwaway preloaded cluster with the todo example, each transaction
one of many Kinde users' tokens: mostly valid (RS256, ES256, HS256), some expired, some forged.
Every answer is checked against the token's user; errors are allowed only for bad tokens, and
only SQLSTATE 28000. No server process may crash (a sentinel session and the server log are
watched: a crashed backend resets every session without changing pg_postmaster_start_time()).

    python scripts/soak.py [--clients 16] [--seconds 60]
"""

import argparse
import os
import random
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import psycopg  # noqa: E402
from kinde import CLIENT_SECRET, KINDE_ISS, Signer, hs256_resign, jwks, kinde_access_claims, kinde_id_claims  # noqa: E402
from pg import Cluster, write_server_file  # noqa: E402

USERS = 200


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    rsa, ec, stranger = Signer("rsa"), Signer("p256"), Signer("rsa")
    subs = [f"kp_soak_{i}" for i in range(USERS)]
    print(f"minting tokens for {USERS} users…", flush=True)
    good = {}
    for i, s in enumerate(subs):
        kind = i % 3
        if kind == 0:
            good[s] = rsa.sign(kinde_access_claims(s, lifetime=7200), "RS256")
        elif kind == 1:
            good[s] = ec.sign(kinde_access_claims(s, lifetime=7200), "ES256")
        else:
            good[s] = hs256_resign(kinde_id_claims(s, lifetime=7200))
    expired = {s: rsa.sign(kinde_access_claims(s, lifetime=-600), "RS256") for s in subs[:50]}
    forged = {s: stranger.sign(kinde_access_claims(s), "RS256", headers={"kid": rsa.kid}) for s in subs[:50]}
    tampered = {}
    for s in subs[:50]:
        h, p, sig = good[s].split(".")
        other = good[subs[(subs.index(s) + 1) % USERS]].split(".")[1]
        tampered[s] = f"{h}.{other}.{sig}"

    c = Cluster("soak", preload=True)
    try:
        with c.connect() as su:
            su.execute("CREATE DATABASE app")
        secret_path = os.path.join(c.dir, "secret")
        write_server_file(secret_path, CLIENT_SECRET, 0o600)
        with c.connect(dbname="app") as db:
            db.execute("CREATE EXTENSION kinde_rls")
            db.execute(open(os.path.join(ROOT, "sql", "examples", "todos.sql")).read())
            db.execute("CREATE ROLE app_user LOGIN")
            db.execute("GRANT authenticated TO app_user")
            db.execute("GRANT SELECT, INSERT ON todos TO app_user")
            db.execute(f"ALTER DATABASE app SET kinde_rls.jwks = '{jwks(rsa, ec)}'")
            db.execute(f"ALTER DATABASE app SET kinde_rls.issuer = '{KINDE_ISS}'")
            db.execute(f"ALTER SYSTEM SET kinde_rls.secret_file = '{secret_path}'")
            db.execute("SELECT pg_reload_conf()")
        with c.connect(user="app_user", dbname="app") as u:
            for s in subs:
                with u.transaction():
                    u.execute("SELECT set_config('kinde_rls.token', %s, true)", (good[s],))
                    u.execute("INSERT INTO todos (task) VALUES (%s), (%s)", (f"{s} one", f"{s} two"))

        counts = {"ok": 0, "refused as expected": 0, "wrong": 0, "unexpected error": 0}
        problems = []
        lock = threading.Lock()
        deadline = time.time() + args.seconds

        def client(n):
            rnd = random.Random(n)
            local = dict.fromkeys(counts, 0)
            with c.connect(user="app_user", dbname="app") as conn:
                while time.time() < deadline:
                    s = rnd.choice(subs)
                    r = rnd.random()
                    if r < 0.8 or s not in expired:
                        kind, tok = "good", good[s]
                    elif r < 0.87:
                        kind, tok = "expired", expired[s]
                    elif r < 0.94:
                        kind, tok = "forged", forged[s]
                    else:
                        kind, tok = "tampered", tampered[s]
                    try:
                        with conn.transaction():
                            conn.execute("SELECT set_config('kinde_rls.token', %s, true)", (tok,))
                            rows = conn.execute("SELECT get_user_id(), user_id, task FROM todos ORDER BY task").fetchall()
                        if kind == "good" and rows == [(s, s, f"{s} one"), (s, s, f"{s} two")]:
                            local["ok"] += 1
                        else:
                            local["wrong"] += 1
                            with lock:
                                problems.append((kind, s, rows[:3]))
                    except psycopg.Error as e:
                        if kind != "good" and e.sqlstate == "28000":
                            local["refused as expected"] += 1
                        else:
                            local["unexpected error"] += 1
                            with lock:
                                problems.append((kind, s, e.sqlstate, str(e)[:200]))
            with lock:
                for k, v in local.items():
                    counts[k] += v

        print(f"soaking: {args.clients} clients for {args.seconds} s…", flush=True)
        threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
        crash = None
        try:
            with c.no_crash(dbname="app"):
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
        except AssertionError as e:
            crash = str(e)
        restarted = crash is not None
        total = sum(counts.values())
        print(f"\n| transactions | correct answers | refused as expected (expired, forged, tampered) | wrong answers | unexpected errors | server restarted |")
        print("|---|---|---|---|---|---|")
        print(f"| {total} | {counts['ok']} | {counts['refused as expected']} | {counts['wrong']} | {counts['unexpected error']} | {'yes' if restarted else 'no'} |")
        for p in problems[:10]:
            print("  problem:", p)
        if crash:
            print(" ", crash)
        if counts["wrong"] or counts["unexpected error"] or restarted or total == 0:
            sys.exit(1)
    finally:
        c.stop()


if __name__ == "__main__":
    main()
