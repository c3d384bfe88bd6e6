"""The README's quick starts, run as written: each fenced block is taken from README.md (or, for
several issuers and the Supabase-style stack, from INSTALL.md; not copied here), its
placeholders filled in (<business> becomes a stand-in Kinde issuer on
127.0.0.1, the token placeholder a token minted with PyJWT), and run against a throwaway
cluster the way the README says to run it. A snippet that stops working, or drifts from what
the tests show, fails here."""

import os
import re
import subprocess
import time

import psycopg
import pytest
from helpers import one
from issuer import MockIssuer
from kinde import CLIENT_SECRET, KINDE_ISS, hs256_resign, kinde_id_claims
from pg import Cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = {name: open(os.path.join(ROOT, name)).read() for name in ("README.md", "INSTALL.md")}
AUDIENCE = "https://api.example.com"


def section(title: str, doc: str = "README.md") -> str:
    text = DOCS[doc]
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def blocks(title: str, doc: str = "README.md") -> list[tuple[str, str]]:
    """(language, text) of each fenced block in a section of `doc`, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", section(title, doc), re.S)]


def statements(sql_text: str) -> list[str]:
    """Split a snippet into statements at lines ending with ';' (after any -- comment); a psql
    `\\i file` line becomes the file's content, run as one multi-statement string."""
    out, cur = [], []
    for line in sql_text.splitlines():
        if line.startswith("\\i "):
            out.append(open(os.path.join(ROOT, line[3:].strip())).read())
            continue
        code = re.sub(r"\s--.*$", "", line).rstrip()
        if code.startswith("--") or not code:
            continue
        cur.append(code)
        if code.endswith(";"):
            out.append("\n".join(cur))
            cur = []
    assert not cur, f"unterminated statement in a README snippet: {cur}"
    return out


def fill(text: str, optional=(), **values) -> str:
    for placeholder, value in values.items():
        assert placeholder in text or placeholder in optional, f"{placeholder!r} is not in the snippet any more"
        text = text.replace(placeholder, value)
    left = re.findall(r"<[a-z][a-z ]*>", text)
    assert not left, f"placeholders not filled in: {left}"
    return text


def execute(conn, stmt: str):
    """One statement. After pg_reload_conf() the README's next line runs once this session has
    read the files again, as it has by the time a person types it."""
    cur = conn.execute(stmt)
    if "pg_reload_conf()" in stmt:
        before = cur.fetchone()
        deadline = time.monotonic() + 60
        loaded = one(conn, "SELECT pg_conf_load_time()")
        while one(conn, "SELECT pg_conf_load_time()") == loaded and time.monotonic() < deadline:
            time.sleep(0.05)
        return before
    return cur


def run(conn, sql_text: str) -> list:
    """Run each statement; the rows of the last one that returned rows."""
    rows = []
    for stmt in statements(sql_text):
        cur = execute(conn, stmt)
        if isinstance(cur, psycopg.Cursor) and cur.description is not None:
            rows = cur.fetchall()
    return rows


@pytest.fixture(scope="module")
def readme_cluster():
    """Not preloaded: the quick start says to preload later; it must work before that too."""
    c = Cluster("readme", preload=False)
    try:
        c.psql("CREATE DATABASE app")
        yield c
    finally:
        c.stop()


