// The client against a real single node (embedded mode, started by
// tests/js_client.rs): first-frame auth, acks by id, delivery, and no retry
// after an authentication failure.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WsgateError } from '../wsgate.js';
import { TcpProxy, apiPost, client, env, nextEvent, publish, sleep, uniqueGroup, waitFor } from './helpers.js';

const WS = env('WSGATE_EMBEDDED_WS');
const API = env('WSGATE_EMBEDDED_API');

test('authenticates with the first frame and gets its welcome', async (t) => {
  const c = client(WS, { token: env('WSGATE_TOKEN_1') });
  t.after(() => c.close());
  const states = [];
  c.on('state', (s) => states.push(s));
  const connected = nextEvent(c, 'connected');
  const welcome = await c.connect();
  assert.equal(welcome.type, 'welcome');
  assert.equal(welcome.user_id, 'js-1');
  assert.equal(welcome.node, env('WSGATE_EMBEDDED_NODE'));
  assert.deepEqual(welcome.groups, ['user.js-1']);
  assert.equal(typeof welcome.session, 'string');
  assert.deepEqual(await connected, welcome);
  assert.deepEqual(states, ['connecting', 'connected']);
  assert.equal(c.state, 'connected');
  // connect() while connected resolves at once with the same welcome.
  assert.deepEqual(await c.connect(), welcome);
});

test('every request carries an id and its promise settles on the reply with that id', async (t) => {
  const c = client(WS, { token: env('WSGATE_TOKEN_1') });
  t.after(() => c.close());
  await c.connect();
  const groups = [uniqueGroup('acks'), uniqueGroup('acks'), uniqueGroup('acks')];
  // All in flight at once: each promise must get its own reply.
  const [s0, s1, s2, pong, badName, forbidden] = await Promise.allSettled([
    c.subscribe(groups[0], () => {}),
    c.subscribe(groups[1], () => {}),
    c.subscribe(groups[2], () => {}),
    c.ping(),
    c.subscribe('not a valid group!', () => {}),
    c.publish('nopub.x', { a: 1 }),
  ]);
  const replies = [s0, s1, s2].map((r) => r.value);
  assert.deepEqual(
    replies.map((r) => [r.type, r.group]),
    groups.map((g) => ['subscribed', g]),
  );
  const ids = [...replies.map((r) => r.id), pong.value.id];
  assert.ok(ids.every((id) => typeof id === 'number'), `ids: ${ids}`);
  assert.equal(new Set(ids).size, ids.length, `distinct ids: ${ids}`);
  assert.equal(pong.value.type, 'pong');
  assert.equal(badName.status, 'rejected');
  assert.ok(badName.reason instanceof WsgateError);
  assert.equal(badName.reason.code, 'bad_request');
  assert.equal(typeof badName.reason.reply.id, 'number');
  assert.equal(forbidden.status, 'rejected');
  assert.equal(forbidden.reason.code, 'forbidden');
  // A refused subscription is not kept (it would be renewed after a reconnect).
  assert.deepEqual(
    c.subscriptions().map((s) => s.group).sort(),
    [...groups].sort(),
  );
  const unsub = await c.unsubscribe(groups[1]);
  assert.equal(unsub.type, 'unsubscribed');
  assert.equal(unsub.group, groups[1]);
  assert.equal(typeof unsub.id, 'number');
  assert.equal(c.subscriptions().length, 2);
});

