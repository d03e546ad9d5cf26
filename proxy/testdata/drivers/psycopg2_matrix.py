"""psycopg2 in pgrouter's driver matrix (proxy/drivers_matrix_test.go).

Arguments: PREFIX N KEY_A KEY_B, where KEY_A and KEY_B belong to different
shards. psycopg2 inlines parameters into simple Query messages and sends
BEGIN as a simple Query. The last line printed is "count_users=<n>".
"""
import sys

import psycopg2
from psycopg2 import errors

prefix, n, key_a, key_b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ADD = "select rt_add_user(%s, %s)"
GET = "select email from rt_get_user(%s)"


def email(k):
    return k + "@example.com"


def add_and_check(cur, k):
    cur.execute(ADD, (k, email(k)))
    cur.execute(GET, (k,))
    got = cur.fetchone()[0]
    assert got == email(k), (k, got)


conn = psycopg2.connect("")
conn.autocommit = True
cur = conn.cursor()
for i in range(n):
    add_and_check(cur, f"{prefix}a{i}")
conn.close()

conn = psycopg2.connect("")
cur = conn.cursor()
for i in range(n):
    add_and_check(cur, f"{prefix}t{i}")
    conn.commit()
cur.execute(ADD, (f"{prefix}r0", "gone"))
conn.rollback()
cur.execute("SET LOCAL statement_timeout = '5s'")
cur.execute("select typname from pg_catalog.pg_type where oid = 25")
add_and_check(cur, f"{prefix}t{n}")
cur.execute("SHOW statement_timeout")
assert cur.fetchone()[0] == "5s"
conn.commit()
add_and_check(cur, f"{prefix}b0")
conn.commit()
cur.execute("select rt_count_users()")
assert cur.fetchone()[0] >= 2 * n + 2
conn.commit()
cur.execute(ADD, (key_a, email(key_a)))
try:
    cur.execute(ADD, (key_b, email(key_b)))
    raise AssertionError("a two-shard transaction was accepted")
except errors.FeatureNotSupported:
    pass
conn.rollback()
cur.execute("select rt_count_users()")
total = cur.fetchone()[0]
conn.rollback()
# SPLIT: psycopg2 writes a list as ARRAY[...] in the text; each name goes
# to its shard (a wrong one finds nothing). TARGET: rt_lookup runs rt_user_impl.
split_names = [f"{prefix}a{i}" for i in range(6)]
cur.execute("select username from rt_get_users(%s)", (split_names + [prefix + "nobody"],))
got = sorted(r[0] for r in cur.fetchall())
assert got == sorted(split_names), got
cur.execute("select rt_lookup(%s)", (split_names[0],))
assert cur.fetchone()[0] == email(split_names[0])
conn.commit()
conn.close()
print(f"count_users={total}")
