"""Behind PgBouncer (Debian's pgbouncer, started here on loopback). Transaction mode: many
clients share few server connections, each transaction sets its own user's token with
SET LOCAL / set_config(..., true), and nobody ever sees another user's rows; also pins down what
a session-level SET does through a transaction pooler, which is why the README forbids it.
Session mode: the pooler cleans a server connection with DISCARD ALL between clients, and that
must forget the previous client's token."""

import os
import json
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import psycopg
import pytest
from helpers import one
from kinde import kinde_access_claims

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
USERS = 60
CLIENTS = 50
TRANSACTIONS = 20_000


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bouncer:
    def __init__(self, cluster, pool_size, pool_mode="transaction"):
        self.dir = tempfile.mkdtemp(prefix="kinde_rls-pgbouncer-", dir="/tmp")
        self.port = _free_port()
        ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(ini, "w") as f:
            f.write(f"""[databases]
app = host={cluster.dir} port={cluster.port} dbname=app user=app_user

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = any
pool_mode = {pool_mode}
default_pool_size = {pool_size}
max_client_conn = 200
logfile = {self.dir}/pgbouncer.log
pidfile = {self.dir}/pgbouncer.pid
""")
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            for p in (self.dir, ini):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            cmd = ["runuser", "-u", "postgres", "--", PGBOUNCER, ini]
        else:
            cmd = [PGBOUNCER, ini]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("pgbouncer did not start")

    def connect(self, user="app_user"):
        # Transaction pooling: no server-side prepared statements.
        return psycopg.connect(f"host=127.0.0.1 port={self.port} user={user} dbname=app", autocommit=True,
                               prepare_threshold=None)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def users(cluster, signers):
    """USERS Kinde users, each with one todo of their own, and their tokens."""
    tokens = {f"kp_pool_{i}": signers["rsa"].sign(kinde_access_claims(f"kp_pool_{i}"), "RS256") for i in range(USERS)}
    with cluster.connect(user="app_user", dbname="app") as c:
        for sub, tok in tokens.items():
            with c.transaction():
                c.execute("SELECT set_config('kinde_rls.token', %s, true)", (tok,))
                c.execute("INSERT INTO todos (task) VALUES (%s)", (f"task of {sub}",))
    yield tokens
    with cluster.connect(dbname="app") as su:
        su.execute("DELETE FROM todos WHERE user_id LIKE 'kp_pool_%'")


