// `subscribe(group, handler, {grant})`: a group the backend authorizes
// (`groups.authorize` is `paid.*` on every node of tests/js_client.rs) needs
// a subscription grant, an HS256 JWT signed with the nodes'
// `authorize.grant_secret`. Without one the subscribe is refused; with one,
// given as a string or by a function called per (re)subscription, it goes
// through.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { client, env, publish, uniqueGroup, waitFor } from './helpers.js';

function grant(sub, group, ttlSeconds = 300) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub, group, iat: now, exp: now + ttlSeconds })}`;
  const sig = createHmac('sha256', env('WSGATE_GRANT_SECRET')).update(body).digest('base64url');
  return `${body}.${sig}`;
}

test('grant: refused without one, accepted as a string or from a function', async (t) => {
  const api = env('WSGATE_EMBEDDED_API');
  const c = client(env('WSGATE_EMBEDDED_WS'), { token: env('WSGATE_TOKEN_1') });
  t.after(() => c.close());
  await c.connect();

  const bare = uniqueGroup('paid');
  await assert.rejects(c.subscribe(bare, () => {}), (e) => e.code === 'forbidden');
  const stranger = uniqueGroup('paid');
  await assert.rejects(
    c.subscribe(stranger, () => {}, { grant: grant('someone-else', stranger) }),
    (e) => e.code === 'forbidden',
  );

  const direct = uniqueGroup('paid');
  const got = [];
  const reply = await c.subscribe(direct, (data) => got.push(data.n), { grant: grant('js-1', direct) });
  assert.equal(reply.type, 'subscribed');
  await publish(api, direct, { n: 1 });
  await waitFor('the message on the granted group', () => got.length === 1);

  const viaFunction = uniqueGroup('paid');
  const asked = [];
  const reply2 = await c.subscribe(viaFunction, () => {}, {
    grant: async (group) => {
      asked.push(group);
      return grant('js-1', group);
    },
  });
  assert.equal(reply2.type, 'subscribed');
  assert.deepEqual(asked, [viaFunction]);
});
