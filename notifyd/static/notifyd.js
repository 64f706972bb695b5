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

export default NotifydClient;
