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
