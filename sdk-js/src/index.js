// Write a wsroom room in JavaScript (built into a component with
// componentize-js; see README.md beside this directory).
//
// Extend `Room`, override the handlers you need, and export it:
//
//   import { Room, exportRoom } from "@wsroom/room-sdk";
//
//   class Echo extends Room {
//     onMessage(sender, message) {
//       if (message.tag === "text") this.sendToClient(sender.id, message.val);
//     }
//   }
//
//   export const { onConnect, onMessage, onClose, alarm, fetch } = exportRoom(Echo);
//
// The host keeps the connection table, each client's attachment, the
// room's store and its alarm. Your object lives in the room's instance,
// which the host drops when the room hibernates or its code is reloaded;
// the next event starts from a new object. Keep what must survive in
// `this.storage` (durable) or `this.setAttachment` (while the client is
// connected).
//
// WIT values as JavaScript sees them: records are objects with camelCase
// fields, variants `{tag, val}`, `u64` a BigInt, `option` a value or
// `undefined`, `list<u8>` a Uint8Array. `../types/` declares them all, from
// wit/0.3.0/room.wit, the contract JavaScript rooms are built against
// (`sdk-js/tools/types.sh`, which also type-checks this file
// against them); editors that read JSDoc show them.

import * as host from "wsroom:room/host@0.3.0";

/** @typedef {import("wsroom:room/types@0.3.0").ClientInfo} ClientInfo */
/** @typedef {import("wsroom:room/types@0.3.0").Sender} Sender */
/** @typedef {import("wsroom:room/types@0.3.0").Incoming} Incoming */
/** @typedef {import("wsroom:room/types@0.3.0").AlarmInfo} AlarmInfo */
/** @typedef {import("wsroom:room/types@0.3.0").HttpRequest} HttpRequest */
/** @typedef {import("wsroom:room/types@0.3.0").HttpResponse} HttpResponse */
/** @typedef {import("wsroom:room/types@0.3.0").Target} Target */
/** @typedef {import("wsroom:room/types@0.3.0").Refusal} Refusal */
/** @typedef {import("wsroom:room/types@0.3.0").LogLevel} LogLevel */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

const bytesOf = (value) => (typeof value === "string" ? encoder.encode(value) : value);

/** A refusal for `onConnect`: `throw refuse(403, "banned", "...")` turns
 * the client away with that HTTP status before its WebSocket opens.
 * @param {number} status @param {string} error @param {string} message
 * @returns {Refusal} */
export function refuse(status, error, message) {
  return { status, error, message };
}

/** An HTTP answer for `onFetch` with a JSON body.
 * @param {number} status @param {unknown} value
 * @param {Array<[string, string]>} [headers]
 * @returns {HttpResponse} */
export function jsonResponse(status, value, headers = []) {
  return {
    status,
    headers: [["content-type", "application/json"], ...headers],
    body: encoder.encode(JSON.stringify(value)),
  };
}

/** Which clients a send reaches: one by id, every one of a type, or all,
 * each but those in `except`. */
export const to = {
  /** @param {string} id @param {string[]} [except] @returns {Target} */
  client: (id, except = []) => ({ select: { tag: "client", val: id }, except }),
  /** @param {string} kind @param {string[]} [except] @returns {Target} */
  kind: (kind, except = []) => ({ select: { tag: "kind", val: kind }, except }),
  /** @param {string[]} [except] @returns {Target} */
  all: (except = []) => ({ select: { tag: "all" }, except }),
};

/** The room's store: string keys to bytes, kept by the host across
 * hibernation, reloads and restarts (what an event sends waits until what
 * it wrote is durable). */
class Storage {
  /** The bytes stored under `key`, or undefined.
   * @param {string} key @returns {Uint8Array | undefined} */
  get(key) {
    return host.storageGet(key);
  }

  /** The value under `key` as text, or undefined.
   * @param {string} key @returns {string | undefined} */
  getText(key) {
    const value = host.storageGet(key);
    return value === undefined ? undefined : decoder.decode(value);
  }

  /** Stores bytes or text under `key`; null, or why not: `bad-key`,
   * `full` (over `--room-storage-bytes`), `unavailable` (the disk failed a
   * moment ago).
   * @param {string} key @param {Uint8Array | string} value */
  set(key, value) {
    return errorOf(() => host.storageSet(key, bytesOf(value)));
  }

  /** Removes `key`; whether it was there.
   * @param {string} key @returns {boolean} */
  delete(key) {
    return host.storageDelete(key);
  }

  /** Up to `limit` keys starting with `prefix`, in byte order.
   * @param {string} [prefix] @param {number} [limit] @returns {string[]} */
  keys(prefix = "", limit = 0xffffffff) {
    return host.storageKeys(prefix, limit);
  }

  /** Deletes every key and cancels the alarm. */
  deleteAll() {
    host.storageDeleteAll();
  }
}

/** Runs an import that returns `result<_, E>`: null, or the error. */
function errorOf(call) {
  try {
    call();
    return null;
  } catch (e) {
    if (e && typeof e === "object" && "payload" in e) return e.payload;
    throw e;
  }
}

/** A room's handlers and what it can ask of the host; every call acts on
 * this room's own project only. */
export class Room {
  constructor() {
    this.storage = new Storage();
  }

