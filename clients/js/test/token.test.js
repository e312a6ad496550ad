// Token refresh without reconnecting (started by tests/js_client.rs): the
// embedded node and the JWT node re-validate tokens every 500 ms, so a
// connection whose token expires is closed with 4003 unless the client sent
// a new one with `refresh` in time. Native tokens come from `wsgate token
// issue --ttl` (getToken answers `{token, expiresAt}`); JWTs carry `exp`.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { refreshDelay, tokenInfo } from '../wsgate.js';
import { TcpProxy, client, env, issueToken, jwt, nextEvent, publish, sleep, uniqueGroup, waitFor } from './helpers.js';

const WS = env('WSGATE_EMBEDDED_WS');
const API = env('WSGATE_EMBEDDED_API');
const JWT_WS = env('WSGATE_JWT_WS');
const JWT_API = env('WSGATE_JWT_API');

test('getToken answers: a string, {token, expiresAt}, or a JWT whose exp is read', () => {
  assert.deepEqual(tokenInfo('wsg_abc'), { token: 'wsg_abc', expiresAt: undefined, issuedAt: undefined });
  assert.deepEqual(tokenInfo({ token: 't', expiresAt: 1700000000000 }), {
    token: 't',
    expiresAt: 1700000000000,
    issuedAt: undefined,
  });
  assert.equal(tokenInfo({ token: 't', expiresAt: new Date(1700000000000) }).expiresAt, 1700000000000);
  // A JWT: exp and iat in seconds; base64url (- and _), no padding; the
  // signature is not checked.
  const token = jwt({ sub: 'ü>?~', iat: 1700000000, exp: 1700000600, pad: '??>>' });
  assert.match(token.split('.')[1], /[-_]/, 'the payload uses base64url characters');
  assert.deepEqual(tokenInfo(token), { token, expiresAt: 1700000600000, issuedAt: 1700000000000 });
  // An explicit expiresAt wins over the JWT's.
  assert.equal(tokenInfo({ token, expiresAt: 5 }).expiresAt, 5);
  // Not JWTs: no expiry.
  for (const t of ['a.b.c', 'x.eyJleHAiOjF9', `${token}.more`, 'a.!!!.c']) {
    assert.equal(tokenInfo(t).expiresAt, undefined, t);
  }
  // A wrong answer is passed on as it is (the server closes with 4001).
  assert.equal(tokenInfo({ accessToken: 'x' }).token, undefined);
});

test('refresh timing: 80% of the remaining lifetime, bounded by a JWT\'s own lifetime', () => {
  const now = 1_000_000_000_000;
  assert.equal(refreshDelay({ expiresAt: now + 10_000 }, now), 8_000);
  assert.equal(refreshDelay({ expiresAt: now + 3_600_000 }, now), 2_880_000);
  // At least a second.
  assert.equal(refreshDelay({ expiresAt: now + 500 }, now), 1_000);
  // Expired by this clock, and nothing to say the clock is wrong.
  assert.equal(refreshDelay({ expiresAt: now - 1 }, now), null);
  // A JWT with iat: a clock 10 minutes behind would see 20 minutes left of a
  // 10-minute token; the lifetime bounds it.
  const issued = { issuedAt: now + 600_000, expiresAt: now + 1_200_000 };
  assert.equal(refreshDelay(issued, now), 480_000);
  // A clock 20 minutes ahead sees the fresh token as expired: the lifetime again.
  assert.equal(refreshDelay({ issuedAt: now - 1_200_000, expiresAt: now - 600_000 }, now), 480_000);
});

test('without a refresh the node closes a connection whose token expired (4003)', async (t) => {
  // The control for the next test: a token whose expiry the client is not
  // told (getToken answers a bare string), so it never refreshes.
  const { token } = await issueToken('js-ttl', 1500);
  const c = client(WS, { getToken: async () => token });
  t.after(() => c.close());
  const unauthorized = nextEvent(c, 'unauthorized', 6000);
  await c.connect();
  assert.equal(c.tokenExpiresAt, null);
  const info = await unauthorized;
  assert.equal(info.code, 4003);
  assert.equal(info.afterRefresh, false);
  assert.equal(c.state, 'unauthorized');
});

