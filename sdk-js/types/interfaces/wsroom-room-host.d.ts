declare module 'wsroom:room/host@0.3.0' {
  import type { ClientId, ClientInfo, Target, LogLevel, AttachmentError, StorageError } from 'wsroom:room/types@0.3.0';
  /**
   * The project this room serves.
   */
  export function projectId(): string;
  /**
   * A configuration value set by the operator (`--room-config key=value`
   * on the host's command line), or none. The host always provides
   * `cleanup-delay-ms`, the delay of the empty-room cleanup alarm
   * (`--cleanup-delay-ms`).
   */
  export function config(key: string): string | undefined;
  /**
   * Sends one text message to the union of `targets`.
   * 
   * The host frames `text` once and queues the same bytes for every
   * recipient; a client matched by several targets receives it once.
   * Messages queued for one client are delivered in the order they were
   * sent. A client whose outgoing queue is full is closed with code 1013
   * instead of receiving the message.
   * 
   * Returns, for each target in order, how many clients it added: a
   * `client` target that names no client of this project gives 0.
   */
  export function send(text: string, targets: Array<Target>): Uint32Array;
  /**
   * Closes a client's connection with a close code (1000, or 3000 to
   * 4999) and a reason of at most 123 bytes. Anything queued for the
   * client before is still delivered. The client is removed from the
   * table at once and `on-close` is not called for it. Returns false if
   * there is no such client.
   */
  export function close(client: ClientId, code: number, reason: string): boolean;
  /**
   * The client with this id, if it is connected to this project.
   */
  export function client(id: ClientId): ClientInfo | undefined;
  /**
   * The connected clients, all of them or those of one type, in the
   * order they connected.
   */
  export function clients(kind: string | undefined): Array<ClientInfo>;
  /**
   * How many clients are connected, all of them or those of one type.
   */
  export function clientCount(kind: string | undefined): number;
  /**
   * Keeps up to 16 KiB of the room's own data with a client, for as long
   * as the client is connected (like a Durable Object's
   * `serializeAttachment`). It survives hibernation, when the room's
   * instance is dropped; `none` clears it.
   */
  export function setAttachment(client: ClientId, data: Uint8Array | undefined): void;
  /**
   * The data last stored with `set-attachment`, if any. During
   * `on-close`, the leaving client's too (it is no longer in the table).
   */
  export function attachment(client: ClientId): Uint8Array | undefined;
  /**
   * The room's store: string keys to bytes, kept by the host, like a
   * Durable Object's storage. It survives hibernation, code reloads, the
   * room's removal and server restarts (unless the server runs with
   * `--in-memory`), until the room deletes it.
   * 
   * Output gate: what one batch of the room's events writes (store and
   * alarm) commits as one transaction, and the messages those events
   * send, and the connections they close, reach clients only once it is
   * durable. If the commit fails, they never do: the room's clients are
   * closed with 1011 and the room starts again from what was committed.
   * An event that writes nothing is not delayed.
   * 
   * The value stored under `key`, if any.
   */
  export function storageGet(key: string): Uint8Array | undefined;
  /**
   * Stores `value` under `key`, replacing what was there.
   */
  export function storageSet(key: string, value: Uint8Array): void;
  /**
   * Removes `key`; true if it was there.
   */
  export function storageDelete(key: string): boolean;
  /**
   * Up to `limit` keys that start with `prefix`, in byte order.
   */
  export function storageKeys(prefix: string, limit: number): Array<string>;
  /**
   * Deletes every key of the room's store and cancels its alarm: all the
   * data the host keeps for the room, once committed.
   */
  export function storageDeleteAll(): void;
  /**
   * Sets the room's alarm to fire once, `delay-ms` milliseconds from now,
   * replacing any alarm already set. The host calls `alarm` then, with or
   * without clients, after a restart too (at once if its time passed
   * while the server was down). The alarm is durable like the store.
   */
  export function setAlarm(delayMs: bigint): void;
  /**
   * Cancels the room's alarm, if one is set.
   */
  export function cancelAlarm(): void;
  /**
   * When the room's alarm fires, in milliseconds since the Unix epoch, if
   * one is set.
   */
  export function alarmAt(): bigint | undefined;
  /**
   * The wall clock, in milliseconds since the Unix epoch.
   */
  export function nowMs(): bigint;
  /**
   * A fresh random (version 4) UUID in its hyphenated lowercase form.
   */
  export function newId(): string;
  /**
   * Writes a line to the host's log, tagged with the project id.
   */
  export function log(level: LogLevel, message: string): void;
}
