import psycopg
import pytest
from psycopg import sql


def one(conn, sql, params=None):
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def refused(conn, sql, params=None, check=None) -> psycopg.Error:
    """Run `sql` and assert it is refused with SQLSTATE 28000 naming `check`."""
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(sql, params)
    e = ei.value
    assert e.sqlstate == "28000", (e.sqlstate, str(e))
    if check:
        assert e.diag.message_primary.startswith(f"JWT refused: {check} check failed"), e.diag.message_primary
    return e


def config_error(conn, sql, params=None, setting=None) -> psycopg.Error:
    """Run `sql` and assert a 22023 whose HINT names `setting`."""
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(sql, params)
    e = ei.value
    assert e.sqlstate == "22023", (e.sqlstate, str(e))
    if setting:
        assert setting in (e.diag.message_hint or "") or setting in e.diag.message_primary, str(e)
    return e


def set_local(conn, name: str, value: str):
    """SET LOCAL takes no bind parameters: quote the value client-side."""
    conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.SQL(name), sql.Literal(value)))


def wait_for_setting(cluster, name: str, expected, dbname="app", timeout=60.0):
    """pg_reload_conf() only signals the postmaster: poll fresh connections until they see
    `expected` (None: the setting is unset or empty), instead of sleeping a guessed interval."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        with cluster.connect(dbname=dbname) as c:
            value = one(c, "SELECT current_setting(%s, true)", (name,))
        if value == expected or (expected is None and value in (None, "")):
            return
        assert time.monotonic() < deadline, f"{name} is still {value!r} after {timeout} s, not {expected!r}"
        time.sleep(0.05)


def in_thread(conn, query, params=()):
    """Run `query` on `conn` in a thread; returns (thread, box) with box['error'|'result', 't']."""
    import threading
    import time

    box = {}

    def run():
        t0 = time.monotonic()
        try:
            box["result"] = conn.execute(query, params).fetchall()
        except Exception as e:  # noqa: BLE001
            box["error"] = e
        box["t"] = time.monotonic() - t0

    th = threading.Thread(target=run)
    th.start()
    return th, box
