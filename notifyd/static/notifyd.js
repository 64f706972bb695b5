// notifyd browser client: one zero-dependency ES module, served by the daemon at /notifyd.js.
// It keeps one WebSocket per page, authenticates with an `auth` frame (the token stays out of
// URLs), syncs from stored cursors on every (re)connect with ?sync=1, drops duplicates by
// (stream, seq) (each is one change: keep items by id, the latest wins), reconnects with exponential backoff and jitter, and polls the HTTP API
// while a WebSocket cannot connect. protocol/README.md is the wire contract it follows.

const STATES = ["connecting", "open", "polling", "offline", "unauthorized", "revoked", "stopped"];

/** The reconnect delay in ms for the given attempt (0, 1, 2...): exponential, capped, with
 * "equal jitter" (half fixed, half random) so that a crowd of clients spreads out. */
export function backoffDelay(attempt, { base = 500, max = 30000 } = {}, random = Math.random) {
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return ceiling / 2 + random() * (ceiling / 2);
}

/** The claims of a JWT, unverified (the server verifies; the client only needs to know when
 * to fetch a fresh token, and whose cursors to keep while polling), or {}. */
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4))) || {};
  } catch {
    return {};
  }
}

/** The `exp` claim of a JWT in ms since the epoch, or null. */
export function tokenExpiry(token) {
  const { exp } = tokenClaims(token);
  return typeof exp === "number" ? exp * 1000 : null;
}

/** What a client has seen: per-stream cursors (persisted) and recent (stream, seq) keys. */
/** A notification:marked (or a sync's mark) applied to items kept by id in a Map: each item
 * of its target stream delivered up to `upto`, of its category (or any), takes its state
 * from `at` on, unless it was in it already (protocol/README.md §6). */
export function applyMark(items, mark) {
  for (const n of items.values()) {
    if (n.stream === mark.target && n.deliveredSeq <= mark.upto && !n[mark.state] &&
        (mark.category === null || n.category === mark.category)) {
      n[mark.state] = true;
      n[`${mark.state}At`] = mark.at;
    }
  }
}

export class Ledger {
  constructor(storage, key, remember = 2000) {
    this.storage = storage;
    this.key = key;
    this.remember = remember;
    this.seen = new Set();
    this.cursors = {};
    try {
      const stored = storage && storage.getItem(key);
      if (stored) this.cursors = JSON.parse(stored) || {};
    } catch {
      this.cursors = {};
    }
  }

  /** True the first time an item is offered, false for a duplicate. */
  admit(n) {
    const id = `${n.stream}\u0000${n.seq}`;
    if (this.seen.has(id)) return false;
    this.seen.add(id);
    if (this.seen.size > this.remember) this.seen.delete(this.seen.values().next().value);
    return true;
  }

  advance(cursors) {
    for (const [stream, seq] of Object.entries(cursors)) {
      if (!(seq < (this.cursors[stream] || 0))) this.cursors[stream] = seq;
    }
    this.save();
  }

  drop(stream) {
    delete this.cursors[stream];
    for (const id of [...this.seen]) if (id.startsWith(`${stream}\u0000`)) this.seen.delete(id);
    this.save();
  }

  save() {
    try {
      if (this.storage) this.storage.setItem(this.key, JSON.stringify(this.cursors));
    } catch {
      /* storage full or forbidden: cursors live in memory only */
    }
  }
}

function defaultStorage() {
  try {
    return globalThis.localStorage || null;
  } catch {
    return null; // e.g. a sandboxed iframe
  }
}

function defaultBase() {
  try {
    return new URL(import.meta.url).origin; // the daemon that served this file
  } catch {
    return globalThis.location ? globalThis.location.origin : "http://127.0.0.1:8765";
  }
}

/**
 * const client = new NotifydClient({ token: () => fetch("/api/notify-token").then(r => r.text()) });
 * client.on("notification", (n) => ...); client.start();
 */
export class NotifydClient {
  constructor(options = {}) {
    if (!options.token) throw new TypeError("NotifydClient needs a token (a string or a function)");
    this.options = {
      url: defaultBase(),
      storage: defaultStorage(),
      storageKey: "notifyd",
      backoff: { base: 500, max: 30000 },
      pollInterval: 5000,
      fallbackAfter: 2, // failed WebSocket attempts in a row before polling
      refreshBefore: 60, // seconds before the token's expiry to fetch a fresh one
      requestTimeout: 10000,
      WebSocket: globalThis.WebSocket,
      fetch: globalThis.fetch && globalThis.fetch.bind(globalThis),
      random: Math.random,
      ...options,
    };
    const base = this.options.url.replace(/\/+$/, "").replace(/\/ws$/, "");
    this.httpBase = base.replace(/^ws(s?):/, "http$1:");
    this.wsUrl = `${this.httpBase.replace(/^http(s?):/, "ws$1:")}/ws?sync=1`;
    this.listeners = {};
    this.state = "stopped";
    this.unreadCount = null;
    this.userId = null;
    this.roles = [];
    this.ledger = null;
    this.ws = null;
    this.attempt = 0;
    this.failures = 0;
    this.synced = false;
    this.pending = new Map(); // ref -> {resolve, reject, timer}
    this.refs = 0;
    this.timers = new Set();
    this.token = typeof this.options.token === "string" ? this.options.token : null;
  }

  // -- events ---------------------------------------------------------------------------

  /** Events: notification (new, or the state of an item a sync found changed: keep items by
   * id), updated (a newer state of an item), deleted ({id, stream, seq}, or {id} from a sync),
   * read (the answer to this page's mark-read), unread, state, presence, reset, error. */
  on(event, handler) {
    (this.listeners[event] ||= new Set()).add(handler);
    return () => this.listeners[event].delete(handler);
  }

  emit(event, value) {
    for (const handler of this.listeners[event] || []) {
      try {
        handler(value);
      } catch (err) {
        console.error("notifyd: a", event, "handler failed", err);
      }
    }
  }

  setState(state) {
    if (!STATES.includes(state) || state === this.state) return;
    this.state = state;
    this.emit("state", state);
  }

  // -- life cycle -----------------------------------------------------------------------

  start() {
    if (this.state !== "stopped") return this;
    this.stopped = false;
    this.connect();
    return this;
  }

  stop() {
    this.stopped = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    if (this.ws) this.ws.close(1000, "client stopped");
    this.ws = null;
    this.failAll(new Error("client stopped"));
    this.setState("stopped");
  }