test('delivers publications from another client and from the backend API, in order', async (t) => {
  const sub = client(WS, { token: env('WSGATE_TOKEN_1') });
  const pub = client(WS, { token: env('WSGATE_TOKEN_2') });
  t.after(() => {
    sub.close();
    pub.close();
  });
  await Promise.all([sub.connect(), pub.connect()]);
  const group = uniqueGroup('chat');
  const got = [];
  const reply = await sub.subscribe(group, (data, message) => got.push([data, message.group]));
  assert.equal(reply.type, 'subscribed');

  const published = await pub.publish(group, { text: 'hello', n: 0 });
  assert.equal(published.type, 'published');
  assert.equal(published.group, group);
  for (let n = 1; n <= 20; n++) await publish(API, group, { n });
  await waitFor('21 messages', () => got.length >= 21);
  assert.deepEqual(got[0], [{ text: 'hello', n: 0 }, group]);
  assert.deepEqual(
    got.slice(1).map(([d]) => d.n),
    Array.from({ length: 20 }, (_, i) => i + 1),
  );

  // The auto-joined user group reaches the `message` event.
  const userMessage = nextEvent(sub, 'message', 5000, (m) => m.group === 'user.js-1');
  await publish(API, 'user.js-1', { note: 'for you' });
  assert.deepEqual((await userMessage).data, { note: 'for you' });

  // After unsubscribe, nothing more arrives for the group.
  await sub.unsubscribe(group);
  await publish(API, group, { n: 99 });
  await sub.ping(); // a round trip after the publish
  await sleep(100);
  assert.equal(got.length, 21);

  // Publishing while not connected is refused locally.
  pub.close();
  await assert.rejects(pub.publish(group, {}), (e) => e.code === 'not_connected');
});

test('an unsubscribed the server sends unasked ends the subscription', async (t) => {
  const c = client(WS, { token: env('WSGATE_TOKEN_1') });
  t.after(() => c.close());
  await c.connect();
  const group = uniqueGroup('revoked');
  const kept = uniqueGroup('kept');
  const got = [];
  await c.subscribe(group, (data) => got.push(data));
  await c.subscribe(kept, () => {});
  const ended = nextEvent(c, 'unsubscribed');
  const errors = [];
  c.on('error', (e) => errors.push(e));
  // The backend takes user js-1 out of the group.
  await apiPost(API, '/api/v1/unsubscribe', { user_id: 'js-1', group });
  assert.deepEqual(await ended, { group });
  await publish(API, group, { n: 1 });
  await c.ping();
  await sleep(100);
  assert.deepEqual(got, []);
  // Forgotten: subscribing again sends a new subscribe (not the old promise).
  const again = await c.subscribe(group, (data) => got.push(data));
  assert.equal(again.type, 'subscribed');
  await publish(API, group, { n: 2 });
  await waitFor('the message after resubscribing', () => got.length === 1);
  assert.deepEqual(got, [{ n: 2 }]);
  // An unsubscribed for a group the client is not in changes nothing.
  await apiPost(API, '/api/v1/unsubscribe', { user_id: 'js-1', group: uniqueGroup('none') });
  await c.ping();
  assert.deepEqual(errors, []);
});

test('a refused token (4003) emits unauthorized and is never retried', async (t) => {
  const proxy = new TcpProxy(new URL(WS).host);
  const url = await proxy.start();
  const c = client(url, { token: 'wsg_not-a-real-token-not-a-real-token-00000000', minDelay: 50, maxDelay: 100 });
  t.after(async () => {
    c.close();
    await proxy.close();
  });
  const unauthorized = nextEvent(c, 'unauthorized');
  const connectings = [];
  c.on('state', (s) => s === 'connecting' && connectings.push(s));
  await assert.rejects(c.connect(), (e) => e.code === 'unauthorized');
  assert.deepEqual(await unauthorized, { code: 4003, reason: 'authentication failed', afterRefresh: false });
  assert.equal(c.state, 'unauthorized');
  // Ten backoff periods later: still the one attempt.
  await sleep(1000);
  assert.equal(proxy.accepted, 1, 'connections made to the server');
  assert.equal(connectings.length, 1);
  assert.equal(c.state, 'unauthorized');
});

test('after unauthorized, connect() again asks getToken for a new token', async (t) => {
  const tokens = ['wsg_expired-token-expired-token-expired-00000000', env('WSGATE_TOKEN_2')];
  let calls = 0;
  const c = client(WS, { getToken: async () => tokens[calls++] });
  t.after(() => c.close());
  await assert.rejects(c.connect(), (e) => e.code === 'unauthorized');
  // A subscription made meanwhile is sent once connected.
  const group = uniqueGroup('later');
  const ready = c.subscribe(group, () => {});
  const welcome = await c.connect();
  assert.equal(welcome.user_id, 'js-2');
  assert.equal(calls, 2);
  assert.equal((await ready).group, group);
});
