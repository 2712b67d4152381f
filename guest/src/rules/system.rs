//! The room's own messages (`from.type` "system": `connected`,
//! `client_left`, `error`), written straight into their string.
//!
//! serde_json's serializer checks every byte of every key and value against
//! its escape table, one byte at a time: in wasm that made the `connected`
//! greeting about a fifth of what a connection costs the room. Here the
//! keys are constants and each value is copied whole when it needs no
//! escaping, as ids, types and project ids almost never do (anything else
//! still goes through serde_json's escaping). The bytes are the ones serde
//! would write, field for field; a test holds the two together.

use super::push_json_string;

/// A system message being written: the envelope, then the payload's fields
/// in the order they are added.
pub(super) struct SystemMessage {
    out: String,
    /// Whether the payload has no field yet.
    empty: bool,
}

impl SystemMessage {
    /// `{"id":ID,"type":KIND,"from":{"type":"system"},"payload":{`.
    pub(super) fn new(id: &str, kind: &'static str) -> SystemMessage {
        let mut out = String::with_capacity(256);
        out.push_str("{\"id\":");
        push_json_string(&mut out, id);
        out.push_str(",\"type\":\"");
        out.push_str(kind);
        out.push('"');
        out.push_str(",\"from\":{\"type\":\"system\"},\"payload\":{");
        SystemMessage { out, empty: true }
    }

    fn key(&mut self, key: &'static str) {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        // Keys are this module's constants, none with a byte to escape.
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    /// A string field.
    pub(super) fn str(mut self, key: &'static str, value: &str) -> SystemMessage {
        self.key(key);
        push_json_string(&mut self.out, value);
        self
    }

    /// A string field made of `parts` one after the other, as one string.
    pub(super) fn concat(mut self, key: &'static str, parts: &[&str]) -> SystemMessage {
        self.key(key);
        let joined: String = parts.concat();
        push_json_string(&mut self.out, &joined);
        self
    }

    /// A number field.
    pub(super) fn number(mut self, key: &'static str, value: u64) -> SystemMessage {
        self.key(key);
        self.out.push_str(itoa::Buffer::new().format(value));
        self
    }

    /// Closes the payload and the message.
    pub(super) fn finish(mut self) -> String {
        self.out.push_str("}}");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::SystemMessage;
    use serde::Serialize;

    /// The messages as serde writes them: the shape the hand-written ones
    /// must keep.
    #[derive(Serialize)]
    struct System<'a, P> {
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        from: SystemFrom,
        payload: P,
    }

    #[derive(Serialize)]
    struct SystemFrom {
        #[serde(rename = "type")]
        kind: &'static str,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Connected<'a> {
        client_id: &'a str,
        project_id: &'a str,
        client_count: u32,
        message: String,
        timestamp: u64,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ErrorPayload<'a> {
        code: &'a str,
        message: &'a str,
        timestamp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<&'a str>,
    }

    fn by_serde<P: Serialize>(id: &str, kind: &str, payload: P) -> String {
        serde_json::to_string(&System {
            id,
            kind,
            from: SystemFrom { kind: "system" },
            payload,
        })
        .unwrap()
    }

    /// Strings that need escaping in every way JSON has, and some that do
    /// not.
    const STRINGS: [&str; 10] = [
        "",
        "plain-id_0123",
        "p\"q",
        "back\\slash",
        "new\nline\ttab\r",
        "\u{0}\u{1f}\u{7f}",
        "é ü 日本 🎉",
        "\u{2028}\u{2029}",
        "a/b</script>",
        "x\u{8}\u{c}y",
    ];

    #[test]
    fn connected_is_written_as_serde_writes_it() {
        for (i, s) in STRINGS.iter().enumerate() {
            let other = STRINGS[(i + 3) % STRINGS.len()];
            let count = (i as u32) * 1_000_003;
            let timestamp = u64::MAX - i as u64 * 77_777_777_777;
            let ours = SystemMessage::new(other, "connected")
                .str("clientId", s)
                .str("projectId", other)
                .number("clientCount", count.into())
                .concat("message", &["connected to project ", other, " as ", s])
                .number("timestamp", timestamp)
                .finish();
            let theirs = by_serde(
                other,
                "connected",
                Connected {
                    client_id: s,
                    project_id: other,
                    client_count: count,
                    message: format!("connected to project {other} as {s}"),
                    timestamp,
                },
            );
            assert_eq!(ours, theirs);
            let parsed: serde_json::Value = serde_json::from_str(&ours).unwrap();
            assert_eq!(parsed["payload"]["clientId"], *s);
        }
    }

    #[test]
    fn an_optional_field_left_out_leaves_no_trace() {
        for message_id in [None, Some("m\"1")] {
            let mut ours = SystemMessage::new("id", "error")
                .str("code", "invalid_json")
                .str("message", "bad \"input\"")
                .number("timestamp", 0);
            if let Some(id) = message_id {
                ours = ours.str("messageId", id);
            }
            let theirs = by_serde(
                "id",
                "error",
                ErrorPayload {
                    code: "invalid_json",
                    message: "bad \"input\"",
                    timestamp: 0,
                    message_id,
                },
            );
            assert_eq!(ours.finish(), theirs);
        }
    }
}
