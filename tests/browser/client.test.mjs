// The packed JavaScript client in Debian's Chromium, against the node of a
// `wsgate demo` process (run by tests/browser.rs, which packs the client):
// what only a browser has. Going offline stops the socket's traffic without
// closing it (a half-open socket); the client's `offline` listener probes at
// once and drops it when no pong comes; `online` ends the backoff wait. And
// token refresh with getToken's `{token, expiresAt}`, plus JWT decoding with
// the browser's own atob and TextDecoder.
//
// Each test runs on a page of the demo's origin that runs nothing but the
// client: the demo's /demo/config (a JSON document). The demo page itself
// would run a second client; a page made up by the test (route.fulfill)
// would count as public, and Chromium's local network access checks would
// block its WebSocket to loopback.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const DEMO_URL = process.env.WSGATE_DEMO_URL;
const CHROMIUM = process.env.WSGATE_CHROMIUM || '/usr/bin/chromium';
const PACKED_CLIENT = process.env.WSGATE_PACKED_CLIENT;

let browser;
before(async () => {
  assert.ok(DEMO_URL && PACKED_CLIENT, 'run through `cargo test --test browser`');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
});
after(() => browser?.close());

/** A context and a page at the demo's origin without scripts, where /demo/wsgate.js is the packed file. */
async function clientPage(t) {
  const context = await browser.newContext();
  t.after(() => context.close());
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  const packed = readFileSync(PACKED_CLIENT, 'utf8');
  await page.route('**/demo/wsgate.js', (route) =>
    route.fulfill({ contentType: 'text/javascript; charset=utf-8', body: packed }),
  );
  await page.goto(`${DEMO_URL}/config`);
  return { context, page, problems };
}

test('offline: the probe drops the silent socket within pongTimeout; online: reconnects at once', async (t) => {
  const { context, page, problems } = await clientPage(t);
  await page.evaluate(async () => {
    const { WsgateClient } = await import('/demo/wsgate.js');
    const log = [];
    const client = new WsgateClient(`ws://${location.host}/ws`, {
      getToken: async () => (await (await fetch('/demo/token', { cache: 'no-store' })).json()).token,
      // A minute between idle pings, and a long backoff: only the offline
      // probe can drop the socket quickly, only `online` can end the wait.
      pingInterval: 60000,
      pongTimeout: 1000,
      minDelay: 20000,
      maxDelay: 30000,
    });
    for (const event of ['connected', 'disconnected', 'recovered']) {
      client.on(event, (info) => log.push({ event, ...(event === 'connected' ? {} : info), at: Date.now() }));
    }
    client.on('error', (e) => log.push({ event: 'error', code: e.code, at: Date.now() })); // getToken while offline
    window.probe = { client, log, ticks: 0 };
    await client.connect();
    await client.subscribe('market.AAPL', () => window.probe.ticks++);
  });
  await page.waitForFunction(() => window.probe.ticks >= 2, null, { timeout: 15000 });
  const events = (name) => page.evaluate((n) => window.probe.log.filter((e) => e.event === n), name);

  const offlineAt = Date.now();
  await context.setOffline(true);
  await page.waitForFunction(() => window.probe.log.some((e) => e.event === 'disconnected'), null, { timeout: 5000 });
  const [drop] = await events('disconnected');
  assert.equal(drop.code, 1006);
  assert.match(drop.reason, /^heartbeat timeout/);
  assert.equal(drop.reconnect, true);
  assert.ok(drop.at - offlineAt < 2500, `dropped ${drop.at - offlineAt} ms after going offline`);
  assert.ok(drop.delay >= 10000, `then waits ${drop.delay} ms`);
  assert.equal(await page.evaluate(() => window.probe.client.state), 'reconnecting');

  const onlineAt = Date.now();
  const ticks = await page.evaluate(() => window.probe.ticks);
  await context.setOffline(false);
  await page.waitForFunction(() => window.probe.log.some((e) => e.event === 'recovered'), null, { timeout: 5000 });
  const connects = await events('connected');
  assert.equal(connects.length, 2);
  assert.ok(connects[1].at - onlineAt < 3000, `reconnected ${connects[1].at - onlineAt} ms after going online`);
  const [recovered] = await events('recovered');
  assert.equal(recovered.group, 'market.AAPL');
  assert.equal(recovered.recovered, true, 'the ticks missed while offline were replayed');
  await page.waitForFunction((n) => window.probe.ticks > n, ticks, { timeout: 10000 });
  assert.deepEqual(problems, []);
});

