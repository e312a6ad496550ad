// Types for wsgate.js (the wsgate browser and Node client); wsgate.d.cts,
// for require(), is generated from this file by build-cjs.mjs.

export type State = 'disconnected' | 'connecting' | 'connected' | 'reconnecting' | 'unauthorized';

/** A position in a group's history (groups listed in `history.groups`). */
export interface Since {
  offset: number;
  epoch: string;
}

/**
 * A token and, when known, when it expires. Without `expiresAt`, a JWT's
 * `exp` claim is read (not verified) instead.
 */
export interface TokenAnswer {
  token: string;
  /** Expiry in ms since the epoch (this machine's clock), or a Date. */
  expiresAt?: number | Date;
}

export interface GetTokenContext {
  /** True when the token replaces the one of an open connection (`refresh`), false before connecting. */
  refresh: boolean;
}

export interface WsgateOptions {
  /** A fixed token (see also `setToken`); never refreshed. */
  token?: string;
  /**
   * Called before every connection attempt, and again before the token
   * expires (at 80% of its remaining lifetime) to send it as `refresh` on the
   * open connection; wins over `token`. Must return a fresh token each time.
   */
  getToken?: (context: GetTokenContext) => string | TokenAnswer | Promise<string | TokenAnswer>;
  /** A WebSocket constructor; defaults to `globalThis.WebSocket`. */
  WebSocket?: new (url: string) => WebSocket;
  /** First backoff step in ms (default 500). */
  minDelay?: number;
  /** Backoff ceiling in ms (default 30000). */
  maxDelay?: number;
  /** After close code 1012 (node draining), reconnect within [0, drainJitter) ms (default 1000). */
  drainJitter?: number;
  /** A request without reply rejects with code `timeout` after this many ms (default 10000). */
  requestTimeout?: number;
  /**
   * After this many ms without any frame from the server, send a `ping`
   * (default 25000, as the server's `server.ping_interval`; 0 turns the heartbeat off).
   */
  pingInterval?: number;
  /** Without a `pong` this many ms after that ping, drop the connection (1006) and reconnect (default 10000). */
  pongTimeout?: number;
  /** Without a `welcome` this many ms after opening the socket, give up on it and retry (default 10000; 0: never). */
  connectTimeout?: number;
}

export interface Welcome {
  type: 'welcome';
  user_id: string;
  session: string;
  node: string;
  groups: string[];
}

export interface Message<T = unknown> {
  type: 'message';
  group: string;
  data: T;
  offset?: number;
  epoch?: string;
  /** Set on the group's latest message sent on a subscribe with `latest`. */
  snapshot?: true;
}

export interface Subscribed {
  type: 'subscribed';
  group: string;
  id?: number;
  offset?: number;
  epoch?: string;
  recovered?: boolean;
}

export interface Reply {
  type: string;
  group?: string;
  id?: number;
}

export interface RecoveredInfo {
  group: string;
  /** False: messages were lost (no longer in history); reload the group's state. */
  recovered: boolean;
  offset?: number;
  epoch?: string;
}

export interface DisconnectedInfo {
  code: number;
  reason: string;
  /** Whether the client will reconnect by itself. */
  reconnect: boolean;
  /** Milliseconds until the next attempt, when it reconnects. */
  delay?: number;
}

export interface SubscribeOptions {
  /** Start from a known position instead of "now". */
  since?: Since;
  /** Called after every resubscription with `since`. */
  onRecovered?: (info: RecoveredInfo) => void;
  /** Get the group's latest message first (`message.snapshot` is true). */
  latest?: boolean;
  /**
   * A subscription grant for a `groups.authorize` group, or a function
   * returning one, called before every (re)subscription.
   */
  grant?: string | ((group: string) => string | Promise<string>);
}

export interface UnauthorizedInfo {
  /** 4003. */
  code: number;
  reason: string;
  /** Whether the token just sent as `refresh` was the one refused. */
  afterRefresh: boolean;
}

export interface Events {
  connected: (welcome: Welcome) => void;
  disconnected: (info: DisconnectedInfo) => void;
  /** Closed with 4003: no retry; get a new token, then call `connect()`. */
  unauthorized: (info: UnauthorizedInfo) => void;
  /** The server accepted a new token (`refreshed`); `expiresAt` is its expiry, when known. */
  refreshed: (info: { expiresAt: number | null }) => void;
  recovered: (info: RecoveredInfo) => void;
  /** The server ended a subscription (the backend revoked it): it is forgotten, not renewed. */
  unsubscribed: (info: { group: string }) => void;
  error: (error: WsgateError | Error) => void;
  state: (state: State, previous: State) => void;
  /** Every message frame, including those of auto-joined groups. */
  message: (message: Message) => void;
}

/** An `error` reply (`code` is the server's: `forbidden`, `bad_request`, ...) or a local failure
 *  (`not_connected`, `disconnected`, `timeout`, `closed`, `unauthorized`, `unsubscribed`,
 *  `protocol_error` (closed with 1002, 1003, 1007, 1009 or 4001: a client bug), `token`
 *  (getToken failed), `token_expired`, `no_get_token`). */
export class WsgateError extends Error {
  code: string;
  reply?: { type: 'error'; code: string; message: string; id?: number };
}

export class WsgateClient {
  constructor(url: string | string[], options: WsgateOptions);
  readonly state: State;
  readonly welcome: Welcome | null;
  /** Expiry of the current connection's token (ms since the epoch), or null when unknown. */
  readonly tokenExpiresAt: number | null;
  setToken(token: string): void;
  on<E extends keyof Events>(event: E, fn: Events[E]): () => void;
  off<E extends keyof Events>(event: E, fn: Events[E]): void;
  connect(): Promise<Welcome>;
  close(): void;
  subscribe<T = unknown>(
    group: string,
    handler: (data: T, message: Message<T>) => void,
    options?: SubscribeOptions,
  ): Promise<Subscribed>;
  unsubscribe(group: string): Promise<Reply>;
  publish(group: string, data: unknown): Promise<Reply>;
  ping(): Promise<Reply>;
  /** Gets a new token from getToken now and sends it as `refresh`; resolves with `refreshed`. */
  refreshToken(): Promise<Reply>;
  subscriptions(): Array<{ group: string; offset?: number; epoch?: string }>;
}

/** What a getToken answer means: the token, its expiry (`expiresAt`, or a JWT's `exp`) and a JWT's `iat`, in ms. */
export function tokenInfo(answer: string | TokenAnswer): { token: string; expiresAt?: number; issuedAt?: number };

/** Milliseconds from `now` until the token should be refreshed, or null when it has expired. */
export function refreshDelay(info: { expiresAt: number; issuedAt?: number }, now: number): number | null;
