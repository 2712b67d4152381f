//! The room's own messages (`from.type` "system": `connected`,
//! `client_left`, `error`), written straight into their string.
//!
//! serde_json's serializer checks every byte of every key and value against
//! its escape table, one byte at a time: in wasm that made the `connected`
//! greeting about a fifth of what a connection costs the room. Here the
//! keys are constants and each value is copied whole when it needs no
//! escaping, as ids, types and project ids almost never do (anything else
//! still goes through serde_json's escaping). The bytes are the ones serde
//! wrote before: `rules`' tests hold each message to them, this module's
//! every value to serde's escaping.

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
        // `connected` with two UUIDs and a project id twice runs past 256.
        let mut out = String::with_capacity(384);
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

    /// The field order of whole messages is `rules`' tests' to check; here,
    /// that every value is written as serde_json writes it.
    #[test]
    fn values_are_escaped_as_serde_escapes_them() {
        let json = |s: &str| serde_json::to_string(s).unwrap();
        for (i, s) in STRINGS.iter().enumerate() {
            let number = u64::MAX - i as u64 * 77_777_777_777;
            let ours = SystemMessage::new(s, "error")
                .str("message", s)
                .number("timestamp", number)
                .finish();
            let theirs = format!(
                r#"{{"id":{},"type":"error","from":{{"type":"system"}},"payload":{{"message":{},"timestamp":{number}}}}}"#,
                json(s),
                json(s)
            );
            assert_eq!(ours, theirs);
            let parsed: serde_json::Value = serde_json::from_str(&ours).unwrap();
            assert_eq!(parsed["payload"]["message"], *s);
        }
    }

    #[test]
    fn a_message_without_fields_has_an_empty_payload() {
        assert_eq!(
            SystemMessage::new("1", "pong").finish(),
            r#"{"id":"1","type":"pong","from":{"type":"system"},"payload":{}}"#
        );
    }
}
