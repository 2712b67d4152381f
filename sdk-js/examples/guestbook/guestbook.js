// A guestbook written the Cloudflare way, for the Workers layer's tests
// (tests/e2e/workers.rs): its storage (`get`, `put` of several keys,
// `list`, `delete` of several, `deleteAll`), its alarm, `env`, tags,
// attachments read in `webSocketClose`, `webSocketError`, and `fetch` for
// both the upgrade and HTTP into the room; and a handler that throws (the
// message `throw`). For the layer's finer points: `GET /order` lists keys
// as Cloudflare orders them (by their UTF-8 bytes, `startAfter`), a join
// with `probe=1` reports what it saw before its socket was accepted and
// the tag limit, and the message `block` starts a `blockConcurrencyWhile`
// that the next event waits for (`blocked?` answers what it set).

import { DurableObject, exportDurableObject } from "../../src/workers.js";

const entries = async (storage) => [...(await storage.list({ prefix: "entry:" })).values()];

export class Guestbook extends DurableObject {
  async fetch(request) {
    const url = new URL(request.url);
    if (request.headers.get("Upgrade") === "websocket") {
      const [client, server] = Object.values(new WebSocketPair());
      let probe;
      if (url.searchParams.get("probe") === "1") {
        const before = this.ctx.getWebSockets().length;
        let tagLimit = null;
        try {
          this.ctx.acceptWebSocket(server, Array.from({ length: 11 }, (_, i) => `t${i}`));
        } catch (e) {
          tagLimit = e.message;
        }
        probe = { before, tagLimit };
      }
      this.ctx.acceptWebSocket(server, [url.searchParams.get("type") ?? "guest"]);
      server.serializeAttachment({ name: url.searchParams.get("name") ?? "anonymous" });
      const greeting = this.env.greeting ?? "hello";
      const others = this.ctx.getWebSockets().length - 1;
      server.send(JSON.stringify({ type: "welcome", greeting, entries: await entries(this.ctx.storage), others, probe }));
      return new Response(null, { status: 101, webSocket: client });
    }
    if (url.pathname === "/entries" && request.method === "GET") {
      const body = JSON.stringify({ entries: await entries(this.ctx.storage) });
      return new Response(body, { headers: { "content-type": "application/json" } });
    }
    if (url.pathname === "/order" && request.method === "GET") {
      // Put out of order; U+FF01 sorts before U+1F600 by UTF-8 bytes (and
      // after it by UTF-16 code units, JavaScript's own order).
      await this.ctx.storage.put({ "k:\u{1F600}": 3, "k:\uFF01": 2, "k:a": 1 });
      const all = [...(await this.ctx.storage.list({ prefix: "k:" })).keys()];
      const after = [...(await this.ctx.storage.list({ prefix: "k:", startAfter: "k:a" })).keys()];
      const upTo = [...(await this.ctx.storage.list({ start: "k:", end: "k:\u{1F600}" })).keys()];
      return new Response(JSON.stringify({ all, after, upTo }), { headers: { "content-type": "application/json" } });
    }
    if (url.pathname === "/entries" && request.method === "DELETE") {
      await this.ctx.storage.deleteAll();
      return new Response(null, { status: 204 });
    }
    return new Response("not found", { status: 404 });
  }

  async webSocketMessage(ws, message) {
    if (message === "throw") throw new Error("asked to throw");
    if (message === "block") {
      // Not awaited: the event ends while the callback still waits.
      this.ctx.blockConcurrencyWhile(async () => {
        await new Promise((resolve) => setTimeout(resolve, 100));
        this.unblockedAt = "set by the blocking callback";
      });
      return;
    }
    if (message === "blocked?") {
      ws.send(JSON.stringify({ type: "blocked", value: this.unblockedAt ?? null }));
      return;
    }
    const { name } = ws.deserializeAttachment();
    const n = ((await this.ctx.storage.get("count")) ?? 0) + 1;
    const entry = { n, name, text: message };
    await this.ctx.storage.put({ count: n, [`entry:${String(n).padStart(6, "0")}`]: entry });
    for (const guest of this.ctx.getWebSockets("guest")) guest.send(JSON.stringify({ type: "entry", ...entry }));
    if ((await this.ctx.storage.getAlarm()) === null) {
      await this.ctx.storage.setAlarm(Date.now() + Number(this.env.trimMs ?? 1000));
    }
  }

  async alarm() {
    const keep = Number(this.env.keep ?? 10);
    const keys = [...(await this.ctx.storage.list({ prefix: "entry:" })).keys()];
    await this.ctx.storage.delete(keys.slice(0, Math.max(0, keys.length - keep)));
    const kept = Math.min(keep, keys.length);
    for (const ws of this.ctx.getWebSockets()) ws.send(JSON.stringify({ type: "trimmed", kept }));
  }

  async webSocketClose(ws, code, reason, wasClean) {
    const { name } = ws.deserializeAttachment();
    for (const other of this.ctx.getWebSockets()) {
      if (other !== ws) other.send(JSON.stringify({ type: "left", name, code, wasClean }));
    }
  }

  async webSocketError(ws, error) {
    ws.send(JSON.stringify({ type: "error", message: error.message }));
  }
}

export const { onConnect, onMessage, onClose, alarm, fetch } = exportDurableObject(Guestbook);
