//! The room's inbox, the reader's turn and the instance limit, against the
//! real default room.

use super::table::ConnRef;
use super::*;
use crate::engine::Runtime;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::registry::Registry;
use crate::store::DurableStore;
use clap::Parser as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

fn registry() -> Arc<Registry> {
    registry_with_instances(10)
}

fn registry_with_instances(max_instances: usize) -> Arc<Registry> {
    registry_of(&["wsroom", "--no-compile-cache"], max_instances, None)
}

fn registry_of(args: &[&str], max_instances: usize, store: Option<DurableStore>) -> Arc<Registry> {
    let store = store.map(crate::store::RoomStore::File);
    let config = crate::config::Cli::parse_from(args).config().unwrap();
    let settings = Settings {
        inbox: 4,
        inbox_bytes: 1000,
        hibernate_after: None,
        alarm_retries: 0,
        alarm_retry_base: Duration::from_millis(10),
        storage_bytes: 1024,
        log_lines_per_sec: 10,
        max_clients: 100,
        store,
    };
    let runtime = Runtime::new(&config).unwrap();
    let metrics = Arc::new(Metrics::default());
    Registry::new(
        runtime,
        BTreeMap::new(),
        settings,
        metrics,
        10,
        max_instances,
    )
}

fn joining() -> (Event, oneshot::Receiver<Result<ConnRef, Refusal>>) {
    let (event, answer, _) = joining_with_outbox();
    (event, answer)
}

fn joining_with_outbox() -> (
    Event,
    oneshot::Receiver<Result<ConnRef, Refusal>>,
    Arc<Outbox>,
) {
    let (reply, answer) = oneshot::channel();
    let meta = Arc::new(ClientMeta {
        id: "c1".into(),
        kind: "runtime".into(),
        connected_at: 0,
        user_agent: None,
        origin: None,
        ..Default::default()
    });
    let outbox = Arc::new(Outbox::new(1 << 20));
    let event = Event::Connect {
        meta,
        outbox: outbox.clone(),
        reply,
    };
    (event, answer, outbox)
}

/// Joins a client to the room and waits until it is admitted.
async fn admit(room: &RoomHandle) -> ConnRef {
    let (event, answer) = joining();
    assert!(room.send(event).await.is_ok());
    let admitted = tokio::time::timeout(Duration::from_secs(10), answer).await;
    match admitted {
        Ok(Ok(Ok(conn))) => conn,
        _ => panic!("not admitted"),
    }
}

#[tokio::test]
async fn a_busy_rooms_inbox_holds_a_bounded_number_of_bytes() {
    // The test registry's rooms take 1000 bytes of messages.
    let registry = registry();
    let room = registry.get_or_create("p").unwrap();
    let conn = admit(&room).await;
    let message = |n: usize| Event::Message {
        conn,
        message: Incoming::Text("x".repeat(n)),
        read_at: std::time::Instant::now(),
    };
    let soon = Duration::from_millis(100);
    // While a reader runs the room, messages wait in its inbox...
    let running = room.try_run().expect("p idle");
    let queued = tokio::time::timeout(soon, room.send(message(600))).await;
    assert!(matches!(queued, Ok(Ok(()))));
    // ...up to 1000 bytes: the next 600 wait for room there, as a
    // full inbox makes its connection's reader wait.
    let mut second = std::pin::pin!(room.send(message(600)));
    assert!(tokio::time::timeout(soon, &mut second).await.is_err());
    // Once the room takes the first, the second goes in; one larger
    // than the whole bound goes in alone.
    drop(running);
    let queued = tokio::time::timeout(Duration::from_secs(10), second).await;
    assert!(matches!(queued, Ok(Ok(()))));
    let queued = tokio::time::timeout(Duration::from_secs(10), room.send(message(5000))).await;
    assert!(matches!(queued, Ok(Ok(()))));
}

// On this single-threaded runtime the room's task runs only when the
// test awaits something that waits.
#[tokio::test]
async fn a_reader_runs_the_room_only_when_it_is_idle_and_its_inbox_empty() {
    let registry = registry();
    let room = registry.get_or_create("p").unwrap();
    let running = room.try_run().expect("an idle room with an empty inbox");
    assert!(room.try_run().is_none(), "one runner at a time");
    drop(running);
    // An event waits in the inbox: it came first, so a reader's message
    // must queue behind it rather than overtake it.
    let (event, answer) = joining();
    assert!(room.send(event).await.is_ok());
    assert!(room.try_run().is_none(), "an event waits in the inbox");
    // The room's task takes it (and admits the client)...
    let admitted = tokio::time::timeout(Duration::from_secs(10), answer).await;
    assert!(matches!(admitted, Ok(Ok(Ok(_)))));
    // ...and the room is free to run in a reader again.
    assert!(room.try_run().is_some());
}

#[tokio::test]
async fn an_instance_in_the_middle_of_an_event_is_not_evicted() {
    let registry = registry_with_instances(1);
    let p = registry.get_or_create("p").unwrap();
    admit(&p).await;
    // p's one instance is busy (a reader runs it): q must wait for it.
    let running = p.try_run().expect("p idle");
    let q = registry.get_or_create("q").unwrap();
    let (event, mut answer) = joining();
    assert!(q.send(event).await.is_ok());
    let waited = tokio::time::timeout(Duration::from_millis(100), &mut answer).await;
    assert!(waited.is_err(), "q took the instance of a busy room");
    // Free, p's instance makes way for q's.
    drop(running);
    let admitted = tokio::time::timeout(Duration::from_secs(10), answer).await;
    assert!(matches!(admitted, Ok(Ok(Ok(_)))));
    assert!(
        !p.core.actor.lock().await.instance.is_live(),
        "p hibernated"
    );
    assert!(q.core.actor.lock().await.instance.is_live());
}