test('a native token is refreshed before it expires, on the same connection', async (t) => {
  const TTL = 4000;
  const asked = [];
  const c = client(WS, {
    getToken: async (context) => {
      asked.push(context.refresh);
      return issueToken('js-ttl', TTL);
    },
  });
  t.after(() => c.close());
  const refreshed = [];
  const disconnects = [];
  c.on('refreshed', (info) => refreshed.push(info));
  c.on('disconnected', (info) => disconnects.push(info));
  const welcome = await c.connect();
  const group = uniqueGroup('ttl');
  const got = [];
  await c.subscribe(group, (d) => got.push(d.n));
  const firstExpiry = c.tokenExpiresAt;
  assert.ok(firstExpiry > Date.now() && firstExpiry <= Date.now() + TTL, `expiry ${firstExpiry}`);

  // Over two and a half lifetimes of a token: at least two refreshes (at 80%
  // of each token's lifetime), no disconnect, the same session.
  await sleep(TTL * 2.5);
  assert.deepEqual(disconnects, []);
  assert.equal(c.state, 'connected');
  assert.ok(refreshed.length >= 2, `refreshes: ${refreshed.length}`);
  assert.deepEqual(asked, [false, ...refreshed.map(() => true)], 'getToken was told it was asked for a refresh');
  assert.ok(refreshed.every((r, i) => r.expiresAt > (i ? refreshed[i - 1].expiresAt : firstExpiry)));
  assert.equal(c.tokenExpiresAt, refreshed.at(-1).expiresAt);
  assert.ok(Date.now() > firstExpiry + TTL, 'the first two tokens have expired');
  assert.deepEqual(c.welcome, welcome, 'no new welcome: the connection was never replaced');
  // The connection still has its groups.
  await publish(API, group, { n: 1 });
  await waitFor('a message after the refreshes', () => got.length === 1);
});

test('a refresh the node refuses (4003) emits unauthorized, afterRefresh, and is not retried', async (t) => {
  const proxy = new TcpProxy(new URL(WS).host);
  const url = await proxy.start();
  let calls = 0;
  const c = client(url, {
    getToken: async () => {
      calls += 1;
      if (calls === 2) return 'wsg_refused-refused-refused-refused-refused-000';
      // A token for a minute, announced as one for 1.5 s: refreshed at 1.2 s.
      const { token } = await issueToken('js-ttl', 60_000);
      return { token, expiresAt: Date.now() + 1500 };
    },
  });
  t.after(async () => {
    c.close();
    await proxy.close();
  });
  const states = [];
  c.on('state', (s) => states.push(s));
  await c.connect();
  const info = await nextEvent(c, 'unauthorized', 5000);
  assert.equal(info.code, 4003);
  assert.equal(info.afterRefresh, true);
  assert.equal(c.state, 'unauthorized');
  await sleep(1500);
  assert.equal(proxy.accepted, 1, 'connections made: no reconnect');
  assert.deepEqual(states, ['connecting', 'connected', 'unauthorized']);
  // Until the app connects again (with a good token).
  const welcome = await c.connect();
  assert.equal(welcome.user_id, 'js-ttl');
  assert.equal(calls, 3);
});

test('refreshToken() refreshes now; a refusal reply keeps the connection on its old token', async (t) => {
  let next = null;
  const c = client(WS, { getToken: async () => next ?? issueToken('js-ttl', 60_000) });
  t.after(() => c.close());
  await c.connect();
  const reply = await c.refreshToken();
  assert.equal(reply.type, 'refreshed');
  assert.equal(typeof reply.id, 'number');
  // An empty token is a bad request, not a reason to close.
  next = '';
  await assert.rejects(c.refreshToken(), (e) => e.code === 'bad_request');
  assert.equal(c.state, 'connected');
  assert.equal((await c.ping()).type, 'pong');
  // No getToken: nothing to refresh with.
  const fixed = client(WS, { token: 'wsg_x' });
  await assert.rejects(fixed.refreshToken(), (e) => e.code === 'no_get_token');
});

test('a JWT is refreshed before its exp, read from the token itself', async (t) => {
  const LIFETIME = 3; // seconds, the unit of exp
  let issued = 0;
  const c = client(JWT_WS, {
    getToken: async () => {
      issued += 1;
      const iat = Math.floor(Date.now() / 1000);
      return jwt({ sub: 'jwt-user', iat, exp: iat + LIFETIME, n: issued });
    },
  });
  t.after(() => c.close());
  const refreshed = [];
  const disconnects = [];
  c.on('refreshed', (info) => refreshed.push(info));
  c.on('disconnected', (info) => disconnects.push(info));
  const welcome = await c.connect();
  assert.equal(welcome.user_id, 'jwt-user');
  const firstExpiry = c.tokenExpiresAt;
  assert.equal(firstExpiry % 1000, 0, 'exp is in seconds');
  const group = uniqueGroup('jwt');
  const got = [];
  await c.subscribe(group, (d) => got.push(d.n));
  await sleep(LIFETIME * 1000 * 2.5);
  assert.deepEqual(disconnects, []);
  assert.ok(refreshed.length >= 2, `refreshes: ${refreshed.length}`);
  assert.ok(Date.now() > firstExpiry + 1000, 'the first token has expired');
  await publish(JWT_API, group, { n: 1 });
  await waitFor('a message after the refreshes', () => got.length === 1);

  // The control: the same JWT given as a fixed token is not refreshed, and
  // the node closes the connection once it expires.
  const iat = Math.floor(Date.now() / 1000);
  const fixed = client(JWT_WS, { token: jwt({ sub: 'jwt-user', iat, exp: iat + 2 }) });
  t.after(() => fixed.close());
  const unauthorized = nextEvent(fixed, 'unauthorized', 6000);
  await fixed.connect();
  assert.equal(fixed.tokenExpiresAt, (iat + 2) * 1000);
  assert.equal((await unauthorized).code, 4003);
});
