// A Durable Object that uses SQL storage, which wsroom's Workers layer
// does not provide: its build must fail, naming it (.ci/run checks).
import { DurableObject, exportDurableObject } from "../../src/workers.js";
export class Ledger extends DurableObject {
  async webSocketMessage(ws, message) {
    this.ctx.storage.sql.exec("INSERT INTO lines VALUES (?)", message);
  }
}
export const { onConnect, onMessage, onClose, alarm, fetch } = exportDurableObject(Ledger);
