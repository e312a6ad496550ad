// Shared by the client tests: the servers tests/js_client.rs started (from
// environment variables), the backend API, a TCP proxy that can cut the
// network, and small waiting helpers.

import net from 'node:net';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { WsgateClient } from '../wsgate.js';

/** A required environment variable (set by tests/js_client.rs). */
export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through \`cargo test --test js_client\``);
  return value;
}

/** A group name no other test uses. */
export function uniqueGroup(prefix) {
  return `${prefix}.${randomBytes(4).toString('hex')}`;
}

/** A client with short delays; `WebSocket` is Node's own (--experimental-websocket). */
export function client(url, options) {
  return new WsgateClient(url, { WebSocket: globalThis.WebSocket, minDelay: 200, maxDelay: 800, ...options });
}

/** POST to a node's backend API with the test key; returns the JSON answer. */
export async function apiPost(apiBase, path, body) {
  const resp = await fetch(`${apiBase}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${env('WSGATE_API_KEY')}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = await resp.json();
  if (resp.status !== 200) throw new Error(`${path} answered ${resp.status}: ${JSON.stringify(json)}`);
  return json;
}

export async function apiGet(apiBase, path) {
  const resp = await fetch(`${apiBase}${path}`, { headers: { authorization: `Bearer ${env('WSGATE_API_KEY')}` } });
  return resp.json();
}

export function publish(apiBase, group, data) {
  return apiPost(apiBase, '/api/v1/publish', { group, data });
}

/** Polls `check` until it returns a truthy value or `ms` pass. */
export async function waitFor(what, check, ms = 5000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** The next `event` of `client` (its arguments' first), within `ms`. */
export function nextEvent(client, event, ms = 5000, filter = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${event} event within ${ms} ms`));
    }, ms);
    const off = client.on(event, (arg) => {
      if (!filter(arg)) return;
      clearTimeout(timer);
      off();
      resolve(arg);
    });
  });
}

/**
 * A native token for `user` from the embedded node's store (`wsgate token
 * issue` in its directory), valid for `ttlMs` (none: forever). Resolves with
 * `{token, expiresAt}`, `expiresAt` taken before the command ran, so it is
 * never later than the store's expiry.
 */
export async function issueToken(user, ttlMs) {
  const before = Date.now();
  const args = ['token', 'issue', '--user', user];
  if (ttlMs) args.push('--ttl', `${ttlMs}ms`);
  const { stdout } = await promisify(execFile)(env('WSGATE_BIN'), args, { cwd: env('WSGATE_EMBEDDED_DIR') });
  const token = stdout.trim();
  if (!token.startsWith('wsg_')) throw new Error(`wsgate token issue printed ${stdout}`);
  return { token, expiresAt: ttlMs ? before + ttlMs : undefined };
}

/**
 * A JWT (unsigned: `alg: none`) for the JWT node: `claims` as its payload,
 * and the `exp` claim again as its third part (`exp<seconds>`), which is
 * what the node's token query checks (tests/js_client.rs, JWT_QUERY).
 */
export function jwt(claims) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  return `${part({ alg: 'none', typ: 'JWT' })}.${part(claims)}.exp${claims.exp}`;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A TCP proxy in front of a node, standing in for the network:
 *
 * - `cut()` drops every connection and refuses new ones (accepted, then
 *   reset) until `restore()`;
 * - `freeze()` forwards nothing more, in either direction, on any
 *   connection, old or new, without closing anything (a half-open path: the
 *   bytes are lost, as on a dead link), until `thaw()`;
 * - `mangleNext(kind)` corrupts the next WebSocket text frame a client sends
 *   (`'rsv'`: sets the reserved bit RSV2, `'utf8'`: replaces its payload with
 *   bytes that are not UTF-8), as a buggy client would.
 *
 * `accepted` counts connection attempts.
 */
export class TcpProxy {
  constructor(target) {
    const [host, port] = target.split(':');
    this.host = host;
    this.port = Number(port);
    this.down = false;
    this.frozen = false;
    this.mangle = null;
    this.accepted = 0;
    this.sockets = new Set();
    this.server = net.createServer((down) => this._accept(down));
  }

  async start() {
    await new Promise((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `ws://127.0.0.1:${this.server.address().port}/ws`;
  }

  _accept(down) {
    this.accepted += 1;
    if (this.down) {
      down.resetAndDestroy();
      return;
    }
    const up = net.connect(this.port, this.host);
    for (const s of [down, up]) {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      s.on('error', () => {});
    }
    const frames = new ClientFrames();
    down.on('data', (chunk) => {
      if (this.frozen) return;
      for (const piece of frames.push(chunk, () => this._takeMangle())) up.write(piece);
    });
    up.on('data', (chunk) => {
      if (!this.frozen) down.write(chunk);
    });
    down.on('close', () => up.destroy());
    up.on('close', () => down.destroy());
  }

  _takeMangle() {
    const kind = this.mangle;
    this.mangle = null;
    return kind;
  }

  cut() {
    this.down = true;
    for (const s of this.sockets) s.resetAndDestroy();
  }

  restore() {
    this.down = false;
  }

  freeze() {
    this.frozen = true;
  }

  thaw() {
    this.frozen = false;
  }

  mangleNext(kind) {
    this.mangle = kind;
  }

  async close() {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

// The client-to-server byte stream of one connection, cut at WebSocket frame
// boundaries (after the HTTP upgrade request), so that one text frame can be
// corrupted on its way.
class ClientFrames {
  constructor() {
    this.buf = Buffer.alloc(0);
    this.inHttp = true;
  }

  // Returns the bytes ready to forward; `takeMangle()` says how to corrupt a
  // text frame (null: leave it).
  push(chunk, takeMangle) {
    this.buf = Buffer.concat([this.buf, chunk]);
    const out = [];
    if (this.inHttp) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end < 0) return out;
      out.push(this.buf.subarray(0, end + 4));
      this.buf = this.buf.subarray(end + 4);
      this.inHttp = false;
    }
    for (;;) {
      const frame = this._frame();
      if (!frame) break;
      const bytes = Buffer.from(this.buf.subarray(0, frame.length));
      this.buf = this.buf.subarray(frame.length);
      if ((bytes[0] & 0x0f) === 1) mangle(bytes, frame, takeMangle());
      out.push(bytes);
    }
    return out;
  }

  // The next complete frame's layout, or null.
  _frame() {
    const b = this.buf;
    if (b.length < 2) return null;
    let len = b[1] & 0x7f;
    let at = 2;
    if (len === 126) {
      if (b.length < 4) return null;
      len = b.readUInt16BE(2);
      at = 4;
    } else if (len === 127) {
      if (b.length < 10) return null;
      len = Number(b.readBigUInt64BE(2));
      at = 10;
    }
    const masked = (b[1] & 0x80) !== 0;
    const maskAt = at;
    if (masked) at += 4;
    if (b.length < at + len) return null;
    return { length: at + len, masked, maskAt, payloadAt: at, payloadLength: len };
  }
}

function mangle(bytes, frame, kind) {
  if (kind === 'rsv') {
    bytes[0] |= 0x20;
  } else if (kind === 'utf8') {
    // 0xff is never valid in UTF-8; masked, as the client must send it.
    for (let i = 0; i < frame.payloadLength; i++) {
      const key = frame.masked ? bytes[frame.maskAt + (i % 4)] : 0;
      bytes[frame.payloadAt + i] = 0xff ^ key;
    }
  } else if (kind) {
    throw new Error(`unknown mangle ${kind}`);
  }
}
