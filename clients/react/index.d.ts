// TypeScript declarations of @notifyd/react (index.js).
import type { ReactElement, ReactNode } from "react";
import type {
  ActionDetail,
  ClientOptions,
  ConnectionState,
  Counts,
  FeedState,
  Notification,
  NotifydClient,
  OpenDetail,
  StringsOverride,
} from "./notifyd.js";

// every type of notifyd.js (Notification, Counts, Strings...), and its values used here
export type * from "./notifyd.js";
export { Feed, NotifydClient, STRINGS } from "./notifyd.js";

export interface NotifydProviderProps {
  /** The daemon's base URL, e.g. "https://notify.example.com". */
  url?: string;
  /** A JWT, or a function returning one (or a promise of one): your backend signs it. */
  token?: ClientOptions["token"];
  /** The client's other options (storage, backoff, pollInterval...). */
  options?: Omit<ClientOptions, "token" | "url">;
  /** A client you made and start yourself, instead of url and token. */
  client?: NotifydClient;
  children?: ReactNode;
}

export function NotifydProvider(props: NotifydProviderProps): ReactElement;

export function useNotifydClient(): NotifydClient;

export interface UseNotificationsOptions {
  state?: FeedState;
  category?: string | null;
  /** Items per page (1 to 100). */
  limit?: number;
}

export interface NotificationsView {
  /** The view's items, newest first, down to the last page loaded. */
  items: Notification[];
  counts: Counts | null;
  unreadCount: number | null;
  unseenCount: number | null;
  connection: ConnectionState;
  /** The last operation's or page's error, until one succeeds. */
  error: (Error & { code?: string }) | null;
  loading: boolean;
  hasMore: boolean;
  loadMore(): Promise<void>;
  markRead(ids: number[]): Promise<{ ids: number[]; readAt: string }>;
  markUnread(ids: number[]): Promise<Record<string, unknown>>;
  /** Of the view's category when it has one. */
  markAllRead(): Promise<unknown>;
  markSeen(ids: number[]): Promise<Record<string, unknown>>;
  markAllSeen(): Promise<Record<string, unknown>>;
  archive(ids: number[]): Promise<Record<string, unknown>>;
  unarchive(ids: number[]): Promise<Record<string, unknown>>;
  snooze(ids: number[], until: Date | string | number): Promise<Record<string, unknown>>;
  act(id: number, action: string): Promise<{ id: number; action: string; interactedAt: string }>;
  client: NotifydClient;
}

export function useNotifications(options?: UseNotificationsOptions): NotificationsView;

export interface NotificationBellProps {
  /** Category names, each a tab of the inbox. */
  categories?: string[];
  /** Live arrivals as toasts. */
  toasts?: boolean;
  /** Live arrivals as system notifications while the page is hidden (once allowed). */
  systemNotifications?: boolean;
  /** A sound's URL, played on a live arrival. */
  sound?: string;
  strings?: StringsOverride;
  /** An item was clicked: call event.preventDefault() to route to detail.url yourself. */
  onOpen?: (detail: OpenDetail, event: CustomEvent<OpenDetail>) => void;
  /** An action button was clicked (recorded already): preventDefault() keeps the page. */
  onAction?: (detail: ActionDetail, event: CustomEvent<ActionDetail>) => void;
  className?: string;
  id?: string;
  lang?: string;
  style?: Record<string, string | number>;
}

export function NotificationBell(props: NotificationBellProps): ReactElement;
