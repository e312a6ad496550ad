// wsgate browser and Node client: one dependency-free ES module.
//
// It speaks the wire protocol of shared/protocol.md: the token goes in the
// first frame (never the URL), every request carries an `id` whose reply
// settles the request's promise, and the close code decides whether and how
// soon to reconnect. After a reconnect every group is subscribed again with
// `since` (the last offset and epoch received), so a group with history loses
// nothing across the gap, and the app is told when the server could not
// recover (`recovered: false`) so it can reload its state.

/** A refused request (`error` reply) or a local failure, with a stable `code`. */
export class WsgateError extends Error {
  constructor(code, message, reply) {
    super(message || code);
    this.name = 'WsgateError';
    this.code = code;
    if (reply !== undefined) this.reply = reply;
  }
}

// Close codes after which reconnecting cannot help (section 4).
const AUTH_CODES = new Set([4001, 4003]);
const FATAL_CODES = new Set([1000, 1003, 1008, 1009]);
const DRAINING = 1012;

const DEFAULTS = {
  minDelay: 500, // first backoff step, ms
  maxDelay: 30000, // backoff ceiling, ms
  drainJitter: 1000, // after 1012: reconnect within [0, drainJitter) ms
  requestTimeout: 10000, // a request without reply rejects with `timeout`
};

