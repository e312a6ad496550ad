// wsgate browser and Node client: one dependency-free ES module (wsgate.cjs
// is generated from it for require(); see build-cjs.mjs).
//
// It speaks the wire protocol of docs/protocol.md: the token goes in the
// first frame (never the URL), every request carries an `id` whose reply
// settles the request's promise, and the close code decides whether and how
// soon to reconnect. After a reconnect every group is subscribed again with
// `since` (the last offset and epoch received), so a group with history loses
// nothing across the gap, and the app is told when the server could not
// recover (`recovered: false`) so it can reload its state.
//
// For flaky networks: a token that expires (a JWT's `exp`, or the
// `expiresAt` getToken answers) is swapped for a new one with `refresh`
// before it does, on the same connection; an idle connection is probed with
// the protocol's `ping` and dropped when no `pong` comes back in time (a
// browser never sees WebSocket pings, so a half-open socket looks alive
// otherwise); a connection attempt that gets no `welcome` in time is given up
// and retried; and a browser's `offline`/`online` events trigger a probe or
// an immediate reconnect.

/** A refused request (`error` reply) or a local failure, with a stable `code`. */
export class WsgateError extends Error {
  constructor(code, message, reply) {
    super(message || code);
    this.name = 'WsgateError';
    this.code = code;
    if (reply !== undefined) this.reply = reply;
  }
}

// Close codes after which reconnecting cannot help (docs/protocol.md, section 7).
const AUTH_CODES = new Set([4003]); // a token the server refused: get a new one
const CLIENT_BUG_CODES = new Set([1002, 1003, 1007, 1009, 4001]); // "fix the client"
const FATAL_CODES = new Set([1000, 1008]);
const DRAINING = 1012;
// What a connection given up locally (no pong, no welcome) is reported as:
// the code a browser reports for a connection that ended without a close frame.
const ABNORMAL = 1006;

const DEFAULTS = {
  minDelay: 500, // first backoff step, ms
  maxDelay: 30000, // backoff ceiling, ms
  drainJitter: 1000, // after 1012: reconnect within [0, drainJitter) ms
  requestTimeout: 10000, // a request without reply rejects with `timeout`
  pingInterval: 25000, // idle this long (nothing received): send a ping; 0: never
  pongTimeout: 10000, // no pong this long after a ping: drop and reconnect
  connectTimeout: 10000, // no welcome this long after opening: drop and retry; 0: never
};

// Token refresh: at this fraction of the token's remaining lifetime ...
const REFRESH_AT = 0.8;
// ... but never sooner than this after the token was obtained, ms
const MIN_REFRESH_DELAY = 1000;
// setTimeout fires at once past 2^31-1 ms: a longer wait is taken in steps.
const MAX_TIMER = 2 ** 31 - 1;

export class WsgateClient {
  /**
   * @param {string | string[]} url  one URL (a load balancer), or several
   *   tried in turn, one per reconnect.
   * @param {object} options  `token` or `getToken`, and optionally
   *   `WebSocket`, `minDelay`, `maxDelay`, `drainJitter`, `requestTimeout`,
   *   `pingInterval`, `pongTimeout`, `connectTimeout`.
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
    // Per connection: the token it runs on ({token, expiresAt, issuedAt}),
    // when the last frame arrived, and the timers that watch it.
    this._current = null;
    this._lastFrameAt = 0;
    this._connectTimer = null; // no welcome in time
    this._heartbeatTimer = null; // the next idle check
    this._probing = false; // a heartbeat ping is waiting for its pong
    this._refreshTimer = null;
    this._refreshing = false; // a `refresh` request awaits its reply
    this._netListeners = null; // the browser's online/offline listeners
  }

  /** `disconnected`, `connecting`, `connected`, `reconnecting` or `unauthorized`. */
  get state() {
    return this._state;
  }

  /** The last `welcome` frame, or null before the first one. */
  get welcome() {
    return this._welcome;
  }

