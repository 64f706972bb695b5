// @notifyd/react: notifyd in React. <NotifydProvider> holds one NotifydClient for the tree,
// useNotifications() gives a component a view of the feed (items, counts, connection state and
// the operations), and <NotificationBell/> is the <notifyd-bell> element of notifyd.js. Plain
// ES modules (no JSX), nothing to build.
import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useReducer,
  useRef,
  useState,
} from "react";
import { Feed, NotifydClient } from "./notifyd.js";

export { Feed, NotifydClient, STRINGS } from "./notifyd.js";

const ClientContext = createContext(null);

/** One client for the components below: made from `url` and `token` (and `options`), started
 * and stopped with the provider; or the `client` you made (you start and stop it). */
export function NotifydProvider({ url, token, options, client: given, children }) {
  const latest = useRef(token);
  latest.current = token;
  const client = useMemo(
    () =>
      given ||
      new NotifydClient({
        ...options,
        url,
        // the provider's latest token, whatever it was when the client was made
        token: () => (typeof latest.current === "function" ? latest.current() : latest.current),
      }),
    [given, url],
  );
  useEffect(() => {
    if (given) return undefined;
    client.start();
    return () => client.stop();
  }, [client, given]);
  return createElement(ClientContext.Provider, { value: client }, children);
}

/** The provider's client. */
export function useNotifydClient() {
  const client = useContext(ClientContext);
  if (!client) throw new Error("notifyd: this component needs a <NotifydProvider> around it");
  return client;
}

/** The feed as `state` ("all", "unread", "unseen" or "archived") and `category` show it,
 * newest first, loaded `limit` at a time (loadMore()), kept up to date live; the user's counts;
 * the connection's state; and the operations, each resolving when the server answered. */
export function useNotifications({ state = "all", category = null, limit = 20 } = {}) {
  const client = useNotifydClient();
  const [, redraw] = useReducer((n) => n + 1, 0);
  const [connection, setConnection] = useState(client.state);
  const [error, setError] = useState(null);
  const feed = useMemo(() => new Feed(), [client, state, category]);
  const loading = useRef(false);

  const loadMore = useCallback(async () => {
    const view = feed.view(state, category);
    if (loading.current || view.done) return;
    loading.current = true;
    try {
      await feed.load(client, state, category, limit);
      setError(null);
    } catch (err) {
      setError(err);
    } finally {
      loading.current = false;
      redraw();
    }
  }, [client, feed, state, category, limit]);

  useEffect(() => {
    const offs = [
      client.on("notification", (n) => { feed.upsert(n); redraw(); }),
      client.on("updated", (n) => { feed.upsert(n); redraw(); }),
      client.on("read", (answer) => { feed.read(answer); redraw(); }),
      client.on("deleted", ({ id }) => { feed.remove(id); redraw(); }),
      client.on("marked", (mark) => { feed.mark(mark); redraw(); }),
      client.on("reset", (stream) => { feed.reset(stream); loadMore(); }),
      client.on("counts", () => redraw()),
      client.on("state", (now) => {
        setConnection(now);
        if ((now === "open" || now === "polling") && !feed.view(state, category).started) loadMore();
      }),
    ];
    setConnection(client.state);
    if (client.state !== "stopped") loadMore();
    return () => offs.forEach((off) => off());
  }, [client, feed, loadMore, state, category]);

  const view = feed.view(state, category);
  const run = useCallback(
    (promise) =>
      promise.catch((err) => {
        setError(err);
        throw err;
      }),
    [],
  );
  return {
    items: feed.list(state, category),
    counts: client.counts,
    unreadCount: client.counts ? client.counts.count : null,
    unseenCount: client.counts ? client.counts.unseen : null,
    connection,
    error,
    loading: loading.current,
    hasMore: !view.done,
    loadMore,
    markRead: (ids) => run(client.markRead(ids)),
    markUnread: (ids) => run(client.change("mark-unread", ids)),
    markAllRead: () => run(category ? client.change("mark-read", null, { category }) : client.markAllRead()),
    markSeen: (ids) => run(client.change("mark-seen", ids)),
    markAllSeen: () => run(client.change("mark-seen", null, category ? { category } : {})),
    archive: (ids) => run(client.change("archive", ids)),
    unarchive: (ids) => run(client.change("unarchive", ids)),
    snooze: (ids, until) => run(client.change("snooze", ids, { until: new Date(until).toISOString() })),
    act: (id, action) => run(client.act(id, action)),
    client,
  };
}

/** <notifyd-bell> with the provider's client: `categories` (names), `toasts`,
 * `systemNotifications`, `sound`, `strings`, `onOpen(detail, event)` (call
 * event.preventDefault() to route the item yourself), `onAction`, plus any attribute. */
export function NotificationBell({
  categories,
  toasts,
  systemNotifications,
  sound,
  strings,
  onOpen,
  onAction,
  ...rest
}) {
  const client = useNotifydClient();
  const ref = useRef(null);
  useEffect(() => {
    ref.current.client = client;
  }, [client]);
  useEffect(() => {
    if (strings) ref.current.strings = strings;
  }, [strings]);
  useEffect(() => {
    const bell = ref.current;
    const listeners = [
      ["notifyd:open", onOpen],
      ["notifyd:action", onAction],
    ].filter(([, handler]) => handler).map(([name, handler]) => [name, (event) => handler(event.detail, event)]);
    for (const [name, listener] of listeners) bell.addEventListener(name, listener);
    return () => {
      for (const [name, listener] of listeners) bell.removeEventListener(name, listener);
    };
  }, [onOpen, onAction]);
  // attributes, as strings: React 18 and 19 both pass these through to the element
  const attributes = { ...rest, ref };
  if (categories) attributes.categories = categories.join(",");
  if (toasts) attributes.toasts = "";
  if (systemNotifications) attributes["system-notifications"] = "";
  if (sound) attributes.sound = sound;
  return createElement("notifyd-bell", attributes);
}
