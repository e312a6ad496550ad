// Reconnection against real nodes (started by tests/js_client.rs): a node
// that drains (1012) sends its clients to another node, where they
// resubscribe; a network gap is recovered from history with `since`, each
// missed message delivered exactly once; a gap longer than the history is
// reported as `recovered: false`.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TcpProxy, apiGet, apiPost, client, env, nextEvent, publish, sleep, uniqueGroup, waitFor } from './helpers.js';

test('a draining node (1012) sends the client to the next node at once, where it resubscribes', async (t) => {
  const B_API = env('WSGATE_B_API');
  // A long backoff: only the "at once" path of 1012 can reconnect quickly.
  const c = client([env('WSGATE_A_WS'), env('WSGATE_B_WS')], {
    token: env('WSGATE_CLUSTER_TOKEN'),
    minDelay: 5000,
    maxDelay: 10000,
    drainJitter: 300,
  });
  t.after(() => c.close());
  const welcome = await c.connect();
  assert.equal(welcome.node, 'node-a');
  const live = uniqueGroup('chat');
  const hist = uniqueGroup('hist');
  const got = { [live]: [], [hist]: [] };
  const recoveries = [];
  c.on('recovered', (info) => recoveries.push(info));
  await c.subscribe(live, (d) => got[live].push(d.n));
  await c.subscribe(hist, (d) => got[hist].push(d.n));
  await publish(B_API, hist, { n: 1 });
  await waitFor('the first history message', () => got[hist].length === 1);

  const disconnected = nextEvent(c, 'disconnected');
  const reconnected = nextEvent(c, 'connected', 10000);
  process.kill(Number(env('WSGATE_A_PID')), 'SIGTERM');
  const info = await disconnected;
  const closedAt = Date.now();
  assert.equal(info.code, 1012);
  assert.equal(info.reconnect, true);
  assert.ok(info.delay < 300, `1012 reconnects within the drain jitter, not ${info.delay} ms`);
  const welcomeB = await reconnected;
  assert.equal(welcomeB.node, 'node-b');
  assert.ok(Date.now() - closedAt < 2000, 'reconnected within 2 s (the backoff would take at least 2.5 s)');

  // Both groups are subscribed again on node B (its presence says so) ...
  for (const group of [live, hist]) {
    await waitFor(`${group} on node-b`, async () => {
      const p = await apiGet(B_API, `/api/v1/groups/${group}/presence`);
      return p.members?.some((m) => m.node === 'node-b' && m.session === welcomeB.session);
    });
  }
  // ... and messages published now arrive.
  await publish(B_API, live, { n: 2 });
  await publish(B_API, hist, { n: 2 });
  await waitFor('messages after the reconnect', () => got[live].length === 1 && got[hist].length === 2);
  assert.deepEqual(got[live], [2]);
  assert.deepEqual(got[hist], [1, 2]);
  // The history group was resubscribed with `since` (nothing was missed).
  assert.deepEqual(
    recoveries.map((r) => [r.group, r.recovered]),
    [[hist, true]],
  );
});

// Recovery is checked on the embedded node (in-process broker, as `wsgate
// demo` runs) and on a Redis-backed node.
for (const [name, wsVar, apiVar, tokenVar] of [
  ['embedded node', 'WSGATE_EMBEDDED_WS', 'WSGATE_EMBEDDED_API', 'WSGATE_TOKEN_1'],
  ['redis node', 'WSGATE_B_WS', 'WSGATE_B_API', 'WSGATE_CLUSTER_TOKEN'],
]) {
  test(`${name}: messages published during a network gap arrive once, with recovered: true`, async (t) => {
    const api = env(apiVar);
    const proxy = new TcpProxy(new URL(env(wsVar)).host);
    const c = client(await proxy.start(), { token: env(tokenVar), minDelay: 200, maxDelay: 400 });
    t.after(async () => {
      c.close();
      await proxy.close();
    });
    await c.connect();
    const group = uniqueGroup('hist');
    const got = [];
    const recoveries = [];
    // Every message frame as it came off the wire, before the client's own
    // duplicate check: the server must not send any message twice either.
    const wire = [];
    c.on('message', (m) => m.group === group && wire.push(m.offset));
    const first = await c.subscribe(group, (d) => got.push(d.n), { onRecovered: (i) => recoveries.push(i) });
    assert.equal(typeof first.offset, 'number', `a history group's subscribed reply carries offset: ${JSON.stringify(first)}`);
    assert.equal(typeof first.epoch, 'string', `... and epoch: ${JSON.stringify(first)}`);
    for (let n = 1; n <= 3; n++) await publish(api, group, { n });
    await waitFor('messages 1-3', () => got.length === 3);

    const disconnected = nextEvent(c, 'disconnected');
    proxy.cut();
    assert.equal((await disconnected).code, 1006);
    for (let n = 4; n <= 8; n++) await publish(api, group, { n });
    // The client keeps trying while the network is down.
    const attempts = proxy.accepted;
    await waitFor('a failed reconnect attempt', () => proxy.accepted > attempts);
    const recovered = nextEvent(c, 'recovered', 5000);
    proxy.restore();
    const info = await recovered;
    assert.equal(info.group, group);
    assert.equal(info.recovered, true, `recovered: ${JSON.stringify(info)}`);
    assert.deepEqual(recoveries, [info]);
    for (let n = 9; n <= 10; n++) await publish(api, group, { n });
    await waitFor('messages 1-10', () => got.length >= 10);
    await c.ping();
    await sleep(200);
    assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'each message exactly once, in order');
    assert.deepEqual(
      wire,
      Array.from({ length: 10 }, (_, i) => first.offset + 1 + i),
      'the server sent each offset once, in order',
    );
  });

  test(`${name}: a gap longer than the history is surfaced as recovered: false`, async (t) => {
    const api = env(apiVar);
    const size = Number(env('WSGATE_HISTORY_SIZE'));
    const proxy = new TcpProxy(new URL(env(wsVar)).host);
    const c = client(await proxy.start(), { token: env(tokenVar), minDelay: 200, maxDelay: 400 });
    t.after(async () => {
      c.close();
      await proxy.close();
    });
    await c.connect();
    const group = uniqueGroup('hist');
    const got = [];
    const recoveries = [];
    let last;
    const handler = (d, m) => {
      got.push(d.n);
      last = m;
    };
    await c.subscribe(group, handler, { onRecovered: (i) => recoveries.push(i) });
    await publish(api, group, { n: 0 });
    await waitFor('message 0', () => got.length === 1);

    const disconnected = nextEvent(c, 'disconnected');
    proxy.cut();
    await disconnected;
    // More than the history keeps.
    const messages = Array.from({ length: size + 5 }, (_, i) => ({ group, data: { n: i + 1 } }));
    await apiPost(api, '/api/v1/publish', { messages });
    const recovered = nextEvent(c, 'recovered', 5000);
    proxy.restore();
    const info = await recovered;
    assert.equal(info.recovered, false, `recovered: ${JSON.stringify(info)}`);
    assert.deepEqual(recoveries, [info], 'the subscription handler is told too');
    // The subscription goes on from the group's current position.
    await publish(api, group, { n: 1000 });
    await waitFor('a message after the failed recovery', () => got.includes(1000));
    assert.equal(c.subscriptions()[0].offset, last.offset, 'the position is the last message\'s');
  });
}