  later(fn, ms) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (!this.stopped) fn();
    }, ms);
    this.timers.add(timer);
    return timer;
  }

  async freshToken(force = false) {
    const source = this.options.token;
    if (typeof source !== "function") return this.token;
    const exp = this.token && tokenExpiry(this.token);
    if (force || !this.token || (exp && exp - Date.now() < this.options.refreshBefore * 1000)) {
      this.token = await source();
    }
    return this.token;
  }

  async connect() {
    if (this.stopped) return;
    if (this.state !== "polling") this.setState("connecting");
    let token;
    try {
      token = await this.freshToken();
    } catch (err) {
      this.emit("error", err);
      return this.retry();
    }
    let ws;
    try {
      ws = new this.options.WebSocket(this.wsUrl);
    } catch (err) {
      return this.connectFailed(err);
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      ws.send(JSON.stringify({ type: "auth", data: { token }, ref: "auth" }));
    };
    ws.onmessage = (event) => this.receive(ws, event.data);
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.synced = false;
      this.failAll(new Error(`connection closed (${event.code})`));
      if (!opened || !this.confirmed) return this.connectFailed(event);
      this.closed(event.code);
    };
    this.confirmed = false;
  }

  connectFailed(reason) {
    this.failures += 1;
    if (this.failures >= this.options.fallbackAfter && this.options.fetch) this.startPolling();
    this.retry(reason);
  }

  closed(code) {
    if (code === 4003) {
      this.setState("revoked"); // access revoked: sign the user out
      this.stopped = true;
      return;
    }
    if (code === 4001) {
      if (typeof this.options.token !== "function") {
        this.setState("unauthorized");
        this.stopped = true;
        return;
      }
      this.token = null; // fetch a fresh one, then reconnect
    }
    if (code === 1001 || code === 4008) {
      this.setState("offline");
      this.later(() => this.connect(), this.options.random() * 1000); // "at once", spread
      return;
    }
    this.retry();
  }

  retry() {
    if (this.stopped) return;
    if (this.state !== "polling") this.setState("offline");
    const delay = backoffDelay(this.attempt, this.options.backoff, this.options.random);
    this.attempt += 1;
    this.later(() => this.connect(), delay);
  }

  // -- the WebSocket protocol -------------------------------------------------------------

  send(type, data, ref) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify(ref ? { type, data, ref } : { type, data }));
    return true;
  }

  receive(ws, text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    const { type, data = {}, ref } = frame;
    switch (type) {
      case "connection-confirmed":
        this.confirmed = true;
        this.synced = false;
        this.resync = false;
        this.attempt = 0;
        this.failures = 0;
        this.identify(data.userId, data.roles);
        this.stopPolling();
        this.setState("open");
        this.scheduleRefresh();
        this.requestSync();
        break;
      case "notification:sync-response":
        this.absorb(data);
        if (data.hasMore) this.requestSync(data.cursors);
        else if (this.resync) {
          this.resync = false; // a refresh gained a stream while this sync ran: sync it too
          this.requestSync();
        } else this.synced = true;
        break;
      case "auth:refreshed":
        this.refreshed(data.roles);
        break;
      case "notification:new":
      case "notification:updated":
      case "notification:deleted":
      case "notification:marked": {
        // every change of a stream, at its place: once each, and the cursor follows. An
        // item's place is its stream and seq, unless the frame names another (a user's own
        // state of a shared item, a change of the user's stream).
        const bare = type === "notification:deleted" || type === "notification:marked";
        const change = bare ? data : data.notification;
        const place = data.seq ? data : change;
        if (this.ledger.admit(place)) {
          const name = {
            "notification:new": "notification",
            "notification:updated": "updated",
            "notification:marked": "marked",
          };
          this.emit(name[type] || "deleted", change);
        }
        if (this.synced) this.ledger.advance({ [place.stream]: place.seq });
        break;
      }
      case "notification:unread-count":
        this.unreadCount = data.count;
        this.counts = data;
        this.emit("unread", data.count);
        this.emit("counts", data);
        break;
      case "notification:read": // the answer to this page's mark-read
        this.emit("read", data);
        break;
      case "presence:online":
      case "presence:offline":
        this.emit("presence", { ...data, online: type === "presence:online" });
        break;
      case "error":
        if (!(ref && this.settle(ref, null, data))) this.emit("error", data);
        break;
      default:
        break;
    }
    if (ref && type !== "error") this.settle(ref, data, null);
  }

  identify(userId, roles) {
    if (this.userId !== userId || !this.ledger) {
      this.userId = userId;
      this.ledger = new Ledger(this.options.storage, `${this.options.storageKey}:${userId}`);
    }
    this.roles = roles || [];
  }

  /** A fresh token's roles replace the connection's: drop the streams lost, sync those gained
   * (they start live from the refresh). */
  refreshed(roles) {
    if (!roles) return;
    const before = this.streams();
    this.roles = roles;
    const after = this.streams();
    for (const stream of before) {
      if (!after.has(stream)) {
        this.ledger.drop(stream);
        this.emit("reset", stream);
      }
    }
    if ([...after].some((stream) => !before.has(stream))) {
      if (this.synced) {
        this.synced = false;
        this.requestSync();
      } else {
        this.resync = true;
      }
    }
  }

  streams() {
    return new Set([`user:${this.userId}`, ...this.roles.map((r) => `role:${r}`), "all"]);
  }

  requestSync(cursors) {
    const mine = this.streams();
    const from = cursors || this.ledger.cursors;
    const wanted = Object.fromEntries(Object.entries(from).filter(([s]) => mine.has(s)));
    this.send("notification:sync-request", { cursors: wanted }, `sync-${++this.refs}`);
  }

  /** A sync-response or a poll: resets, marks, removed ids, then the items (each in its
   * state now: upsert them by id), then the cursors. The items last: they are what exists now. */
  absorb(data) {
    for (const stream of data.reset || []) {
      this.ledger.drop(stream);
      this.emit("reset", stream);
    }
    for (const mark of data.marks || []) {
      this.ledger.admit(mark);
      this.emit("marked", mark);
    }
    for (const id of data.removed || []) this.emit("deleted", { id });
    for (const n of data.notifications || []) {
      this.ledger.admit(n);
      this.emit("notification", n);
    }
    this.ledger.advance(data.cursors || {});
  }

  scheduleRefresh(after) {
    if (typeof this.options.token !== "function") return;
    const exp = tokenExpiry(this.token);
    if (!exp) return;
    const due = after ?? Math.max(1000, exp - Date.now() - this.options.refreshBefore * 1000);
    clearTimeout(this.refreshTimer);
    this.refreshTimer = this.later(async () => {
      try {
        await this.freshToken(true);
        await this.request("auth", { token: this.token }); // auth:refreshed: see refreshed()
        this.scheduleRefresh();
      } catch (err) {
        // a token that changes the roles waits for the sync-request being answered
        if (err.code === "sync-in-progress") this.scheduleRefresh(1000);
        else this.emit("error", err);
      }
    }, due);
  }

  request(type, data) {
    const ref = `${type}-${++this.refs}`;
    return new Promise((resolve, reject) => {
      if (!this.send(type, data, ref)) return reject(new Error("not connected"));
      const timer = this.later(() => {
        this.pending.delete(ref);
        reject(new Error(`${type}: no answer`));
      }, this.options.requestTimeout);
      this.pending.set(ref, { resolve, reject, timer });
    });
  }

  settle(ref, data, error) {
    const waiter = this.pending.get(ref);
    if (!waiter) return false;
    this.pending.delete(ref);
    clearTimeout(waiter.timer);
    if (error) {
      const err = new Error(error.message || error.code);
      err.code = error.code;
      waiter.reject(err);
    } else {
      waiter.resolve(data);
    }
    return true;
  }

  failAll(err) {
    for (const waiter of this.pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(err);
    }
    this.pending.clear();
  }

  // -- the public calls ---------------------------------------------------------------------

  /** Marks your notifications read on every device; resolves to {ids, readAt}. */
  markRead(ids) {
    if (this.ws && this.confirmed) return this.request("notification:mark-read", { ids });
    return this.readOverHttp(`/v1/notifications/read?ids=${ids.map(Number).join(",")}`);
  }

  markAllRead() {
    if (this.ws && this.confirmed) return this.request("notification:mark-all-read", {});
    return this.readOverHttp("/v1/notifications/read-all");
  }

  /** One of the state operations ("mark-seen", "mark-read", "mark-unread", "archive",
   * "unarchive", "snooze") of `ids`, or of all (narrowed by `options.category`) when ids is
   * null; `options.until` for a snooze. Resolves to the answer's data. */
  change(operation, ids, options = {}) {
    const data = ids ? { ids } : { all: true };
    if (options.category) data.category = options.category;
    if (options.until) data.until = options.until;
    if (this.ws && this.confirmed) return this.request(`notification:${operation}`, data);
    const path = { "mark-seen": "seen", "mark-read": "read", "mark-unread": "unread" };
    const query = new URLSearchParams(ids ? { ids: ids.map(Number).join(",") } : { all: "true" });
    if (options.category) query.set("category", options.category);
    if (options.until) query.set("until", options.until);
    return this.http("POST", `/v1/notifications/${path[operation] || operation}?${query}`);
  }

  /** A page of the feed, newest first: options.state ("all", "unread", "unseen",
   * "archived"), options.category, options.limit (1 to 100), options.next (the previous
   * page's next). Resolves to {notifications, next}; next is null at the end. */
  page(options = {}) {
    const data = {};
    for (const name of ["state", "category", "limit", "next"]) {
      if (options[name] != null) data[name] = options[name];
    }
    if (this.ws && this.confirmed) return this.request("notification:page", data);
    return this.http("GET", `/v1/feed?${new URLSearchParams(data)}`);
  }

  /** Records that the user took action `action` (an id of its actions) of item `id`; the
   * item becomes read. Resolves to {id, action, interactedAt}. */
  act(id, action) {
    if (this.ws && this.confirmed) return this.request("notification:act", { id, action });
    const query = new URLSearchParams({ id: String(Number(id)), action });
    return this.http("POST", `/v1/notifications/act?${query}`);
  }

  async readOverHttp(path) {
    const result = await this.http("POST", path);
    // no WebSocket brings the read event to this page: tell it here
    if (result.ids.length) this.emit("read", result);
    return result;
  }

  /** Online state of users (needs a role allowed to see presence); resolves to [{userId,
   * online, lastSeen}]. Only over the WebSocket. */
  async queryPresence(userIds) {
    const data = await this.request("presence:query", { userIds });
    return data.users;
  }

  /** Online users per role, e.g. {doctor: 4}; for watchers, or public roles. */
  async countOnline(roles) {
    const data = await this.request("presence:query", { roles });
    return data.roles;
  }

  // -- polling, while the WebSocket cannot connect ------------------------------------------

  startPolling() {
    if (this.polling || this.stopped) return;
    this.polling = true;
    this.setState("polling");
    const tick = async () => {
      if (!this.polling || this.stopped) return;
      try {
        await this.poll();
      } catch (err) {
        this.emit("error", err);
      }
      if (this.polling) this.pollTimer = this.later(tick, this.options.pollInterval);
    };
    tick();
  }

  stopPolling() {
    this.polling = false;
    clearTimeout(this.pollTimer);
  }

  async poll() {
    await this.freshToken();
    if (!this.ledger) {
      // before any WebSocket confirmed who we are: the user claim of the token
      const claims = tokenClaims(this.token);
      this.identify(String(this.options.userId ?? claims.sub ?? claims.userId ?? "me"), []);
    }
    let page;
    do {
      const query = Object.entries(page ? page.cursors : this.ledger.cursors)
        .map(([s, seq]) => `cursor=${encodeURIComponent(`${s}:${seq}`)}`).join("&");
      page = await this.http("GET", `/v1/notifications${query ? `?${query}` : ""}`);
      if (!this.polling) return; // the WebSocket came back meanwhile: it syncs itself
      this.absorb(page);
    } while (page.hasMore);
    this.synced = true; // what the next poll brings is new
    const counts = await this.http("GET", "/v1/unread-count");
    if (JSON.stringify(counts) !== JSON.stringify(this.counts)) {
      this.counts = counts;
      this.emit("counts", counts);
    }
    if (counts.count !== this.unreadCount) {
      this.unreadCount = counts.count;
      this.emit("unread", counts.count);
    }
  }

  async http(method, path) {
    const token = await this.freshToken();
    const response = await this.options.fetch(`${this.httpBase}${path}`, {
      method, headers: { Authorization: `Bearer ${token}` },
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const err = new Error(body.message || `HTTP ${response.status}`);
      err.code = body.code;
      err.status = response.status;
      throw err;
    }
    return body;
  }
}

