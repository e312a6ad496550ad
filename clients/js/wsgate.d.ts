// Types for wsgate.js (the wsgate browser and Node client).

export type State = 'disconnected' | 'connecting' | 'connected' | 'reconnecting' | 'unauthorized';

/** A position in a group's history (groups listed in `history.groups`). */
export interface Since {
  offset: number;
  epoch: string;
}

export interface WsgateOptions {
  /** A fixed token (see also `setToken`). */
  token?: string;
  /** Called before every connection attempt; wins over `token`. */
  getToken?: () => string | Promise<string>;
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
}

export interface Events {
  connected: (welcome: Welcome) => void;
  disconnected: (info: DisconnectedInfo) => void;
  /** Closed with 4001 or 4003: no retry; get a new token, then call `connect()`. */
  unauthorized: (info: { code: number; reason: string }) => void;
  recovered: (info: RecoveredInfo) => void;
  error: (error: WsgateError | Error) => void;
  state: (state: State, previous: State) => void;
  /** Every message frame, including those of auto-joined groups. */
  message: (message: Message) => void;
}

/** An `error` reply (`code` is the server's: `forbidden`, `bad_request`, ...) or a local failure
 *  (`not_connected`, `disconnected`, `timeout`, `closed`, `unauthorized`, `unsubscribed`). */
export class WsgateError extends Error {
  code: string;
  reply?: { type: 'error'; code: string; message: string; id?: number };
}

export class WsgateClient {
  constructor(url: string | string[], options: WsgateOptions);
  readonly state: State;
  readonly welcome: Welcome | null;
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
  subscriptions(): Array<{ group: string; offset?: number; epoch?: string }>;
}
