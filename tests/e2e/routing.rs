//! Routing by `to.id`, `to.type` and broadcast, the admins' monitoring
//! copies, `from` stamping, order, isolation of projects; and the system
//! messages (`connected`, `client_left`).

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::common::*;

// ---- system messages

#[tokio::test]
async fn connected_is_the_first_frame() {
    let server = Server::start(&[]);
    let p = project();
    let (mut ws, _) = within(tokio_tungstenite::connect_async(
        server.url(&format!("type=data-agent&projectId={p}")),
    ))
    .await
    .unwrap();
    let hello = recv(&mut ws).await;
    assert_eq!(hello["type"], "connected");
    assert_eq!(hello["from"], json!({"type": "system"}));
    assert!(hello["id"].as_str().is_some_and(|s| !s.is_empty()));
    let payload = &hello["payload"];
    assert_eq!(payload["projectId"], p.as_str());
    assert_eq!(payload["clientCount"], 1);
    assert!(payload["clientId"].as_str().is_some_and(|s| s.len() == 36));
    assert!(payload["message"].is_string());
    assert!(payload["timestamp"].is_u64());
    let _c2 = server.connect("runtime", &p).await;
    let (mut ws3, _) = within(tokio_tungstenite::connect_async(
        server.url(&format!("type=admin&projectId={p}")),
    ))
    .await
    .unwrap();
    assert_eq!(recv(&mut ws3).await["payload"]["clientCount"], 3);
}

#[tokio::test]
async fn client_left_goes_to_everyone_remaining() {
    let server = Server::start(&[]);
    let p = project();
    let mut a = server.connect("admin", &p).await;
    let mut r = server.connect("runtime", &p).await;
    let mut d = server.connect("data-agent", &p).await;
    d.close().await;
    for c in [&mut a, &mut r] {
        let left = c.next_json().await;
        assert_eq!(left["type"], "client_left");
        assert_eq!(left["from"], json!({"type": "system"}));
        assert_eq!(left["payload"]["clientId"], d.id.as_str());
        assert_eq!(left["payload"]["clientType"], "data-agent");
        assert_eq!(left["payload"]["projectId"], p.as_str());
        assert_eq!(left["payload"]["clientCount"], 2);
        assert!(left["payload"]["timestamp"].is_u64());
    }
    let (_, status) = server.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status["clientCount"], 2);
}

#[tokio::test]
async fn a_vanished_client_counts_as_left() {
    let server = Server::start(&[]);
    let p = project();
    let mut a = server.connect("admin", &p).await;
    let r = server.connect("runtime", &p).await;
    let r_id = r.id.clone();
    // Drop the TCP connection without a close frame.
    drop(r);
    let left = a.next_json().await;
    assert_eq!(left["type"], "client_left");
    assert_eq!(left["payload"]["clientId"], r_id.as_str());
    assert_eq!(left["payload"]["clientCount"], 1);
}

// ---- routing

#[tokio::test]
async fn to_id_reaches_the_target_and_every_admin_once() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        mut d,
        mut a1,
        mut a2,
    } = room(&server).await;
    let msg = json!({"id": "m1", "type": "graphql_query", "from": {"type": "runtime"},
                     "to": {"id": d.id}, "payload": {"query": "q", "variables": {}}});
    r1.send_json(&msg).await;
    let got = d.next_json().await;
    assert_eq!(got["id"], "m1");
    assert_eq!(got["payload"], msg["payload"]);
    assert_eq!(got["to"], msg["to"]);
    assert_eq!(got["from"], json!({"type": "runtime", "id": r1.id}));
    for admin in [&mut a1, &mut a2] {
        assert_eq!(admin.next_json().await, got);
    }
    // Nobody else got it, and nobody got it twice.
    r2.assert_nothing_before_marker(&mut d).await;
    r1.assert_nothing_before_marker(&mut d).await;
    for admin in [&mut a1, &mut a2] {
        // The two markers were routed by id, so each admin saw both copies.
        assert_eq!(admin.next_json().await["type"], "marker");
        assert_eq!(admin.next_json().await["type"], "marker");
    }
    a1.assert_nothing_before_marker(&mut d).await;
}

