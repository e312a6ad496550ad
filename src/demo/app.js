// The demo page: a ticker table fed by wsgate through the JavaScript client
// (served at /demo/wsgate.js from clients/js/wsgate.js).

import { WsgateClient } from '/demo/wsgate.js';

const WATCHLIST = ['AAPL', 'MSFT', 'NVDA', 'AMZN', 'GOOGL', 'META', 'TSLA', 'JPM'];
const RATE_WINDOW_MS = 3000;

const $ = (selector) => document.querySelector(selector);
const config = await (await fetch('/demo/config')).json();
const wsScheme = location.protocol === 'https:' ? 'wss' : 'ws';

// The demo server hands out its token at /demo/token, as an app's backend
// would (for example a DRF endpoint); getToken is asked before every connect.
const client = new WsgateClient(`${wsScheme}://${location.host}${config.ws_path}`, {
  getToken: async () => {
    const resp = await fetch('/demo/token', { cache: 'no-store' });
    if (!resp.ok) throw new Error(`token endpoint answered ${resp.status}`);
    return (await resp.json()).token;
  },
});
window.wsgateDemo = { client }; // for the browser console (and the browser test)

const rows = new Map(); // symbol -> { tr, stamps, ticks }
let total = 0;

client.on('state', (state) => {
  const badge = $('#status');
  badge.dataset.state = state;
  badge.textContent = state;
});
client.on('connected', (welcome) => {
  $('#node').textContent = `node ${welcome.node} · user ${welcome.user_id}`;
});
client.on('unauthorized', () => {
  // The demo token expired (24 h) or was revoked: fetch a new one shortly.
  setTimeout(() => client.connect().catch(() => {}), 3000);
});
client.on('recovered', ({ group, recovered }) => {
  // Ticks were lost while offline; the next tick repairs the row, but mark it.
  rows.get(group.slice('market.'.length))?.tr.classList.toggle('gap', !recovered);
});
client.on('error', (e) => console.warn('wsgate:', e));

function buildPicker() {
  const picker = $('#picker');
  for (const symbol of config.symbols) {
    const label = document.createElement('label');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.value = symbol;
    box.checked = WATCHLIST.includes(symbol);
    box.addEventListener('change', () => (box.checked ? watch(symbol) : unwatch(symbol)));
    label.append(box, symbol);
    picker.append(label);
  }
}

function watch(symbol) {
  if (rows.has(symbol)) return;
  const tr = document.createElement('tr');
  tr.dataset.symbol = symbol;
  tr.dataset.ticks = '0';
  tr.innerHTML = '<td class="symbol"></td><td class="price">…</td><td class="change"></td><td class="rate">0.0</td>';
  tr.querySelector('.symbol').textContent = symbol;
  rows.set(symbol, { tr, stamps: [], ticks: 0 });
  placeRows();
  client
    // latest: the row shows the last price at once, not "…" until the next tick.
    .subscribe(`market.${symbol}`, (tick, msg) => update(symbol, tick, msg.snapshot === true), { latest: true })
    .catch((e) => {
      // Still subscribed (the client renews it after unauthorized or a
      // reconnect) or already unwatched: nothing to undo.
      const group = `market.${symbol}`;
      if (!rows.has(symbol) || client.subscriptions().some((s) => s.group === group)) return;
      console.warn(`cannot subscribe to ${symbol}:`, e);
      const box = $(`#picker input[value="${symbol}"]`);
      if (box) box.checked = false;
      unwatch(symbol);
    });
}

function unwatch(symbol) {
  const row = rows.get(symbol);
  if (!row) return;
  rows.delete(symbol);
  row.tr.remove();
  placeRows();
  client.unsubscribe(`market.${symbol}`).catch((e) => console.warn(`unsubscribe ${symbol}:`, e));
}

// Rows in the order of the symbol list.
function placeRows() {
  const body = $('#ticker tbody');
  for (const symbol of config.symbols) {
    const row = rows.get(symbol);
    if (row) body.append(row.tr);
  }
  $('#empty').hidden = rows.size > 0;
}

function update(symbol, tick, snapshot) {
  const row = rows.get(symbol);
  if (!row) return;
  const price = row.tr.querySelector('.price');
  const previous = Number(price.dataset.value);
  price.textContent = tick.price.toFixed(2);
  price.dataset.value = String(tick.price);
  if (!Number.isNaN(previous) && previous !== tick.price) {
    const cls = tick.price > previous ? 'flash-up' : 'flash-down';
    price.classList.add(cls);
    setTimeout(() => price.classList.remove(cls), 250);
  }
  const change = row.tr.querySelector('.change');
  const sign = tick.change > 0 ? '+' : '';
  change.textContent = `${sign}${tick.change.toFixed(2)} (${sign}${tick.change_pct.toFixed(2)}%)`;
  change.className = `change ${tick.change > 0 ? 'up' : tick.change < 0 ? 'down' : ''}`;
  // What filled the row first: its snapshot on subscribe, or a live tick.
  row.tr.dataset.filledBy ??= snapshot ? 'snapshot' : 'tick';
  if (snapshot) return; // the value when we subscribed, not a tick
  row.ticks += 1;
  row.tr.dataset.ticks = String(row.ticks);
  row.stamps.push(performance.now());
  $('#total').textContent = String(++total);
}

// Updates per second over the last few seconds.
setInterval(() => {
  const since = performance.now() - RATE_WINDOW_MS;
  for (const row of rows.values()) {
    while (row.stamps.length && row.stamps[0] < since) row.stamps.shift();
    row.tr.querySelector('.rate').textContent = (row.stamps.length / (RATE_WINDOW_MS / 1000)).toFixed(1);
  }
}, 500);

buildPicker();
for (const symbol of WATCHLIST) watch(symbol);
client.connect().catch((e) => console.warn('wsgate connect:', e));
