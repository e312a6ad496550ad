// `subscribe(group, handler, {latest: true})`: the group's latest message
// reaches the handler first, marked `message.snapshot`, before the promise
// resolves; then live messages, none twice. On the embedded node and on a
// Redis node (tests/js_client.rs makes `snap.*` a snapshot group and
// `hist.*` a history group on every node).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { client, env, publish, uniqueGroup, waitFor } from './helpers.js';

for (const [name, wsVar, apiVar, tokenVar] of [
  ['embedded node', 'WSGATE_EMBEDDED_WS', 'WSGATE_EMBEDDED_API', 'WSGATE_TOKEN_1'],
  ['redis node', 'WSGATE_B_WS', 'WSGATE_B_API', 'WSGATE_CLUSTER_TOKEN'],
]) {
  test(`latest: the current value first, then live messages (${name})`, async (t) => {
    const api = env(apiVar);
    const c = client(env(wsVar), { token: env(tokenVar) });
    t.after(() => c.close());
    await c.connect();

    for (const prefix of ['snap', 'hist']) {
      const group = uniqueGroup(prefix);
      await publish(api, group, { p: 1 });
      await publish(api, group, { p: 2 });
      const got = [];
      const reply = await c.subscribe(group, (data, message) => got.push([data.p, message.snapshot === true]), {
        latest: true,
      });
      assert.equal(reply.type, 'subscribed');
      // Already handled when the promise resolves.
      assert.deepEqual(got, [[2, true]], `${group}: ${JSON.stringify(got)}`);
      await publish(api, group, { p: 3 });
      await waitFor(`${group}: the live message`, () => got.length >= 2);
      await c.ping();
      assert.deepEqual(got, [
        [2, true],
        [3, false],
      ]);
    }

    // Nothing kept yet: the reply alone.
    const empty = uniqueGroup('snap');
    const got = [];
    await c.subscribe(empty, (data) => got.push(data), { latest: true });
    await c.ping();
    assert.deepEqual(got, []);
  });
}