export class WsgateClient {
  /**
   * @param {string | string[]} url  one URL (a load balancer), or several
   *   tried in turn, one per reconnect.
   * @param {object} options  `token` or `getToken`, and optionally
   *   `WebSocket`, `minDelay`, `maxDelay`, `drainJitter`, `requestTimeout`.
   */
  constructor(url, options = {}) {
    this._urls = Array.isArray(url) ? [...url] : [url];
    if (this._urls.length === 0) throw new TypeError('wsgate: no URL given');
    this._urlIndex = 0;
    this._opts = { ...DEFAULTS, ...options };
    if (typeof options.getToken !== 'function' && typeof options.token !== 'string') {
      throw new TypeError('wsgate: pass options.token (a string) or options.getToken (a function)');
    }
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new TypeError(
        'wsgate: no WebSocket implementation; pass options.WebSocket, ' +
          'or run Node 20 with --experimental-websocket (Node 22+ has it built in)',
      );
    }
    this._token = options.token;
    this._listeners = new Map();
    this._subs = new Map(); // group -> subscription
    this._pending = new Map(); // request id -> {resolve, reject, timer, kind}
    this._nextId = 1;
    this._ws = null;
    this._timer = null; // the pending reconnect
    this._generation = 0; // bumped by close(), so a stale _open() gives up
    this._attempt = 0; // failed attempts since the last welcome
    this._state = 'disconnected';
    this._welcome = null;
    this._connectWaiters = [];
  }

  /** `disconnected`, `connecting`, `connected`, `reconnecting` or `unauthorized`. */
  get state() {
    return this._state;
  }

  /** The last `welcome` frame, or null before the first one. */
  get welcome() {
    return this._welcome;
  }

  /** Replaces the static token (used from the next connection on). */
  setToken(token) {
    this._token = token;
  }

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  /**
   * Connects (and keeps reconnecting until `close()` or an auth failure).
   * Resolves with the `welcome` frame; rejects with code `unauthorized` or
   * `closed` if that happens first.
   */
  connect() {
    if (this._state === 'connected') return Promise.resolve(this._welcome);
    const waiter = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (this._state === 'disconnected' || this._state === 'unauthorized') {
      this._attempt = 0;
      this._open();
    }
    return waiter;
  }

  /** Closes for good (code 1000); subscriptions are forgotten. */
  close() {
    this._generation += 1;
    clearTimeout(this._timer);
    this._timer = null;
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      detach(ws);
      try {
        ws.close(1000, 'client closed');
      } catch {
        // already closing
      }
    }
    this._failRequests('closed', 'the client was closed');
    for (const sub of this._subs.values()) settleReady(sub, new WsgateError('closed', 'the client was closed'));
    this._subs.clear();
    this._settleConnect(new WsgateError('closed', 'the client was closed'));
    const wasOpen = this._state === 'connected';
    this._setState('disconnected');
    if (wasOpen) this._emit('disconnected', { code: 1000, reason: 'client closed', reconnect: false });
  }

  /**
   * Subscribes to `group`; `handler(data, message)` gets every message.
   * Resolves with the first `subscribed` reply (also when the client is not
   * connected yet: the subscription is sent once it is). The subscription is
   * renewed after every reconnect. `options.since` starts from a known
   * position; `options.onRecovered(info)` is called after each resubscription
   * with `since` (see the `recovered` event).
   */
  subscribe(group, handler, options = {}) {
    let sub = this._subs.get(group);
    if (sub) {
      sub.handler = handler;
      sub.onRecovered = options.onRecovered;
      return sub.ready;
    }
    sub = {
      group,
      handler,
      onRecovered: options.onRecovered,
      offset: options.since?.offset,
      epoch: options.since?.epoch,
      settle: null,
    };
    sub.ready = new Promise((resolve, reject) => {
      sub.settle = { resolve, reject };
    });
    this._subs.set(group, sub);
    if (this._state === 'connected') this._sendSubscribe(sub);
    return sub.ready;
  }

  /** Leaves `group`; resolves with the `unsubscribed` reply (at once when offline). */
  unsubscribe(group) {
    const sub = this._subs.get(group);
    this._subs.delete(group);
    if (sub) settleReady(sub, new WsgateError('unsubscribed', `unsubscribed from ${group}`));
    if (this._state !== 'connected') return Promise.resolve({ type: 'unsubscribed', group });
    return this._request({ type: 'unsubscribe', group });
  }

  /** Publishes to `group` (allowed by `groups.client_publish`); resolves with `published`. */
  publish(group, data) {
    return this._request({ type: 'publish', group, data });
  }

  /** Round trip to the server; resolves with `pong`. */
  ping() {
    return this._request({ type: 'ping' });
  }

  /** Groups subscribed through this client, with their last known position. */
  subscriptions() {
    return [...this._subs.values()].map(({ group, offset, epoch }) => ({ group, offset, epoch }));
  }

  // -- the connection ---------------------------------------------------------

  async _open() {
    clearTimeout(this._timer);
    this._timer = null;
    this._setState('connecting');
    const generation = this._generation;
    let token;
    try {
      token = typeof this._opts.getToken === 'function' ? await this._opts.getToken() : this._token;
    } catch (e) {
      if (generation !== this._generation) return; // closed meanwhile
      this._emit('error', new WsgateError('token', `getToken failed: ${e?.message || e}`));
      this._scheduleReconnect(null);
      return;
    }
    if (generation !== this._generation) return; // closed meanwhile
    const url = this._urls[this._urlIndex % this._urls.length];
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (e) {
      this._emit('error', new WsgateError('connect', `cannot open ${url}: ${e?.message || e}`));
      this._scheduleReconnect(null);
      return;
    }
    this._ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token }));
    ws.onmessage = (event) => this._onFrame(event.data);
    ws.onclose = (event) => this._onClose(ws, event.code, event.reason);
    ws.onerror = () => {
      // Browsers follow an error with a close event, where we act. Node 20's
      // WebSocket does not when the connection fails before the handshake,
      // so act as if closed (1006) unless the close event comes first.
      const wait = ws.readyState === 0 ? 0 : 1000;
      setTimeout(() => {
        if (ws !== this._ws) return;
        try {
          ws.close();
        } catch {
          // not open
        }
        this._onClose(ws, 1006, 'connection failed');
      }, wait);
    };
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    detach(ws);
    this._ws = null;
    const wasConnected = this._state === 'connected';
    this._failRequests('disconnected', `connection closed (${code})`);
    if (AUTH_CODES.has(code)) {
      const err = new WsgateError('unauthorized', `closed with ${code}: ${reason || 'authentication failed'}`);
      for (const sub of this._subs.values()) settleReady(sub, err, { keep: true });
      this._settleConnect(err);
      this._setState('unauthorized');
      if (wasConnected) this._emit('disconnected', { code, reason, reconnect: false });
      this._emit('unauthorized', { code, reason });
      return;
    }
    if (FATAL_CODES.has(code)) {
      const err = new WsgateError('closed', `closed with ${code}: ${reason || 'not retried'}`);
      for (const sub of this._subs.values()) settleReady(sub, err, { keep: true });
      this._settleConnect(err);
      this._setState('disconnected');
      this._emit('disconnected', { code, reason, reconnect: false });
      if (code !== 1000) this._emit('error', err);
      return;
    }
    const delay = this._scheduleReconnect(code);
    this._emit('disconnected', { code, reason, reconnect: true, delay });
  }

  // Returns the delay chosen. 1012 (draining) retries at once, with jitter so
  // a drained node's clients do not all arrive together; everything else
  // backs off exponentially with jitter.
  _scheduleReconnect(code) {
    this._urlIndex += 1; // the next URL, when several were given
    let delay;
    if (code === DRAINING) {
      delay = Math.random() * this._opts.drainJitter;
    } else {
      const base = Math.min(this._opts.maxDelay, this._opts.minDelay * 2 ** this._attempt);
      delay = base / 2 + (Math.random() * base) / 2;
      this._attempt += 1;
    }
    this._setState('reconnecting');
    this._timer = setTimeout(() => this._open(), delay);
    return delay;
  }

  _onFrame(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      this._emit('error', new WsgateError('bad_frame', 'the server sent a frame that is not JSON'));
      return;
    }
    switch (msg.type) {
      case 'welcome':
        return this._onWelcome(msg);
      case 'message':
        return this._onMessage(msg);
      case 'error':
        return this._onError(msg);
      default:
        return this._settle(msg);
    }
  }

  _onWelcome(msg) {
    this._welcome = msg;
    this._attempt = 0;
    this._setState('connected');
    this._settleConnect(null, msg);
    this._emit('connected', msg);
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
  }

  _onMessage(msg) {
    this._emit('message', msg);
    const sub = this._subs.get(msg.group);
    if (!sub) return;
    if (typeof msg.offset === 'number') {
      // Already seen (a replay overlapping what arrived live): drop it, so
      // the app gets each message exactly once.
      if (msg.epoch === sub.epoch && typeof sub.offset === 'number' && msg.offset <= sub.offset) return;
      sub.offset = msg.offset;
      sub.epoch = msg.epoch;
    }
    try {
      sub.handler?.(msg.data, msg);
    } catch (e) {
      this._emit('error', e);
    }
  }

  _onError(msg) {
    const err = new WsgateError(msg.code, msg.message, msg);
    if (msg.id === undefined || !this._pending.has(msg.id)) {
      this._emit('error', err);
      return;
    }
    const req = this._take(msg.id);
    req.reject(err);
  }

  _settle(msg) {
    if (msg.id === undefined || !this._pending.has(msg.id)) return;
    this._take(msg.id).resolve(msg);
  }

  _sendSubscribe(sub) {
    const frame = { type: 'subscribe', group: sub.group };
    const resuming = typeof sub.offset === 'number' && typeof sub.epoch === 'string';
    if (resuming) frame.since = { offset: sub.offset, epoch: sub.epoch };
    this._request(frame, 'subscribe').then(
      (reply) => {
        if (this._subs.get(sub.group) !== sub) return; // unsubscribed meanwhile
        if (typeof reply.offset === 'number' && typeof reply.epoch === 'string') {
          // The reply's offset is the group's latest; adopt it unless we are
          // already past it (a live message raced the reply).
          if (reply.epoch !== sub.epoch || !(sub.offset >= reply.offset)) {
            sub.offset = reply.offset;
            sub.epoch = reply.epoch;
          }
        }
        if (resuming && reply.recovered !== undefined) {
          const info = { group: sub.group, recovered: reply.recovered === true, offset: reply.offset, epoch: reply.epoch };
          this._emit('recovered', info);
          try {
            sub.onRecovered?.(info);
          } catch (e) {
            this._emit('error', e);
          }
        }
        settleReady(sub, null, { value: reply });
      },
      (err) => {
        if (err.code === 'disconnected') return; // sent again after the reconnect
        if (this._subs.get(sub.group) !== sub) return; // closed or unsubscribed meanwhile
        this._subs.delete(sub.group);
        if (sub.settle) settleReady(sub, err);
        else this._emit('error', err); // a resubscription was refused
      },
    );
  }

  _request(frame, kind = 'request') {
    if (this._state !== 'connected' || !this._ws) {
      return Promise.reject(new WsgateError('not_connected', `cannot send ${frame.type}: not connected`));
    }
    const id = this._nextId++;
    const ws = this._ws;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this._pending.delete(id)) reject(new WsgateError('timeout', `no reply to ${frame.type} #${id}`));
      }, this._opts.requestTimeout);
      this._pending.set(id, { resolve, reject, timer, kind });
      ws.send(JSON.stringify({ ...frame, id }));
    });
  }

  _take(id) {
    const req = this._pending.get(id);
    this._pending.delete(id);
    clearTimeout(req.timer);
    return req;
  }

  _failRequests(code, message) {
    for (const id of [...this._pending.keys()]) this._take(id).reject(new WsgateError(code, message));
  }

  _settleConnect(err, welcome) {
    const waiters = this._connectWaiters;
    this._connectWaiters = [];
    for (const w of waiters) (err ? w.reject(err) : w.resolve(welcome));
  }

  _setState(state) {
    const prev = this._state;
    if (prev === state) return;
    this._state = state;
    this._emit('state', state, prev);
  }

  _emit(event, ...args) {
    const fns = this._listeners.get(event);
    if (!fns || fns.size === 0) {
      // An error nobody listens to must not vanish.
      if (event === 'error' && typeof console !== 'undefined') console.warn('wsgate:', args[0]);
      return;
    }
    for (const fn of [...fns]) {
      try {
        fn(...args);
      } catch (e) {
        if (event !== 'error') this._emit('error', e);
      }
    }
  }
}

// Resolves or rejects a subscription's first-reply promise once. With
// `keep`, a rejection leaves a fresh promise for the next connection.
function settleReady(sub, err, { value, keep = false } = {}) {
  if (!sub.settle) return;
  const { resolve, reject } = sub.settle;
  sub.settle = null;
  if (err) {
    // Nobody may be awaiting it; never report that as an unhandled rejection.
    sub.ready.catch(() => {});
    reject(err);
    if (keep) {
      sub.ready = new Promise((res, rej) => {
        sub.settle = { resolve: res, reject: rej };
      });
    }
  } else {
    resolve(value);
  }
}

function detach(ws) {
  ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
}
