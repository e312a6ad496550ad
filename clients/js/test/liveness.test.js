// Liveness (started by tests/js_client.rs): a browser never sees WebSocket
// pings, so the client sends the protocol's `ping` after `pingInterval`
// without a frame and drops the connection when no `pong` comes within
// `pongTimeout`. A TCP proxy that stops forwarding without closing anything
// stands in for a half-open connection (a dead link, a NAT that forgot the
// flow).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TcpProxy, client, env, nextEvent, publish, sleep, uniqueGroup, waitFor } from './helpers.js';

const WS = env('WSGATE_EMBEDDED_WS');
const API = env('WSGATE_EMBEDDED_API');

/** A WebSocket that records the frames the client sends. */
function spyingWebSocket(sent) {
  return class extends WebSocket {
    send(data) {
      sent.push(JSON.parse(data));
      super.send(data);
    }
  };
}

test('an idle healthy connection is pinged and stays up; traffic defers the ping', async (t) => {
  const sent = [];
  const c = client(WS, {
    token: env('WSGATE_TOKEN_1'),
    WebSocket: spyingWebSocket(sent),
    pingInterval: 300,
    pongTimeout: 300,
  });
  t.after(() => c.close());
  const disconnects = [];
  c.on('disconnected', (info) => disconnects.push(info));
  await c.connect();
  await sleep(1600);
  const pings = sent.filter((f) => f.type === 'ping');
  assert.ok(pings.length >= 3 && pings.length <= 6, `${pings.length} pings in 1.6 s at one per 300 ms idle`);
  assert.ok(pings.every((p) => typeof p.id === 'number'), 'a ping is a request with an id');
  assert.deepEqual(disconnects, []);
  assert.equal(c.state, 'connected');

  // Messages arriving more often than pingInterval: no ping is needed.
  const group = uniqueGroup('busy');
  await c.subscribe(group, () => {});
  const before = sent.filter((f) => f.type === 'ping').length;
  const started = Date.now();
  while (Date.now() - started < 1200) {
    await publish(API, group, { t: Date.now() });
    await sleep(100);
  }
  const during = sent.filter((f) => f.type === 'ping').length - before;
  assert.ok(during <= 1, `${during} pings while messages kept arriving`);
});

test('a half-open connection is noticed within pingInterval + pongTimeout and replaced', async (t) => {
  const PING = 500;
  const PONG = 500;
  const proxy = new TcpProxy(new URL(WS).host);
  const c = client(await proxy.start(), {
    token: env('WSGATE_TOKEN_1'),
    pingInterval: PING,
    pongTimeout: PONG,
    connectTimeout: 1000,
    minDelay: 100,
    maxDelay: 200,
  });
  t.after(async () => {
    c.close();
    await proxy.close();
  });
  await c.connect();
  const group = uniqueGroup('hist');
  const got = [];
  await c.subscribe(group, (d) => got.push(d.n));
  await publish(API, group, { n: 1 });
  await waitFor('message 1', () => got.length === 1);

  const dropped = nextEvent(c, 'disconnected', 5000);
  proxy.freeze();
  const frozenAt = Date.now();
  const info = await dropped;
  const noticedAfter = Date.now() - frozenAt;
  assert.equal(info.code, 1006);
  assert.match(info.reason, /^heartbeat timeout/);
  assert.equal(info.reconnect, true);
  // The last frame came before the freeze, so at most PING + PONG (plus
  // timer slack); never before a ping could have been answered.
  assert.ok(noticedAfter >= PONG && noticedAfter < PING + PONG + 700, `noticed after ${noticedAfter} ms`);

  // Still frozen: a new attempt opens a TCP connection that never answers;
  // the connect timeout gives up on it, and the client tries again.
  const attempt = await nextEvent(c, 'disconnected', 5000);
  assert.equal(attempt.code, 1006);
  assert.match(attempt.reason, /^connect timeout/);
  assert.equal(c.state, 'reconnecting');
  for (let n = 2; n <= 4; n++) await publish(API, group, { n });

  const recovered = nextEvent(c, 'recovered', 5000);
  proxy.thaw();
  const r = await recovered;
  assert.equal(r.recovered, true);
  // The first connection, the one that timed out, and the one that works.
  assert.ok(proxy.accepted >= 3, `${proxy.accepted} connections`);
  await waitFor('messages 2-4', () => got.length === 4);
  assert.deepEqual(got, [1, 2, 3, 4]);
  assert.equal(c.state, 'connected');
});

test('pingInterval: 0 turns the heartbeat off', async (t) => {
  const sent = [];
  const c = client(WS, { token: env('WSGATE_TOKEN_1'), WebSocket: spyingWebSocket(sent), pingInterval: 0 });
  t.after(() => c.close());
  await c.connect();
  await sleep(500);
  assert.deepEqual(
    sent.map((f) => f.type),
    ['auth'],
  );
});