// -- the inbox, as custom elements ------------------------------------------------------------
// <notifyd-inbox> is the feed (tabs with counts, pages as it scrolls, mark all read, a menu per
// item); <notifyd-bell> is a button with the unseen count that opens one in a popover (and may
// show toasts, system notifications and a sound for live arrivals). Both take the page's
// NotifydClient as their `client` property and draw in their shadow roots, styled through CSS
// custom properties (--notifyd-*) and ::part(); every visible string is in `strings`.

/** Every visible string of the elements; set an element's `strings` to replace some. */
export const STRINGS = {
  title: "Notifications",
  tabs: { all: "All", unread: "Unread", archived: "Archived" },
  categories: {}, // a category's tab label, by name (the name itself otherwise)
  markAllRead: "Mark all as read",
  empty: "You're all caught up",
  emptyArchived: "Nothing archived",
  loading: "Loading…",
  loadFailed: "Could not load notifications.",
  retry: "Try again",
  unreadItem: "Unread",
  more: (n) => `More actions: ${n.title}`,
  markRead: "Mark as read",
  markUnread: "Mark as unread",
  archive: "Archive",
  unarchive: "Unarchive",
  snoozeHour: "Snooze for 1 hour",
  snoozeTomorrow: "Snooze until tomorrow",
  close: "Close",
  bell: (unseen) => (unseen ? `Notifications, ${unseen} new` : "Notifications"),
  group: (n) => {
    const others = n.groupCount - 1;
    if (!n.actors.length) return `${n.groupCount} notifications`;
    return `${n.actors[0]} and ${others} other${others === 1 ? "" : "s"}`;
  },
  arrived: (n) => `New notification: ${n.title}`,
  taken: (label) => `✓ ${label}`,
};

const PAGE_SIZE = 20;
const SEVERAL = { day: 86400, hour: 3600, minute: 60 };

/** Whether an item the client reports is one just delivered (at its first place in its stream,
 * untouched since), not an older one a sync or a poll brings because it changed. */
function isArrival(n) {
  return n.seq === n.deliveredSeq && !n.read && !n.archived && !n.snoozedUntil;
}

/** A polite live region's new text, said again even when it is the same as the last. */
function announce(region, text) {
  region.textContent = "";
  setTimeout(() => (region.textContent = text), 30);
}

/** Newest first, as the feed's pages are: createdAt, then id. */
function newestFirst(a, b) {
  return a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : b.id - a.id;
}

/** What an inbox holds: the items by id (from pages, live events and syncs) and, per view
 * (state and category), how far its pages have been read. A view shows the items that pass its
 * filter down to the oldest one its pages brought (all of them once it has no next page), so
 * that the list never skips items of pages not read yet. */
export class Feed {
  constructor() {
    this.items = new Map();
    this.views = new Map(); // "state|category" -> {next, done, oldest, started}
    // What came live, so that a page asked for before it cannot bring back an older state: a
    // clock, the last change per id ([at, "upsert" | "read" | "removed", readAt]), the marks
    this.clock = 0;
    this.changes = new Map();
    this.marks = [];
    this.resets = 0; // a page asked for before a reset is dropped
  }

  view(state, category) {
    const key = `${state}|${category || ""}`;
    let v = this.views.get(key);
    if (!v) this.views.set(key, (v = { next: null, done: false, oldest: null, started: false }));
    return v;
  }

  static passes(n, state, category) {
    if (n.snoozedUntil) return false; // back when it wakes, as an update
    if (category && n.category !== category) return false;
    if (state === "archived") return n.archived;
    return !n.archived && (state !== "unread" || !n.read);
  }