  /** A client asks to join; throw `refuse(...)` to turn it away.
   * @param {ClientInfo} _client @returns {void | Promise<void>} */
  onConnect(_client) {}

  /** A message from a client: `{tag: "text", val}`, `{tag: "binary",
   * val}`, or `{tag: "too-large", val: {size, limit}}` (over the host's
   * limit, without its contents).
   * @param {Sender} _sender @param {Incoming} _message @returns {void | Promise<void>} */
  onMessage(_sender, _message) {}

  /** A client left (it is no longer in the table).
   * @param {ClientInfo} _client @param {number} _code @param {string} _reason
   * @returns {void | Promise<void>} */
  onClose(_client, _code, _reason) {}

  /** The alarm set with `setAlarm` fired.
   * @param {AlarmInfo} _info @returns {void | Promise<void>} */
  onAlarm(_info) {}

  /** An HTTP request to `/rooms/{projectId}/...` (`path` is the part after
   * the project id). By default: 404.
   * @param {HttpRequest} _request @returns {HttpResponse | Promise<HttpResponse>} */
  onFetch(_request) {
    return jsonResponse(404, {
      error: "not_found",
      message: "this room answers no HTTP requests",
    });
  }

  /** The project this room serves. */
  get projectId() {
    return host.projectId();
  }

  /** A value of the host's `--room-config`, or undefined.
   * @param {string} key @returns {string | undefined} */
  config(key) {
    return host.config(key);
  }

  /** Sends `text` once to each client in the union of `targets` (see
   * `to`); how many clients each target added.
   * @param {string} text @param {Target[]} targets @returns {number[]} */
  send(text, targets) {
    const counts = host.send(text, targets);
    return counts.length === targets.length ? Array.from(counts) : targets.map(() => 0);
  }

  /** Sends `text` to one client; whether it is connected.
   * @param {string} id @param {string} text @returns {boolean} */
  sendToClient(id, text) {
    return this.send(text, [to.client(id)])[0] > 0;
  }

  /** Sends `text` to every client of a type; how many got it.
   * @param {string} kind @param {string} text @returns {number} */
  sendToType(kind, text) {
    return this.send(text, [to.kind(kind)])[0];
  }

  /** Sends `text` to every client (but `except`, an id); how many got it.
   * @param {string} text @param {string} [except] @returns {number} */
  broadcast(text, except) {
    return this.send(text, [to.all(except ? [except] : [])])[0];
  }

  /** Closes a client's WebSocket; whether it was connected.
   * @param {string} id @param {number} [code] @param {string} [reason] @returns {boolean} */
  close(id, code = 1000, reason = "") {
    return host.close(id, code, reason);
  }

  /** One client's `client-info`, or undefined.
   * @param {string} id @returns {ClientInfo | undefined} */
  client(id) {
    return host.client(id);
  }

  /** The connected clients, of one type or all, in connection order.
   * @param {string} [kind] @returns {ClientInfo[]} */
  clients(kind) {
    return host.clients(kind);
  }

  /** How many clients are connected, of one type or all.
   * @param {string} [kind] @returns {number} */
  clientCount(kind) {
    return host.clientCount(kind);
  }

  /** Keeps up to 16 KiB (bytes or text) with a client while it is
   * connected; null clears. Null, or why not: `no-such-client`,
   * `too-large`.
   * @param {string} id @param {Uint8Array | string | null} data */
  setAttachment(id, data) {
    return errorOf(() => host.setAttachment(id, data === null ? undefined : bytesOf(data)));
  }

  /** What `setAttachment` kept with a client, or undefined.
   * @param {string} id @returns {Uint8Array | undefined} */
  attachment(id) {
    return host.attachment(id);
  }

  /** Sets the alarm `delayMs` from now, replacing any other.
   * @param {number | bigint} delayMs */
  setAlarm(delayMs) {
    const delay = typeof delayMs === "bigint" ? delayMs : BigInt(Math.ceil(Math.max(0, delayMs) || 0));
    host.setAlarm(delay < 0n ? 0n : delay);
  }

  /** Cancels the alarm, if one is set. */
  cancelAlarm() {
    host.cancelAlarm();
  }

  /** When the alarm fires (ms since the Unix epoch), or undefined. */
  alarmAt() {
    const at = host.alarmAt();
    return at === undefined ? undefined : Number(at);
  }

  /** The wall clock, ms since the Unix epoch. */
  nowMs() {
    return Number(host.nowMs());
  }

  /** A fresh random UUID. */
  newId() {
    return host.newId();
  }

  /** A line in the host's log, tagged with the project: `trace`, `debug`,
   * `info`, `warn` or `error`.
   * @param {LogLevel} level @param {string} message */
  log(level, message) {
    host.log(level, message);
  }
}

/** The world's exports for a `Room` subclass, to export by name:
 * `export const { onConnect, onMessage, onClose, alarm, fetch } = exportRoom(MyRoom);` */
export function exportRoom(RoomClass) {
  let room = null;
  const the = () => (room ??= new RoomClass());
  return {
    onConnect: (client) => the().onConnect(client),
    onMessage: (sender, message) => the().onMessage(sender, message),
    onClose: (client, code, reason) => the().onClose(client, code, reason),
    alarm: (info) => the().onAlarm(info),
    fetch: (request) => the().onFetch(request),
  };
}
