// Shared by the client tests: the servers tests/js_client.rs started (from
// environment variables), the backend API, a TCP proxy that can cut the
// network, and small waiting helpers.

import net from 'node:net';
import { randomBytes } from 'node:crypto';
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

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A TCP proxy in front of a node, standing in for the network: `cut()` drops
 * every connection and refuses new ones (accepted, then reset) until
 * `restore()`. `accepted` counts connection attempts.
 */
export class TcpProxy {
  constructor(target) {
    const [host, port] = target.split(':');
    this.host = host;
    this.port = Number(port);
    this.down = false;
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
    down.pipe(up);
    up.pipe(down);
    down.on('close', () => up.destroy());
    up.on('close', () => down.destroy());
  }

  cut() {
    this.down = true;
    for (const s of this.sockets) s.resetAndDestroy();
  }

  restore() {
    this.down = false;
  }

  async close() {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