#[tokio::test]
async fn the_instance_clock_stays_bounded_however_often_a_room_wakes() {
    let registry = registry_with_instances(2);
    let p = registry.get_or_create("p").unwrap();
    admit(&p).await;
    // Each wake queues the new instance; the entries of dropped ones go
    // when the clock passes 2 x 2 + 64.
    for _ in 0..300 {
        let mut actor = p.core.actor.lock().await;
        actor.hibernate();
        assert!(actor.ensure_live().await.is_ok());
    }
    let queued = registry.instances().queued();
    assert!(queued <= 2 * 2 + 64 + 1, "{queued} entries");
    assert_eq!(registry.instances().max(), 2);
}

#[tokio::test]
async fn a_message_whose_write_is_not_durable_yet_reaches_no_client() {
    let dir = std::env::temp_dir().join(format!("wsroom-gate-{}", uuid::Uuid::new_v4()));
    let store = DurableStore::open(&dir).unwrap();
    let chat = concat!(env!("OUT_DIR"), "/chat-room.wasm");
    let registry = registry_of(
        &["wsroom", "--no-compile-cache", "--component", chat],
        10,
        Some(store.clone()),
    );
    let room = registry.get_or_create("p").unwrap();
    let (event, answer, outbox) = joining_with_outbox();
    assert!(room.send(event).await.is_ok());
    let Ok(Ok(Ok(conn))) = tokio::time::timeout(Duration::from_secs(10), answer).await else {
        panic!("not admitted");
    };
    let mut frames = Vec::new();
    let take = |frames: &mut Vec<bytes::Bytes>| {
        let outbox = outbox.clone();
        let mut batch = std::mem::take(frames);
        async move {
            outbox.take(&mut batch).await;
            batch
        }
    };
    // The history (the connect wrote nothing: it is not held).
    frames = tokio::time::timeout(Duration::from_secs(10), take(&mut frames))
        .await
        .expect("the history");
    assert!(String::from_utf8_lossy(&frames[0]).contains("history"));
    frames.clear();

    // The disk is busy: a write transaction of the test's own holds the
    // store's one writer, so the room's commit waits for it.
    let blocker = store.begin_write_for_test();
    let message = Event::Message {
        conn,
        message: Incoming::Text("said while the disk is busy".into()),
        read_at: std::time::Instant::now(),
    };
    assert!(room.send(message).await.is_ok());
    let early = tokio::time::timeout(Duration::from_millis(300), take(&mut frames)).await;
    assert!(
        early.is_err(),
        "the line went out before its write was durable"
    );
    // Durable, it goes out.
    drop(blocker);
    let frames = tokio::time::timeout(Duration::from_secs(10), take(&mut Vec::new()))
        .await
        .expect("the line once committed");
    assert!(String::from_utf8_lossy(&frames[0]).contains("said while the disk is busy"));
    assert_eq!(
        store.load("p").unwrap().entries.len(),
        2,
        "the line and the next number"
    );

    // The same through a reader's turn (how most messages reach a room):
    // the turn does not flush what waits for a commit.
    let blocker = store.begin_write_for_test();
    let mut turn = room.try_run().expect("the room is idle");
    turn.message(
        conn,
        Incoming::Text("said on a reader's turn".into()),
        std::time::Instant::now(),
        false,
    )
    .await;
    drop(turn);
    let early = tokio::time::timeout(Duration::from_millis(300), take(&mut Vec::new())).await;
    assert!(
        early.is_err(),
        "a reader's turn let the line out before its write was durable"
    );
    drop(blocker);
    let frames = tokio::time::timeout(Duration::from_secs(10), take(&mut Vec::new()))
        .await
        .expect("the line once committed");
    assert!(String::from_utf8_lossy(&frames[0]).contains("said on a reader's turn"));

    // Two that came together, gathered into one `on-texts` call: the same.
    assert!(room.core.actor.lock().await.takes_batches());
    let calls = || async { room.core.actor.lock().await.metrics.room_calls().count };
    let calls_before = calls().await;
    let blocker = store.begin_write_for_test();
    let mut turn = room.try_run().expect("the room is idle");
    for (text, more) in [("first of two", true), ("second of two", false)] {
        let now = std::time::Instant::now();
        turn.message(conn, Incoming::Text(text.into()), now, more)
            .await;
    }
    drop(turn);
    let early = tokio::time::timeout(Duration::from_millis(300), take(&mut Vec::new())).await;
    assert!(
        early.is_err(),
        "a batch let its lines out before their writes were durable"
    );
    drop(blocker);
    let mut frames = Vec::new();
    while frames.len() < 2 {
        frames = tokio::time::timeout(Duration::from_secs(10), take(&mut frames))
            .await
            .expect("the lines once committed");
    }
    let lines: Vec<_> = frames.iter().map(|f| String::from_utf8_lossy(f)).collect();
    assert!(lines[0].contains("first of two"), "{lines:?}");
    assert!(lines[1].contains("second of two"), "{lines:?}");
    assert_eq!(calls().await - calls_before, 1, "one call for both");
    let _ = std::fs::remove_dir_all(&dir);
}
