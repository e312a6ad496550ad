// The demo page in Debian's Chromium, driven by playwright-core (run by
// tests/browser.rs against a `wsgate demo` process): the status badge goes to
// connected, prices move, switching symbols unsubscribes one and subscribes
// another, and a screenshot is saved. The page runs the client file of the
// npm package (tests/browser.rs packs it), which the demo serves as it is.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { chromium } from 'playwright-core';

const DEMO_URL = process.env.WSGATE_DEMO_URL;
const SCREENSHOT = process.env.WSGATE_SCREENSHOT;
const CHROMIUM = process.env.WSGATE_CHROMIUM || '/usr/bin/chromium';
const PACKED_CLIENT = process.env.WSGATE_PACKED_CLIENT;

test('the demo serves the packed client, byte for byte', async () => {
  assert.ok(DEMO_URL && PACKED_CLIENT, 'run through `cargo test --test browser`');
  const resp = await fetch(`${DEMO_URL}/wsgate.js`);
  assert.equal(resp.status, 200);
  assert.ok(Buffer.from(await resp.arrayBuffer()).equals(readFileSync(PACKED_CLIENT)), 'demo /demo/wsgate.js = package/wsgate.js');
});

test('the demo page connects, shows live prices and switches symbols', async (t) => {
  assert.ok(DEMO_URL && SCREENSHOT, 'run through `cargo test --test browser`');
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  // The page imports the client from the npm tarball's file.
  const packed = readFileSync(PACKED_CLIENT, 'utf8');
  let servedPacked = 0;
  await page.route('**/demo/wsgate.js', (route) => {
    servedPacked += 1;
    return route.fulfill({ contentType: 'text/javascript; charset=utf-8', body: packed });
  });
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => m.type() === 'error' && problems.push(`console error: ${m.text()} (${m.location().url})`));
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));

  await page.goto(DEMO_URL);

  // The badge goes to connected.
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 10000 });
  assert.equal(await page.textContent('#status'), 'connected');
  assert.match(await page.textContent('#node'), /user demo/);
  // The token went in the first frame, not in the URL.
  assert.equal(sockets.length, 1);
  assert.equal(new URL(sockets[0]).search, '', `socket URL ${sockets[0]}`);

  // AAPL is on the default watchlist: it gets a price, then a different one.
  const aapl = 'tr[data-symbol="AAPL"]';
  const first = await waitForPrice(page, 'AAPL');
  // Every watched row was filled at once, by its snapshot.
  await page.waitForFunction(() => [...document.querySelectorAll('#ticker tbody tr')].every((tr) => tr.dataset.filledBy));
  const filledBy = await page.$$eval('#ticker tbody tr', (trs) => trs.map((tr) => tr.dataset.filledBy));
  assert.deepEqual(filledBy, filledBy.map(() => 'snapshot'), `rows filled by ${filledBy}`);
  await page.waitForFunction(
    ([sel, p]) => {
      const text = document.querySelector(`${sel} td.price`)?.textContent;
      return text && text !== p;
    },
    [aapl, first],
    { timeout: 15000 },
  );
  assert.match(await page.textContent(`${aapl} td.change`), /^[+-]?\d+\.\d\d \([+-]?\d+\.\d\d%\)$/);
  // Updates per second is measured.
  await page.waitForFunction((sel) => Number(document.querySelector(`${sel} td.rate`).textContent) > 0, aapl);

  // Switch symbols: drop AAPL, add XOM (not on the default watchlist).
  assert.equal(await page.locator('tr[data-symbol="XOM"]').count(), 0);
  await page.uncheck('#picker input[value="AAPL"]');
  await page.waitForSelector(aapl, { state: 'detached' });
  await page.check('#picker input[value="XOM"]');
  const xomPrice = await waitForPrice(page, 'XOM');
  assert.match(xomPrice, /^\d+\.\d\d$/);
  // Subscribed with latest: the row was filled by the group's snapshot, not
  // by waiting for a tick (the demo publishes every opening price first).
  assert.equal(await page.getAttribute('tr[data-symbol="XOM"]', 'data-filled-by'), 'snapshot');
  await page.waitForFunction(() => Number(document.querySelector('tr[data-symbol="XOM"]').dataset.ticks) >= 2, null, {
    timeout: 15000,
  });
  // The client agrees: subscribed to XOM, no longer to AAPL.
  const groups = await page.evaluate(() => window.wsgateDemo.client.subscriptions().map((s) => s.group));
  assert.ok(groups.includes('market.XOM'), `subscriptions: ${groups}`);
  assert.ok(!groups.includes('market.AAPL'), `subscriptions: ${groups}`);
  // ... and the server stopped sending AAPL: no AAPL row comes back.
  assert.equal(await page.locator(aapl).count(), 0);

  // Every watched row has a price before the picture is taken.
  await page.waitForFunction(
    () => [...document.querySelectorAll('#ticker tbody tr')].every((tr) => Number(tr.dataset.ticks) >= 2),
    null,
    { timeout: 20000 },
  );
  mkdirSync(dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  assert.deepEqual(problems, []);
  assert.equal(servedPacked, 1, 'the page loaded the packed client');
});

/** Waits for a symbol's row to show a price; returns its text. */
async function waitForPrice(page, symbol) {
  const cell = `tr[data-symbol="${symbol}"] td.price`;
  await page.waitForFunction((sel) => /^\d+\.\d\d$/.test(document.querySelector(sel)?.textContent || ''), cell, {
    timeout: 15000,
  });
  return page.textContent(cell);
}