#[tokio::test]
async fn to_id_naming_an_admin_or_oneself_gives_one_copy() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut d,
        mut a1,
        mut a2,
        r2: _r2,
    } = room(&server).await;
    r1.send_json(&json!({"id": "m1", "type": "t", "to": {"id": a1.id}}))
        .await;
    assert_eq!(a1.next_json().await["id"], "m1");
    assert_eq!(a2.next_json().await["id"], "m1");
    // An admin sending to itself gets exactly its own copy; the other admin
    // its monitoring copy.
    let to_self = json!({"id": "m2", "type": "t", "to": {"id": a1.id}});
    a1.send_json(&to_self).await;
    assert_eq!(a1.next_json().await["id"], "m2");
    assert_eq!(a2.next_json().await["id"], "m2");
    // A runtime naming itself gets it back.
    let to_self = json!({"id": "m3", "type": "t", "to": {"id": r1.id}});
    r1.send_json(&to_self).await;
    assert_eq!(r1.next_json().await["id"], "m3");
    assert_eq!(a1.next_json().await["id"], "m3");
    assert_eq!(a2.next_json().await["id"], "m3");
    // No duplicates: the next thing each admin sees is a fresh marker.
    d.send_json(&json!({"id": "end", "type": "t", "to": {"type": "admin"}}))
        .await;
    assert_eq!(a1.next_json().await["id"], "end");
    assert_eq!(a2.next_json().await["id"], "end");
}

#[tokio::test]
async fn to_type_reaches_that_type_but_not_the_sender() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        mut d,
        mut a1,
        mut a2,
    } = room(&server).await;
    r1.send_json(&json!({"id": "m1", "type": "get_docs", "to": {"type": "runtime"}, "payload": 1}))
        .await;
    let got = r2.next_json().await;
    assert_eq!(got["id"], "m1");
    assert_eq!(got["from"]["id"], r1.id.as_str());
    assert_eq!(a1.next_json().await["id"], "m1");
    assert_eq!(a2.next_json().await["id"], "m1");
    r1.assert_nothing_before_marker(&mut r2).await;
    d.assert_nothing_before_marker(&mut r2).await;

    // Agent → all runtimes, as in the original README.
    d.send_json(
        &json!({"id": "m2", "type": "query_response", "from": {"type": "data-agent"},
                        "to": {"type": "runtime"}, "payload": {"data": {"posts": []}}}),
    )
    .await;
    assert_eq!(r1.next_json().await["id"], "m2");
    assert_eq!(r2.next_json().await["id"], "m2");
}

#[tokio::test]
async fn to_type_admin_gives_each_admin_one_copy() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut d,
        mut a1,
        mut a2,
        r2: _r2,
    } = room(&server).await;
    r1.send_json(&json!({"id": "m1", "type": "t", "to": {"type": "admin"}}))
        .await;
    assert_eq!(a1.next_json().await["id"], "m1");
    assert_eq!(a2.next_json().await["id"], "m1");
    d.send_json(&json!({"id": "m2", "type": "t", "to": {"type": "admin"}}))
        .await;
    assert_eq!(a1.next_json().await["id"], "m2");
    assert_eq!(a2.next_json().await["id"], "m2");
    // An admin addressing admins does not get its own message back.
    a1.send_json(&json!({"id": "m3", "type": "t", "to": {"type": "admin"}}))
        .await;
    assert_eq!(a2.next_json().await["id"], "m3");
    a1.assert_nothing_before_marker(&mut a2).await;
}

#[tokio::test]
async fn broadcast_reaches_everyone_else_without_monitoring_copies() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        mut d,
        mut a1,
        mut a2,
    } = room(&server).await;
    for (i, to) in [None, Some(Value::Null), Some(json!({}))]
        .into_iter()
        .enumerate()
    {
        let mut msg = json!({"id": format!("b{i}"), "type": "announcement",
                             "from": {"type": "runtime"}, "payload": {"message": "restart"}});
        if let Some(to) = to {
            msg["to"] = to;
        }
        r1.send_json(&msg).await;
        for c in [&mut r2, &mut d, &mut a1, &mut a2] {
            let got = c.next_json().await;
            assert_eq!(got["id"], format!("b{i}"));
            assert_eq!(got["from"]["id"], r1.id.as_str());
        }
    }
    // Admins got each broadcast once, the sender none.
    d.send_json(&json!({"id": "end", "type": "t", "to": {"type": "admin"}}))
        .await;
    assert_eq!(a1.next_json().await["id"], "end");
    assert_eq!(a2.next_json().await["id"], "end");
    r1.assert_nothing_before_marker(&mut d).await;
}

#[tokio::test]
async fn from_cannot_be_forged() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        a1,
        d: _d,
        a2: _a2,
    } = room(&server).await;
    r1.send_json(&json!({"id": "m1", "type": "t", "to": {"id": r2.id},
                         "from": {"type": "system", "id": a1.id, "extra": 1}}))
        .await;
    let got = r2.next_json().await;
    assert_eq!(
        got["from"],
        json!({"type": "runtime", "id": r1.id, "extra": 1})
    );
    r1.send_json(&json!({"id": "m2", "type": "t", "to": {"id": r2.id}, "from": "admin"}))
        .await;
    assert_eq!(
        r2.next_json().await["from"],
        json!({"type": "runtime", "id": r1.id})
    );
    r1.send_json(&json!({"id": "m3", "type": "t", "to": {"id": r2.id}}))
        .await;
    assert_eq!(
        r2.next_json().await["from"],
        json!({"type": "runtime", "id": r1.id})
    );
}

