"""psycopg 3 in pgrouter's driver matrix (proxy/drivers_matrix_test.go).

Arguments: PREFIX N KEY_A KEY_B, where KEY_A and KEY_B belong to different
shards. Connection settings come from the PG* environment variables. Every
check raises on failure; the last line printed is "count_users=<n>".
"""
import sys

import psycopg
from psycopg import errors

prefix, n, key_a, key_b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ADD = "select rt_add_user(%s, %s)"
GET = "select email from rt_get_user(%s)"


def email(k):
    return k + "@example.com"


def check(conn, k, prepare):
    got = conn.execute(GET, (k,), prepare=prepare).fetchone()[0]
    assert got == email(k), (k, got)


# Autocommit: every call is its own transaction; named statements too.
with psycopg.connect(autocommit=True) as conn:
    for i in range(n):
        k = f"{prefix}a{i}"
        conn.execute(ADD, (k, email(k)), prepare=(i % 2 == 0))
        check(conn, k, prepare=True)
    # A transaction block opened in autocommit mode.
    k = f"{prefix}b0"
    with conn.transaction():
        conn.execute(ADD, (k, email(k)))
        check(conn, k, prepare=False)
    assert conn.execute("select rt_count_users()").fetchone()[0] >= n + 1

# The default: psycopg opens a transaction (BEGIN through the extended
# protocol) before the first statement and the application commits.
with psycopg.connect() as conn:
    for i in range(n):
        k = f"{prefix}t{i}"
        conn.execute(ADD, (k, email(k)), prepare=(i % 2 == 1))
        check(conn, k, prepare=True)
        conn.commit()
    # A rollback leaves nothing behind.
    conn.execute(ADD, (f"{prefix}r0", "gone"))
    conn.rollback()
    # SET LOCAL and a catalog read before the first routed call.
    conn.execute("SET LOCAL statement_timeout = '5s'")
    conn.execute("select typname from pg_catalog.pg_type where oid = %s", (25,)).fetchone()
    k = f"{prefix}t{n}"
    conn.execute(ADD, (k, email(k)))
    got = conn.execute("SHOW statement_timeout").fetchone()[0]
    assert got == "5s", got
    conn.commit()
    # run_on all inside a transaction that has not chosen a shard.
    assert conn.execute("select rt_count_users()").fetchone()[0] >= 2 * n + 2
    conn.commit()
    # A transaction that reaches a second shard is refused and rolled back.
    conn.execute(ADD, (key_a, email(key_a)))
    try:
        conn.execute(ADD, (key_b, email(key_b)))
        raise AssertionError("a two-shard transaction was accepted")
    except errors.FeatureNotSupported:
        pass
    conn.rollback()
    total = conn.execute("select rt_count_users()").fetchone()[0]
    conn.rollback()

# SPLIT: one call, each name sent to its shard (a wrong one finds nothing);
# in autocommit and as a transaction's first call. TARGET: rt_lookup runs
# rt_user_impl.
SPLIT_NAMES = [f"{prefix}a{i}" for i in range(6)]
with psycopg.connect(autocommit=True) as conn:
    for prepare in (False, True):
        rows = conn.execute("select username from rt_get_users(%s)", (SPLIT_NAMES + [prefix + "nobody"],), prepare=prepare)
        got = sorted(r[0] for r in rows)
        assert got == sorted(SPLIT_NAMES), got
        got = conn.execute("select rt_lookup(%s)", (SPLIT_NAMES[0],), prepare=prepare).fetchone()[0]
        assert got == email(SPLIT_NAMES[0]), got
with psycopg.connect() as conn:
    got = sorted(r[0] for r in conn.execute("select username from rt_get_users(%s)", (SPLIT_NAMES,)))
    assert got == sorted(SPLIT_NAMES), got
    conn.commit()
print(f"count_users={total}")