  /** A page of a view arrived, asked for at `since` (the clock then): its items are kept,
   * unless something newer about them came meanwhile, and the view reaches down to its last. */
  paged(state, category, page, since = this.clock) {
    const v = this.view(state, category);
    const later = this.marks.filter(([at]) => at > since).map(([, mark]) => mark);
    for (let n of page.notifications) {
      const [at, kind, readAt] = this.changes.get(n.id) || [0];
      if (at > since) {
        if (kind === "removed" || this.items.has(n.id)) continue; // gone, or newer here
        if (kind === "read") n = { ...n, read: true, readAt, seen: true, seenAt: n.seenAt || readAt };
      }
      if (later.length) {
        const one = new Map([[n.id, { ...n }]]);
        for (const mark of later) applyMark(one, mark);
        n = one.get(n.id);
      }
      this.items.set(n.id, n);
    }
    const last = page.notifications[page.notifications.length - 1];
    if (last) v.oldest = last;
    v.next = page.next;
    v.done = !page.next;
    v.started = true;
  }

  /** A view's next page from `client` (notification:page), kept unless a reset came while it
   * was on its way (what came live meanwhile wins over it: paged()'s `since`). Resolves to
   * whether it was kept. */
  async load(client, state, category, limit) {
    const view = this.view(state, category);
    const options = { state, limit };
    if (category) options.category = category;
    if (view.next) options.next = view.next;
    const [since, resets] = [this.clock, this.resets];
    const page = await client.page(options);
    if (this.resets !== resets) return false;
    this.paged(state, category, page, since);
    return true;
  }

  list(state, category) {
    const v = this.view(state, category);
    if (!v.started) return [];
    return [...this.items.values()]
      .filter((n) => Feed.passes(n, state, category) && (v.done || !v.oldest || newestFirst(n, v.oldest) <= 0))
      .sort(newestFirst);
  }

  upsert(n) {
    this.items.set(n.id, n);
    this.changes.set(n.id, [++this.clock, "upsert"]);
  }

  read({ ids, readAt }) {
    for (const id of ids) {
      const n = this.items.get(id);
      if (n) this.items.set(id, { ...n, read: true, readAt, seen: true, seenAt: n.seenAt || readAt });
      this.changes.set(id, [++this.clock, "read", readAt]);
    }
  }

  remove(id) {
    this.items.delete(id);
    this.changes.set(id, [++this.clock, "removed"]);
  }

  mark(mark) {
    applyMark(this.items, mark);
    this.marks.push([++this.clock, mark]);
    if (this.marks.length > 100) this.marks.shift(); // (pages take less than 100 marks)
  }

  /** A stream's items can no longer be trusted (a cursor too old, a role lost): read again. */
  reset(stream) {
    for (const [id, n] of this.items) if (n.stream === stream) this.items.delete(id);
    this.views.clear();
    this.resets += 1;
  }
}

/** Where an item's click leads: its actionUrl when it is http(s) (never javascript: and the
 * like, whatever a row holds), resolved against the page. */
