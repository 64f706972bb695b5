// notifyd benchmark peer: the Node.js Socket.IO 4 server a team would write today for the same path
// as notifyd, a row committed to notifyd.notifications -> pg LISTEN -> io.to(room).emit -> devices.
// JWT (HS256) handshake middleware, rooms user:<sub> / role:<name> / all, sync-request for reconnects.
// Run: NODE_PATH=bench/.peers/socketio-node/node_modules PEER_PORT=.. PEER_DSN=.. PEER_JWT_SECRET=.. node bench/peers/socketio-node/server.js
"use strict";

const http = require("http");
const { Server } = require("socket.io");
const jwt = require("jsonwebtoken");
const pg = require("pg");

const PORT = Number(process.env.PEER_PORT || 3000);
const DSN = process.env.PEER_DSN;
const SECRET = process.env.PEER_JWT_SECRET;
if (!DSN || !SECRET) {
  console.error("PEER_DSN and PEER_JWT_SECRET are required");
  process.exit(2);
}

const SYNC_LIMIT = 100;
const pool = new pg.Pool({ connectionString: DSN });
const listener = new pg.Client({ connectionString: DSN });
pool.on("error", (err) => console.error("pg pool error:", err.message));

const httpServer = http.createServer((req, res) => {
  res.writeHead(404).end();
});
const io = new Server(httpServer, {
  transports: ["websocket"],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  cors: { origin: "*" },
});

// Handshake auth: a valid HS256 token with exp, sub (user id) and optional roles.
io.use((socket, next) => {
  const token = socket.handshake.auth?.token || socket.handshake.query?.token;
  try {
    const claims = jwt.verify(String(token || ""), SECRET, { algorithms: ["HS256"] });
    if (typeof claims.exp !== "number" || typeof claims.sub !== "string" || !claims.sub) {
      throw new Error("missing exp or sub");
    }
    const roles = Array.isArray(claims.roles) ? claims.roles : [];
    socket.data.userId = claims.sub;
    socket.data.roles = roles.filter((r) => typeof r === "string").map((r) => r.toLowerCase());
    next();
  } catch {
    next(new Error("unauthorized"));
  }
});

io.on("connection", (socket) => {
  const { userId, roles } = socket.data;
  const streams = ["user:" + userId, ...roles.map((r) => "role:" + r), "all"];
  socket.data.streams = new Set(streams);
  socket.join(streams);
  socket.emit("connection-confirmed", {
    userId,
    roles,
    connectionId: socket.id,
    serverTime: new Date().toISOString(),
    protocolVersion: 1,
  });

  // Catch-up after a reconnect: everything after the client's cursor, per stream it may read.
  socket.on("notification:sync-request", async (data, ack) => {
    if (typeof data === "function") [data, ack] = [{}, data];
    const given = (data && typeof data.cursors === "object" && data.cursors) || {};
    try {
      const notifications = [];
      const cursors = {};
      for (const stream of socket.data.streams) {
        const after = Number(given[stream]) || 0;
        const { rows } = await pool.query(
          "SELECT notifyd.to_wire(n)::text AS wire FROM notifyd.notifications n " +
            "WHERE n.stream = $1 AND n.seq > $2 ORDER BY n.seq LIMIT $3",
          [stream, after, SYNC_LIMIT],
        );
        const batch = rows.map((r) => JSON.parse(r.wire));
        notifications.push(...batch);
        cursors[stream] = batch.length ? batch[batch.length - 1].seq : after;
      }
      const reply = { notifications, cursors };
      if (typeof ack === "function") ack(reply);
      else socket.emit("notification:sync-response", reply);
    } catch (err) {
      console.error("sync failed:", err.message);
      if (typeof ack === "function") ack({ error: "sync failed" });
    }
  });
});

// One promise chain keeps commit order, even when a by-reference row has to be fetched first.
let chain = Promise.resolve();

async function deliver(payload) {
  // <64 hex digits of signature><body>: the body's events, taken on trust (see README)
  for (const ev of JSON.parse(payload.slice(64)).e) {
    if (ev.k !== "n") continue;
    let n = ev.n;
    if (!n) {
      const { rows } = await pool.query(
        "SELECT notifyd.to_wire(n)::text AS wire FROM notifyd.notifications n WHERE id = $1",
        [ev.id],
      );
      if (!rows.length) continue; // deleted before we got to it
      n = JSON.parse(rows[0].wire);
    }
    io.to(n.stream).emit("notification:new", { notification: n });
  }
}

listener.on("notification", (msg) => {
  if (msg.channel !== "notifyd") return;
  chain = chain
    .then(() => deliver(msg.payload))
    .catch((err) => console.error("delivery failed:", err.message));
});
listener.on("error", (err) => {
  // Without LISTEN this server delivers nothing: fail loudly and let the supervisor restart it.
  console.error("pg listener error:", err.message);
  process.exit(1);
});

async function main() {
  await listener.connect();
  await listener.query("LISTEN notifyd");
  await new Promise((resolve, reject) => {
    httpServer.once("error", reject);
    httpServer.listen(PORT, "127.0.0.1", resolve);
  });
  console.log(`listening on ${PORT}`);
}

async function shutdown() {
  try {
    await new Promise((resolve) => io.close(() => resolve()));
    await listener.end();
    await pool.end();
  } catch (err) {
    console.error("shutdown:", err.message);
  }
  process.exit(0);
}
process.once("SIGTERM", shutdown);
process.once("SIGINT", shutdown);

main().catch((err) => {
  console.error("startup failed:", err.message);
  process.exit(1);
});
