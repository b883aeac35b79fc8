//! The SDK against a scripted broker: the test decides exactly what is
//! pushed (gaps, presence changes, volatile deliveries, a group handoff) and
//! sees every request the SDK sends. Needs no real broker, so it checks the
//! SDK's half of the new protocol features on its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use roomq_client::proto as pb;
use roomq_client::{
    Client, ClientBuilder, ClientError, Delivery, EndReason, ErrorCode, Event, JoinOptions,
    PresenceKind, ReconnectPolicy, SubscriptionEvent,
};
use roomq_wire::codec::{decode_client, encode_frame};
use roomq_wire::{FrameCodec, DEFAULT_MAX_FRAME};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::codec::FramedRead;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(5);

use pb::client_frame::Body as Req;
use pb::server_frame::Body as Reply;

/// A broker that answers every request with a plausible success, forwards
/// each request to the test, and pushes whatever the test sends.
struct FakeBroker {
    addr: String,
    requests: mpsc::UnboundedReceiver<Req>,
    pushes: mpsc::UnboundedSender<Reply>,
}

impl FakeBroker {
    async fn start() -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (req_tx, requests) = mpsc::unbounded_channel();
        let (pushes, mut push_rx) = mpsc::unbounded_channel::<Reply>();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let (read_half, mut write_half) = socket.into_split();
            let (out_tx, mut out_rx) = mpsc::unbounded_channel::<pb::ServerFrame>();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                while let Some(frame) = out_rx.recv().await {
                    buf.clear();
                    encode_frame(&frame, DEFAULT_MAX_FRAME, &mut buf).unwrap();
                    if write_half.write_all(&buf).await.is_err() {
                        return;
                    }
                }
            });
            let push_out = out_tx.clone();
            tokio::spawn(async move {
                while let Some(body) = push_rx.recv().await {
                    let frame = pb::ServerFrame {
                        request_id: 0,
                        body: Some(body),
                    };
                    if push_out.send(frame).is_err() {
                        return;
                    }
                }
            });
            let mut frames = FramedRead::new(read_half, FrameCodec::new(DEFAULT_MAX_FRAME));
            while let Some(Ok(raw)) = frames.next().await {
                let frame = decode_client(raw).unwrap();
                let Some(body) = frame.body else { continue };
                let reply = answer(&body);
                if !matches!(body, Req::Handshake(_)) {
                    let _ = req_tx.send(body);
                }
                let _ = out_tx.send(pb::ServerFrame {
                    request_id: frame.request_id,
                    body: Some(reply),
                });
            }
        });
        FakeBroker {
            addr,
            requests,
            pushes,
        }
    }

    async fn client(&self) -> Client {
        self.client_with(|b| b).await
    }

    /// A client with more settings.
    async fn client_with(&self, settings: impl FnOnce(ClientBuilder) -> ClientBuilder) -> Client {
        let builder = Client::builder(self.addr.clone())
            .client_id("tester")
            .reconnect(ReconnectPolicy::never());
        settings(builder).connect().await.unwrap()
    }

    /// Asserts that the SDK sends nothing but in-progress signals for
    /// `quiet`.
    async fn assert_no_request(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, self.requests.recv()).await {
                Err(_) => return,
                Ok(Some(Req::InProgress(_))) => continue,
                Ok(other) => panic!("expected no request, got {other:?}"),
            }
        }
    }

    /// The next request, which must be an `Ack`: (up_to, seqs).
    async fn ack(&mut self) -> (u64, Vec<u64>) {
        match self.request().await {
            Req::Ack(a) => (a.up_to, a.seqs),
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    /// The next request the SDK sent, skipping in-progress signals.
    async fn request(&mut self) -> Req {
        loop {
            match timeout(WAIT, self.requests.recv()).await.unwrap().unwrap() {
                Req::InProgress(_) => continue,
                other => return other,
            }
        }
    }

    fn push(&self, body: Reply) {
        self.pushes.send(body).unwrap();
    }
}

fn answer(body: &Req) -> Reply {
    match body {
        Req::Handshake(_) => Reply::HandshakeOk(pb::HandshakeOk {
            protocol_version: 1,
            session_id: Uuid::now_v7().as_bytes().to_vec().into(),
            resumed: false,
            limits: Some(pb::Limits {
                max_in_flight: 100,
                ack_timeout_ms: 30_000,
                ..Default::default()
            }),
            server_version: "fake".into(),
        }),
        Req::Join(j) => Reply::JoinOk(pb::JoinOk {
            room: j.room.clone(),
            subscription: j.subscription.clone(),
            durable: true,
            next_seq: 1,
            last_seq: 0,
            ..Default::default()
        }),
        // Refused, to test how the SDK reports a refusal nobody awaits.
        Req::Ack(a) if a.seqs.contains(&REFUSED_SEQ) => Reply::Error(pb::Error {
            code: ErrorCode::UnknownSeq as u32,
            name: ErrorCode::UnknownSeq.name().into(),
            message: "refused by the test".into(),
            fatal: false,
            ..Default::default()
        }),
        // The cursor moves past a cumulative ack only: listed seqs may
        // leave holes below them.
        Req::Ack(a) => Reply::AckOk(pb::AckOk {
            next_seq: a.up_to + 1,
        }),
        Req::Nack(_) => Reply::NackOk(pb::NackOk {}),
        Req::Leave(_) => Reply::LeaveOk(pb::LeaveOk {}),
        Req::InProgress(_) => Reply::InProgressOk(pb::InProgressOk {}),
        Req::Members(_) => Reply::MembersOk(pb::MembersOk {
            members: vec![pb::Presence {
                session_id: Uuid::nil().as_bytes().to_vec().into(),
                client_id: "alice".into(),
                client_name: "Alice".into(),
                subscription: "alice".into(),
                durable: true,
                group: String::new(),
            }],
            truncated: false,
        }),
        Req::Publish(p) if p.volatile => Reply::PublishOk(pb::PublishOk {
            seqs: vec![],
            duplicate: false,
            durability: pb::Durability::Volatile as i32,
        }),
        Req::Publish(p) => Reply::PublishOk(pb::PublishOk {
            seqs: p
                .rooms
                .iter()
                .map(|r| pb::RoomSeq {
                    room: r.clone(),
                    seq: 1,
                })
                .collect(),
            duplicate: false,
            durability: pb::Durability::Sync as i32,
        }),
        Req::Ping(p) => Reply::Pong(pb::Pong { nonce: p.nonce }),
        other => Reply::Error(pb::Error {
            code: 0,
            name: "UNEXPECTED".into(),
            message: format!("the fake broker does not answer {other:?}"),
            fatal: false,
            ..Default::default()
        }),
    }
}

/// An ack listing this seq is refused with `UNKNOWN_SEQ`.
const REFUSED_SEQ: u64 = 999;

fn delivery(room: &str, seq: u64, volatile: bool) -> Reply {
    Reply::Delivery(pb::Delivery {
        room: room.into(),
        subscription: String::new(),
        attempt: 1,
        redelivered: false,
        message: Some(pb::Message {
            seq,
            event: "e".into(),
            payload: format!("m{seq}").into_bytes().into(),
            key: "k".into(),
            expires_at_ms: 7,
            ..Default::default()
        }),
        volatile,
    })
}

async fn next_event(sub: &mut roomq_client::Subscription) -> SubscriptionEvent {
    timeout(WAIT, sub.next_event()).await.unwrap().unwrap()
}

async fn next_seq(sub: &mut roomq_client::Subscription) -> u64 {
    match next_event(sub).await {
        SubscriptionEvent::Message(d) => d.seq,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn gaps_and_presence_reach_their_subscription() {
    let mut broker = FakeBroker::start().await;
    let client = broker.client().await;
    let mut sub = client
        .join("general", JoinOptions::new().presence(true))
        .await
        .unwrap();
    let Req::Join(join) = broker.request().await else {
        panic!("expected a join")
    };
    assert!(join.presence);

    broker.push(delivery("general", 1, false));
    match next_event(&mut sub).await {
        SubscriptionEvent::Message(d) => {
            assert_eq!((d.seq, d.key.as_str(), d.expires_at_ms), (1, "k", 7));
            assert!(!d.volatile);
        }
        other => panic!("{other:?}"),
    }
    // A gap for another room, and one for this membership.
    broker.push(Reply::Gap(Box::new(pb::Gap {
        room: "elsewhere".into(),
        subscription: String::new(),
        from_seq: 1,
        to_seq: 100,
        missed: 100,
    })));
    broker.push(Reply::Gap(Box::new(pb::Gap {
        room: "general".into(),
        subscription: String::new(),
        from_seq: 2,
        to_seq: 4,
        missed: 3,
    })));
    match next_event(&mut sub).await {
        SubscriptionEvent::Gap(g) => {
            assert_eq!(
                (g.room.as_str(), g.from_seq, g.to_seq, g.missed),
                ("general", 2, 4, 3)
            )
        }
        other => panic!("{other:?}"),
    }
    broker.push(Reply::Presence(Box::new(pb::PresenceEvent {
        room: "general".into(),
        subscription: String::new(),
        kind: pb::presence_event::Kind::Joined as i32,
        member: Some(pb::Presence {
            client_id: "alice".into(),
            ..Default::default()
        }),
    })));
    match next_event(&mut sub).await {
        SubscriptionEvent::Presence(p) => {
            assert_eq!(p.kind, PresenceKind::Joined);
            assert_eq!(p.member.client_id, "alice");
        }
        other => panic!("{other:?}"),
    }
    // Seq 3 lies inside the gap: the floor moved past it, so a stray copy
    // is acknowledged again, never handed over.
    broker.push(delivery("general", 3, false));
    broker.push(delivery("general", 5, false));
    assert_eq!(next_seq(&mut sub).await, 5);
    match broker.request().await {
        Req::Ack(a) => assert_eq!(a.seqs, vec![3]),
        other => panic!("{other:?}"),
    }

    // next() skips notices.
    broker.push(Reply::Gap(Box::new(pb::Gap {
        room: "general".into(),
        subscription: String::new(),
        from_seq: 6,
        to_seq: 6,
        missed: 1,
    })));
    broker.push(delivery("general", 7, false));
    let d = timeout(WAIT, sub.next()).await.unwrap().unwrap();
    assert_eq!(d.seq, 7);
    assert_eq!(sub.dropped(), 0);
}

#[tokio::test]
async fn volatile_deliveries_bypass_the_filter_and_are_never_acked() {
    let mut broker = FakeBroker::start().await;
    let client = broker.client().await;
    // Ordered (durable by client id): seq 0 would be below its floor.
    let mut sub = client.join("general", JoinOptions::new()).await.unwrap();
    let Req::Join(_) = broker.request().await else {
        panic!("expected a join")
    };
    broker.push(delivery("general", 0, true));
    broker.push(delivery("general", 0, true));
    let first = timeout(WAIT, sub.next()).await.unwrap().unwrap();
    let second = timeout(WAIT, sub.next()).await.unwrap().unwrap();
    assert!(first.volatile && second.volatile);
    assert_eq!((first.seq, first.payload.as_ref()), (0, b"m0".as_ref()));
    first.ack().await.unwrap();
    second.in_progress().await.unwrap();
    let refused = second.nack_with_reason(Duration::ZERO, "no").await;
    assert!(
        matches!(refused, Err(ClientError::InvalidUse(_))),
        "{refused:?}"
    );

    // The first request after the join is this nack: nothing was sent for
    // the volatile ones.
    broker.push(delivery("general", 1, false));
    let d = timeout(WAIT, sub.next()).await.unwrap().unwrap();
    d.nack_with_reason(Duration::from_millis(10), "bad input")
        .await
        .unwrap();
    match broker.request().await {
        Req::Nack(n) => {
            assert_eq!(
                (n.seqs, n.delay_ms, n.reason.as_str()),
                (vec![1], 10, "bad input")
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_group_consumer_takes_lower_seqs_after_a_handoff() {
    let mut broker = FakeBroker::start().await;
    let client = broker.client().await;
    let mut sub = client
        .join(
            "jobs",
            JoinOptions::new()
                .group("workers")
                .max_deliveries(3)
                .backoff(vec![Duration::from_millis(50)]),
        )
        .await
        .unwrap();
    assert_eq!(sub.group(), Some("workers"));
    let Req::Join(join) = broker.request().await else {
        panic!("expected a join")
    };
    assert_eq!(join.group, "workers");
    assert_eq!(join.max_deliveries, Some(3));
    assert_eq!(join.backoff_ms, vec![50]);

    broker.push(delivery("jobs", 5, false));
    broker.push(delivery("jobs", 9, false));
    // Another consumer left; its unacked 3 moves here.
    broker.push(delivery("jobs", 3, false));
    // A copy of 5, which the application still holds: dropped.
    broker.push(delivery("jobs", 5, false));
    broker.push(delivery("jobs", 10, false));
    let mut seqs = Vec::new();
    for _ in 0..4 {
        seqs.push(next_seq(&mut sub).await);
    }
    assert_eq!(seqs, vec![5, 9, 3, 10]);
}

#[tokio::test]
async fn members_and_volatile_publishes() {
    let mut broker = FakeBroker::start().await;
    let client = broker.client().await;
    let members = client.members("general").await.unwrap();
    assert_eq!(members.members.len(), 1);
    assert_eq!(members.members[0].client_name, "Alice");
    assert!(matches!(broker.request().await, Req::Members(m) if m.room == "general"));

    let except = Uuid::now_v7();
    client
        .message("typing", "")
        .to("general")
        .to("lobby")
        .except_room("muted")
        .except_session(except)
        .volatile()
        .send()
        .await
        .unwrap();
    match broker.request().await {
        Req::Publish(p) => {
            assert!(p.volatile);
            assert!(p.dedup_id.is_empty(), "a volatile publish has no dedup id");
            assert_eq!(p.rooms, vec!["general", "lobby"]);
            assert_eq!(p.except_rooms, vec!["muted"]);
            assert_eq!(p.except_sessions, vec![except.as_bytes().to_vec()]);
        }
        other => panic!("{other:?}"),
    }

    let ok = client
        .message("tick", "x")
        .to("general")
        .key("k1")
        .ttl(Duration::from_secs(60))
        .delay(Duration::from_secs(1))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.seq(), 1);
    match broker.request().await {
        Req::Publish(p) => {
            assert!(!p.volatile);
            assert_eq!(p.dedup_id.len(), 16);
            assert_eq!((p.key.as_str(), p.ttl_ms, p.delay_ms), ("k1", 60_000, 1000));
        }
        other => panic!("{other:?}"),
    }
}

/// A non-fatal error push, as the broker sends one about a membership.
fn error_push(code: ErrorCode, room: &str, subscription: &str) -> Reply {
    Reply::Error(pb::Error {
        code: code as u32,
        name: code.name().into(),
        message: "pushed by the test".into(),
        fatal: false,
        room: room.into(),
        subscription: subscription.into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn a_membership_error_ends_only_its_subscription_after_what_was_queued() {
    let mut broker = FakeBroker::start().await;
    let client = broker.client().await;
    let mut events = client.events();
    let mut sub = client.join("general", JoinOptions::new()).await.unwrap();
    let Req::Join(_) = broker.request().await else {
        panic!("expected a join")
    };
    let mut other = client
        .join("general", JoinOptions::new().durable("other"))
        .await
        .unwrap();
    let Req::Join(_) = broker.request().await else {
        panic!("expected a join")
    };

    broker.push(delivery("general", 1, false));
    broker.push(delivery("general", 2, false));
    // None of these ends a subscription: no membership named, another
    // label, a code that ends nothing.
    broker.push(error_push(ErrorCode::NotFound, "", ""));
    broker.push(error_push(
        ErrorCode::MembershipTakenOver,
        "general",
        "nobody",
    ));
    broker.push(error_push(ErrorCode::NotJoined, "general", ""));
    broker.push(error_push(ErrorCode::MembershipTakenOver, "general", ""));

    // What was queued comes first, then the stream ends.
    assert_eq!(next_seq(&mut sub).await, 1);
    assert_eq!(next_seq(&mut sub).await, 2);
    assert!(timeout(WAIT, sub.next_event()).await.unwrap().is_none());
    assert!(timeout(WAIT, sub.next()).await.unwrap().is_none());
    let ended = sub.ended().expect("ended by the broker");
    assert_eq!(ended.reason, EndReason::TakenOver);
    assert_eq!(ended.error.code(), Some(ErrorCode::MembershipTakenOver));

    // Every push is also a client-wide event.
    let mut codes = Vec::new();
    while codes.len() < 4 {
        if let Event::BrokerError { code, .. } =
            timeout(WAIT, events.recv()).await.unwrap().unwrap()
        {
            codes.push(code);
        }
    }
    assert_eq!(
        codes,
        [
            ErrorCode::NotFound as u32,
            ErrorCode::MembershipTakenOver as u32,
            ErrorCode::NotJoined as u32,
            ErrorCode::MembershipTakenOver as u32,
        ]
    );

    // The other membership of the room goes on.
    let mut d = delivery("general", 3, false);
    if let Reply::Delivery(d) = &mut d {
        d.subscription = "other".into();
    }
    broker.push(d);
    assert_eq!(next_seq(&mut other).await, 3);
    assert!(other.ended().is_none());

    // The ended subscription is no longer the client's: leaving it (or
    // dropping it) sends nothing, and the same label can be joined again.
    sub.leave().await.unwrap();
    let mut again = client.join("general", JoinOptions::new()).await.unwrap();
    match broker.request().await {
        Req::Join(j) => assert_eq!((j.room.as_str(), j.subscription.as_str()), ("general", "")),
        other => panic!("expected the new join, got {other:?}"),
    }
    broker.push(delivery("general", 4, false));
    assert_eq!(next_seq(&mut again).await, 4);
    assert!(again.ended().is_none());

    // A deleted room's NOT_FOUND ends both memberships of the room.
    broker.push(error_push(ErrorCode::NotFound, "general", ""));
    broker.push(error_push(ErrorCode::NotFound, "general", "other"));
    for s in [&mut again, &mut other] {
        assert!(timeout(WAIT, s.next_event()).await.unwrap().is_none());
        assert_eq!(s.ended().map(|e| e.reason), Some(EndReason::Deleted));
    }
}

/// Pushes deliveries of `seqs` to `room` and takes them from `sub`.
async fn deliver(
    broker: &FakeBroker,
    sub: &mut roomq_client::Subscription,
    room: &str,
    seqs: impl IntoIterator<Item = u64>,
) -> Vec<Delivery> {
    let mut taken = Vec::new();
    for seq in seqs {
        broker.push(delivery(room, seq, false));
        let d = timeout(WAIT, sub.next()).await.unwrap().unwrap();
        assert_eq!(d.seq, seq);
        taken.push(d);
    }
    taken
}

#[tokio::test]
async fn acks_made_together_go_out_as_one_cumulative_frame_within_ack_flush() {
    // Real time over real sockets (paused time would jump while frames
    // cross them): a bound long enough to tell "at once" from "after it".
    let flush = Duration::from_millis(200);
    let mut broker = FakeBroker::start().await;
    let client = broker.client_with(|b| b.ack_flush(flush)).await;
    let mut sub = client.join("general", JoinOptions::new()).await.unwrap();
    let Req::Join(_) = broker.request().await else {
        panic!("expected a join")
    };
    let taken = deliver(&broker, &mut sub, "general", 1..=5).await;
    let t0 = tokio::time::Instant::now();
    for d in taken {
        d.ack().await.unwrap();
    }
    assert!(
        t0.elapsed() < flush,
        "ack() returns without waiting for the broker"
    );
    // Not before the flush bound, then one frame.
    assert_eq!(broker.ack().await, (5, vec![]));
    assert!(t0.elapsed() >= flush);
    broker.assert_no_request(2 * flush).await;

    // The SDK's own acks (of a redelivery of something acked) take the
    // same way.
    for seq in [2, 4] {
        broker.push(delivery("general", seq, false));
    }
    assert_eq!(broker.ack().await, (4, vec![]));
}

#[tokio::test]
async fn a_held_or_nacked_seq_below_an_acked_one_is_not_covered() {
    let mut broker = FakeBroker::start().await;
    let client = broker.client().await;
    let mut sub = client.join("general", JoinOptions::new()).await.unwrap();
    let Req::Join(_) = broker.request().await else {
        panic!("expected a join")
    };
    let mut taken = deliver(&broker, &mut sub, "general", 1..=8).await;
    let held = taken.remove(3);
    let nacked = taken.remove(4);
    assert_eq!((held.seq, nacked.seq), (4, 6));
    nacked.nack(Duration::from_secs(60)).await.unwrap();
    assert!(matches!(broker.request().await, Req::Nack(n) if n.seqs == [6]));
    for d in taken {
        d.ack().await.unwrap();
    }
    // up_to stops below 4 (held); 5, 7 and 8 are listed, 6 is not acked.
    assert_eq!(broker.ack().await, (3, vec![5, 7, 8]));
    held.ack().await.unwrap();
    assert_eq!(broker.ack().await, (0, vec![4]));
    // Still outstanding: 6, given back. The acks above it are listed.
    let more = deliver(&broker, &mut sub, "general", 9..=10).await;
    for d in more {
        d.ack().await.unwrap();
    }
    assert_eq!(broker.ack().await, (0, vec![9, 10]));
}

#[tokio::test]
async fn a_group_consumer_never_acks_cumulatively() {
    let mut broker = FakeBroker::start().await;
    let client = broker.client().await;
    let mut sub = client
        .join("jobs", JoinOptions::new().group("workers"))
        .await
        .unwrap();
    let Req::Join(_) = broker.request().await else {
        panic!("expected a join")
    };
    let taken = deliver(&broker, &mut sub, "jobs", [1, 2, 3, 7]).await;
    for d in taken {
        d.ack().await.unwrap();
    }
    assert_eq!(broker.ack().await, (0, vec![1, 2, 3, 7]));
}

#[tokio::test]
async fn auto_acks_are_coalesced() {
    let mut broker = FakeBroker::start().await;
    let client = broker
        .client_with(|b| b.ack_flush(Duration::from_secs(3600)))
        .await;
    // max_in_flight 16: a frame as soon as 4 acks are waiting.
    let mut sub = client
        .join("general", JoinOptions::new().auto_ack().max_in_flight(16))
        .await
        .unwrap();
    let Req::Join(_) = broker.request().await else {
        panic!("expected a join")
    };
    let taken = deliver(&broker, &mut sub, "general", 1..=4).await;
    assert_eq!(broker.ack().await, (4, vec![]));
    drop(taken);
}

#[tokio::test]
async fn a_full_queue_is_sent_without_waiting_for_the_timer() {
    let mut broker = FakeBroker::start().await;
    // A flush bound no test would wait for.
    let client = broker
        .client_with(|b| b.ack_flush(Duration::from_secs(3600)))
        .await;
    // max_in_flight 8: a frame as soon as 2 acks are waiting.
    let mut sub = client
        .join("general", JoinOptions::new().max_in_flight(8))
        .await
        .unwrap();
    let Req::Join(_) = broker.request().await else {
        panic!("expected a join")
    };
    let taken = deliver(&broker, &mut sub, "general", 1..=3).await;
    let mut taken = taken.into_iter();
    for d in taken.by_ref().take(2) {
        d.ack().await.unwrap();
    }
    assert_eq!(broker.ack().await, (2, vec![]));
    taken.next().unwrap().ack().await.unwrap();
    broker.assert_no_request(Duration::from_millis(200)).await;
    // flush_acks sends it now and returns once the broker answered.
    sub.flush_acks().await.unwrap();
    assert_eq!(broker.ack().await, (0, vec![3]));
    sub.flush_acks().await.unwrap();
    broker.assert_no_request(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn leave_and_close_send_the_acks_made_before() {
    let mut broker = FakeBroker::start().await;
    let client = broker
        .client_with(|b| b.ack_flush(Duration::from_secs(3600)))
        .await;
    let mut first = client.join("a", JoinOptions::new()).await.unwrap();
    let Req::Join(_) = broker.request().await else {
        panic!("expected a join")
    };
    let mut second = client.join("b", JoinOptions::new()).await.unwrap();
    let Req::Join(_) = broker.request().await else {
        panic!("expected a join")
    };
    for d in deliver(&broker, &mut first, "a", 1..=2).await {
        d.ack().await.unwrap();
    }
    first.leave().await.unwrap();
    assert_eq!(broker.ack().await, (2, vec![]));
    assert!(matches!(broker.request().await, Req::Leave(l) if l.room == "a"));

    let d = deliver(&broker, &mut second, "b", [5]).await;
    for d in d {
        d.ack().await.unwrap();
    }
    broker.assert_no_request(Duration::from_millis(100)).await;
    client.close().await;
    match broker.request().await {
        Req::Ack(a) => assert_eq!((a.room.as_str(), a.seqs), ("b", vec![5])),
        other => panic!("expected the ack, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_ack_nobody_awaits_is_reported_as_an_event() {
    let mut broker = FakeBroker::start().await;
    let client = broker.client().await;
    let mut events = client.events();
    let mut sub = client.join("general", JoinOptions::new()).await.unwrap();
    let Req::Join(_) = broker.request().await else {
        panic!("expected a join")
    };
    let taken = deliver(&broker, &mut sub, "general", [REFUSED_SEQ]).await;
    for d in taken {
        d.ack().await.unwrap();
    }
    assert_eq!(broker.ack().await, (0, vec![REFUSED_SEQ]));
    let code = timeout(WAIT, async {
        loop {
            if let Event::BrokerError { code, .. } = events.recv().await.unwrap() {
                return code;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(code, ErrorCode::UnknownSeq as u32);
}