#[tokio::test]
async fn unknown_fields_pass_through_untouched() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        d: _d,
        a1: _a1,
        a2: _a2,
    } = room(&server).await;
    let text = format!(
        r#"{{"id":"m1","type":"t","to":{{"id":"{}","hint":[1]}},"payload":{{"n":1.5,"s":"\u00e9\n"}},"custom":{{"deep":[null,true]}}}}"#,
        r2.id
    );
    r1.send_text(&text).await;
    let got = r2.next_json().await;
    assert_eq!(got["payload"], json!({"n": 1.5, "s": "é\n"}));
    assert_eq!(got["custom"], json!({"deep": [null, true]}));
    assert_eq!(got["to"]["hint"], json!([1]));
}

#[tokio::test]
async fn messages_from_one_sender_arrive_in_order() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        mut d,
        mut a1,
        a2: _a2,
    } = room(&server).await;
    for i in 0..200 {
        let to = match i % 3 {
            0 => json!({"id": r2.id}),
            1 => json!({"type": "runtime"}),
            _ => Value::Null,
        };
        r1.send_json(&json!({"id": i.to_string(), "type": "seq", "to": to}))
            .await;
    }
    for i in 0..200 {
        assert_eq!(r2.next_json().await["id"], i.to_string());
    }
    for i in 0..200 {
        assert_eq!(a1.next_json().await["id"], i.to_string());
    }
    for i in (2..200).step_by(3) {
        assert_eq!(d.next_json().await["id"], i.to_string());
    }
}

#[tokio::test]
async fn many_senders_in_one_room_each_keep_their_order() {
    // Senders that find the room idle run their messages themselves, the
    // others queue theirs: each sender's messages still arrive in order,
    // every one of them, to the target and to the admin.
    let server = Server::start(&[]);
    let p = project();
    let mut target = server.connect("data-agent", &p).await;
    let mut admin = server.connect("admin", &p).await;
    const SENDERS: usize = 8;
    const EACH: u64 = 500;
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        senders.push(server.connect("runtime", &p).await);
    }
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut c| {
            let to = target.id.clone();
            tokio::spawn(async move {
                for seq in 0..EACH {
                    c.send_json(&json!({"type": "n", "seq": seq, "to": {"id": to}}))
                        .await;
                }
                c
            })
        })
        .collect();
    for c in [&mut target, &mut admin] {
        let mut next: HashMap<String, u64> = HashMap::new();
        for _ in 0..SENDERS as u64 * EACH {
            let m = c.next_json().await;
            let from = m["from"]["id"].as_str().expect("from.id").to_owned();
            let expected = next.entry(from).or_insert(0);
            assert_eq!(m["seq"], *expected, "out of order: {m}");
            *expected += 1;
        }
        assert_eq!(next.len(), SENDERS);
    }
    for t in tasks {
        within(t).await.unwrap();
    }
}

#[tokio::test]
async fn projects_are_isolated() {
    let server = Server::start(&[]);
    let (p, q) = (project(), project());
    let mut pr = server.connect("runtime", &p).await;
    let mut pa = server.connect("admin", &p).await;
    let mut qr = server.connect("runtime", &q).await;
    let mut qa = server.connect("admin", &q).await;
    // Broadcast, by type, and by the id of a client of the other project.
    pr.send_json(&json!({"id": "b", "type": "t"})).await;
    assert_eq!(pa.next_json().await["id"], "b");
    pr.send_json(&json!({"id": "t", "type": "t", "to": {"type": "runtime"}}))
        .await;
    assert_eq!(pa.next_json().await["id"], "t");
    pr.send_json(&json!({"id": "x", "type": "t", "to": {"id": qr.id}}))
        .await;
    assert_eq!(pa.next_json().await["id"], "x");
    let err = pr.next_json().await;
    assert_eq!(err["payload"]["code"], "unknown_target");
    // Project q saw none of it.
    qa.send_json(&json!({"id": "q-marker", "type": "t", "to": {"id": qr.id}}))
        .await;
    assert_eq!(qr.next_json().await["id"], "q-marker");
    qr.send_json(&json!({"id": "q-marker2", "type": "t", "to": {"id": qa.id}}))
        .await;
    assert_eq!(qa.next_json().await["id"], "q-marker2");
    let (_, s) = server.get(&format!("/status?projectId={q}")).await;
    assert_eq!(s["clientCount"], 2);
}
