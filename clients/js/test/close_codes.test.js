// Close codes that say the client is at fault (docs/protocol.md, section 7:
// "fix the client") are not retried and are not `unauthorized` (started by
// tests/js_client.rs). The node really sends them: 4001 for a first frame
// without a token, and 1002 and 1007 for frames that a proxy corrupts on
// their way (a reserved bit set; a text frame that is not UTF-8).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TcpProxy, client, env, nextEvent, sleep } from './helpers.js';

const WS = env('WSGATE_EMBEDDED_WS');

async function proxied(t, options) {
  const proxy = new TcpProxy(new URL(WS).host);
  const c = client(await proxy.start(), { minDelay: 50, maxDelay: 100, ...options });
  t.after(async () => {
    c.close();
    await proxy.close();
  });
  const seen = { unauthorized: [], errors: [], disconnects: [] };
  c.on('unauthorized', (i) => seen.unauthorized.push(i));
  c.on('error', (e) => seen.errors.push(e));
  c.on('disconnected', (i) => seen.disconnects.push(i));
  return { proxy, c, seen };
}

test('4001 (a first frame without a token: getToken answered the wrong shape) is a client bug', async (t) => {
  const { proxy, c, seen } = await proxied(t, { getToken: async () => ({ accessToken: env('WSGATE_TOKEN_1') }) });
  await assert.rejects(c.connect(), (e) => e.code === 'protocol_error' && /4001/.test(e.message));
  await sleep(1000); // ten backoff periods
  assert.equal(proxy.accepted, 1, 'connections made: no retry');
  assert.deepEqual(seen.unauthorized, [], 'not unauthorized: a new token would not help');
  assert.deepEqual(
    seen.disconnects.map((d) => [d.code, d.reconnect]),
    [[4001, false]],
  );
  assert.equal(seen.errors.length, 1);
  assert.equal(seen.errors[0].code, 'protocol_error');
  assert.match(seen.errors[0].message, /client/);
  assert.equal(c.state, 'disconnected');
});

for (const [kind, code] of [
  ['rsv', 1002],
  ['utf8', 1007],
]) {
  test(`${code} (a ${kind === 'rsv' ? 'reserved bit set' : 'text frame that is not UTF-8'}) is not retried`, async (t) => {
    const { proxy, c, seen } = await proxied(t, { token: env('WSGATE_TOKEN_1') });
    await c.connect();
    const disconnected = nextEvent(c, 'disconnected');
    proxy.mangleNext(kind);
    await assert.rejects(c.ping(), (e) => e.code === 'disconnected');
    const info = await disconnected;
    assert.equal(info.code, code);
    assert.equal(info.reconnect, false);
    await sleep(1000);
    assert.equal(proxy.accepted, 1, 'connections made: no retry');
    assert.deepEqual(seen.unauthorized, []);
    assert.deepEqual(
      seen.errors.map((e) => e.code),
      ['protocol_error'],
    );
    assert.equal(c.state, 'disconnected');
    // The app may connect again (here the bug was the proxy's).
    assert.equal((await c.connect()).user_id, 'js-1');
    assert.equal(proxy.accepted, 2);
  });
}
