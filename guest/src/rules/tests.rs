use super::*;
use serde_json::{Value, json};
use std::collections::HashMap;

/// An in-memory host: a connection table and what each client received.
#[derive(Default)]
struct FakeHost {
    clients: Vec<(String, String)>,
    received: HashMap<String, Vec<Value>>,
    /// The same, as the text sent.
    texts: HashMap<String, Vec<String>>,
    alarm: Option<u64>,
    config: HashMap<String, String>,
    ids: std::cell::Cell<u32>,
    /// Every target's selector and exception, in the order sent.
    targets: Vec<(String, Option<String>)>,
}

impl FakeHost {
    fn with(clients: &[(&str, &str)]) -> Self {
        FakeHost {
            clients: clients
                .iter()
                .map(|(id, kind)| (id.to_string(), kind.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn got(&self, id: &str) -> &[Value] {
        self.received.get(id).map(Vec::as_slice).unwrap_or(&[])
    }

    fn texts(&self, id: &str) -> &[String] {
        self.texts.get(id).map(Vec::as_slice).unwrap_or(&[])
    }

    fn total(&self) -> usize {
        self.received.values().map(Vec::len).sum()
    }
}

impl Env for FakeHost {
    fn project_id(&self) -> String {
        "p1".into()
    }

    fn send(&mut self, text: &str, targets: &[Target<'_>]) -> Reached {
        let value: Value = serde_json::from_str(text).expect("room sent invalid JSON");
        let mut reached: Vec<&str> = Vec::new();
        let mut counts = Vec::new();
        for t in targets {
            self.targets
                .push((format!("{:?}", t.select), t.except.map(str::to_owned)));
            let mut n = 0;
            for (id, kind) in &self.clients {
                let hit = match &t.select {
                    Select::Client(c) => c == id,
                    Select::Kind(k) => k == kind,
                    Select::All => true,
                };
                if hit && t.except != Some(id.as_str()) && !reached.contains(&id.as_str()) {
                    reached.push(id);
                    n += 1;
                }
            }
            counts.push(n);
        }
        for id in reached {
            self.texts
                .entry(id.to_string())
                .or_default()
                .push(text.to_string());
            self.received
                .entry(id.to_string())
                .or_default()
                .push(value.clone());
        }
        Reached {
            first: counts.first().copied().unwrap_or(0),
            all: counts.iter().sum(),
        }
    }

    fn client_count(&self) -> u32 {
        self.clients.len() as u32
    }

    fn now_ms(&self) -> u64 {
        1_764_100_000_000
    }

    fn new_id(&self) -> String {
        self.ids.set(self.ids.get() + 1);
        format!("sys-{}", self.ids.get())
    }

    fn config(&self, key: &str) -> Option<String> {
        self.config.get(key).cloned()
    }

    fn set_alarm(&mut self, delay_ms: u64) {
        self.alarm = Some(delay_ms);
    }

    fn cancel_alarm(&mut self) {
        self.alarm = None;
    }
}

/// `on-connect` for a client of this id and type.
fn join(h: &mut FakeHost, id: &str, kind: &str) -> Result<(), Refusal> {
    on_connect(h, Joining { id, kind })
}

/// r1, r2: runtime; d1: data-agent; a1, a2: admin.
fn room() -> FakeHost {
    FakeHost::with(&[
        ("r1", "runtime"),
        ("r2", "runtime"),
        ("d1", "data-agent"),
        ("a1", "admin"),
        ("a2", "admin"),
    ])
}

fn send(host: &mut FakeHost, from: &str, msg: Value) {
    let kind = host
        .clients
        .iter()
        .find(|(id, _)| id == from)
        .map(|(_, k)| k.clone())
        .expect("sender must be connected");
    on_text(host, from, &kind, &msg.to_string());
}

fn error_code(v: &Value) -> &str {
    assert_eq!(v["type"], "error");
    assert_eq!(v["from"], json!({"type": "system"}));
    v["payload"]["code"].as_str().unwrap()
}

#[test]
fn to_id_reaches_target_and_admins_only() {
    let mut h = room();
    send(
        &mut h,
        "r1",
        json!({"id": "m1", "type": "q", "to": {"id": "d1"}, "payload": 1}),
    );
    assert_eq!(h.got("d1").len(), 1);
    assert_eq!(h.got("a1").len(), 1);
    assert_eq!(h.got("a2").len(), 1);
    assert!(h.got("r1").is_empty() && h.got("r2").is_empty());
    assert_eq!(h.got("d1")[0]["payload"], 1);
}

#[test]
fn to_id_self_is_delivered_to_self() {
    let mut h = room();
    send(
        &mut h,
        "r1",
        json!({"id": "m1", "type": "q", "to": {"id": "r1"}}),
    );
    assert_eq!(h.got("r1").len(), 1);
    assert_eq!(h.got("a1").len(), 1);
    assert_eq!(h.total(), 3);
}

#[test]
fn admin_targeted_by_id_gets_one_copy() {
    let mut h = room();
    send(
        &mut h,
        "r1",
        json!({"id": "m1", "type": "q", "to": {"id": "a1"}}),
    );
    assert_eq!(h.got("a1").len(), 1);
    assert_eq!(h.got("a2").len(), 1);
    assert_eq!(h.total(), 2);
}

#[test]
fn admin_sender_gets_no_monitoring_copy() {
    let mut h = room();
    send(
        &mut h,
        "a1",
        json!({"id": "m1", "type": "q", "to": {"type": "runtime"}}),
    );
    assert!(h.got("a1").is_empty());
    assert_eq!(h.got("a2").len(), 1);
    assert_eq!(h.got("r1").len(), 1);
    assert_eq!(h.got("r2").len(), 1);
    assert_eq!(h.total(), 3);
}

#[test]
fn admin_sending_to_itself_by_id_gets_exactly_one_copy() {
    let mut h = room();
    send(
        &mut h,
        "a1",
        json!({"id": "m1", "type": "q", "to": {"id": "a1"}}),
    );
    assert_eq!(h.got("a1").len(), 1);
    assert_eq!(h.got("a2").len(), 1);
    assert_eq!(h.total(), 2);
}

#[test]
fn to_type_excludes_sender_and_copies_admins() {
    let mut h = room();
    send(
        &mut h,
        "r1",
        json!({"id": "m1", "type": "q", "to": {"type": "runtime"}}),
    );
    assert!(h.got("r1").is_empty());
    assert_eq!(h.got("r2").len(), 1);
    assert!(h.got("d1").is_empty());
    assert_eq!(h.got("a1").len(), 1);
    assert_eq!(h.got("a2").len(), 1);
}

#[test]
fn only_a_target_that_could_include_the_sender_leaves_it_out() {
    // The host looks up every exception; one that cannot match is waste.
    let except = |h: &FakeHost| -> Vec<Option<String>> {
        h.targets.iter().map(|(_, e)| e.clone()).collect()
    };
    let mut h = room();
    send(
        &mut h,
        "r1",
        json!({"type": "q", "to": {"type": "data-agent"}}),
    );
    assert_eq!(except(&h), [None, None], "{:?}", h.targets);
    let mut h = room();
    send(
        &mut h,
        "r1",
        json!({"type": "q", "to": {"type": "runtime"}}),
    );
    assert_eq!(except(&h), [Some("r1".into()), None], "{:?}", h.targets);
    let mut h = room();
    send(&mut h, "a1", json!({"type": "q", "to": {"id": "d1"}}));
    assert_eq!(except(&h), [None, Some("a1".into())], "{:?}", h.targets);
    let mut h = room();
    send(&mut h, "r1", json!({"type": "q"}));
    assert_eq!(except(&h), [Some("r1".into())], "{:?}", h.targets);
}

#[test]
fn to_type_admin_gives_admins_one_copy() {
    let mut h = room();
    send(
        &mut h,
        "d1",
        json!({"id": "m1", "type": "q", "to": {"type": "admin"}}),
    );
    assert_eq!(h.got("a1").len(), 1);
    assert_eq!(h.got("a2").len(), 1);
    assert_eq!(h.total(), 2);
}

#[test]
fn to_type_with_nobody_of_that_type_still_copies_admins() {
    let mut h = room();
    send(
        &mut h,
        "r1",
        json!({"id": "m1", "type": "q", "to": {"type": "nobody"}}),
    );
    assert_eq!(h.got("a1").len(), 1);
    assert_eq!(h.total(), 2);
}

#[test]
fn id_wins_over_type() {
    let mut h = room();
    send(
        &mut h,
        "r1",
        json!({"id": "m1", "type": "q", "to": {"id": "d1", "type": "runtime"}}),
    );
    assert_eq!(h.got("d1").len(), 1);
    assert!(h.got("r2").is_empty());
}

#[test]
fn broadcast_reaches_everyone_else_once() {
    for to in [
        None,
        Some(Value::Null),
        Some(json!({})),
        Some(json!({"id": "", "type": ""})),
    ] {
        let mut h = room();
        let mut msg = json!({"id": "m1", "type": "hello", "payload": {"x": [1, 2]}});
        if let Some(to) = to {
            msg["to"] = to;
        }
        send(&mut h, "r1", msg);
        assert!(h.got("r1").is_empty());
        for id in ["r2", "d1", "a1", "a2"] {
            assert_eq!(h.got(id).len(), 1, "{id}");
        }
    }
}

#[test]
fn from_is_stamped_by_the_server() {
    let mut h = room();
    send(
        &mut h,
        "r1",
        json!({"id": "m1", "type": "q", "from": {"type": "system", "id": "a1", "name": "x"}, "payload": null}),
    );
    let got = &h.got("r2")[0];
    assert_eq!(
        got["from"],
        json!({"type": "runtime", "id": "r1", "name": "x"})
    );
    for from in [json!("me"), json!(5), Value::Null] {
        let mut h = room();
        send(&mut h, "r1", json!({"id": "m1", "type": "q", "from": from}));
        assert_eq!(
            h.got("r2")[0]["from"],
            json!({"type": "runtime", "id": "r1"})
        );
    }
    let mut h = room();
    send(&mut h, "r1", json!({"type": "q"}));
    assert_eq!(
        h.got("r2")[0]["from"],
        json!({"type": "runtime", "id": "r1"})
    );
}

#[test]
fn other_fields_pass_through_untouched() {
    let mut h = room();
    let text = r#"{"id":"m1","type":"q","payload":{"b":1.50,"a":"\u00e9"},"extra":[true,null],"to":{"type":"data-agent","note":1}}"#;
    on_text(&mut h, "r1", "runtime", text);
    let got = &h.got("d1")[0];
    assert_eq!(got["extra"], json!([true, null]));
    assert_eq!(got["to"], json!({"type": "data-agent", "note": 1}));
    assert_eq!(got["payload"]["a"], "é");
    assert_eq!(got["id"], "m1");
}

#[test]
fn invalid_json_is_refused_to_sender_only() {
    let mut h = room();
    on_text(&mut h, "r1", "runtime", "{not json");
    assert_eq!(h.total(), 1);
    assert_eq!(error_code(&h.got("r1")[0]), "invalid_json");
    assert_eq!(h.got("r1")[0]["payload"]["projectId"], "p1");
}

#[test]
fn non_object_json_is_invalid_message() {
    for text in ["[1,2]", "\"hi\"", "42", "null"] {
        let mut h = room();
        on_text(&mut h, "r1", "runtime", text);
        assert_eq!(h.total(), 1, "{text}");
        assert_eq!(error_code(&h.got("r1")[0]), "invalid_message", "{text}");
    }
}

#[test]
fn bad_to_is_invalid_message_with_message_id() {
    for to in [
        json!("d1"),
        json!(7),
        json!([]),
        json!({"id": 5}),
        json!({"type": true}),
        json!({"id": null}),
        json!({"id": {"x": [1]}}),
        json!({"type": ["data-agent"]}),
    ] {
        let mut h = room();
        send(&mut h, "r1", json!({"id": "m9", "type": "q", "to": to}));
        assert_eq!(h.total(), 1, "{to}");
        let err = &h.got("r1")[0];
        assert_eq!(error_code(err), "invalid_message", "{to}");
        assert_eq!(err["payload"]["messageId"], "m9");
    }
}

#[test]
fn escaped_to_fields_route_like_plain_ones() {
    let mut h = room();
    on_text(
        &mut h,
        "r1",
        "runtime",
        r#"{"to":{"type":"data\u002dagent"}}"#,
    );
    assert_eq!(h.got("d1").len(), 1);
    on_text(
        &mut h,
        "r1",
        "runtime",
        r#"{"to":{"note":{"a":[1,{}]},"id":"\u0064\u0031"}}"#,
    );
    assert_eq!(h.got("d1").len(), 2);
    assert!(h.got("r2").is_empty());
}

#[test]
fn message_id_only_when_a_string() {
    let mut h = room();
    send(&mut h, "r1", json!({"id": 5, "type": "q", "to": 1}));
    assert!(h.got("r1")[0]["payload"].get("messageId").is_none());
}

#[test]
fn unknown_target_errors_but_admins_get_their_copy() {
    let mut h = room();
    send(
        &mut h,
        "r1",
        json!({"id": "m1", "type": "q", "to": {"id": "ghost"}}),
    );
    assert_eq!(h.got("a1").len(), 1);
    assert_eq!(h.got("a2").len(), 1);
    assert_eq!(h.got("r1").len(), 1);
    let err = &h.got("r1")[0];
    assert_eq!(error_code(err), "unknown_target");
    assert_eq!(err["payload"]["messageId"], "m1");
}

#[test]
fn binary_and_oversize_are_refused() {
    let mut h = room();
    on_binary(&mut h, "r1");
    on_too_large(&mut h, "r1", 2000, 1000);
    let got = h.got("r1");
    assert_eq!(error_code(&got[0]), "invalid_message");
    assert_eq!(error_code(&got[1]), "message_too_large");
    assert_eq!(h.total(), 2);
}

#[test]
fn connect_greets_and_cancels_cleanup() {
    let mut h = FakeHost::with(&[("r1", "runtime")]);
    h.alarm = Some(1);
    join(&mut h, "r1", "runtime").unwrap();
    assert_eq!(h.alarm, None);
    let hello = &h.got("r1")[0];
    assert_eq!(hello["type"], "connected");
    assert_eq!(hello["from"], json!({"type": "system"}));
    assert_eq!(hello["payload"]["clientId"], "r1");
    assert_eq!(hello["payload"]["projectId"], "p1");
    assert_eq!(hello["payload"]["clientCount"], 1);
    assert!(hello["payload"]["message"].is_string());
    assert!(hello["payload"]["timestamp"].is_u64());
    assert!(hello["id"].is_string());
}

#[test]
fn connect_refuses_unknown_types() {
    let mut h = FakeHost::with(&[("x", "robot")]);
    let refusal = join(&mut h, "x", "robot").unwrap_err();
    assert_eq!(refusal.status, 400);
    assert_eq!(refusal.error, "invalid_type");
    assert_eq!(h.total(), 0);
}

#[test]
fn close_notifies_the_rest() {
    let mut h = FakeHost::with(&[("r2", "runtime"), ("a1", "admin")]);
    on_close(&mut h, "r1", "runtime");
    for id in ["r2", "a1"] {
        let left = &h.got(id)[0];
        assert_eq!(left["type"], "client_left");
        assert_eq!(left["payload"]["clientId"], "r1");
        assert_eq!(left["payload"]["clientType"], "runtime");
        assert_eq!(left["payload"]["clientCount"], 2);
    }
    assert_eq!(h.alarm, None);
}

#[test]
fn last_close_sets_cleanup_alarm() {
    let mut h = FakeHost::default();
    on_close(&mut h, "r1", "runtime");
    assert_eq!(h.alarm, Some(DEFAULT_CLEANUP_DELAY_MS));
    h.config.insert("cleanup-delay-ms".into(), "250".into());
    on_close(&mut h, "r1", "runtime");
    assert_eq!(h.alarm, Some(250));
}

#[test]
fn escaped_keys_and_odd_spacing_survive_the_rewrite() {
    let mut h = room();
    let text = "{ \"id\" : \"m1\" , \"we\\\"ird\\u0041\" : [1] , \"to\" :  null , \"from\" : {} }";
    on_text(&mut h, "r1", "runtime", text);
    let got = &h.got("r2")[0];
    assert_eq!(got["we\"irdA"], json!([1]));
    assert_eq!(got["from"], json!({"type": "runtime", "id": "r1"}));
    let mut h = room();
    on_text(&mut h, "r1", "runtime", "{\"to\" : { \"id\" : \"d1\" } }");
    assert_eq!(h.got("d1").len(), 1);
    assert!(h.got("r2").is_empty());
}

#[test]
fn only_from_is_rewritten_byte_for_byte() {
    let cases = [
        (
            r#"{ "a" : 1.50 , "from" : "me" , "b":[ 1 ] }"#,
            r#"{ "a" : 1.50 , "from" : {"id":"r1","type":"runtime"} , "b":[ 1 ] }"#,
        ),
        (
            r#"{"from":1,"x":"\u0041","from":{}}"#,
            r#"{"from":{"id":"r1","type":"runtime"},"x":"\u0041","from":{"id":"r1","type":"runtime"}}"#,
        ),
        (
            "{\"id\":\"m1\" }\n",
            "{\"id\":\"m1\" ,\"from\":{\"id\":\"r1\",\"type\":\"runtime\"}}\n",
        ),
        ("{ }", r#"{ "from":{"id":"r1","type":"runtime"}}"#),
    ];
    for (sent, delivered) in cases {
        let mut h = room();
        on_text(&mut h, "r1", "runtime", sent);
        let got = h.texts("r2");
        assert_eq!(got, [delivered], "{sent}");
    }
}

#[test]
fn a_sender_type_with_quotes_is_escaped() {
    let mut h = FakeHost::with(&[("q", "we\"ird"), ("r2", "runtime")]);
    on_text(&mut h, "q", "we\"ird", r#"{"id":"m1"}"#);
    assert_eq!(
        h.got("r2")[0]["from"],
        json!({"type": "we\"ird", "id": "q"})
    );
}

#[test]
fn a_sender_id_with_a_backslash_or_control_character_is_escaped() {
    for (id, kind) in [("a\\b", "runtime"), ("c", "run\ntime"), ("d\u{1}", "x")] {
        let mut h = FakeHost::with(&[(id, kind), ("r2", "runtime")]);
        on_text(&mut h, id, kind, r#"{"id":"m1"}"#);
        assert_eq!(h.got("r2")[0]["from"], json!({"type": kind, "id": id}));
    }
}

#[test]
fn of_duplicate_keys_the_last_to_and_id_count_and_every_from_is_stamped() {
    let mut h = room();
    let text = r#"{"to":{"id":"r2"},"from":"x","to":{"type":"data-agent"},"from":{"id":"y"}}"#;
    on_text(&mut h, "r1", "runtime", text);
    assert!(h.got("r2").is_empty(), "the first `to` was overridden");
    let got = &h.texts("d1")[0];
    assert_eq!(
        got,
        r#"{"to":{"id":"r2"},"from":{"id":"r1","type":"runtime"},"to":{"type":"data-agent"},"from":{"id":"r1","type":"runtime"}}"#
    );
    let mut h = room();
    on_text(&mut h, "r1", "runtime", r#"{"id":"m1","to":7,"id":"m2"}"#);
    assert_eq!(h.got("r1")[0]["payload"]["messageId"], "m2");
}

#[test]
fn a_to_with_id_or_type_twice_is_invalid() {
    for to in [
        r#"{"id":"d1","id":"r2"}"#,
        r#"{"type":"admin","note":1,"type":"runtime"}"#,
        r#"{"\u0069d":"d1","id":"d1"}"#,
    ] {
        let mut h = room();
        on_text(
            &mut h,
            "r1",
            "runtime",
            &format!(r#"{{"id":"m3","to":{to}}}"#),
        );
        assert_eq!(h.total(), 1, "{to}");
        assert_eq!(error_code(&h.got("r1")[0]), "invalid_message", "{to}");
    }
}

fn http(host: &mut FakeHost, method: &str, path: &str, body: &str) -> (u16, Value) {
    let answer = on_http(host, method, path, body.as_bytes());
    (answer.status, serde_json::from_str(&answer.body).unwrap())
}

#[test]
fn a_posted_message_is_routed_as_from_the_server() {
    let mut host = room();
    let (status, body) = http(
        &mut host,
        "POST",
        "/messages",
        r#"{"type":"deploy","to":{"type":"runtime"},"payload":{"v":2}}"#,
    );
    assert_eq!(status, 202);
    // r1, r2 and the two admins.
    assert_eq!(body["delivered"], 4);
    for id in ["r1", "r2", "a1", "a2"] {
        let got = host.got(id);
        assert_eq!(got.len(), 1, "{id}");
        assert_eq!(got[0]["from"], json!({"id": "server", "type": "server"}));
        assert_eq!(got[0]["payload"], json!({"v": 2}));
    }
    assert!(host.got("d1").is_empty());
}

#[test]
fn a_posted_broadcast_reaches_every_client() {
    let mut host = room();
    let (status, body) = http(&mut host, "POST", "/messages?x=1", r#"{"type":"t"}"#);
    assert_eq!((status, body["delivered"].as_u64()), (202, Some(5)));
}

#[test]
fn a_posted_message_that_is_not_valid_is_refused_and_sent_nowhere() {
    let mut host = room();
    let (status, body) = http(&mut host, "POST", "/messages", "{nope");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_json"))
    );
    let answer = on_http(&mut host, "POST", "/messages", b"\xff");
    let body: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!((answer.status, &body["delivered"]), (400, &json!(0)));
    let (status, body) = http(&mut host, "POST", "/messages", r#"{"to":5}"#);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_message"))
    );
    assert_eq!(host.total(), 0);
}

#[test]
fn a_posted_message_to_nobody_is_404_but_reaches_the_admins() {
    let mut host = room();
    let (status, body) = http(
        &mut host,
        "POST",
        "/messages",
        r#"{"id":"m1","to":{"id":"ghost"}}"#,
    );
    assert_eq!(status, 404);
    assert_eq!(body["error"], "unknown_target");
    assert_eq!(body["messageId"], "m1");
    assert_eq!(body["delivered"], 2);
}

#[test]
fn other_requests_get_clear_errors() {
    let mut host = room();
    let answer = on_http(&mut host, "GET", "/messages", b"");
    assert_eq!((answer.status, answer.allow), (405, Some("POST")));
    assert_eq!(http(&mut host, "HEAD", "/", "").0, 200);
    assert_eq!(http(&mut host, "GET", "/nothing", "").0, 404);
    let (status, body) = http(&mut host, "GET", "/", "");
    assert_eq!(status, 200);
    assert_eq!(body["clientCount"], 5);
    assert_eq!(host.total(), 0);
}

/// The room's own messages, byte for byte: fields in the order clients have
/// always seen them (serde's order before they were written by hand).
#[test]
fn system_messages_keep_their_exact_shape() {
    let mut h = FakeHost::with(&[("r1", "runtime")]);
    join(&mut h, "r1", "runtime").unwrap();
    assert_eq!(
        h.texts("r1"),
        [
            r#"{"id":"sys-1","type":"connected","from":{"type":"system"},"payload":{"clientId":"r1","projectId":"p1","clientCount":1,"message":"connected to project p1 as runtime","timestamp":1764100000000}}"#
        ]
    );

    let mut h = FakeHost::with(&[("r2", "runtime"), ("a1", "admin")]);
    on_close(&mut h, "r1", "run\"time");
    assert_eq!(
        h.texts("a1"),
        [
            r#"{"id":"sys-1","type":"client_left","from":{"type":"system"},"payload":{"clientId":"r1","clientType":"run\"time","projectId":"p1","clientCount":2,"timestamp":1764100000000}}"#
        ]
    );

    let mut h = room();
    on_binary(&mut h, "r1");
    assert_eq!(
        h.texts("r1"),
        [
            r#"{"id":"sys-1","type":"error","from":{"type":"system"},"payload":{"code":"invalid_message","message":"binary frames are not supported; send JSON text","projectId":"p1","timestamp":1764100000000}}"#
        ]
    );

    let mut h = room();
    on_text(
        &mut h,
        "r1",
        "runtime",
        r#"{"id":"m\"1","to":{"id":"nobody"}}"#,
    );
    let error = &h.texts("r1")[0];
    assert!(
        error.starts_with(r#"{"id":"sys-1","type":"error","from":{"type":"system"},"payload":{"code":"unknown_target","message":""#),
        "{error}"
    );
    assert!(
        error.ends_with(r#"","projectId":"p1","timestamp":1764100000000,"messageId":"m\"1"}}"#),
        "{error}"
    );
}