export function safeUrl(actionUrl, base = globalThis.location && globalThis.location.href) {
  // as the database's check on actions: a path must not lead to another host ("//x", "/\\x",
  // or either with a tab or newline inside, which browsers drop)
  if (!actionUrl || /[\s\u0000-\u001f\u007f]/.test(actionUrl) || /^[\\/][\\/]/.test(actionUrl)) return null;
  try {
    const url = new URL(actionUrl, base);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function when(iso, format) {
  const seconds = (Date.parse(iso) - Date.now()) / 1000;
  if (!Number.isFinite(seconds)) return ""; // (a year past 9999 parses to nothing)
  for (const [unit, size] of Object.entries(SEVERAL)) {
    if (Math.abs(seconds) >= size) return format.format(Math.round(seconds / size), unit);
  }
  return format.format(Math.min(0, Math.round(seconds)), "second");
}

/** One row of the list in the Tab order, with its buttons, or none of it: Tab goes to the
 * current row and its buttons, then on; arrow keys choose the current row. */
function tabbing(li, current) {
  li.tabIndex = current ? 0 : -1;
  for (const button of li.querySelectorAll(".act, .more")) button.tabIndex = current ? 0 : -1;
}

function element(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (name === "text") el.textContent = value;
    else if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  el.append(...children);
  return el;
}

const THEME = `
  :host { --notifyd-accent: #2962d9; --notifyd-fg: #1d2330; --notifyd-bg: #fff;
    --notifyd-muted: #5d6577; --notifyd-line: #e6e9f2; --notifyd-unread: #eef4ff;
    --notifyd-hover: #f4f6fa; --notifyd-badge: #d33; --notifyd-badge-fg: #fff;
    --notifyd-done: #1f8a4c; --notifyd-high: #c62828; --notifyd-radius: .6rem; --notifyd-shadow: 0 8px 28px #0003;
    --notifyd-font: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  @media (prefers-color-scheme: dark) {
    :host { --notifyd-accent: #7aa5ff; --notifyd-fg: #e6e9f0; --notifyd-bg: #1c212b;
      --notifyd-muted: #9aa3b5; --notifyd-line: #2a3040; --notifyd-unread: #1f2a44;
      --notifyd-hover: #252b37; --notifyd-done: #5fd38f; --notifyd-high: #ff8a80; --notifyd-shadow: 0 8px 28px #000a; }
  }
  .sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%);
    white-space: nowrap; }
  button { font: inherit; color: inherit; }
  :focus-visible { outline: 2px solid var(--notifyd-accent); outline-offset: 2px; }
`;

const INBOX_STYLE = `${THEME}
  :host { display: block; font-family: var(--notifyd-font); color: var(--notifyd-fg);
    background: var(--notifyd-bg); border-radius: var(--notifyd-radius); min-width: 0; }
  .inbox { display: flex; flex-direction: column; height: 100%; max-height: inherit; min-height: 0; }
  .header { display: flex; align-items: center; gap: .5rem; padding: .9rem 1rem .5rem; }
  h2 { flex: 1; margin: 0; font-size: 1.05rem; }
  .link { border: 0; background: none; color: var(--notifyd-accent); cursor: pointer;
    font-size: .85rem; padding: .25rem .35rem; border-radius: .3rem; }
  .link:hover { text-decoration: underline; }
  [role=tablist] { display: flex; flex-wrap: wrap; column-gap: .15rem; padding: 0 .75rem;
    border-bottom: 1px solid var(--notifyd-line); }
  [role=tab] { display: inline-flex; align-items: center; border: 0; background: none;
    padding: .55rem .6rem; font-size: .88rem; cursor: pointer;
    color: var(--notifyd-muted); border-bottom: 2px solid transparent; white-space: nowrap; }
  [role=tab][aria-selected=true] { color: var(--notifyd-fg); border-bottom-color: var(--notifyd-accent);
    font-weight: 600; }
  .count { display: inline-block; min-width: 1.1rem; margin-left: .3rem; padding: 0 .35rem;
    border-radius: .6rem; background: var(--notifyd-line); font-size: .72rem; line-height: 1.1rem;
    text-align: center; font-weight: 600; }
  .scroller { overflow-y: auto; flex: 1; min-height: 0; overscroll-behavior: contain; }
  ul { list-style: none; margin: 0; padding: 0; }
  li { position: relative; display: grid; grid-template-columns: .6rem minmax(0, 1fr) auto;
    gap: .15rem .6rem; padding: .75rem 1rem; border-bottom: 1px solid var(--notifyd-line);
    cursor: pointer; }
  li:hover { background: var(--notifyd-hover); }
  li.unread { background: var(--notifyd-unread); }
  li:focus-visible { outline-offset: -2px; }
  .dot { width: .5rem; height: .5rem; margin-top: .4rem; border-radius: 50%; }
  li.unseen .dot { background: var(--notifyd-accent); }
  .body { min-width: 0; }
  .title { font-size: .92rem; overflow-wrap: anywhere; }
  li.unread .title { font-weight: 600; }
  li.high .title { color: var(--notifyd-high); }
  .tag { display: inline-block; margin-left: .35rem; padding: 0 .45rem; border-radius: .6rem;
    background: var(--notifyd-line); color: var(--notifyd-muted); font-size: .72rem; font-weight: 500;
    vertical-align: middle; }
  .group, .message, .meta { font-size: .84rem; color: var(--notifyd-muted); overflow-wrap: anywhere; }
  .group { color: var(--notifyd-fg); }
  .meta { font-size: .76rem; margin-top: .15rem; }
  .actions { display: flex; flex-wrap: wrap; gap: .4rem; margin-top: .45rem; min-width: 0; }
  .act, .taken { max-width: 100%; overflow-wrap: anywhere; text-align: left; }
  .act { border: 1px solid var(--notifyd-accent); color: var(--notifyd-accent); background: none;
    border-radius: .35rem; padding: .2rem .7rem; font-size: .8rem; cursor: pointer; }
  .act.primary { background: var(--notifyd-accent); color: var(--notifyd-bg); }
  .taken { font-size: .8rem; color: var(--notifyd-done); }
  .more { align-self: start; border: 0; background: none; cursor: pointer; border-radius: .3rem;
    width: 1.9rem; height: 1.9rem; color: var(--notifyd-muted); font-size: 1.1rem; line-height: 1; }
  .more:hover, .more[aria-expanded=true] { background: var(--notifyd-line); }
  [role=menu] { position: absolute; right: .8rem; top: 2.6rem; z-index: 2; min-width: 12rem;
    padding: .3rem; background: var(--notifyd-bg); border: 1px solid var(--notifyd-line);
    border-radius: .5rem; box-shadow: var(--notifyd-shadow); display: grid; }
  [role=menu][hidden] { display: none; }
  [role=menuitem] { border: 0; background: none; text-align: left; padding: .45rem .6rem;
    border-radius: .35rem; font-size: .86rem; cursor: pointer; }
  [role=menuitem]:hover, [role=menuitem]:focus-visible { background: var(--notifyd-hover); }
  .status { padding: 1.6rem 1rem; text-align: center; color: var(--notifyd-muted); font-size: .9rem; }
  .status:empty { display: none; }
  .sentinel { height: 1px; }
`;

/** What both elements share: the `client` property, whose events' handlers (`listens()`) are
 * on only while the element is in the document (taken out, it stops; put back, it starts
 * again from the client's current state), and the `strings` property (merged over STRINGS). */
class ClientElement extends (globalThis.HTMLElement || class {}) {
  static get observedAttributes() {
    return ["categories", "lang"];
  }

  get client() {
    return this._client || null;
  }

  set client(client) {
    this._stopListening();
    this._client = client;
    if (this.isConnected) this._listen();
    this.clientChanged();
  }

  connectedCallback() {
    if (this._client && !this._off) {
      this._listen();
      this.clientChanged(); // what happened while it was out is not known here
    }
  }

  disconnectedCallback() {
    this._stopListening();
  }

  _listen() {
    const client = this._client;
    this._off = Object.entries(this.listens()).map(([event, handler]) => client.on(event, handler));
  }

  _stopListening() {
    for (const off of this._off || []) off();
    this._off = null;
  }

  get strings() {
    return this._strings || STRINGS;
  }

  set strings(value) {
    this._strings = { ...STRINGS, ...value, tabs: { ...STRINGS.tabs, ...(value && value.tabs) } };
    this.stringsChanged(value);
  }
}

/** <notifyd-inbox>: the feed, with tabs (All, Unread, Archived, and one per name of its
 * `categories` attribute), counts, pages loaded as it scrolls, "mark all read", a menu per item
 * (read or unread, archive, snooze) and, on a click, the item read and its actionUrl followed
 * (a cancelable `notifyd:open` event first). Set `client` to the page's NotifydClient. */
export class NotifydInbox extends ClientElement {
  constructor() {
    super();
    this.feed = new Feed();
    this.tab = { state: "all", category: null };
    this._rows = new Map(); // id -> {li, sig}
    this._loading = null;
    this._failed = false;
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = `<style>${INBOX_STYLE}</style>`;
    this.$title = element("h2", { id: "title", part: "title" });
    this.$markAll = element("button", { class: "link", part: "mark-all", type: "button",
      onclick: () => this.markAllRead() });
    this.$tabs = element("div", { role: "tablist", part: "tabs", "aria-labelledby": "title",
      onkeydown: (e) => this._tabKeys(e) });
    this.$list = element("ul", { part: "list", "aria-labelledby": "title",
      onkeydown: (e) => this._listKeys(e) });
    this.$status = element("div", { class: "status", part: "status" });
    this.$sentinel = element("div", { class: "sentinel" });
    this.$scroller = element("div", { class: "scroller", part: "scroller", role: "tabpanel", id: "panel" },
      this.$list, this.$status, this.$sentinel);
    this.$live = element("div", { class: "sr", "aria-live": "polite" });
    root.append(element("div", { class: "inbox", part: "inbox" },
      element("div", { class: "header", part: "header" }, this.$title, this.$markAll),
      this.$tabs, this.$scroller, this.$live));
    this.addEventListener("click", () => this._closeMenus());
  }

  stringsChanged() {
    this.render();
  }

  listens() {
    const client = this._client;
    return {
      notification: (n) => {
        const fresh = !this.feed.items.has(n.id);
        this.feed.upsert(n);
        if (fresh && client.synced && isArrival(n)) this._announce(n);
        this.render();
      },
      updated: (n) => { this.feed.upsert(n); this.render(); },
      read: (answer) => { this.feed.read(answer); this.render(); },
      deleted: ({ id }) => { this.feed.remove(id); this.render(); },
      marked: (mark) => { this.feed.mark(mark); this.render(); },
      reset: (stream) => { this.feed.reset(stream); this.render(); this.ensure(); },
      counts: () => this.renderTabs(),
      state: (state) => { if (state === "open" || state === "polling") this.ensure(); },
    };
  }

  clientChanged() {
    this.feed = new Feed();
    this._loading = null; // (a page of the previous client, on its way, is dropped)
    this._rows.clear();
    this.$list.replaceChildren();
    this.render();
    this.ensure();
  }

  attributeChangedCallback() {
    this._format = null;
    this.render();
  }

  connectedCallback() {
    super.connectedCallback();
    this._observer = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) this.more();
    }, { root: this.$scroller, rootMargin: "200px" });
    this._observer.observe(this.$sentinel);
    this._clock = setInterval(() => this._times(), 30000);
    this.render();
  }

  disconnectedCallback() {
    super.disconnectedCallback();
    if (this._observer) this._observer.disconnect();
    clearInterval(this._clock);
  }

  get categories() {
    return (this.getAttribute("categories") || "").split(",").map((c) => c.trim()).filter(Boolean);
  }

  /** The visible items of the current tab, newest first. */
  items() {
    return this.feed.list(this.tab.state, this.tab.category);
  }

  /** Loads the current tab's first page, unless it has one (or failed: then again). */
  ensure() {
    if (!this.feed.view(this.tab.state, this.tab.category).started) this.more();
  }

  /** Loads the current tab's next page when it has one and none is on its way. */
  async more() {
    const client = this._client;
    const { state, category } = this.tab;
    const view = this.feed.view(state, category);
    if (!client || this._loading || view.done || client.state === "stopped") return;
    this._failed = false;
    this._loading = `${state}|${category || ""}`;
    this.renderStatus();
    try {
      // (a page for a client or feed replaced meanwhile lands in the discarded feed)
      await this.feed.load(client, state, category, PAGE_SIZE);
    } catch (err) {
      this._failed = client.state === "open" || client.state === "polling";
    } finally {
      this._loading = null;
    }
    this.render();
    // a short page may leave the sentinel in sight: keep going while it is
    if (!this._failed && this.tab.state === state && this.tab.category === category) {
      const box = this.$sentinel.getBoundingClientRect();
      const frame = this.$scroller.getBoundingClientRect();
      const shown = frame.height > 0; // (a closed popover loads its first page only)
      if (shown && box.top <= frame.bottom + 200 && !this.feed.view(state, category).done) this.more();
    }
  }

  select(state, category = null) {
    this.tab = { state, category };
    this.$scroller.scrollTop = 0;
    this.render();
    this.ensure();
  }

  markAllRead() {
    const client = this._client;
    if (!client) return Promise.resolve();
    const category = this.tab.category;
    const done = category ? client.change("mark-read", null, { category }) : client.markAllRead();
    return done.catch((err) => this._error(err));
  }

  /** Marks the item read, then follows its actionUrl unless a `notifyd:open` listener called
   * preventDefault(). */
  open(n) {
    const client = this._client;
    const read = !n.read && client ? client.markRead([n.id]).catch((err) => this._error(err)) : null;
    const url = safeUrl(n.actionUrl);
    const event = new CustomEvent("notifyd:open", { detail: { notification: n, url },
      bubbles: true, composed: true, cancelable: true });
    if (!this.dispatchEvent(event) || !url) return;
    // leaving the page closes the socket: the read goes first (or a second passes)
    const left = () => globalThis.location.assign(url);
    if (read) Promise.race([read, new Promise((r) => setTimeout(r, 1000))]).then(left);
    else left();
  }

  _error(err) {
    this.dispatchEvent(new CustomEvent("notifyd:error", { detail: err, bubbles: true, composed: true }));
  }

  _announce(n) {
    // (inside a bell, the bell says it: its popover may be closed)
    if (!this.hasAttribute("data-quiet")) announce(this.$live, this.strings.arrived(n));
  }

  _relative() {
    if (!this._format) {
      const lang = this.getAttribute("lang") || document.documentElement.lang || undefined;
      try {
        this._format = new Intl.RelativeTimeFormat(lang, { numeric: "auto" });
      } catch {
        this._format = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" }); // "en_US"
      }
    }
    return this._format;
  }

  _times() {
    for (const time of this.$list.querySelectorAll("time")) {
      time.textContent = when(time.dateTime, this._relative());
    }
  }

  // -- drawing ------------------------------------------------------------------------------

  render() {
    if (!this.$list) return;
    const t = this.strings;
    this.$title.textContent = t.title;
    this.$markAll.textContent = t.markAllRead;
    this.$markAll.hidden = this.tab.state === "archived"; // (it would read other tabs' items)
    this.renderTabs();
    const wanted = this.items();
    const keep = new Set(wanted.map((n) => n.id));
    for (const [id, row] of this._rows) {
      if (!keep.has(id)) {
        row.li.remove();
        this._rows.delete(id);
      }
    }
    let at = this.$list.firstElementChild;
    wanted.forEach((n, i) => {
      const sig = JSON.stringify([n.title, n.message, n.category, n.read, n.seen, n.archived,
        n.groupCount, n.actors, n.action, n.actions, n.createdAt, n.priority]);
      let row = this._rows.get(n.id);
      if (!row) {
        row = { li: element("li", { part: "item", "data-id": n.id }), sig: null };
        this._rows.set(n.id, row);
      }
      if (row.sig !== sig) {
        try {
          this._fill(row.li, n);
        } catch (err) {
          row.li.replaceChildren(element("div", { class: "body", text: String(n.title) }));
          this._error(err);
        }
        row.sig = sig;
      }
      tabbing(row.li, false);
      if (at !== row.li) this.$list.insertBefore(row.li, at);
      else at = at.nextElementSibling;
    });
    const focusable = this.$list.querySelector("li:focus-within") || this.$list.firstElementChild;
    if (focusable) tabbing(focusable, true);
    this.renderStatus();
  }

  renderStatus() {
    const t = this.strings;
    const view = this.feed.view(this.tab.state, this.tab.category);
    this.$list.setAttribute("aria-busy", String(Boolean(this._loading)));
    let text = "";
    if (this._failed) text = t.loadFailed;
    else if (this._loading && !this.$list.childElementCount) text = t.loading;
    else if (view.started && view.done && !this.$list.childElementCount) {
      text = this.tab.state === "archived" ? t.emptyArchived : t.empty;
    }
    this.$status.replaceChildren(text);
    if (this._failed) {
      this.$status.append(" ", element("button", { class: "link", type: "button", text: t.retry,
        onclick: () => this.more() }));
    }
  }

  renderTabs() {
    const t = this.strings;
    const counts = (this._client && this._client.counts) || null;
    const per = (counts && counts.categories) || {};
    const tabs = [
      ["all", null, t.tabs.all, null],
      ["unread", null, t.tabs.unread, counts ? counts.count : null],
      ["archived", null, t.tabs.archived, null],
      ...this.categories.map((c) => ["all", c, t.categories[c] || c, per[c] ? per[c].unread : 0]),
    ];
    const focused = this.shadowRoot.activeElement;
    const had = focused && focused.getAttribute("role") === "tab" ? focused.dataset.key : null;
    this.$tabs.replaceChildren(...tabs.map(([state, category, label, count]) => {
      const selected = this.tab.state === state && this.tab.category === category;
      const key = `${state}|${category || ""}`;
      const tab = element("button", { role: "tab", type: "button", part: selected ? "tab selected-tab" : "tab",
        "aria-selected": String(selected), tabindex: selected ? "0" : "-1", "aria-controls": "panel",
        id: `tab-${[...key].map((c) => c.charCodeAt(0).toString(16)).join("")}`,
        "data-key": key, onclick: () => this.select(state, category) }, label);
      if (count) tab.append(element("span", { class: "count", part: "count", text: String(count) }));
      if (selected) this.$scroller.setAttribute("aria-labelledby", tab.id);
      return tab;
    }));
    if (had) {
      const again = this.$tabs.querySelector(`[data-key="${CSS.escape(had)}"]`);
      if (again) again.focus();
    }
  }

  _fill(li, n) {
    const t = this.strings;
    li.className = `${n.read ? "read" : "unread"} ${n.seen ? "seen" : "unseen"}${n.priority === "high" ? " high" : ""}`;
    li.setAttribute("part", n.read ? "item" : "item unread-item");
    const body = element("div", { class: "body" });
    if (!n.read) body.append(element("span", { class: "sr", text: `${t.unreadItem}: ` }));
    const title = element("div", { class: "title", part: "item-title", text: n.title });
    if (n.category) title.append(element("span", { class: "tag", part: "category", text: n.category }));
    body.append(title);
    if (n.groupCount > 1) body.append(element("div", { class: "group", part: "item-group", text: t.group(n) }));
    if (n.message) body.append(element("div", { class: "message", part: "item-message", text: n.message }));
    body.append(element("div", { class: "meta", part: "item-meta" },
      element("time", { datetime: n.createdAt, text: when(n.createdAt, this._relative()) })));
    if (n.actions.length) {
      const row = element("div", { class: "actions" });
      if (n.action) {
        const taken = n.actions.find((a) => a.id === n.action);
        row.append(element("span", { class: "taken", text: t.taken(taken ? taken.label : n.action) }));
      } else {
        n.actions.forEach((a, i) => row.append(element("button", {
          class: i ? "act" : "act primary", part: "action", type: "button", text: a.label,
          "data-key": `action:${a.id}`,
          onclick: (e) => { e.stopPropagation(); this._act(n, a); } })));
      }
      body.append(row);
    }
    const menu = element("div", { role: "menu", part: "menu", hidden: true,
      onkeydown: (e) => this._menuKeys(e) });
    const item = (label, run) => element("button", { role: "menuitem", type: "button", tabindex: "-1",
      part: "menu-item", text: label, "data-key": `menu:${menu.childElementCount}`, onclick: (e) => {
        e.stopPropagation();
        this._closeMenus(true);
        run().catch((err) => this._error(err));
      } });
    const change = (op, extra) => () => this._client.change(op, [n.id], extra);
    const tomorrow = new Date();
    tomorrow.setDate(tomorrow.getDate() + 1);
    tomorrow.setHours(9, 0, 0, 0);
    menu.append(
      item(n.read ? t.markUnread : t.markRead, change(n.read ? "mark-unread" : "mark-read")),
      item(n.archived ? t.unarchive : t.archive, change(n.archived ? "unarchive" : "archive")),
      item(t.snoozeHour, change("snooze", { until: new Date(Date.now() + 3600e3).toISOString() })),
      item(t.snoozeTomorrow, change("snooze", { until: tomorrow.toISOString() })),
    );
    const more = element("button", { class: "more", part: "menu-button", type: "button", "data-key": "more",
      "aria-haspopup": "menu", "aria-expanded": "false", "aria-label": t.more(n), text: "⋯",
      onclick: (e) => { e.stopPropagation(); this._toggleMenu(more, menu); } });
    // a change that comes while the user is in the item (its menu open, a button focused)
    // keeps them where they were
    const active = this.shadowRoot.activeElement;
    const at = active && li.contains(active) ? active.dataset.key : null;
    const wasOpen = Boolean(li.querySelector("[role=menu]:not([hidden])"));
    li.replaceChildren(element("span", { class: "dot", "aria-hidden": "true" }), body, more, menu);
    if (wasOpen) {
      menu.hidden = false;
      more.setAttribute("aria-expanded", "true");
    }
    if (at) {
      const again = li.querySelector(`button[data-key="${CSS.escape(at)}"]`) || (wasOpen ? menu.firstElementChild : more);
      again.focus();
    }
    li.onclick = () => this.open(this.feed.items.get(n.id) || n);
  }

  /** Records the action, then follows its url unless a `notifyd:action` listener called
   * preventDefault(). */
  _act(n, action) {
    const done = this._client.act(n.id, action.id).catch((err) => this._error(err));
    const url = safeUrl(action.url);
    const event = new CustomEvent("notifyd:action", { detail: { notification: n, action, url },
      bubbles: true, composed: true, cancelable: true });
    if (this.dispatchEvent(event) && url) {
      Promise.race([done, new Promise((r) => setTimeout(r, 1000))]).then(() => globalThis.location.assign(url));
    }
    return done;
  }

  _toggleMenu(button, menu) {
    const open = menu.hidden;
    this._closeMenus();
    if (!open) return;
    menu.hidden = false;
    button.setAttribute("aria-expanded", "true");
    menu.firstElementChild.focus();
  }

  _closeMenus(refocus = false) {
    for (const menu of this.$list.querySelectorAll("[role=menu]:not([hidden])")) {
      menu.hidden = true;
      const button = menu.previousElementSibling;
      button.setAttribute("aria-expanded", "false");
      if (refocus) button.focus();
    }
  }

  _menuKeys(e) {
    const items = [...e.currentTarget.children];
    const i = items.indexOf(this.shadowRoot.activeElement);
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      items[(i + (e.key === "ArrowDown" ? 1 : items.length - 1)) % items.length].focus();
    } else if (e.key === "Escape" || e.key === "Tab") {
      e.preventDefault(); // handled: closes the menu, not the popover around it
      this._closeMenus(true);
    }
  }

  _listKeys(e) {
    const li = e.target.closest("li");
    if (!li || e.target !== li) return;
    const rows = [...this.$list.children];
    const i = rows.indexOf(li);
    const go = { ArrowDown: i + 1, ArrowUp: i - 1, Home: 0, End: rows.length - 1 }[e.key];
    if (go !== undefined) {
      e.preventDefault();
      const next = rows[Math.max(0, Math.min(rows.length - 1, go))];
      tabbing(li, false);
      tabbing(next, true);
      next.focus();
      if (go >= rows.length - 1) this.more();
    } else if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      li.click();
    }
  }

  _tabKeys(e) {
    const tabs = [...this.$tabs.children];
    const i = tabs.indexOf(this.shadowRoot.activeElement);
    const go = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
    if (go === undefined || i < 0) return;
    e.preventDefault();
    const next = tabs[(go + tabs.length) % tabs.length];
    next.click();
    const again = this.$tabs.querySelector(`[data-key="${CSS.escape(next.dataset.key)}"]`);
    if (again) again.focus();
  }

  /** The focusable elements, in order (for the popover's focus trap). */
  focusables() {
    return [...this.shadowRoot.querySelectorAll("button:not([tabindex='-1']), li[tabindex='0'], [role=tab][tabindex='0']")]
      .filter((el) => !el.closest("[hidden]") && el.getClientRects().length);
  }
}

