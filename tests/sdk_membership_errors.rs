//! The SDK routes the broker's membership-scoped error pushes to the
//! subscription they concern: a durable membership another session took
//! over, or whose room an administrator deleted, ends that subscription
//! (and no other), says why, and is never joined again on a reconnect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use common::*;
use roomq_client::{
    Client, EndReason, ErrorCode, Event, JoinOptions, Subscription, SubscriptionEvent,
};
use tokio::sync::broadcast;
use tokio::time::timeout;

/// A broker with an `/admin` token; returns it with the token.
async fn broker_with_admin() -> (TestBroker, String) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (config, token) = admin_config(&dir);
    (TestBroker::start_with(config, dir).await, token)
}

async fn sdk(broker: &TestBroker, client_id: &str) -> Client {
    Client::builder(broker.addr.to_string())
        .client_id(client_id)
        .connect()
        .await
        .unwrap()
}

/// Reads `sub` until its stream ends (within [`WAIT`]); returns the
/// messages' payloads it yielded on the way.
async fn until_ended(sub: &mut Subscription, who: &str) -> Vec<Vec<u8>> {
    timeout(WAIT, async {
        let mut payloads = Vec::new();
        while let Some(event) = sub.next_event().await {
            if let SubscriptionEvent::Message(d) = event {
                payloads.push(d.payload.to_vec());
            }
        }
        payloads
    })
    .await
    .unwrap_or_else(|_| panic!("{who}'s subscription never ended"))
}

