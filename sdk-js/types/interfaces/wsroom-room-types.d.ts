declare module 'wsroom:room/types@0.3.0' {
/**
 * A connection's id: a UUID the host assigns when the client connects,
 * unique within the process. This is the `clientId` clients see.
 */
export type ClientId = string;
/**
 * What the host knows about one connection.
 */
export interface ClientInfo {
  /**
   * The connection's id.
   */
  id: ClientId,
  /**
   * The connection's type: the `type` query parameter of the upgrade
   * request (for the default room `runtime`, `data-agent` or `admin`).
   */
  kind: string,
  /**
   * When the connection was admitted, in milliseconds since the Unix
   * epoch.
   */
  connectedAt: bigint,
  /**
   * The `User-Agent` header of the upgrade request, if any.
   */
  userAgent?: string,
  /**
   * The `Origin` header of the upgrade request, if any.
   */
  origin?: string,
  /**
   * The `sub` claim of the token the client connected with, when the
   * host checks tokens (`--auth-secret`, `--auth-public-keys`) and
   * the token has one: who the client is, for the room to authorise
   * per user.
   */
  subject?: string,
  /**
   * The query parameters of the upgrade URL other than `type`,
   * `projectId` and `token`, in the URL's order, percent-decoded
   * (at most 32, names up to 256 bytes, values up to 4 KiB).
   */
  params: Array<[string, string]>,
}
/**
 * The sender of a message: its id and its type.
 */
export interface Sender {
  id: ClientId,
  kind: string,
}
/**
 * Which clients a `send` reaches, before exclusions.
 */
export type Selector = SelectorClient | SelectorKind | SelectorAll;
/**
 * The one client with this id (nobody if there is none).
 */
export interface SelectorClient {
  tag: 'client',
  val: ClientId,
}
/**
 * Every client whose type is this string.
 */
export interface SelectorKind {
  tag: 'kind',
  val: string,
}
/**
 * Every client of the project.
 */
export interface SelectorAll {
  tag: 'all',
}
/**
 * One target of a `send`: a selector and the clients it must skip.
 */
export interface Target {
  select: Selector,
  /**
   * Clients left out of this target even if the selector matches them.
   */
  except: Array<ClientId>,
}
/**
 * A message's size against the host's limit, both in bytes.
 */
export interface Oversize {
  size: bigint,
  limit: bigint,
}
/**
 * One complete message from a client.
 */
export type Incoming = IncomingText | IncomingBinary | IncomingTooLarge;
/**
 * A text message (valid UTF-8, reassembled from its fragments).
 */
export interface IncomingText {
  tag: 'text',
  val: string,
}
/**
 * A binary message.
 */
export interface IncomingBinary {
  tag: 'binary',
  val: Uint8Array,
}
/**
 * A message over the host's size limit. Its content was discarded
 * unread; the connection stays open.
 */
export interface IncomingTooLarge {
  tag: 'too-large',
  val: Oversize,
}
/**
 * How `on-connect` turns a client away. The host answers the upgrade
 * request with `status` and the JSON body
 * `{"error": error, "message": message}`; no WebSocket is opened.
 */
export interface Refusal {
  /**
   * An HTTP status code from 400 to 599; anything else is sent as 403.
   */
  status: number,
  /**
   * A short, stable, machine-readable code, e.g. `invalid_type`.
   */
  error: string,
  /**
   * A human-readable explanation.
   */
  message: string,
}
/**
 * Why `set-attachment` refused.
 * # Variants
 * 
 * ## `"no-such-client"`
 * 
 * No client with that id is connected to this project.
 * ## `"too-large"`
 * 
 * The data is over the host's limit (16 KiB).
 */
export type AttachmentError = 'no-such-client' | 'too-large';
/**
 * Why `storage-set` refused; nothing was stored.
 * # Variants
 * 
 * ## `"bad-key"`
 * 
 * The key is empty or longer than 1 KiB.
 * ## `"full"`
 * 
 * The room's store would pass the host's limit
 * (`--room-storage-bytes`, keys and values counted).
 * ## `"unavailable"`
 * 
 * The host's disk failed a moment ago (full, or an I/O error):
 * writes are refused for about a second, then tried again.
 * (A component built against 0.1.0 sees `full` instead.)
 */
export type StorageError = 'bad-key' | 'full' | 'unavailable';
/**
 * About an alarm call.
 */
export interface AlarmInfo {
  /**
   * 0 for the first call; n for the n-th retry after the handler
   * trapped (retries back off exponentially, then give up).
   */
  retryCount: number,
}
/**
 * An HTTP request to the room: `/rooms/{projectId}/...` on the host.
 */
export interface HttpRequest {
  /**
   * The method, as sent (`GET`, `POST`, ...).
   */
  method: string,
  /**
   * The path after `/rooms/{projectId}`, always starting with `/`,
   * with the query string if there was one (`/messages?dry=1`).
   */
  path: string,
  /**
   * The request's headers, names in lowercase (repeated ones next
   * to each other). When the host checks tokens, the headers that
   * carry credentials (`authorization`, `proxy-authorization`,
   * `sec-websocket-protocol`, `cookie`) are left out.
   */
  headers: Array<[string, string]>,
  /**
   * The body (at most `--room-http-body-bytes`; a longer one is
   * answered 413 by the host without calling the room).
   */
  body: Uint8Array,
}
/**
 * The room's answer to an `http-request`.
 */
export interface HttpResponse {
  /**
   * An HTTP status code from 200 to 599; anything else is sent as
   * 500 (and logged).
   */
  status: number,
  /**
   * Headers to send (`content-length` is the host's; hop-by-hop
   * headers, `set-cookie`, `clear-site-data` and invalid names or
   * values are dropped).
   */
  headers: Array<[string, string]>,
  /**
   * The body (at most `--room-http-body-bytes`; a longer one is
   * replaced by a 500).
   */
  body: Uint8Array,
}
/**
 * Severity of a `log` line.
 * # Variants
 * 
 * ## `"trace"`
 * 
 * ## `"debug"`
 * 
 * ## `"info"`
 * 
 * ## `"warn"`
 * 
 * ## `"error"`
 */
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error';
}
