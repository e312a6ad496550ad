// examples/django/frontend/marketFeed.js (the logic of MarketTicker.vue)
// against a real wsgate node; run by tests/vue_example.rs, which copies
// marketFeed.js and clients/js/wsgate.js next to this file.
import assert from 'node:assert/strict';
import { createMarketFeed } from './marketFeed.js';

const { WS_URL, API_URL, API_KEY, TOKEN_1, TOKEN_2 } = process.env;

// Every socket the client opens, so the test can drop one.
const sockets = [];
class TrackedWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    sockets.push(this);
  }
}

const statuses = [];
const prices = [];
const status = () => statuses.at(-1);

async function until(what, predicate, ms = 8000) {
  const end = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > end) {
      throw new Error(`timed out waiting for ${what}: statuses ${statuses.join(' > ')}, prices ${JSON.stringify(prices)}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function api(method, path, body) {
  const r = await fetch(`${API_URL}${path}`, {
    method,
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: body && JSON.stringify(body),
  });
  assert.ok(r.ok, `${method} ${path}: ${r.status}`);
  return r.json();
}

const publish = (symbol, price) => api('POST', '/api/v1/publish', { group: `market.${symbol}`, data: { symbol, price } });
const members = async (symbol) =>
  (await api('GET', `/api/v1/groups/market.${symbol}/presence`)).members.map((m) => m.user_id).sort();

// Publishes until the feed reports the price (a subscription may still be
// on its way when the status turns live).
async function delivered(symbol, price) {
  await until(`${symbol} at ${price}`, async () => {
    if (prices.some(([s, p]) => s === symbol && p === price)) return true;
    await publish(symbol, price);
    await new Promise((r) => setTimeout(r, 50));
    return prices.some(([s, p]) => s === symbol && p === price);
  });
}

const feed = createMarketFeed({
  wsUrl: WS_URL,
  auth: { token: TOKEN_1 },
  symbols: ['AAPL'],
  onStatus: (s) => statuses.push(s),
  onPrice: (symbol, price) => prices.push([symbol, price]),
  clientOptions: { WebSocket: TrackedWebSocket, minDelay: 50, maxDelay: 200 },
});

// 1. First connection: live, ticks arrive.
await until('live', () => status() === 'live');
await delivered('AAPL', 1);
assert.deepEqual(await members('AAPL'), ['u1']);

// 2. The connection drops: reconnecting, then live again (the old component
// stayed on "reconnecting"), and AAPL flows again after the resubscription.
const first = sockets.at(-1);
first.close(4000, 'test drop');
await until('reconnecting', () => statuses.includes('reconnecting'));
await until('live after the reconnect', () => status() === 'live' && sockets.length >= 2);
await delivered('AAPL', 2);

// 3. The symbol list changes: MSFT added, AAPL removed.
feed.setSymbols(['MSFT']);
await delivered('MSFT', 3);
await until('AAPL unsubscribed', async () => (await members('AAPL')).length === 0);
const before = prices.length;
await publish('AAPL', 99);
await new Promise((r) => setTimeout(r, 300));
assert.ok(!prices.slice(before).some(([s]) => s === 'AAPL'), 'no AAPL after it was removed');

// 4. Logout (the token revoked): "logged out"; re-login with another user's
// token: live again as that user, on the current symbol list.
await api('POST', '/api/v1/revoke', { token: TOKEN_1 });
await until('logged out', () => status() === 'logged out');
feed.setAuth({ token: TOKEN_2 });
await until('live after re-login', () => status() === 'live');
await delivered('MSFT', 4);
assert.deepEqual(await members('MSFT'), ['u2']);

feed.close();
await until('MSFT empty after close', async () => (await members('MSFT')).length === 0);
console.log(`ok: ${statuses.join(' > ')}`);