  /**
   * When the token of the current connection expires (ms since the epoch),
   * as getToken answered or its JWT `exp` says; null when unknown.
   */
  get tokenExpiresAt() {
    return this._current?.expiresAt ?? null;
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
   * Connects (and keeps reconnecting until `close()`, an auth failure or a
   * close code that says the client is at fault). Resolves with the
   * `welcome` frame; rejects with code `unauthorized`, `protocol_error` or
   * `closed` if that happens first.
   */
  connect() {
    if (this._state === 'connected') return Promise.resolve(this._welcome);
    const waiter = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (this._state === 'disconnected' || this._state === 'unauthorized') {
      this._attempt = 0;
      this._watchNetwork(true);
      this._open();
    }
    return waiter;
  }

  /** Closes for good (code 1000); subscriptions are forgotten. */
  close() {
    this._generation += 1;
    clearTimeout(this._timer);
    this._timer = null;
    this._watchNetwork(false);
    const ws = this._ws;
    this._ws = null;
    this._endConnection();
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
   * with `since` (see the `recovered` event). `options.latest: true` asks for
   * the group's latest message first (a `groups.snapshot` or history group),
   * on this subscribe and on every resubscription that does not recover: it
   * reaches `handler` before the promise resolves, with `message.snapshot`
   * set to true. `options.grant` is a subscription grant for a group the
   * backend authorizes (`groups.authorize`): a string, or a function
   * `(group) => string | Promise<string>` called before this subscribe and
   * every resubscription, so a fresh grant replaces an expired one.
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
      latest: options.latest === true,
      grant: options.grant,
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

  /**
   * Asks getToken for a new token now and sends it as `refresh` on the open
   * connection (the client also does this by itself before the token
   * expires). Resolves with `refreshed`. A token the server refuses closes
   * the connection with 4003 (`unauthorized`).
   */
  refreshToken() {
    if (typeof this._opts.getToken !== 'function') {
      return Promise.reject(new WsgateError('no_get_token', 'refreshToken() needs options.getToken'));
    }
    if (this._state !== 'connected' || !this._ws) {
      return Promise.reject(new WsgateError('not_connected', 'cannot refresh the token: not connected'));
    }
    return this._refresh();
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
    let info;
    try {
      info =
        typeof this._opts.getToken === 'function'
          ? tokenInfo(await this._opts.getToken({ refresh: false }))
          : tokenInfo(this._token);
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
    this._current = info;
    if (this._opts.connectTimeout > 0) {
      const ms = this._opts.connectTimeout;
      this._connectTimer = setTimeout(() => this._drop(ws, `connect timeout: no welcome within ${ms} ms`), ms);
    }
    ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token: info.token }));
    ws.onmessage = (event) => {
      this._lastFrameAt = Date.now();
      this._onFrame(event.data);
    };
    ws.onclose = (event) => this._onClose(ws, event.code, event.reason);
    ws.onerror = () => {
      // Browsers follow an error with a close event, where we act. Node 20's
      // WebSocket does not when the connection fails before the handshake,
      // so act as if closed (1006) unless the close event comes first.
      const wait = ws.readyState === 0 ? 0 : 1000;
      setTimeout(() => this._drop(ws, 'connection failed'), wait);
    };
  }

  // Gives up on `ws` (if it is still the current socket) without waiting for
  // a close handshake that may never come, and carries on as after a 1006.
  _drop(ws, reason) {
    if (ws !== this._ws) return;
    detach(ws);
    try {
      ws.close();
    } catch {
      // not open
    }
    this._onClose(ws, ABNORMAL, reason);
  }

  // Stops what watches the current connection.
  _endConnection() {
    clearTimeout(this._connectTimer);
    clearTimeout(this._heartbeatTimer);
    clearTimeout(this._refreshTimer);
    this._connectTimer = this._heartbeatTimer = this._refreshTimer = null;
    this._probing = false;
    this._refreshing = false;
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    detach(ws);
    this._ws = null;
    const wasConnected = this._state === 'connected';
    const afterRefresh = this._refreshing;
    this._endConnection();
    this._failRequests('disconnected', `connection closed (${code})`);
    if (AUTH_CODES.has(code)) {
      const err = new WsgateError('unauthorized', `closed with ${code}: ${reason || 'authentication failed'}`);
      this._stop(err, 'unauthorized');
      if (wasConnected) this._emit('disconnected', { code, reason, reconnect: false });
      this._emit('unauthorized', { code, reason, afterRefresh });
      return;
    }
    if (CLIENT_BUG_CODES.has(code) || FATAL_CODES.has(code)) {
      const bug = CLIENT_BUG_CODES.has(code);
      const err = bug
        ? new WsgateError(
            'protocol_error',
            `closed with ${code} (${reason || 'protocol error'}): the server says this client broke the protocol ` +
              '(a bug in the client or in what the app gave it, such as a getToken answer without a token); not retried',
          )
        : new WsgateError('closed', `closed with ${code}: ${reason || 'not retried'}`);
      this._stop(err, 'disconnected');
      this._emit('disconnected', { code, reason, reconnect: false });
      if (code !== 1000) this._emit('error', err);
      return;
    }
    const delay = this._scheduleReconnect(code);
    this._emit('disconnected', { code, reason, reconnect: true, delay });
  }