def test_transaction_pooling_never_mixes_users(cluster, users):
    bouncer = Bouncer(cluster, pool_size=8)
    subs = list(users)
    wrong, errors, done = [], [], [0]
    lock = threading.Lock()

    def client(n):
        rnd = random.Random(n)
        try:
            with bouncer.connect() as c:
                sub = None
                for _ in range(TRANSACTIONS // CLIENTS):
                    # Each transaction a different user from the client's previous one.
                    sub = rnd.choice([s for s in subs if s != sub])
                    with c.transaction():
                        c.execute("SELECT set_config('kinde_rls.token', %s, true)", (users[sub],))
                        rows = c.execute("SELECT get_user_id(), user_id, task FROM todos").fetchall()
                    if rows != [(sub, sub, f"task of {sub}")]:
                        with lock:
                            wrong.append((sub, rows))
                    # Between transactions the connection carries no identity.
                    if rnd.random() < 0.05:
                        anon = c.execute("SELECT get_user_id(), count(*) FROM todos").fetchone()
                        if anon != (None, 0):
                            with lock:
                                wrong.append(("anonymous", anon))
                    with lock:
                        done[0] += 1
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(repr(e))

    try:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        bouncer.stop()
    assert not errors, errors[:3]
    assert done[0] == TRANSACTIONS
    assert not wrong, wrong[:3]


def test_session_level_set_leaks_through_a_transaction_pooler(cluster, users):
    """The documented misuse: a plain SET outlives the transaction and stays on the server
    connection, so the pooler's next client inherits it. SET LOCAL does not."""
    bouncer = Bouncer(cluster, pool_size=1)  # one server connection: every client shares it
    sub, tok = next(iter(users.items()))
    try:
        with bouncer.connect() as a, bouncer.connect() as b:
            warnings = []
            b.add_notice_handler(lambda d: warnings.append((d.severity_nonlocalized, d.message_primary, d.message_hint)))
            a.execute("SELECT set_config('kinde_rls.token', %s, false)", (tok,))  # = SET, wrong
            assert one(b, "SELECT get_user_id()") == sub  # b was never given a token
            # kinde_rls notices the token outlived its transaction and says so.
            assert [w[:2] for w in warnings] == [("WARNING", "kinde_rls.token outlived the transaction that set it")]
            assert "SET LOCAL" in warnings[0][2]
            a.execute("RESET kinde_rls.token")
            assert one(b, "SELECT get_user_id()") is None
            with a.transaction():
                a.execute("SELECT set_config('kinde_rls.token', %s, true)", (tok,))  # = SET LOCAL, right
                assert one(a, "SELECT get_user_id()") == sub
            assert one(b, "SELECT get_user_id()") is None
    finally:
        bouncer.stop()


def test_session_level_token_warns_once_and_set_local_never(cluster, users):
    sub, tok = next(iter(users.items()))
    with cluster.connect(user="app_user", dbname="app") as c:
        got = []
        c.add_notice_handler(lambda d: got.append((d.severity_nonlocalized, d.message_primary)))
        # SET LOCAL / set_config(..., true), many transactions: never a warning.
        for _ in range(3):
            with c.transaction():
                c.execute("SELECT set_config('kinde_rls.token', %s, true)", (tok,))
                assert one(c, "SELECT get_user_id()") == sub
                assert one(c, "SELECT count(*) FROM todos") == 1
        # Set and used in the same statement: not (yet) a misuse.
        assert one(c, "SELECT get_user_id() FROM (SELECT set_config('kinde_rls.token', %s, false)) s", (tok,)) == sub
        assert got == []
        # Used again in a later transaction: a session-level token. One warning, not one per row.
        assert one(c, "SELECT count(*) FROM todos WHERE user_id = get_user_id()") == 1
        assert one(c, "SELECT get_user_id()") == sub
        assert got == [("WARNING", "kinde_rls.token outlived the transaction that set it")]
        c.execute("RESET kinde_rls.token")
        assert one(c, "SELECT get_user_id()") is None
        assert len(got) == 1


def test_session_pooling_discard_all_forgets_the_previous_clients_token(cluster, users):
    """PgBouncer in session mode runs its server_reset_query (DISCARD ALL, the default) when a
    client leaves; the next client on that server connection must start anonymous, whichever
    way the previous one set its identity for the session."""
    bouncer = Bouncer(cluster, pool_size=1, pool_mode="session")
    (sub, tok), (sub2, tok2) = list(users.items())[:2]
    headers = json.dumps({"authorization": f"Bearer {tok2}"})
    try:
        with bouncer.connect() as a:
            a.execute("SELECT set_config('kinde_rls.token', %s, false)", (tok,))
            assert one(a, "SELECT get_user_id()") == sub
            assert one(a, "SELECT count(*) FROM todos") == 1
            pid = one(a, "SELECT pg_backend_pid()")
        with bouncer.connect() as b:
            assert one(b, "SELECT pg_backend_pid()") == pid  # the same server connection
            assert one(b, "SELECT current_setting('kinde_rls.token', true)") in ("", None)
            assert one(b, "SELECT get_user_id()") is None
            assert one(b, "SELECT count(*) FROM todos") == 0
            # The PostgREST-style sources are session settings too: set them, leave.
            b.execute("SELECT set_config('request.headers', %s, false)", (headers,))
            b.execute("SELECT set_config('request.jwt.claims', %s, false)", (tok,))
            assert one(b, "SELECT get_user_id()") == sub2
        with bouncer.connect() as c:
            assert one(c, "SELECT pg_backend_pid()") == pid
            assert one(c, "SELECT get_user_id()") is None
            assert one(c, "SELECT count(*) FROM todos") == 0
    finally:
        bouncer.stop()