const BELL_STYLE = `${THEME}
  :host { display: inline-block; position: relative; font-family: var(--notifyd-font);
    color: var(--notifyd-fg); --notifyd-popover-width: 24rem; --notifyd-popover-height: 34rem; }
  .bell { position: relative; border: 0; background: none; cursor: pointer; padding: .35rem;
    border-radius: 50%; line-height: 0; color: inherit; }
  .bell:hover { background: var(--notifyd-hover); }
  svg { width: 1.5rem; height: 1.5rem; fill: currentColor; }
  .badge { position: absolute; top: 0; right: 0; min-width: 1.1rem; padding: 0 .3rem; box-sizing: border-box;
    border-radius: .6rem; background: var(--notifyd-badge); color: var(--notifyd-badge-fg);
    font: 600 .7rem/1.1rem var(--notifyd-font); text-align: center; transform: translate(25%, -15%); }
  .badge[hidden] { display: none; }
  .popover { position: absolute; right: 0; left: var(--placed-left, auto); top: calc(100% + .4rem);
    z-index: 1000;
    width: min(var(--notifyd-popover-width), calc(100vw - 1rem)); height: var(--notifyd-popover-height);
    max-height: calc(100vh - 5rem); display: flex; flex-direction: column;
    border: 1px solid var(--notifyd-line); border-radius: var(--notifyd-radius);
    background: var(--notifyd-bg); box-shadow: var(--notifyd-shadow); }
  .popover[hidden] { display: none; }
  notifyd-inbox { flex: 1; min-height: 0; max-height: 100%; }
  .toasts { position: fixed; right: 1rem; bottom: 1rem; z-index: 1001; display: grid; gap: .5rem;
    width: min(22rem, calc(100vw - 2rem)); }
  .toast { border: 0; text-align: left; cursor: pointer; padding: .75rem 1rem;
    border-radius: var(--notifyd-radius); background: var(--notifyd-fg); color: var(--notifyd-bg);
    box-shadow: var(--notifyd-shadow); font: .88rem/1.4 var(--notifyd-font); overflow-wrap: anywhere; }
  .toast b, .toast span { display: -webkit-box; -webkit-box-orient: vertical; -webkit-line-clamp: 2;
    overflow: hidden; }
  @media (max-width: 480px) {
    .popover { position: fixed; left: .5rem; right: .5rem; top: 3.5rem; width: auto; height: auto;
      bottom: .5rem; max-height: none; }
    .toasts { left: 1rem; width: auto; }
  }
`;
const BELL_ICON = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22Zm7-6V11a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2Z"/></svg>';