  // No more attempts: pending promises learn why, and the state says so.
  _stop(err, state) {
    for (const sub of this._subs.values()) settleReady(sub, err, { keep: true });
    this._settleConnect(err);
    this._watchNetwork(false);
    this._setState(state);
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

  // -- liveness ---------------------------------------------------------------

  // Checks, `pingInterval` after the last frame received, whether anything
  // arrived since; if not, probes with a ping.
  _armHeartbeat() {
    clearTimeout(this._heartbeatTimer);
    this._heartbeatTimer = null;
    const interval = this._opts.pingInterval;
    if (!(interval > 0) || this._state !== 'connected') return;
    const idle = Date.now() - this._lastFrameAt;
    if (idle < interval) {
      this._heartbeatTimer = setTimeout(() => this._armHeartbeat(), Math.min(MAX_TIMER, interval - idle));
      return;
    }
    this._probe();
  }

  // Sends a ping; without a pong within `pongTimeout` the connection is
  // dropped (1006) and the client reconnects.
  _probe() {
    const ws = this._ws;
    if (this._probing || this._state !== 'connected' || !ws) return;
    this._probing = true;
    clearTimeout(this._heartbeatTimer);
    this._heartbeatTimer = null;
    const ms = this._opts.pongTimeout;
    this._request({ type: 'ping' }, 'heartbeat', ms).then(
      () => {
        if (ws !== this._ws) return;
        this._probing = false;
        this._armHeartbeat();
      },
      (err) => {
        if (ws !== this._ws) return;
        this._probing = false;
        if (err.code === 'timeout') this._drop(ws, `heartbeat timeout: no pong within ${ms} ms`);
      },
    );
  }

  // A browser's `offline` and `online` events (where there are any): going
  // offline or back online (perhaps on another network) probes the open
  // connection at once; back online also ends a backoff wait.
  _watchNetwork(on) {
    const target = globalThis;
    if (typeof target.addEventListener !== 'function' || typeof globalThis.navigator?.onLine !== 'boolean') return;
    if (on && !this._netListeners) {
      const offline = () => this._probe();
      const online = () => {
        if (this._state === 'connected') {
          this._probe();
        } else if (this._state === 'reconnecting') {
          this._attempt = 0;
          this._open();
        }
      };
      target.addEventListener('offline', offline);
      target.addEventListener('online', online);
      this._netListeners = { offline, online };
    } else if (!on && this._netListeners) {
      target.removeEventListener('offline', this._netListeners.offline);
      target.removeEventListener('online', this._netListeners.online);
      this._netListeners = null;
    }
  }

  // -- token refresh ------------------------------------------------------------

  // Schedules the refresh of the current connection's token, when getToken
  // can give a new one and the token's expiry is known.
  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    const info = this._current;
    if (typeof this._opts.getToken !== 'function' || !info || info.expiresAt === undefined) return;
    const delay = refreshDelay(info, Date.now());
    if (delay === null) {
      this._emit(
        'error',
        new WsgateError(
          'token_expired',
          `the token expired at ${new Date(info.expiresAt).toISOString()} by this machine's clock; ` +
            'no refresh is scheduled (is the clock wrong, or does getToken return a stale token?)',
        ),
      );
      return;
    }
    this._refreshIn(delay);
  }

  // Refreshes `ms` from now (in steps, past setTimeout's range); a failure
  // short of losing the connection is reported and tried again a little
  // later, while the token lasts.
  _refreshIn(ms) {
    clearTimeout(this._refreshTimer);
    const ws = this._ws;
    const wait = Math.min(ms, MAX_TIMER);
    this._refreshTimer = setTimeout(() => {
      this._refreshTimer = null;
      if (ws !== this._ws) return;
      if (wait < ms) return this._refreshIn(ms - wait);
      this._refresh().catch((err) => {
        if (ws !== this._ws || err.code === 'disconnected' || err.code === 'closed') return;
        this._emit('error', err);
        const left = (this._current?.expiresAt ?? 0) - Date.now();
        this._refreshIn(left > 2 * MIN_REFRESH_DELAY ? Math.min(5000, left / 2) : 5000);
      });
    }, wait);
  }