test('token refresh on the open connection, and JWT exp read in the browser', async (t) => {
  const { page, problems } = await clientPage(t);
  const exp = Math.floor(Date.now() / 1000) + 600;
  const claims = Buffer.from(JSON.stringify({ sub: 'ü', exp, iat: exp - 900, x: '>>??' })).toString('base64url');
  const jwt = `eyJhbGciOiJub25lIn0.${claims}.sig`;
  const result = await page.evaluate(async (token) => {
    const { WsgateClient, tokenInfo } = await import('/demo/wsgate.js');
    const decoded = tokenInfo(token);
    const refreshes = [];
    const disconnects = [];
    let asked = 0;
    const client = new WsgateClient(`ws://${location.host}/ws`, {
      // The demo token lives a day; announced as one for 1.5 s, it is sent
      // again as `refresh` every 1.2 s.
      getToken: async () => {
        asked += 1;
        const { token: t } = await (await fetch('/demo/token', { cache: 'no-store' })).json();
        return { token: t, expiresAt: Date.now() + 1500 };
      },
    });
    client.on('refreshed', (info) => refreshes.push(info));
    client.on('disconnected', (info) => disconnects.push(info));
    const welcome = await client.connect();
    await new Promise((resolve) => setTimeout(resolve, 3000));
    const out = {
      decoded,
      refreshes: refreshes.length,
      asked,
      disconnects: [...disconnects],
      sameWelcome: client.welcome === welcome,
      state: client.state,
      pong: (await client.ping()).type,
    };
    client.close();
    return out;
  }, jwt);
  assert.equal(result.decoded.expiresAt, exp * 1000);
  assert.equal(result.decoded.issuedAt, (exp - 900) * 1000);
  assert.ok(result.refreshes >= 2, `refreshes: ${result.refreshes}`);
  // The first token, one per refresh, and perhaps one whose refresh is under way.
  assert.ok(result.asked - result.refreshes - 1 <= 1, `asked ${result.asked} times for ${result.refreshes} refreshes`);
  assert.deepEqual(result.disconnects, []);
  assert.equal(result.sameWelcome, true);
  assert.equal(result.state, 'connected');
  assert.equal(result.pong, 'pong');
  assert.deepEqual(problems, []);
});

// The Vue example's logic (examples/django/frontend/marketFeed.js, what
// MarketTicker.vue runs) in the browser: the status follows every state (the
// old component stayed on "reconnecting" after its first reconnect), the
// symbol list changes what arrives, and a re-login reconnects with the new
// token. The demo's feed supplies the ticks (40 a second over its symbols).
test('Vue example logic: live again after a reconnect, symbol changes, re-login', async (t) => {
  const { context, page, problems } = await clientPage(t);
  const feedSource = readFileSync(new URL('../../examples/django/frontend/marketFeed.js', import.meta.url), 'utf8');
  // marketFeed.js imports './wsgate.js': served at /demo/, next to the packed client.
  await page.route('**/demo/marketFeed.js', (route) =>
    route.fulfill({ contentType: 'text/javascript; charset=utf-8', body: feedSource }),
  );
  await page.evaluate(async () => {
    const { createMarketFeed } = await import('/demo/marketFeed.js');
    const token = async () => (await (await fetch('/demo/token', { cache: 'no-store' })).json()).token;
    const state = { statuses: [], prices: [], tokens: 0 };
    const getToken = async () => {
      state.tokens++;
      return token();
    };
    window.feed = createMarketFeed({
      wsUrl: `ws://${location.host}/ws`,
      auth: { getToken },
      symbols: ['AAPL'],
      onStatus: (s) => state.statuses.push(s),
      onPrice: (symbol, price) => state.prices.push({ symbol, price, at: Date.now() }),
      clientOptions: { pingInterval: 60000, pongTimeout: 1000, minDelay: 100, maxDelay: 300 },
    });
    window.state = state;
    window.getToken = getToken;
  });
  const status = () => page.evaluate(() => window.state.statuses.at(-1));
  const priced = (symbol, since) =>
    page.waitForFunction(
      ([s, t]) => window.state.prices.some((p) => p.symbol === s && p.at > t),
      [symbol, since],
      { timeout: 10000 },
    );

  // 1. Live, AAPL ticks.
  await page.waitForFunction(() => window.state.statuses.at(-1) === 'live', null, { timeout: 10000 });
  await priced('AAPL', 0);

  // 2. The network goes away and comes back: reconnecting, then live again.
  await context.setOffline(true);
  await page.waitForFunction(() => window.state.statuses.includes('reconnecting'), null, { timeout: 5000 });
  await context.setOffline(false);
  await page.waitForFunction(
    () => window.state.statuses.lastIndexOf('live') > window.state.statuses.indexOf('reconnecting'),
    null,
    { timeout: 10000 },
  );
  const back = await page.evaluate(() => Date.now());
  await priced('AAPL', back);

  // 3. The symbol list changes: MSFT arrives, AAPL stops.
  await page.evaluate(() => window.feed.setSymbols(['MSFT']));
  const changed = await page.evaluate(() => Date.now());
  await priced('MSFT', changed);
  await new Promise((r) => setTimeout(r, 500)); // an AAPL tick in flight may still land
  const settled = await page.evaluate(() => Date.now());
  await new Promise((r) => setTimeout(r, 1500));
  const lateAapl = await page.evaluate((t) => window.state.prices.filter((p) => p.symbol === 'AAPL' && p.at > t).length, settled);
  assert.equal(lateAapl, 0, 'no AAPL after it was removed');

  // 4. Re-login: a new connection with a new token, live again, on MSFT.
  const tokensBefore = await page.evaluate(() => window.state.tokens);
  await page.evaluate(() => window.feed.setAuth({ getToken: window.getToken }));
  const relogin = await page.evaluate(() => Date.now());
  await page.waitForFunction((n) => window.state.tokens > n, tokensBefore, { timeout: 5000 });
  await page.waitForFunction(() => window.state.statuses.at(-1) === 'live', null, { timeout: 10000 });
  await priced('MSFT', relogin);
  assert.equal(await status(), 'live');
  await page.evaluate(() => window.feed.close());
  assert.deepEqual(problems, []);
});