/** <notifyd-bell>: a button with the count of unseen items that opens a <notifyd-inbox> in a
 * popover (a modal dialog: focus stays inside, Escape or a click outside closes it) and marks
 * everything seen. Attributes: `categories` (passed to the inbox), `toasts` (live arrivals in a
 * corner), `system-notifications` (through the Notification API while the page is hidden, once
 * requestSystemNotifications() was allowed), `sound` (a URL played on a live arrival). */
export class NotifydBell extends ClientElement {
  constructor() {
    super();
    this._known = new Set();
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = `<style>${BELL_STYLE}</style>`;
    this.$badge = element("span", { class: "badge", part: "badge", hidden: true, "aria-hidden": "true" });
    this.$button = element("button", { class: "bell", part: "button", type: "button",
      "aria-haspopup": "dialog", "aria-expanded": "false", onclick: () => this.toggle() });
    this.$button.innerHTML = BELL_ICON;
    this.$button.append(this.$badge);
    this.inbox = element("notifyd-inbox", { exportparts: "inbox, header, title, mark-all, tabs, tab, selected-tab, count, scroller, list, item, unread-item, item-title, item-group, item-message, item-meta, category, action, menu-button, menu, menu-item, status" });
    this.$popover = element("div", { class: "popover", part: "popover", role: "dialog", "aria-modal": "true",
      hidden: true, onkeydown: (e) => this._keys(e) }, this.inbox);
    this.inbox.setAttribute("data-quiet", "");
    this.$toasts = element("div", { class: "toasts", part: "toasts" });
    this.$live = element("div", { class: "sr", "aria-live": "polite" });
    root.append(this.$button, this.$popover, this.$toasts, this.$live);
    this._resized = () => {
      if (this.isOpen) this._place();
    };
    this._outside = (e) => {
      if (!this.$popover.hidden && !e.composedPath().includes(this)) this.close(false);
    };
    this._escape = (e) => {
      if (e.key === "Escape" && this.isOpen && !e.defaultPrevented) this.close();
    };
  }