  // getToken, then `refresh` on the open connection; on `refreshed` the
  // connection runs on the new token and its next refresh is scheduled.
  async _refresh() {
    const ws = this._ws;
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    let info;
    try {
      info = tokenInfo(await this._opts.getToken({ refresh: true }));
    } catch (e) {
      throw new WsgateError('token', `getToken failed: ${e?.message || e}`);
    }
    if (ws !== this._ws || this._state !== 'connected') {
      throw new WsgateError('disconnected', 'the connection ended while getToken ran');
    }
    // Marks the refresh in flight: a 4003 now is the answer to it.
    this._refreshing = true;
    try {
      const reply = await this._request({ type: 'refresh', token: info.token }, 'refresh');
      if (ws === this._ws) {
        this._current = info;
        this._emit('refreshed', { expiresAt: info.expiresAt ?? null });
        this._scheduleRefresh();
      }
      return reply;
    } finally {
      if (ws === this._ws) this._refreshing = false;
    }
  }

  // -- frames -------------------------------------------------------------------

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
      case 'unsubscribed':
        // Without an id it is the server's own: the backend ended it.
        if (msg.id === undefined) return this._onUnsubscribedByServer(msg);
        return this._settle(msg);
      default:
        return this._settle(msg);
    }
  }

  _onWelcome(msg) {
    clearTimeout(this._connectTimer);
    this._connectTimer = null;
    this._welcome = msg;
    this._attempt = 0;
    this._setState('connected');
    this._armHeartbeat();
    this._scheduleRefresh();
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

  /** The backend took this user out of a group (`POST /api/v1/unsubscribe`):
   *  the subscription is over, and is not renewed after a reconnect. */
  _onUnsubscribedByServer(msg) {
    const sub = this._subs.get(msg.group);
    if (!sub) return;
    this._subs.delete(msg.group);
    settleReady(sub, new WsgateError('unsubscribed', `the server ended the subscription to ${msg.group}`));
    this._emit('unsubscribed', { group: msg.group });
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
    if (sub.latest) frame.latest = true;
    const send = (token) => {
      if (typeof token === 'string' && token !== '') frame.token = token;
      return this._request(frame, 'subscribe');
    };
    const request =
      typeof sub.grant === 'function'
        ? Promise.resolve()
            .then(() => sub.grant(sub.group))
            .then(send)
        : send(sub.grant);
    request.then(
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

  _request(frame, kind = 'request', timeout = this._opts.requestTimeout) {
    if (this._state !== 'connected' || !this._ws) {
      return Promise.reject(new WsgateError('not_connected', `cannot send ${frame.type}: not connected`));
    }
    const id = this._nextId++;
    const ws = this._ws;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this._pending.delete(id)) reject(new WsgateError('timeout', `no reply to ${frame.type} #${id}`));
      }, timeout);
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

// -- tokens -------------------------------------------------------------------

/**
 * What getToken answered (a string, or `{token, expiresAt}` with `expiresAt`
 * in ms since the epoch or a Date) as `{token, expiresAt, issuedAt}`. Without
 * `expiresAt`, a JWT's `exp` (and `iat`) claims are read; the signature is
 * not checked (that is the server's business).
 */
export function tokenInfo(answer) {
  let token = answer;
  let expiresAt;
  let issuedAt;
  if (answer !== null && typeof answer === 'object') {
    token = answer.token;
    expiresAt = answer.expiresAt instanceof Date ? answer.expiresAt.getTime() : answer.expiresAt;
  }
  if (typeof expiresAt !== 'number' || !Number.isFinite(expiresAt)) expiresAt = undefined;
  if (expiresAt === undefined && typeof token === 'string') {
    const claims = jwtClaims(token);
    if (claims && typeof claims.exp === 'number' && Number.isFinite(claims.exp)) {
      expiresAt = claims.exp * 1000;
      if (typeof claims.iat === 'number' && claims.iat < claims.exp) issuedAt = claims.iat * 1000;
    }
  }
  return { token, expiresAt, issuedAt };
}

// The claims of a JWT (its middle part, base64url JSON), or null when
// `token` is not one.
function jwtClaims(token) {
  const parts = token.split('.');
  if (parts.length !== 3 || !/^[A-Za-z0-9_-]+$/.test(parts[1])) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const binary = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
    return claims !== null && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/**
 * Milliseconds from `now` until the token of `info` should be refreshed:
 * after 80% of its remaining lifetime, at least a second; null when it has
 * expired already. A JWT's own lifetime (`exp - iat`) bounds the wait, so a
 * clock that runs behind does not refresh too late, and a clock that runs
 * ahead does not take a fresh token for an expired one.
 */
export function refreshDelay(info, now) {
  let remaining = info.expiresAt - now;
  if (info.issuedAt !== undefined) {
    const lifetime = info.expiresAt - info.issuedAt;
    if (remaining > lifetime || remaining <= 0) remaining = lifetime;
  }
  if (!(remaining > 0)) return null;
  return Math.max(MIN_REFRESH_DELAY, remaining * REFRESH_AT);
}
