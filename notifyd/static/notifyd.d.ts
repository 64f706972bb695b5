// TypeScript declarations for notifyd.js, the browser client and the inbox elements served by
// the daemon at /notifyd.js (and at /notifyd.d.ts: these). protocol/README.md is the contract
// behind them.

/** An action button of a notification. */
export interface NotificationAction {
  id: string;
  label: string;
  url?: string;
}

/** A notification as one user sees it (protocol/README.md, "The notification object"). */
export interface Notification {
  id: number;
  stream: string;
  seq: number;
  deliveredSeq: number;
  type: string;
  category: string | null;
  title: string;
  message: string;
  data: Record<string, unknown>;
  priority: "low" | "medium" | "high";
  actionUrl: string | null;
  actions: NotificationAction[];
  groupKey: string | null;
  groupCount: number;
  actors: string[];
  seen: boolean;
  seenAt: string | null;
  read: boolean;
  readAt: string | null;
  archived: boolean;
  archivedAt: string | null;
  snoozedUntil: string | null;
  interactedAt: string | null;
  action: string | null;
  expiresAt: string | null;
  createdAt: string;
}

/** The notification:unread-count frame's data. */
export interface Counts {
  count: number;
  unseen: number;
  categories: Record<string, { unread: number; unseen: number }>;
}

/** A mark ("all read", say): every item of `target` delivered up to `upto` is in `state`. */
export interface Mark {
  stream: string;
  seq: number;
  state: "seen" | "read" | "archived";
  category: string | null;
  target: string;
  upto: number;
  at: string;
}

export type ConnectionState =
  | "connecting"
  | "open"
  | "polling"
  | "offline"
  | "unauthorized"
  | "revoked"
  | "stopped";

export type FeedState = "all" | "unread" | "unseen" | "archived";

export type Operation =
  | "mark-seen"
  | "mark-read"
  | "mark-unread"
  | "archive"
  | "unarchive"
  | "snooze";

export interface Page {
  notifications: Notification[];
  next: string | null;
}

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface ClientOptions {
  /** A JWT, or a function returning one (or a promise of one), called again before expiry. */
  token: string | (() => string | Promise<string>);
  /** The daemon's base URL (default: where notifyd.js came from). */
  url?: string;
  /** Where cursors are kept (default localStorage; null: in memory). */
  storage?: StorageLike | null;
  storageKey?: string;
  backoff?: { base: number; max: number };
  pollInterval?: number;
  fallbackAfter?: number;
  refreshBefore?: number;
  requestTimeout?: number;
  userId?: string;
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
  random?: () => number;
}

export interface ClientEvents {
  notification: Notification;
  updated: Notification;
  deleted: { id: number; stream?: string; seq?: number };
  marked: Mark;
  counts: Counts;
  unread: number;
  read: { ids: number[]; readAt: string };
  state: ConnectionState;
  presence: { userId: string; roles: string[]; at: string; online: boolean };
  reset: string;
  error: Error & { code?: string };
}

export class NotifydClient {
  constructor(options: ClientOptions);
  readonly state: ConnectionState;
  readonly userId: string | null;
  readonly roles: string[];
  readonly unreadCount: number | null;
  readonly counts: Counts | null;
  /** True once the first sync after connecting is done: what comes next is live. */
  readonly synced: boolean;
  on<K extends keyof ClientEvents>(event: K, handler: (value: ClientEvents[K]) => void): () => void;
  start(): this;
  stop(): void;
  markRead(ids: number[]): Promise<{ ids: number[]; readAt: string }>;
  markAllRead(): Promise<{ ids: number[]; readAt: string }>;
  change(
    operation: Operation,
    ids: number[] | null,
    options?: { category?: string; until?: string },
  ): Promise<Record<string, unknown>>;
  page(options?: { state?: FeedState; category?: string; limit?: number; next?: string }): Promise<Page>;
  act(id: number, action: string): Promise<{ id: number; action: string; interactedAt: string }>;
  queryPresence(userIds: string[]): Promise<{ userId: string; online: boolean; lastSeen: string | null }[]>;
  countOnline(roles: string[]): Promise<Record<string, number>>;
}

