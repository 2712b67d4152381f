// The project-scoped broadcaster, written the Cloudflare way: a Durable
// Object class on the hibernatable WebSocket API, one object per project.
// On Cloudflare its first line would be
//   import { DurableObject } from "cloudflare:workers";
// Here it is the line below, and the export at the end: nothing else
// changes. Build it with `sdk-js/build.sh sdk-js/examples/broadcaster/broadcaster.js OUT.wasm`.

import { DurableObject, exportDurableObject } from "../../src/workers.js";

const TYPES = ["runtime", "data-agent", "admin"];

export class Broadcaster extends DurableObject {
  async fetch(request) {
    const url = new URL(request.url);
    if (request.headers.get("Upgrade") !== "websocket") {
      return new Response(JSON.stringify({ error: "not_found" }), { status: 404 });
    }
    const type = url.searchParams.get("type");
    const projectId = url.searchParams.get("projectId");
    if (!TYPES.includes(type)) {
      return new Response(`type must be one of: ${TYPES.join(", ")}`, { status: 400 });
    }
    const pair = new WebSocketPair();
    const [client, server] = Object.values(pair);
    const clientId = crypto.randomUUID();
    this.ctx.acceptWebSocket(server, [type]);
    server.serializeAttachment({ clientId, type, projectId });
    server.send(
      JSON.stringify({
        id: crypto.randomUUID(),
        type: "connected",
        from: { type: "system" },
        payload: {
          clientId,
          projectId,
          clientCount: this.ctx.getWebSockets().length,
          message: `connected to project ${projectId} as ${type}`,
          timestamp: Date.now(),
        },
      }),
    );
    return new Response(null, { status: 101, webSocket: client });
  }

  async webSocketMessage(ws, message) {
    const me = ws.deserializeAttachment();
    let msg;
    try {
      msg = JSON.parse(message);
    } catch {
      return this.error(ws, me, "invalid_json", "invalid JSON");
    }
    if (msg === null || typeof msg !== "object" || Array.isArray(msg)) {
      return this.error(ws, me, "invalid_message", "message must be a JSON object");
    }
    // The server says who sent it; a `from` object's other fields stay.
    const from = msg.from !== null && typeof msg.from === "object" && !Array.isArray(msg.from);
    msg.from = { ...(from ? msg.from : {}), id: me.clientId, type: me.type };
    const text = JSON.stringify(msg);
    const others = this.ctx.getWebSockets().filter((s) => s !== ws);
    const admins = others.filter((s) => this.ctx.getTags(s).includes("admin"));
    const to = msg.to ?? {};
    if (to.id) {
      const target = this.ctx
        .getWebSockets()
        .find((s) => s.deserializeAttachment()?.clientId === to.id);
      if (target) target.send(text);
      for (const admin of admins) if (admin !== target) admin.send(text);
      if (!target) this.error(ws, me, "unknown_target", `no client with id "${to.id}"`, msg.id);
    } else if (to.type) {
      const targets = others.filter((s) => this.ctx.getTags(s).includes(to.type));
      for (const s of new Set([...targets, ...admins])) s.send(text);
    } else {
      for (const s of others) s.send(text);
    }
  }

  async webSocketClose(ws, code, reason, wasClean) {
    const left = ws.deserializeAttachment();
    const remaining = this.ctx.getWebSockets().filter((s) => s !== ws);
    const note = JSON.stringify({
      id: crypto.randomUUID(),
      type: "client_left",
      from: { type: "system" },
      payload: {
        clientId: left.clientId,
        clientType: left.type,
        projectId: left.projectId,
        clientCount: remaining.length,
        timestamp: Date.now(),
      },
    });
    for (const s of remaining) s.send(note);
  }

  error(ws, me, code, message, messageId) {
    const payload = { code, message, projectId: me.projectId, timestamp: Date.now() };
    if (typeof messageId === "string") payload.messageId = messageId;
    ws.send(JSON.stringify({ id: crypto.randomUUID(), type: "error", from: { type: "system" }, payload }));
  }
}

export const { onConnect, onMessage, onClose, alarm, fetch } = exportDurableObject(Broadcaster);
