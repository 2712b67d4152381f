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
// - What is not here is refused by name when the component is built (the
//   class's source is read then, at module initialization): SQL storage,
//   storage transactions, WebSocket auto-responses, the hibernation event
//   timeout, `ws.accept()` (WebSockets outside the hibernation API). Were
//   one called all the same, it throws, naming itself; so does `ws.send`
//   of binary data (the host sends text).
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
    return JSON.parse(decoder.decode(bytes));
  } catch {
    return { tags: [], value: null };
  }
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

const storage = {
  async get(keys) {
    const one = (key) => {
      const value = host.storageGet(key);
      return value === undefined ? undefined : JSON.parse(decoder.decode(value));
    };
    if (Array.isArray(keys)) {
      const found = new Map();
      for (const key of keys) {
        const value = one(key);
        if (value !== undefined) found.set(key, value);
      }
      return found;
    }
    return one(keys);
  },
  async put(key, value) {
    const entries = typeof key === "object" ? Object.entries(key) : [[key, value]];
    for (const [k, v] of entries) {
      try {
        host.storageSet(k, encoder.encode(JSON.stringify(v)));
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
    const { prefix = "", limit, start, end, reverse } = options;
    let keys = host.storageKeys(prefix, 0xffffffff);
    if (start !== undefined) keys = keys.filter((k) => k >= start);
    if (end !== undefined) keys = keys.filter((k) => k < end);
    if (reverse) keys.reverse();
    if (limit !== undefined) keys = keys.slice(0, limit);
    const found = new Map();
    for (const key of keys) found.set(key, JSON.parse(decoder.decode(host.storageGet(key))));
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
    const kept = readAttachment(ws.id);
    kept.tags = tags;
    writeAttachment(ws.id, kept);
  },
  getWebSockets(tag) {
    return host
      .clients(undefined)
      .filter((c) => tag === undefined || readAttachment(c.id).tags.includes(tag))
      .map((c) => socketOf(c.id));
  },
  getTags(ws) {
    return readAttachment(ws.id).tags;
  },
  async blockConcurrencyWhile(callback) {
    // A room sees one event at a time already.
    return callback();
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

/** The room's exports for a Durable Object class. */
export function exportDurableObject(DurableObjectClass) {
  refuseUnsupported(DurableObjectClass);
  let object = null;
  const the = () => (object ??= new DurableObjectClass(ctx, env));
  return {
    async onConnect(client) {
      const query = new URLSearchParams({ type: client.kind, projectId: host.projectId() });
      for (const [name, value] of client.params) query.append(name, value);
      const headers = new Headers({ upgrade: "websocket", connection: "Upgrade" });
      if (client.userAgent !== undefined) headers.set("user-agent", client.userAgent);
      if (client.origin !== undefined) headers.set("origin", client.origin);
      const request = withHeaders(new Request(`http://wsroom/websocket?${query}`), headers);
      joining = client.id;
      let response;
      try {
        response = await the().fetch(request);
      } finally {
        joining = null;
      }
      if (response?.status === 101) return;
      const status = response?.status ?? 500;
      const message = response ? await response.text() : "the object's fetch answered nothing";
      throw {
        status: status >= 400 && status <= 599 ? status : 403,
        error: "refused",
        message,
      };
    },
    async onMessage(sender, message) {
      const ws = socketOf(sender.id);
      if (message.tag === "text") return the().webSocketMessage?.(ws, message.val);
      if (message.tag === "binary") return the().webSocketMessage?.(ws, message.val.slice().buffer);
      return the().webSocketError?.(ws, new RangeError("message over the host's size limit"));
    },
    async onClose(client, code, reason) {
      const ws = socketOf(client.id);
      ws.readyState = 3;
      sockets.delete(client.id);
      return the().webSocketClose?.(ws, code, reason, code !== 1006);
    },
    async alarm(_info) {
      return the().alarm?.();
    },
    async fetch(request) {
      const object = the();
      if (typeof object.fetch !== "function") {
        return { status: 404, headers: [], body: encoder.encode("no fetch handler") };
      }
      const body = ["GET", "HEAD"].includes(request.method) ? undefined : request.body;
      const response = await object.fetch(
        withHeaders(
          new Request(`http://wsroom${request.path}`, { method: request.method, body }),
          new Headers(request.headers),
        ),
      );
      return {
        status: response.status,
        headers: [...response.headers.entries()],
        body: new Uint8Array(await response.arrayBuffer()),
      };
    },
  };
}