  stringsChanged(value) {
    this.inbox.strings = value;
    this._badge();
  }

  listens() {
    return { counts: () => this._badge(), notification: (n) => this._arrived(n) };
  }

  clientChanged() {
    this.inbox.client = this._client;
    this._badge();
  }

  attributeChangedCallback(name, _old, value) {
    if (value == null) this.inbox.removeAttribute(name);
    else this.inbox.setAttribute(name, value);
  }

  connectedCallback() {
    super.connectedCallback();
    document.addEventListener("pointerdown", this._outside, true);
    document.addEventListener("keydown", this._escape);
    globalThis.addEventListener("resize", this._resized);
    this._badge();
  }

  disconnectedCallback() {
    super.disconnectedCallback();
    this.close(false);
    document.removeEventListener("pointerdown", this._outside, true);
    document.removeEventListener("keydown", this._escape);
    globalThis.removeEventListener("resize", this._resized);
  }

  get isOpen() {
    return !this.$popover.hidden;
  }

  toggle() {
    if (this.isOpen) this.close();
    else this.open();
  }

  /** Opens the inbox and marks everything seen (read stays as it is). */
  open() {
    this.$toasts.replaceChildren(); // what they said is in the list now
    this.$popover.hidden = false;
    this._place();
    this.$popover.setAttribute("aria-label", this.strings.title);
    this.$button.setAttribute("aria-expanded", "true");
    const client = this._client;
    if (client && client.counts && client.counts.unseen) {
      client.change("mark-seen", null).catch((err) => this.inbox._error(err));
    }
    this.inbox.ensure();
    const first = this.inbox.shadowRoot.querySelector("[role=tab][aria-selected=true]");
    if (first) first.focus();
    this.dispatchEvent(new CustomEvent("notifyd:toggle", { detail: { open: true }, bubbles: true }));
  }

  close(refocus = true) {
    if (!this.isOpen) return;
    this.$popover.hidden = true;
    this.$button.setAttribute("aria-expanded", "false");
    if (refocus) this.$button.focus();
    this.dispatchEvent(new CustomEvent("notifyd:toggle", { detail: { open: false }, bubbles: true }));
  }

  /** Asks the browser for permission to show system notifications (call it from a click). */
  async requestSystemNotifications() {
    if (!globalThis.Notification) return "unsupported";
    return Notification.permission === "default" ? Notification.requestPermission() : Notification.permission;
  }

  _badge() {
    const unseen = (this._client && this._client.counts && this._client.counts.unseen) || 0;
    this.$badge.hidden = !unseen;
    this.$badge.textContent = unseen > 99 ? "99+" : String(unseen);
    this.$button.setAttribute("aria-label", this.strings.bell(unseen));
  }

  _keys(e) {
    if (e.key !== "Tab") return; // (Escape: _escape, wherever the focus is)
    const order = this.inbox.focusables();
    if (!order.length) return;
    const active = this.inbox.shadowRoot.activeElement;
    const i = order.indexOf(active);
    if (e.shiftKey && i <= 0) {
      e.preventDefault();
      order[order.length - 1].focus();
    } else if (!e.shiftKey && (i === order.length - 1 || i < 0)) {
      e.preventDefault();
      order[0].focus();
    }
  }

  _arrived(n) {
    const client = this._client;
    const fresh = !this._known.has(n.id);
    this._known.add(n.id);
    if (!fresh || !client.synced || !isArrival(n)) return;
    this._announce(n);
    if (this.hasAttribute("toasts") && !this.isOpen) this._toast(n);
    if (this.hasAttribute("system-notifications") && document.visibilityState === "hidden" &&
        globalThis.Notification && Notification.permission === "granted") {
      const shown = new Notification(n.title, { body: n.message || "", tag: `notifyd-${n.id}` });
      shown.onclick = () => { globalThis.focus(); this.inbox.open(n); };
    }
    const sound = this.getAttribute("sound");
    if (sound) {
      try {
        const played = new Audio(sound).play();
        if (played) played.catch(() => {}); // a page the user has not touched may not play
      } catch {
        // no Audio here
      }
    }
  }

  _announce(n) {
    announce(this.$live, this.strings.arrived(n));
  }

  /** Below the bell, right-aligned to it, moved left or right to stay in the window (below
   * 480 px the stylesheet makes it a sheet across the screen). */
  _place() {
    // (a custom property, not `left`: the narrow sheet's own left wins over it at any moment,
    // before a resize event has come)
    const popover = this.$popover;
    popover.style.removeProperty("--placed-left");
    const host = this.getBoundingClientRect();
    const width = popover.offsetWidth;
    const left = Math.max(8, Math.min(host.right - width, document.documentElement.clientWidth - width - 8));
    popover.style.setProperty("--placed-left", `${left - host.left}px`);
  }

  _toast(n) {
    const toast = element("button", { class: "toast", part: "toast", type: "button",
      onclick: () => { toast.remove(); this.inbox.open(n); } },
      element("b", { text: n.title }), element("span", { text: n.message || "" }));
    this.$toasts.append(toast);
    while (this.$toasts.childElementCount > 3) this.$toasts.firstElementChild.remove();
    setTimeout(() => toast.remove(), 6000);
  }
}

if (globalThis.customElements) {
  if (!customElements.get("notifyd-inbox")) customElements.define("notifyd-inbox", NotifydInbox);
  if (!customElements.get("notifyd-bell")) customElements.define("notifyd-bell", NotifydBell);
}

export default NotifydClient;
