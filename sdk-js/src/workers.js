// Run a Durable Object class written for Cloudflare's hibernatable
// WebSocket API as a wsroom room. Keep the class; change its import of
// `DurableObject` to this module, and export it with one line:
//
//   import { DurableObject, exportDurableObject } from "../../sdk-js/src/workers.js";
//   export class Chat extends DurableObject { ... }      // as on Cloudflare
//   export const { onConnect, onMessage, onClose, alarm, fetch } = exportDurableObject(Chat);
//
// How the Workers API maps onto the room:
// - A client joining is the object's `fetch` with the WebSocket upgrade
//   request (`/websocket?type=..&projectId=..&...`, `Upgrade: websocket`):
//   it makes a `WebSocketPair`, calls `this.ctx.acceptWebSocket(server,
//   tags)` and answers `101` with `webSocket: client`; any other answer
//   refuses the client with that status and body.
// - `webSocketMessage(ws, message)`, `webSocketClose(ws, code, reason,
//   wasClean)`, `alarm()` are called for the room's events; `fetch(request)`
//   for HTTP into the room (`/rooms/{projectId}/...`).
// - `this.ctx.getWebSockets(tag?)`, `ws.send`, `ws.close`,
//   `ws.serializeAttachment` / `deserializeAttachment` (JSON, up to the
//   host's 16 KiB with the tags), `this.ctx.storage` (`get`, `put`,
//   `delete`, `list`, `setAlarm`, `getAlarm`, `deleteAlarm`, `deleteAll`;
//   values as JSON), `this.env` (the host's `--room-config`).
// - What is not here is refused by name when the component is built, if
//   the class's own source names it (it is read then, at module
//   initialization): SQL storage, storage transactions, WebSocket
//   auto-responses, the hibernation event timeout, `ws.accept()`
//   (WebSockets outside the hibernation API). `ws.send` of binary data
//   throws, naming itself (the host sends text).
// - A handler that throws fails its own event: logged, as on Cloudflare,
//   not a trap that would reset the room. An alarm that throws is not
//   retried. Values are JSON, not structured clones.
//
// Handlers may be async: the room's event lasts until their promise
// settles (storage here answers at once, so an `await` costs nothing).

import * as host from "wsroom:room/host@0.3.0";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The connection's WebSocket as the object sees it, one per client id. */
class HostWebSocket {
  constructor(id) {
    this.id = id;
    this.readyState = 1;
  }

  send(message) {
    if (typeof message !== "string") {
      throw new TypeError("wsroom: ws.send of binary data is not supported (the host sends text)");
    }
    host.send(message, [{ select: { tag: "client", val: this.id }, except: [] }]);
  }

  close(code = 1000, reason = "") {
    this.readyState = 3;
    host.close(this.id, code, reason);
  }

  serializeAttachment(value) {
    const kept = readAttachment(this.id);
    kept.value = value;
    writeAttachment(this.id, kept);
  }

  deserializeAttachment() {
    return readAttachment(this.id).value ?? null;
  }

  accept() {
    throw new TypeError("wsroom: use this.ctx.acceptWebSocket (the hibernation API), not ws.accept()");
  }
}

/** The tags and the serialized attachment kept with a client (by the host,
 * so they survive hibernation). */
function readAttachment(id) {
  const bytes = host.attachment(id);
  if (bytes === undefined) return { tags: [], value: null };
  try {
    const kept = JSON.parse(decoder.decode(bytes));
    // Kept by other code (a room's earlier version): not ours to read.
    if (kept !== null && typeof kept === "object" && Array.isArray(kept.tags)) return kept;
  } catch {}
  return { tags: [], value: null };
}

function writeAttachment(id, kept) {
  try {
    host.setAttachment(id, encoder.encode(JSON.stringify(kept)));
  } catch (e) {
    const why = e && typeof e === "object" && "payload" in e ? e.payload : e;
    throw new RangeError(`wsroom: serializeAttachment refused: ${why}`);
  }
}

