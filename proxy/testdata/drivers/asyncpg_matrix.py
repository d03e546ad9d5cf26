"""asyncpg in pgrouter's driver matrix (proxy/drivers_matrix_test.go).

Arguments: PREFIX N KEY_A KEY_B, where KEY_A and KEY_B belong to different
shards. asyncpg prepares named statements (Parse, Describe, Flush) and runs
them with Bind, Execute, Sync; it introspects types it does not know. The
last line printed is "count_users=<n>".
"""
import asyncio
import sys

import asyncpg

prefix, n, key_a, key_b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ADD = "select rt_add_user($1, $2)"
GET = "select email from rt_get_user($1)"
GET_ROW = "select * from rt_get_user($1) u"


def email(k):
    return k + "@example.com"


async def add_and_check(conn, k):
    await conn.fetchval(ADD, k, email(k))
    got = await conn.fetchval(GET, k)
    assert got == email(k), (k, got)


async def main():
    conn = await asyncpg.connect(ssl=False)
    try:
        # A transaction first: asyncpg's type introspection runs inside it.
        k = f"{prefix}t{n}"
        async with conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = '5s'")
            await add_and_check(conn, k)
            row = await conn.fetchrow(GET_ROW, k)
            assert row["email"] == email(k), row
            assert await conn.fetchval("SHOW statement_timeout") == "5s"
        for i in range(n):
            await add_and_check(conn, f"{prefix}a{i}")
        for i in range(n):
            async with conn.transaction():
                await add_and_check(conn, f"{prefix}t{i}")
        tr = conn.transaction()
        await tr.start()
        await conn.fetchval(ADD, f"{prefix}r0", "gone")
        await tr.rollback()
        assert await conn.fetchval("select rt_count_users()") >= 2 * n + 1
        async with conn.transaction():
            assert await conn.fetchval("select rt_count_users()") >= 2 * n + 1
        try:
            async with conn.transaction():
                await conn.fetchval(ADD, key_a, email(key_a))
                await conn.fetchval(ADD, key_b, email(key_b))
            raise AssertionError("a two-shard transaction was accepted")
        except asyncpg.exceptions.FeatureNotSupportedError:
            pass
        async with conn.transaction():
            total = await conn.fetchval("select rt_count_users()")
        # SPLIT: asyncpg sends the list as a binary text[]; each name goes to
        # its shard (a wrong one finds nothing). TARGET: rt_lookup runs
        # rt_user_impl. fetchval asks for one row (Execute with a limit).
        split_names = [f"{prefix}a{i}" for i in range(6)]
        rows = await conn.fetch("select username from rt_get_users($1)", split_names + [prefix + "nobody"])
        got = sorted(r[0] for r in rows)
        assert got == sorted(split_names), got
        assert await conn.fetchval("select count(*) from rt_get_users($1)", split_names) >= 1
        assert await conn.fetchval("select rt_lookup($1)", split_names[0]) == email(split_names[0])
        # A cursor over a run_on all call: asyncpg fetches its portal 3 rows
        # at a time inside the transaction.
        async with conn.transaction():
            rows = 0
            async for _ in conn.cursor("select * from rt_list_users()", prefetch=3):
                rows += 1
        assert rows == total, (rows, total)
        print(f"count_users={total}")
    finally:
        await conn.close()


asyncio.run(main())