def test_rs256_quick_start_as_written(readme_cluster):
    issuer = MockIssuer()
    try:
        steps = [text for lang, text in blocks("Quick start: a Kinde app (RS256, keys from your Kinde domain)")
                 if lang == "sql"]
        assert len(steps) == 3, steps
        token = issuer.token("kp_readme", aud=[AUDIENCE])
        with readme_cluster.connect(dbname="app") as su:
            first = fill(steps[0], **{"https://<business>.kinde.com": issuer.base,
                                      "https://api.<yourapp>.com": AUDIENCE})
            for stmt in statements(first):
                cur = execute(su, stmt)
                if "refresh_jwks" in stmt:
                    assert cur.fetchone() == (1,), "refresh_jwks() fetched the issuer's one key"
                if "jwks_status" in stmt:
                    row = cur.fetchone()
                    assert row[1] == issuer.base and row[2] == 1 and row[5] is None and row[7] is None, row
            run(su, fill(steps[1], **{"'<password>'": "'app-password'"}))
            su.execute("INSERT INTO todos (task, user_id) VALUES ('someone else''s', 'kp_other')")
        with readme_cluster.connect(user="app_user", dbname="app") as app:
            rows = run(app, fill(steps[2], **{"'eyJhbGciOiJSUzI1NiIsImtpZCI6…'": f"'{token}'"}))
            assert rows == [], "the INSERT returns nothing; the SELECT before it saw no row of another user"
            with app.transaction():
                app.execute("SELECT set_config('kinde_rls.token', %s, true)", (token,))
                assert app.execute("SELECT task, user_id FROM todos").fetchall() == [("buy milk", "kp_readme")]
        with readme_cluster.connect(dbname="app") as su:
            # "superusers … are not subject to row-level security, so there every user's rows show"
            assert one(su, "SELECT count(*) FROM todos") == 2
        assert issuer.count("jwks") >= 1
    finally:
        issuer.stop()


def test_several_issuers_snippet_as_written(readme_cluster):
    ((lang, text),) = blocks("Several issuers", "INSTALL.md")
    assert lang == "sql"
    with readme_cluster.connect(dbname="app") as su:
        su.execute("LOAD 'kinde_rls'")
        try:
            run(su, text)
            assert one(su, "SELECT current_setting('kinde_rls.providers')").startswith('[{"domain": "https://acme.kinde.com"}')
        finally:
            su.execute("ALTER SYSTEM RESET kinde_rls.providers")
            su.execute("SELECT pg_reload_conf()")


def test_hs256_quick_start_as_written():
    """postgresql.conf lines and the shell lines of the HS256 section, with the secret's path
    in a scratch directory; then an HS256 token made as Kinde's Supabase guide makes it."""
    (_, conf), (sh_lang, sh) = [b for b in blocks("Quick start: the HS256 flow of Kinde's Supabase guide")][:2]
    assert sh_lang == "sh"
    path = f"/tmp/kinde_rls-readme-secret-{os.getpid()}"
    values = {"/etc/postgresql/kinde_client_secret": path, "https://<business>.kinde.com": KINDE_ISS}
    settings = {}
    for line in fill(conf, **values).splitlines():
        line = re.sub(r"\s#.*$", "", line).strip()
        if line and not line.startswith("#"):
            name, value = (x.strip() for x in line.split("=", 1))
            settings[name] = value
    assert set(settings) == {"shared_preload_libraries", "kinde_rls.secret_file", "kinde_rls.issuer"}, settings
    subprocess.run(["bash", "-euc", fill(sh, optional=["https://<business>.kinde.com"],
                                         **{**values, "'<client secret>'": f"'{CLIENT_SECRET}'"})], check=True)
    c = Cluster("readme-hs256", preload=False, conf=settings)
    try:
        st = os.stat(path)
        assert oct(st.st_mode & 0o777) == "0o600"
        with c.connect() as su:
            su.execute("CREATE EXTENSION kinde_rls")
            token = hs256_resign(kinde_id_claims("kp_guide"))
            assert one(su, "SELECT verify_jwt(%s) ->> 'sub'", (token,)) == "kp_guide"
            assert one(su, "SHOW kinde_rls.secret_file") == path
    finally:
        c.stop()
        os.unlink(path)


def test_supabase_realtime_snippet_as_written(readme_cluster):
    ((lang, text),) = [b for b in blocks("Running on a Supabase-style stack", "INSTALL.md") if b[0] == "sql"]
    with readme_cluster.connect(dbname="app") as su:
        su.execute("CREATE ROLE supabase_admin LOGIN SUPERUSER")
        run(su, text)
    with readme_cluster.connect(user="supabase_admin", dbname="app") as rt:
        assert one(rt, "SHOW kinde_rls.trust_request_claims") == "on"
    with readme_cluster.connect(dbname="app") as su:
        su.execute("LOAD 'kinde_rls'")
        assert one(su, "SHOW kinde_rls.trust_request_claims") == "off"
        su.execute("DROP ROLE supabase_admin")