export default NotifydClient;

export function applyMark(items: Map<number, Notification>, mark: Mark): void;
export function backoffDelay(
  attempt: number,
  options?: { base?: number; max?: number },
  random?: () => number,
): number;
export function tokenClaims(token: string): Record<string, unknown>;
export function tokenExpiry(token: string): number | null;
/** An actionUrl that may be followed (http(s) or a path), resolved; null otherwise. */
export function safeUrl(actionUrl: string | null | undefined, base?: string): string | null;

/** What an inbox holds: items by id, and how far each view's pages have been read. */
export class Feed {
  items: Map<number, Notification>;
  static passes(n: Notification, state: FeedState, category: string | null): boolean;
  view(state: FeedState, category?: string | null): {
    next: string | null;
    done: boolean;
    started: boolean;
  };
  /** `since`: the clock when the page was asked for (what came live after it wins). */
  paged(state: FeedState, category: string | null, page: Page, since?: number): void;
  readonly clock: number;
  readonly resets: number;
  /** A view's next page from `client`, kept unless a reset came meanwhile: whether it was. */
  load(client: NotifydClient, state: FeedState, category: string | null, limit: number): Promise<boolean>;
  list(state: FeedState, category?: string | null): Notification[];
  upsert(n: Notification): void;
  read(answer: { ids: number[]; readAt: string }): void;
  remove(id: number): void;
  mark(mark: Mark): void;
  reset(stream: string): void;
}

/** Every visible string of the elements; an element's `strings` replaces some of them. */
export interface Strings {
  title: string;
  tabs: { all: string; unread: string; archived: string };
  categories: Record<string, string>;
  markAllRead: string;
  empty: string;
  emptyArchived: string;
  loading: string;
  loadFailed: string;
  retry: string;
  unreadItem: string;
  more: (n: Notification) => string;
  markRead: string;
  markUnread: string;
  archive: string;
  unarchive: string;
  snoozeHour: string;
  snoozeTomorrow: string;
  close: string;
  bell: (unseen: number) => string;
  group: (n: Notification) => string;
  arrived: (n: Notification) => string;
  taken: (label: string) => string;
}

export const STRINGS: Strings;

export type StringsOverride = Partial<Omit<Strings, "tabs">> & { tabs?: Partial<Strings["tabs"]> };

export interface OpenDetail {
  notification: Notification;
  url: string | null;
}

export interface ActionDetail extends OpenDetail {
  action: NotificationAction;
}

/** <notifyd-inbox>: the feed, with tabs, counts, pages as it scrolls and a menu per item. */
export class NotifydInbox extends HTMLElement {
  client: NotifydClient | null;
  get strings(): Strings;
  set strings(value: StringsOverride);
  readonly feed: Feed;
  items(): Notification[];
  select(state: FeedState, category?: string | null): void;
  markAllRead(): Promise<unknown>;
  open(n: Notification): void;
}

/** <notifyd-bell>: the unseen count, opening a <notifyd-inbox> in a popover. */
export class NotifydBell extends HTMLElement {
  client: NotifydClient | null;
  get strings(): Strings;
  set strings(value: StringsOverride);
  readonly inbox: NotifydInbox;
  readonly isOpen: boolean;
  open(): void;
  close(refocus?: boolean): void;
  toggle(): void;
  requestSystemNotifications(): Promise<NotificationPermission | "unsupported">;
}

declare global {
  interface HTMLElementTagNameMap {
    "notifyd-bell": NotifydBell;
    "notifyd-inbox": NotifydInbox;
  }
  interface HTMLElementEventMap {
    "notifyd:open": CustomEvent<OpenDetail>;
    "notifyd:action": CustomEvent<ActionDetail>;
    "notifyd:error": CustomEvent<Error & { code?: string }>;
    "notifyd:toggle": CustomEvent<{ open: boolean }>;
  }
}
