//! Inputs where ports of the default room could differ, pinned to the Rust room's answers.
use crate::common::*;

// The verdict (routed, or which error) and, for a routed message, the exact
// text delivered are the Rust room's (guest/src/rules.rs, reading with
// serde_json): run against another port (WSROOM_TEST_ROOM, as CI does with
// the Python one) these tests fail where that port answers differently.
// Error messages are compared where the Rust room's are deterministic;
// the invalid_json ones are serde_json's wording.

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// The next text message exactly as it came (pings and pongs skipped).
async fn next_text(c: &mut Client) -> String {
    loop {
        let msg = within(c.ws.next())
            .await
            .expect("connection ended while waiting for a message")
            .expect("websocket error while waiting for a message");
        match msg {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Sends `text` from `c` and reads the error it gets back: its code,
/// message and messageId.
async fn refused(c: &mut Client, text: &str) -> (String, String, Option<String>) {
    c.send_text(text).await;
    let err = c.next_json().await;
    let code = error_of(&err).to_owned();
    let payload = &err["payload"];
    let message = payload["message"].as_str().unwrap().to_owned();
    let id = payload
        .get("messageId")
        .map(|v| v.as_str().unwrap().to_owned());
    (code, message, id)
}

/// Proves `from` had nothing delivered to `others` so far: a broadcast
/// marker from it must be the next message of each (one sender's messages
/// arrive in order).
async fn nothing_routed(from: &mut Client, others: &mut [&mut Client]) {
    let marker = uuid::Uuid::new_v4().to_string();
    from.send_text(&format!(r#"{{"id":"{marker}","type":"marker"}}"#))
        .await;
    for c in others {
        let got: Value = c.next_json().await;
        assert_eq!(got["id"], marker.as_str(), "expected the marker, got {got}");
    }
}

/// `{"id":ID,"type":"runtime"}`, the `from` the room stamps for runtime `id`.
fn stamp(id: &str) -> String {
    format!(r#"{{"id":"{id}","type":"runtime"}}"#)
}

#[tokio::test]
async fn what_rfc_8259_refuses_is_invalid_json_in_serde_json_s_words() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        mut d,
        mut a1,
        a2: _a2,
    } = room(&server).await;
    for (text, message) in [
        // Python's json module takes these three.
        (r#"{"x":NaN}"#, "expected value at line 1 column 6"),
        (r#"{"x":Infinity}"#, "expected value at line 1 column 6"),
        (r#"{"x":-Infinity}"#, "invalid number at line 1 column 7"),
        ("NaN", "expected value at line 1 column 1"),
        (
            r#"{"to":{"type":"data-agent"},"n":[1,NaN]}"#,
            "expected value at line 1 column 36",
        ),
        ("{\"a\":\n [tru]}", "expected ident at line 2 column 6"),
        (r#"{"a":1,}"#, "key must be a string at line 1 column 8"),
        (r#"{"a":"\u00zz"}"#, "invalid escape at line 1 column 12"),
        // Columns count bytes: "é" is two.
        (
            r#"{"é":[1,2"#,
            "EOF while parsing a list at line 1 column 10",
        ),
        (
            "{\"a\":\"\u{1}\"}",
            "control character (\\u0000-\\u001F) found while parsing a string at line 1 column 6",
        ),
        ("{\"a\":1} x", "trailing characters at line 1 column 9"),
        ("", "EOF while parsing a value at line 1 column 0"),
    ] {
        let (code, got, id) = refused(&mut r1, text).await;
        assert_eq!(code, "invalid_json", "{text:?}");
        assert_eq!(got, format!("invalid JSON: {message}"), "{text:?}");
        assert_eq!(id, None, "{text:?}");
    }
    nothing_routed(&mut r1, &mut [&mut r2, &mut d, &mut a1]).await;
}

#[tokio::test]
async fn valid_json_the_room_cannot_read_as_a_message_is_invalid_message() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        mut d,
        mut a1,
        a2: _a2,
    } = room(&server).await;
    let not_object = "message must be a JSON object";
    let twice = "`to` must be an object or null";
    for (text, message, message_id) in [
        ("[1]", not_object, None),
        // serde_json reads `to` (and its id and type) as values: a number
        // past f64 or a lone surrogate fails that read, so no messageId.
        (r#"{"id":"m1","to":1e400}"#, not_object, None),
        (r#"{"id":"m1","to":{"type":-1e400}}"#, not_object, None),
        (r#"{"id":"m1","to":{"id":"\ud800"}}"#, not_object, None),
        (r#"{"id":"m1","to":{"\udc00":1}}"#, not_object, None),
        (r#"{"id":"m1","to":{"id":{"\ud800x":1}}}"#, not_object, None),
        (r#"{"id":"m1","\ud800":1}"#, not_object, None),
        // Skipped over, they are fine.
        (
            r#"{"id":"m1","to":{"id":[1e400]}}"#,
            "`to.id` must be a string",
            Some("m1"),
        ),
        (r#"{"id":"m1","to":"x","note":"\ud800"}"#, twice, Some("m1")),
        // `id` or `type` twice in `to`, however spelled.
        (
            &format!(r#"{{"id":"m1","to":{{"id":"{}","id":"{}"}}}}"#, d.id, r2.id),
            twice,
            Some("m1"),
        ),
        (
            r#"{"id":"m1","to":{"type":"admin","note":1,"type":"runtime"}}"#,
            twice,
            Some("m1"),
        ),
        (
            &format!(r#"{{"id":"m1","to":{{"\u0069d":"{0}","id":"{0}"}}}}"#, d.id),
            twice,
            Some("m1"),
        ),
        // Of two message ids the last counts; one with a lone surrogate
        // is no id.
        (r#"{"id":"m1","to":7,"id":"m2"}"#, twice, Some("m2")),
        (r#"{"id":"\ud800","to":7}"#, twice, None),
        (r#"{"id":"\u006d\u00e9","to":7}"#, twice, Some("mé")),
    ] {
        let (code, got, id) = refused(&mut r1, text).await;
        assert_eq!(code, "invalid_message", "{text}");
        assert_eq!(got, message, "{text}");
        assert_eq!(id.as_deref(), message_id, "{text}");
    }
    nothing_routed(&mut r1, &mut [&mut r2, &mut d, &mut a1]).await;
}

#[tokio::test]
async fn routed_messages_are_the_client_s_bytes_with_only_from_replaced() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        mut d,
        mut a1,
        a2: _a2,
    } = room(&server).await;
    let from = stamp(&r1.id);
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let big = format!("1{}", "0".repeat(5000));
    for (sent, delivered) in [
        // Spacing, number spelling and escapes stay; `from` is replaced
        // where it is, or added before the closing brace.
        (
            r#"{ "a" : 1.50 , "from" : "me" , "b":[ 1 ] }"#.to_owned(),
            format!(r#"{{ "a" : 1.50 , "from" : {from} , "b":[ 1 ] }}"#),
        ),
        (
            "{\"id\":\"m1\" }\n\t".to_owned(),
            format!("{{\"id\":\"m1\" ,\"from\":{from}}}\n\t"),
        ),
        ("{ }".to_owned(), format!(r#"{{ "from":{from}}}"#)),
        (
            r#"{"x":"\u00e9\ud83d\ude00\/","y":"é","z":"\ud800","k":"\u0000"}"#.to_owned(),
            format!(
                r#"{{"x":"\u00e9\ud83d\ude00\/","y":"é","z":"\ud800","k":"\u0000","from":{from}}}"#
            ),
        ),
        // Numbers past f64 or u64, and -0, are forwarded as written.
        (
            format!(r#"{{"n":1e400,"m":-1E+400,"z":-0,"e":1.0e-400,"b":{big}}}"#),
            format!(r#"{{"n":1e400,"m":-1E+400,"z":-0,"e":1.0e-400,"b":{big},"from":{from}}}"#),
        ),
        (
            format!(r#"{{"deep":{deep}}}"#),
            format!(r#"{{"deep":{deep},"from":{from}}}"#),
        ),
        // Every `from` is stamped, however its key is spelled.
        (
            r#"{"fr\u006fm":1,"x":"NaN","from":{}, "t\u006f" :null}"#.to_owned(),
            format!(r#"{{"fr\u006fm":{from},"x":"NaN","from":{from}, "t\u006f" :null}}"#),
        ),
    ] {
        r1.send_text(&sent).await;
        for c in [&mut r2, &mut d, &mut a1] {
            assert_eq!(next_text(c).await, delivered, "{sent:.200}");
        }
    }
}

#[tokio::test]
async fn of_duplicate_top_level_keys_the_last_to_counts_and_every_from_is_stamped() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        mut d,
        mut a1,
        mut a2,
    } = room(&server).await;
    let from = stamp(&r1.id);
    let sent = format!(
        r#"{{"to":{{"id":"{}"}},"from":"x","to":{{"type":"data-agent"}},"from":{{"id":"y"}}}}"#,
        r2.id
    );
    r1.send_text(&sent).await;
    let delivered = format!(
        r#"{{"to":{{"id":"{}"}},"from":{from},"to":{{"type":"data-agent"}},"from":{from}}}"#,
        r2.id
    );
    for c in [&mut d, &mut a1, &mut a2] {
        assert_eq!(next_text(c).await, delivered);
    }
    // An earlier `to` with `id` twice is overridden too.
    let sent = format!(r#"{{"to":{{"id":"a","id":"b"}},"to":{{"id":"{}"}}}}"#, d.id);
    r1.send_text(&sent).await;
    let delivered = format!(
        r#"{{"to":{{"id":"a","id":"b"}},"to":{{"id":"{}"}},"from":{from}}}"#,
        d.id
    );
    for c in [&mut d, &mut a1, &mut a2] {
        assert_eq!(next_text(c).await, delivered);
    }
    nothing_routed(&mut r1, &mut [&mut r2]).await;
}

#[tokio::test]
async fn a_from_object_with_fields_of_its_own_is_rebuilt_as_serde_json_writes_it() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        d: _d,
        a1: _a1,
        a2: _a2,
    } = room(&server).await;
    let id = r1.id.clone();
    for (sent, delivered) in [
        // Keys sorted, the last of duplicates, numbers as serde_json's
        // Value holds and writes them, strings unescaped where they can be.
        (
            r#"{"from":{"name":"x","z":[1.50,-0,18446744073709551616,1e16,1e-7,100,0.00001,1E2],"name":"\u0079","type":"system","a":{"b":1,"a":"\/"}}}"#.to_owned(),
            format!(
                r#"{{"from":{{"a":{{"a":"/","b":1}},"id":"{id}","name":"y","type":"runtime","z":[1.5,-0.0,1.8446744073709552e+19,1e+16,1e-7,100,0.00001,100.0]}}}}"#
            ),
        ),
        // What serde_json cannot read as a map loses its fields.
        (
            r#"{"from":{"name":"x","n":1e400}}"#.to_owned(),
            format!(r#"{{"from":{}}}"#, stamp(&id)),
        ),
        (
            r#"{"from":{"name":"\ud800"}}"#.to_owned(),
            format!(r#"{{"from":{}}}"#, stamp(&id)),
        ),
        (
            format!(
                r#"{{"from":{{"k":{}{}}}}}"#,
                "[".repeat(127),
                "]".repeat(127)
            ),
            format!(r#"{{"from":{}}}"#, stamp(&id)),
        ),
        (
            format!(
                r#"{{"from":{{"k":{}{}}}}}"#,
                "[".repeat(126),
                "]".repeat(126)
            ),
            format!(
                r#"{{"from":{{"id":"{id}","k":{}{},"type":"runtime"}}}}"#,
                "[".repeat(126),
                "]".repeat(126)
            ),
        ),
        // Only `id` and `type`: the plain stamp.
        (
            r#"{"from":{ "type":"x" ,"id":1}}"#.to_owned(),
            format!(r#"{{"from":{}}}"#, stamp(&id)),
        ),
    ] {
        r1.send_text(&sent).await;
        assert_eq!(next_text(&mut r2).await, delivered, "{sent:.200}");
    }
}

#[tokio::test]
async fn an_unknown_target_is_named_as_rust_s_debug_format_writes_it() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        d: _d,
        mut a1,
        a2: _a2,
    } = room(&server).await;
    let sent = r#"{"id":"m1","to":{"id":"gh\"o\u00e9st\n\u0301"}}"#;
    r1.send_text(sent).await;
    // The admins' copy still goes out.
    assert_eq!(
        next_text(&mut a1).await,
        format!(
            r#"{{"id":"m1","to":{{"id":"gh\"o\u00e9st\n\u0301"}},"from":{}}}"#,
            stamp(&r1.id)
        )
    );
    let err = r1.next_json().await;
    assert_eq!(error_of(&err), "unknown_target");
    assert_eq!(
        err["payload"]["message"],
        r#"no client with id "gh\"oést\n\u{301}" in this project"#
    );
    assert_eq!(err["payload"]["messageId"], "m1");
    nothing_routed(&mut r1, &mut [&mut r2]).await;
}

#[tokio::test]
async fn a_byte_order_mark_inside_a_string_is_text_like_any_other() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        d: _d,
        mut a1,
        a2: _a2,
    } = room(&server).await;
    // A `to.id` that is only U+FEFF (raw, not escaped) names nobody: it is
    // not an empty id (which would broadcast).
    r1.send_text("{\"id\":\"m2\",\"to\":{\"id\":\"\u{feff}\"}}")
        .await;
    assert!(next_text(&mut a1).await.contains("\"m2\""));
    let err = r1.next_json().await;
    assert_eq!(error_of(&err), "unknown_target");
    assert_eq!(
        err["payload"]["message"],
        "no client with id \"\\u{feff}\" in this project"
    );
    nothing_routed(&mut r1, &mut [&mut r2]).await;
}
