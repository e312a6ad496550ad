// The logic of MarketTicker.vue, without Vue: a wsgate connection that
// follows the token (re-login), the symbol list, and the connection state,
// including after reconnects. tests/vue_example.rs runs it in Node.js
// against a real wsgate node.
//
// wsgate.js is clients/js/wsgate.js of the wsgate repository: copy it next
// to this file or import it from the package.
import { WsgateClient } from './wsgate.js';

// The client's states (its `state` event) as the component shows them.
const STATUS = {
  connecting: 'connecting',
  connected: 'live',
  reconnecting: 'reconnecting',
  unauthorized: 'logged out',
  disconnected: 'offline',
};

/**
 * getToken for session-cookie users: POSTs Django's /api/ws-token/ (with the
 * CSRF cookie as X-CSRFToken) before every connection and before the token
 * expires. See examples/django/README.md, "Session-cookie users".
 */
export function sessionToken(url = '/api/ws-token/') {
  return async () => {
    const csrf = globalThis.document?.cookie.match(/(?:^|; )csrftoken=([^;]*)/)?.[1] ?? '';
    const r = await fetch(url, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'X-CSRFToken': decodeURIComponent(csrf) },
    });
    if (!r.ok) throw new Error(`${url}: ${r.status}`);
    const { token, expires_in: expiresIn } = await r.json();
    return { token, expiresAt: Date.now() + expiresIn * 1000 };
  };
}

/**
 * @param {object} o
 * @param {string} o.wsUrl
 * @param {object} o.auth  `{token}` (a DRF token) or `{getToken}` (e.g. sessionToken())
 * @param {string[]} o.symbols
 * @param {(status: string) => void} o.onStatus  connecting, live, reconnecting, logged out, offline
 * @param {(symbol: string, price: number) => void} o.onPrice
 * @param {object} [o.clientOptions]  more WsgateClient options
 */
export function createMarketFeed({ wsUrl, auth, symbols = [], onStatus, onPrice, clientOptions = {} }) {
  let client = null;
  let wanted = new Set(symbols);

  const subscribe = (c, symbol) =>
    c
      .subscribe(`market.${symbol}`, (data) => {
        // The same message whether Django used the HTTP API, a Redis PUBLISH
        // or channel_layer.group_send: {"symbol": "AAPL", "price": 189.5}.
        if (c === client) onPrice(data.symbol, data.price);
      })
      .catch(() => {}); // closed or refused: the state says why

  function open(newAuth) {
    const old = client;
    client = null;
    old?.close();
    const c = new WsgateClient(wsUrl, { ...clientOptions, ...newAuth });
    client = c;
    // Every state change, not only the first connect: after a reconnect the
    // status goes back to "live".
    c.on('state', (state) => {
      if (c === client) onStatus(STATUS[state] ?? state);
    });
    for (const symbol of wanted) subscribe(c, symbol);
    c.connect().catch(() => {}); // unauthorized / closed: reported through `state`
  }

  open(auth);
  return {
    /** A new token (re-login, or a new getToken): a new connection. */
    setAuth(newAuth) {
      open(newAuth);
    },
    /** Subscribes to the symbols added, unsubscribes from those removed. */
    setSymbols(list) {
      const next = new Set(list);
      for (const symbol of wanted) {
        if (!next.has(symbol)) client.unsubscribe(`market.${symbol}`).catch(() => {});
      }
      for (const symbol of next) if (!wanted.has(symbol)) subscribe(client, symbol);
      wanted = next;
    },
    close() {
      const c = client;
      client = null;
      c?.close();
    },
  };
}
