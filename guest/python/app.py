"""The default room (PROTOCOL.md's routing) written in Python.

A port of guest/src/rules.rs, built into a wsroom:room component with
componentize-py (see build.sh). It shows the WIT contract is not tied to
Rust, and it passes the same protocol tests as the Rust room.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

ADMITTED_TYPES = ("runtime", "data-agent", "admin")
ADMIN = "admin"
DEFAULT_CLEANUP_DELAY_MS = 5 * 60 * 1000


def dumps(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def target(select, except_=None):
    return types.Target(select=select, except_=[except_] if except_ else [])


def to_client(client_id):
    return target(types.Selector_Client(client_id))


def system_message(kind, payload):
    return dumps(
        {"id": host.new_id(), "type": kind, "from": {"type": "system"}, "payload": payload}
    )


def send_error(to, code, message, message_id=None):
    payload = {
        "code": code,
        "message": message,
        "projectId": host.project_id(),
        "timestamp": host.now_ms(),
    }
    if message_id is not None:
        payload["messageId"] = message_id
    host.send(system_message("error", payload), [to_client(to)])


class Invalid(Exception):
    pass


def route(message):
    """("id", id), ("type", kind) or ("all", None); raises Invalid."""
    to = message.get("to")
    if to is None:
        return ("all", None)
    if not isinstance(to, dict):
        raise Invalid("`to` must be an object or null")

    def field(key, what):
        if key not in to:
            return ""
        value = to[key]
        if not isinstance(value, str):
            raise Invalid(what)
        return value

    to_id = field("id", "`to.id` must be a string")
    kind = field("type", "`to.type` must be a string")
    if to_id:
        return ("id", to_id)
    if kind:
        return ("type", kind)
    return ("all", None)


def stamped(message, sender_id, sender_kind):
    """The message with from.id and from.type set to the sender's; a `from`
    object with fields of its own keeps them."""
    old = message.get("from")
    extra = isinstance(old, dict) and any(k not in ("id", "type") for k in old)
    if extra:
        stamp = dict(old)
        stamp["type"] = sender_kind
        stamp["id"] = sender_id
    else:
        stamp = {"id": sender_id, "type": sender_kind}
    message["from"] = stamp
    return dumps(message)


def on_text(sender_id, sender_kind, text):
    try:
        message = json.loads(text)
    except ValueError as e:
        send_error(sender_id, "invalid_json", f"invalid JSON: {e}")
        return
    if not isinstance(message, dict):
        send_error(sender_id, "invalid_message", "message must be a JSON object")
        return
    message_id = message.get("id") if isinstance(message.get("id"), str) else None
    try:
        where, value = route(message)
    except Invalid as e:
        send_error(sender_id, "invalid_message", str(e), message_id)
        return
    out = stamped(message, sender_id, sender_kind)

    # The sender never gets its own message; a target of another type
    # cannot include it, so it needs no exception (as in the Rust room).
    def of_kind(kind):
        return target(types.Selector_Kind(kind), sender_id if kind == sender_kind else None)

    admins = of_kind(ADMIN)
    if where == "id":
        reached = host.send(out, [to_client(value), admins])
        if not reached or reached[0] == 0:
            send_error(
                sender_id,
                "unknown_target",
                f"no client with id {json.dumps(value)} in this project",
                message_id,
            )
    elif where == "type":
        host.send(out, [of_kind(value), admins])
    else:
        host.send(out, [target(types.Selector_All(), sender_id)])


class WitWorld(wit_world.WitWorld):
    def on_connect(self, client):
        if client.kind not in ADMITTED_TYPES:
            raise Err(
                types.Refusal(
                    status=400,
                    error="invalid_type",
                    message=f"type must be one of: {', '.join(ADMITTED_TYPES)}; "
                    f"got {json.dumps(client.kind)}",
                )
            )
        host.cancel_alarm()
        project_id = host.project_id()
        payload = {
            "clientId": client.id,
            "projectId": project_id,
            "clientCount": host.client_count(None),
            "message": f"connected to project {project_id} as {client.kind}",
            "timestamp": host.now_ms(),
        }
        host.send(system_message("connected", payload), [to_client(client.id)])

    def on_message(self, sender, message):
        if isinstance(message, types.Incoming_Text):
            on_text(sender.id, sender.kind, message.value)
        elif isinstance(message, types.Incoming_Binary):
            send_error(
                sender.id,
                "invalid_message",
                "binary frames are not supported; send JSON text",
            )
        else:
            o = message.value
            send_error(
                sender.id,
                "message_too_large",
                f"message of {o.size} bytes is over the limit of {o.limit} bytes",
            )

    def on_close(self, client, code, reason):
        remaining = host.client_count(None)
        if remaining > 0:
            payload = {
                "clientId": client.id,
                "clientType": client.kind,
                "projectId": host.project_id(),
                "clientCount": remaining,
                "timestamp": host.now_ms(),
            }
            host.send(system_message("client_left", payload), [target(types.Selector_All())])
        else:
            delay = host.config("cleanup-delay-ms")
            try:
                delay = int(delay) if delay is not None else DEFAULT_CLEANUP_DELAY_MS
            except ValueError:
                delay = DEFAULT_CLEANUP_DELAY_MS
            host.set_alarm(delay)

    def alarm(self, info):
        # The host removes a room that is empty with no alarm set: nothing
        # to do here.
        pass
