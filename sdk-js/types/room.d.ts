import type { ClientId } from 'wsroom:room/types@0.3.0';
export { ClientId };
import type { ClientInfo } from 'wsroom:room/types@0.3.0';
export { ClientInfo };
import type { Sender } from 'wsroom:room/types@0.3.0';
export { Sender };
import type { Incoming } from 'wsroom:room/types@0.3.0';
export { Incoming };
import type { Refusal } from 'wsroom:room/types@0.3.0';
export { Refusal };
import type { AlarmInfo } from 'wsroom:room/types@0.3.0';
export { AlarmInfo };
import type { HttpRequest } from 'wsroom:room/types@0.3.0';
export { HttpRequest };
import type { HttpResponse } from 'wsroom:room/types@0.3.0';
export { HttpResponse };
/**
* A client asks to join. It is already in the host's table (so
* `client-count` includes it) and anything sent to it is delivered as
* soon as the WebSocket opens, before any later message. Return an
* error to refuse it: the upgrade request is answered with that status
* and the client is removed again. (A client past the host's limit of
* connections per project is refused without asking the room.)
*/
export function onConnect(client: ClientInfo): void;
/**
* A client sent a message. (A message over the host's rate limit per
* connection, if the operator set one, is answered by the host with an
* `error` and never reaches the room.)
*/
export function onMessage(sender: Sender, message: Incoming): void;
/**
* A client left: it sent a close frame, its connection broke, or it
* stopped answering pings. It is no longer in the host's table.
* `code` is the close code it sent (1005 when it sent none, 1006 when
* the connection was lost).
*/
export function onClose(client: ClientInfo, code: number, reason: string): void;
/**
* The alarm set with `set-alarm` fired. Delivery is at least once: if
* the call traps, the room is reset as after any trap and the alarm is
* called again later, with a growing delay, a few times.
*/
export function alarm(info: AlarmInfo): void;
/**
* An HTTP request to `/rooms/{projectId}/...` (like a Durable Object's
* `fetch`): from the application's backend, say, to push a message to
* the room's clients or to read the room's state. It runs as any other
* event: one at a time with the room's other events, under the CPU
* budget, and the response waits for what the call wrote to be
* durable (the output gate). A trap is answered 500 and fails the room
* as in any other export. With access control on, the request needs a
* token that grants the project and the `server` type.
*/
export function fetch(request: HttpRequest): HttpResponse;