const sockets = new Map();
const socketOf = (id) => {
  let ws = sockets.get(id);
  if (!ws) sockets.set(id, (ws = new HostWebSocket(id)));
  return ws;
};

/** The client joining now: `new WebSocketPair()` during its upgrade gives
 * its socket as the server end. */
let joining = null;

/** Whether the joining client's socket was accepted yet. */
let joinAccepted = false;

/** What `blockConcurrencyWhile` runs, which every event waits for. */
let blocked = null;

/** Compares keys as the host orders them: by their UTF-8 bytes. */
function byBytes(a, b) {
  const x = encoder.encode(a);
  const y = encoder.encode(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

class WebSocketPair {
  constructor() {
    if (joining === null) {
      throw new TypeError("wsroom: a WebSocketPair is made only while a client joins (in fetch)");
    }
    const server = socketOf(joining);
    this[0] = server;
    this[1] = server;
  }
}
globalThis.WebSocketPair = WebSocketPair;

// Workers' Response takes status 101 and a `webSocket`; the standard one
// refuses 101.
const StandardResponse = globalThis.Response;
class WorkersResponse extends StandardResponse {
  constructor(body, init) {
    const upgrade = init?.status === 101;
    super(body, upgrade ? { ...init, status: 200 } : init);
    this.upgraded = upgrade;
    this.webSocket = init?.webSocket ?? null;
  }

  get status() {
    return this.upgraded ? 101 : super.status;
  }
}
globalThis.Response = WorkersResponse;

/** A stored value, or undefined (nothing there, or nothing this layer
 * wrote). */
function parsed(bytes) {
  if (bytes === undefined) return undefined;
  try {
    return JSON.parse(decoder.decode(bytes));
  } catch {
    return undefined;
  }
}

/** A value as stored: JSON (not a structured clone: a Date comes back a
 * string, a Map an object); what JSON cannot hold is refused. */
function stored(key, value) {
  const text = JSON.stringify(value);
  if (text === undefined) {
    throw new TypeError(`wsroom: storage.put(${JSON.stringify(key)}) of a value JSON cannot hold`);
  }
  return encoder.encode(text);
}

const storage = {
  async get(keys) {
    const one = (key) => parsed(host.storageGet(key));
    if (Array.isArray(keys)) {
      const found = new Map();
      for (const key of [...keys].sort(byBytes)) {
        const value = one(key);
        if (value !== undefined) found.set(key, value);
      }
      return found;
    }
    return one(keys);
  },
  async put(key, value) {
    const entries = typeof key === "object" ? Object.entries(key) : [[key, value]];
    // Every value is checked before any is written.
    const values = entries.map(([k, v]) => [k, stored(k, v)]);
    for (const [k, v] of values) {
      try {
        host.storageSet(k, v);
      } catch (e) {
        const why = e && typeof e === "object" && "payload" in e ? e.payload : e;
        throw new RangeError(`wsroom: storage.put(${JSON.stringify(k)}) refused: ${why}`);
      }
    }
  },
  async delete(keys) {
    if (Array.isArray(keys)) return keys.filter((k) => host.storageDelete(k)).length;
    return host.storageDelete(keys);
  },
  async list(options = {}) {
    const { prefix = "", limit, start, startAfter, end, reverse } = options;
    let keys = host.storageKeys(prefix, 0xffffffff);
    if (start !== undefined) keys = keys.filter((k) => byBytes(k, start) >= 0);
    if (startAfter !== undefined) keys = keys.filter((k) => byBytes(k, startAfter) > 0);
    if (end !== undefined) keys = keys.filter((k) => byBytes(k, end) < 0);
    if (reverse) keys.reverse();
    if (limit !== undefined) keys = keys.slice(0, limit);
    const found = new Map();
    for (const key of keys) found.set(key, parsed(host.storageGet(key)));
    return found;
  },
  async deleteAll() {
    host.storageDeleteAll();
  },
  async setAlarm(when) {
    const at = when instanceof Date ? when.getTime() : Number(when);
    host.setAlarm(BigInt(Math.max(0, Math.round(at - Number(host.nowMs())))));
  },
  async getAlarm() {
    const at = host.alarmAt();
    return at === undefined ? null : Number(at);
  },
  async deleteAlarm() {
    host.cancelAlarm();
  },
  transaction() {
    throw new TypeError("wsroom: storage.transaction is not supported (each event's writes commit together)");
  },
  get sql() {
    throw new TypeError("wsroom: storage.sql is not supported");
  },
};

const ctx = {
  id: {
    toString: () => host.projectId(),
    get name() {
      return host.projectId();
    },
  },
  storage,
  acceptWebSocket(ws, tags = []) {
    if (!(ws instanceof HostWebSocket)) {
      throw new TypeError("wsroom: acceptWebSocket takes the server end of a WebSocketPair");
    }
    // Cloudflare's limits on tags.
    if (!Array.isArray(tags) || tags.length > 10 || tags.some((t) => typeof t !== "string" || t.length > 256)) {
      throw new TypeError("wsroom: acceptWebSocket takes at most 10 tags of at most 256 characters");
    }
    if (ws.id === joining) joinAccepted = true;
    const kept = readAttachment(ws.id);
    kept.tags = tags;
    writeAttachment(ws.id, kept);
  },
  getWebSockets(tag) {
    return host
      .clients(undefined)
      // A joining client counts once its socket is accepted.
      .filter((c) => c.id !== joining || joinAccepted)
      .filter((c) => tag === undefined || readAttachment(c.id).tags.includes(tag))
      .map((c) => socketOf(c.id));
  },
  getTags(ws) {
    return readAttachment(ws.id).tags;
  },
  blockConcurrencyWhile(callback) {
    // The room's events wait for it (a room sees one event at a time, but
    // a callback that awaits would otherwise end its event early).
    const done = Promise.resolve().then(callback);
    blocked = done.catch(() => {});
    return done;
  },
  waitUntil(_promise) {},
};

/** `this.env`: the host's `--room-config` values, by name. */
const env = new Proxy(
  {},
  {
    get: (_target, key) => (typeof key === "string" ? host.config(key) : undefined),
  },
);

/** `request` with these headers: a Request keeps no `Upgrade` or
 * `Connection` (forbidden names in the fetch standard), which Workers code
 * reads to tell a WebSocket upgrade. */
function withHeaders(request, headers) {
  Object.defineProperty(request, "headers", { value: headers });
  return request;
}

/** The base class a Durable Object extends on Cloudflare. */
export class DurableObject {
  constructor(state, environment) {
    this.ctx = state;
    this.state = state;
    this.env = environment;
  }
}

/** The Workers APIs this layer does not provide, as they appear in code. */
const UNSUPPORTED = [
  ["storage.sql", "SQL storage (ctx.storage.sql)"],
  ["storage.kv", "the synchronous KV API (ctx.storage.kv)"],
  ["transactionSync", "storage transactions (ctx.storage.transactionSync)"],
  ["storage.transaction", "storage transactions (ctx.storage.transaction)"],
  ["setWebSocketAutoResponse", "WebSocket auto-responses (ctx.setWebSocketAutoResponse)"],
  ["getWebSocketAutoResponse", "WebSocket auto-responses (ctx.getWebSocketAutoResponse)"],
  ["HibernatableWebSocketEventTimeout", "the hibernation event timeout"],
  [".accept()", "WebSockets outside the hibernation API (ws.accept())"],
];

/** Refuses, by name, a class that uses what this layer does not provide:
 * when the component is built, not at its first message. */
function refuseUnsupported(DurableObjectClass) {
  const source = Function.prototype.toString.call(DurableObjectClass);
  const used = UNSUPPORTED.filter(([needle]) => source.includes(needle)).map(([, what]) => what);
  if (used.length > 0) {
    throw new TypeError(
      `wsroom: ${DurableObjectClass.name} uses what wsroom's Workers layer does not support: ${used.join("; ")}`,
    );
  }
}

/** Waits for what `blockConcurrencyWhile` runs, if anything. */
async function unblocked() {
  while (blocked !== null) {
    const waiting = blocked;
    await waiting;
    if (blocked === waiting) blocked = null;
  }
}

/** Whether `thrown` is a refusal this layer made (not the object's error). */
const isRefusal = (thrown) =>
  thrown !== null && typeof thrown === "object" && !(thrown instanceof Error) && "status" in thrown;

/** Logs what a handler threw: on Cloudflare an exception fails its event
 * only, so it does not fail the room (and close every client) here either. */
function logThrown(handler, error) {
  host.log("error", `${handler} threw: ${error?.stack ?? error}`);
}

/** The room's exports for a Durable Object class. */
export function exportDurableObject(DurableObjectClass) {
  refuseUnsupported(DurableObjectClass);
  let object = null;
  const the = () => (object ??= new DurableObjectClass(ctx, env));
  return {
    async onConnect(client) {
      await unblocked();
      const query = new URLSearchParams({ type: client.kind, projectId: host.projectId() });
      for (const [name, value] of client.params) query.append(name, value);
      const headers = new Headers({ upgrade: "websocket", connection: "Upgrade" });
      if (client.userAgent !== undefined) headers.set("user-agent", client.userAgent);
      if (client.origin !== undefined) headers.set("origin", client.origin);
      const request = withHeaders(new Request(`http://wsroom/websocket?${query}`), headers);
      joining = client.id;
      joinAccepted = false;
      let response;
      try {
        response = await the().fetch(request);
      } catch (e) {
        logThrown("fetch (a WebSocket upgrade)", e);
        throw { status: 500, error: "room_error", message: "the room failed to admit the client" };
      } finally {
        joining = null;
      }
      if (response?.status === 101) return;
      sockets.delete(client.id);
      const status = response?.status ?? 500;
      const message = response ? await response.text() : "the object's fetch answered nothing";
      throw {
        status: status >= 400 && status <= 599 ? status : 403,
        error: "refused",
        message,
      };
    },
    async onMessage(sender, message) {
      await unblocked();
      const ws = socketOf(sender.id);
      try {
        if (message.tag === "text") await the().webSocketMessage?.(ws, message.val);
        else if (message.tag === "binary") await the().webSocketMessage?.(ws, message.val.slice().buffer);
        else await the().webSocketError?.(ws, new RangeError("message over the host's size limit"));
      } catch (e) {
        logThrown("webSocketMessage", e);
      }
    },
    async onClose(client, code, reason) {
      await unblocked();
      const ws = socketOf(client.id);
      ws.readyState = 3;
      sockets.delete(client.id);
      try {
        await the().webSocketClose?.(ws, code, reason, code !== 1006);
      } catch (e) {
        logThrown("webSocketClose", e);
      }
    },
    async alarm(info) {
      await unblocked();
      try {
        await the().alarm?.({ retryCount: info.retryCount, isRetry: info.retryCount > 0 });
      } catch (e) {
        // Not retried: a retry here resets the room (see wit/room.wit).
        logThrown("alarm", e);
      }
    },
    async fetch(request) {
      await unblocked();
      const object = the();
      if (typeof object.fetch !== "function") {
        return { status: 404, headers: [], body: encoder.encode("no fetch handler") };
      }
      try {
        // Only a joining client is a WebSocket upgrade here.
        const headers = new Headers();
        for (const [name, value] of request.headers) {
          if (name !== "upgrade" && name !== "connection") headers.append(name, value);
        }
        const body = ["GET", "HEAD"].includes(request.method) ? undefined : request.body;
        const response = await object.fetch(
          withHeaders(new Request(`http://wsroom${request.path}`, { method: request.method, body }), headers),
        );
        return {
          status: response.status,
          headers: [...response.headers.entries()],
          body: new Uint8Array(await response.arrayBuffer()),
        };
      } catch (e) {
        logThrown("fetch", e);
        return {
          status: 500,
          headers: [["content-type", "application/json"]],
          body: encoder.encode(JSON.stringify({ error: "room_error", message: "the object's fetch threw" })),
        };
      }
    },
  };
}