/// Waits (within [`WAIT`]) for an event matching `want`; returns the events
/// seen before it.
async fn wait_event(
    events: &mut broadcast::Receiver<Event>,
    what: &str,
    want: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    timeout(WAIT, async {
        let mut before = Vec::new();
        loop {
            let e = events.recv().await.expect("events open");
            if want(&e) {
                return before;
            }
            before.push(e);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} event"))
}

fn drain(events: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    let mut all = Vec::new();
    while let Ok(e) = events.try_recv() {
        all.push(e);
    }
    all
}

fn is_code(e: &Event, code: ErrorCode) -> bool {
    matches!(e, Event::BrokerError { code: c, .. } if *c == code as u32)
}

#[tokio::test]
async fn a_taken_over_subscription_ends_and_is_not_joined_again_on_reconnect() {
    let (broker, token) = broker_with_admin().await;
    let admin = broker.admin(&token).await;
    let a = sdk(&broker, "x").await;
    let mut a_events = a.events();
    let mut a_sub = a.join("r", JoinOptions::new()).await.unwrap();
    assert!(a_sub.is_durable());
    a.publish("r", "e", "before").await.unwrap();
    let d = timeout(WAIT, a_sub.next()).await.unwrap().unwrap();
    d.ack().await.unwrap();
    // Acks are coalesced: make sure the broker has it before B takes over.
    a_sub.flush_acks().await.unwrap();

    // B, with the same client id, joins the same durable membership.
    let b = sdk(&broker, "x").await;
    let mut b_events = b.events();
    let mut b_sub = b.join("r", JoinOptions::new()).await.unwrap();
    assert_eq!(b_sub.next_seq_at_join(), 2, "B took over A's cursor");

    // A's subscription ends, and says why.
    let rest = until_ended(&mut a_sub, "A").await;
    assert!(rest.is_empty(), "{rest:?}");
    let ended = a_sub.ended().expect("A's subscription says why it ended");
    assert_eq!(ended.reason, EndReason::TakenOver);
    assert_eq!(ended.error.code(), Some(ErrorCode::MembershipTakenOver));
    let detail = ended.error.detail().unwrap();
    assert_eq!(
        (detail.room.as_str(), detail.subscription.as_str()),
        ("r", "")
    );
    // The client-wide event is still emitted.
    wait_event(&mut a_events, "BrokerError", |e| {
        is_code(e, ErrorCode::MembershipTakenOver)
    })
    .await;

    // A loses its connection (an admin kicks the session) and reconnects.
    let old_session = a.session_id().unwrap();
    admin::kick(&admin, old_session.as_bytes()).await.unwrap();
    let mut seen = wait_event(&mut a_events, "reconnected", |e| {
        matches!(
            e,
            Event::Connected {
                reconnected: true,
                ..
            }
        )
    })
    .await;
    // Publishes wait until the resumes are done: after this one, a join
    // A sent again would have been answered.
    let seq = a.publish("r", "e", "after").await.unwrap().seq();
    assert_eq!(seq, 2);
    assert_ne!(a.session_id(), Some(old_session));
    seen.extend(drain(&mut a_events));
    let resumed: Vec<Event> = seen
        .into_iter()
        .filter(|e| {
            matches!(e, Event::Resumed { room, .. } | Event::ResumeFailed { room, .. } if room == "r")
        })
        .collect();
    assert!(resumed.is_empty(), "A joined r again: {resumed:?}");

    // B still holds the membership: it gets the new message, and was not
    // taken over.
    let d = timeout(WAIT, b_sub.next_event())
        .await
        .expect("B gets the message published after A's reconnect")
        .expect("B's subscription still open");
    match d {
        SubscriptionEvent::Message(d) => {
            assert_eq!((d.seq, &d.payload[..]), (2, &b"after"[..]));
            d.ack().await.unwrap();
        }
        other => panic!("B got {other:?}"),
    }
    assert!(b_sub.ended().is_none());
    let members = b.members("r").await.unwrap().members;
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(Some(members[0].session_id), b.session_id());
    let b_seen = drain(&mut b_events);
    assert!(
        !b_seen
            .iter()
            .any(|e| is_code(e, ErrorCode::MembershipTakenOver)),
        "B was taken over: {b_seen:?}"
    );
    drop((a_sub, b_sub));
    broker.stop().await;
}

#[tokio::test]
async fn a_subscription_to_a_deleted_room_ends_and_is_not_joined_again() {
    let (broker, token) = broker_with_admin().await;
    let admin = broker.admin(&token).await;
    let c = sdk(&broker, "d").await;
    let mut events = c.events();
    let mut gone = c.join("r", JoinOptions::new()).await.unwrap();
    let mut kept = c.join("s", JoinOptions::new()).await.unwrap();
    c.publish("r", "e", "1").await.unwrap();
    let d = timeout(WAIT, gone.next()).await.unwrap().unwrap();
    d.ack().await.unwrap();
    gone.flush_acks().await.unwrap();

    assert_eq!(admin::delete_room(&admin, "/", "r").await.unwrap().count, 1);
    let rest = until_ended(&mut gone, "r").await;
    assert!(rest.is_empty(), "{rest:?}");
    let ended = gone.ended().expect("the subscription says why it ended");
    assert_eq!(ended.reason, EndReason::Deleted);
    assert_eq!(ended.error.code(), Some(ErrorCode::NotFound));
    assert_eq!(ended.error.detail().unwrap().room, "r");
    wait_event(&mut events, "BrokerError", |e| {
        is_code(e, ErrorCode::NotFound)
    })
    .await;

    // The other subscription is untouched, also across a reconnect, and r
    // is not joined again (which would bring the deleted room back).
    let old_session = c.session_id().unwrap();
    admin::kick(&admin, old_session.as_bytes()).await.unwrap();
    let mut seen = wait_event(&mut events, "reconnected", |e| {
        matches!(
            e,
            Event::Connected {
                reconnected: true,
                ..
            }
        )
    })
    .await;
    c.publish("s", "e", "still here").await.unwrap();
    let d = timeout(WAIT, kept.next())
        .await
        .expect("s still delivers")
        .expect("s still open");
    assert_eq!(&d.payload[..], b"still here");
    d.ack().await.unwrap();
    assert!(kept.ended().is_none());
    seen.extend(drain(&mut events));
    let resumed: Vec<String> = seen
        .into_iter()
        .filter_map(|e| match e {
            Event::Resumed { room, .. } => Some(room),
            _ => None,
        })
        .collect();
    assert_eq!(resumed, ["s"]);
    assert!(
        admin::room(&admin, "/", "r").await.is_none(),
        "the deleted room came back"
    );
    // Leaving an ended subscription asks nothing of the broker.
    gone.leave().await.unwrap();
    broker.stop().await;
}
