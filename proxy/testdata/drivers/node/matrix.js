// node-postgres in pgrouter's driver matrix (proxy/drivers_matrix_test.go).
//
// Arguments: PREFIX N KEY_A KEY_B, where KEY_A and KEY_B belong to different
// shards. node-postgres sends BEGIN/COMMIT as simple Queries and parameterised
// calls through the extended protocol, named when the query has a name. The
// last line printed is "count_users=<n>".
'use strict';
const assert = require('assert');
const { Client } = require('pg');

const [prefix, nArg, keyA, keyB] = process.argv.slice(2);
const n = Number(nArg);
const ADD = 'select rt_add_user($1, $2)';
const GET = 'select email from rt_get_user($1)';
const email = (k) => k + '@example.com';

async function addAndCheck(c, k, named) {
  await c.query(named ? { name: 'add', text: ADD, values: [k, email(k)] } : { text: ADD, values: [k, email(k)] });
  const r = await c.query({ name: 'get', text: GET, values: [k] });
  assert.strictEqual(r.rows[0].email, email(k));
}

async function main() {
  const c = new Client();
  await c.connect();
  try {
    for (let i = 0; i < n; i++) await addAndCheck(c, `${prefix}a${i}`, i % 2 === 0);
    for (let i = 0; i < n; i++) {
      await c.query('BEGIN');
      await addAndCheck(c, `${prefix}t${i}`, i % 2 === 1);
      await c.query('COMMIT');
    }
    await c.query('BEGIN');
    await c.query(ADD, [`${prefix}r0`, 'gone']);
    await c.query('ROLLBACK');
    await c.query('BEGIN');
    await c.query("SET LOCAL statement_timeout = '5s'");
    await c.query('select typname from pg_catalog.pg_type where oid = $1', [25]);
    await addAndCheck(c, `${prefix}t${n}`, false);
    assert.strictEqual((await c.query('SHOW statement_timeout')).rows[0].statement_timeout, '5s');
    await c.query('COMMIT');
    assert.ok(Number((await c.query('select rt_count_users() as n')).rows[0].n) >= 2 * n + 1);
    await c.query('BEGIN');
    assert.ok(Number((await c.query({ name: 'cnt', text: 'select rt_count_users() as n' })).rows[0].n) >= 2 * n + 1);
    await c.query('COMMIT');
    await c.query('BEGIN');
    await c.query(ADD, [keyA, email(keyA)]);
    let refused = false;
    try {
      await c.query(ADD, [keyB, email(keyB)]);
    } catch (e) {
      assert.strictEqual(e.code, '0A000', e.message);
      refused = true;
    }
    assert.ok(refused, 'a two-shard transaction was accepted');
    await c.query('ROLLBACK');
    await c.query('BEGIN');
    const total = (await c.query('select rt_count_users() as n')).rows[0].n;
    // SPLIT: node-postgres sends an array as a '{...}' text parameter; each
    // name goes to its shard (a wrong one finds nothing). TARGET: rt_lookup
    // runs rt_user_impl.
    const splitNames = [0, 1, 2, 3, 4, 5].map((i) => `${prefix}a${i}`);
    for (const named of [false, true]) {
      const q = { text: 'select username from rt_get_users($1)', values: [splitNames.concat([prefix + 'nobody'])] };
      if (named) q.name = 'split';
      const got = (await c.query(q)).rows.map((r) => r.username).sort();
      assert.deepStrictEqual(got, splitNames.slice().sort());
    }
    assert.strictEqual((await c.query('select rt_lookup($1) as e', [splitNames[0]])).rows[0].e, email(splitNames[0]));
    await c.query('COMMIT');
    console.log(`count_users=${total}`);
  } finally {
    await c.end();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
