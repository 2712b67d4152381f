// A guestbook written the Cloudflare way, for the Workers layer's tests
// (tests/e2e/workers.rs): its storage (`get`, `put` of several keys,
// `list`, `delete` of several, `deleteAll`), its alarm, `env`, tags,
// attachments read in `webSocketClose`, `webSocketError`, and `fetch` for
// both the upgrade and HTTP into the room; and a handler that throws (the
// message `throw`).

import { DurableObject, exportDurableObject } from "../../src/workers.js";

const entries = async (storage) => [...(await storage.list({ prefix: "entry:" })).values()];

export class Guestbook extends DurableObject {
  async fetch(request) {
    const url = new URL(request.url);
    if (request.headers.get("Upgrade") === "websocket") {
      const [client, server] = Object.values(new WebSocketPair());
      this.ctx.acceptWebSocket(server, [url.searchParams.get("type") ?? "guest"]);
      server.serializeAttachment({ name: url.searchParams.get("name") ?? "anonymous" });
      const greeting = this.env.greeting ?? "hello";
      server.send(JSON.stringify({ type: "welcome", greeting, entries: await entries(this.ctx.storage) }));
      return new Response(null, { status: 101, webSocket: client });
    }
    if (url.pathname === "/entries" && request.method === "GET") {
      const body = JSON.stringify({ entries: await entries(this.ctx.storage) });
      return new Response(body, { headers: { "content-type": "application/json" } });
    }
    if (url.pathname === "/entries" && request.method === "DELETE") {
      await this.ctx.storage.deleteAll();
      return new Response(null, { status: 204 });
    }
    return new Response("not found", { status: 404 });
  }

  async webSocketMessage(ws, message) {
    if (message === "throw") throw new Error("asked to throw");
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
