//! Property tests of the session state machine against the live broker.
//!
//! Random sequences of requests (join, leave, publish, ack, nack,
//! in-progress, ping, list-rooms, and some that are invalid) run on a fresh
//! connection to a fresh broker and are checked against a small model of
//! protocol.md: every request gets exactly one reply echoing its request
//! id, pushes carry request id 0, no error is fatal, and replies, error
//! codes and deliveries are what the model predicts.
//!
//! Two ways of sending: one request at a time (the model then predicts
//! everything: seqs, cursors, every delivery), and all at once, pipelined
//! (the model then predicts what does not depend on when a flush lands:
//! validation errors, NOT_JOINED, ALREADY_JOINED, publish seqs, pongs).
//! Bounded: a few dozen cases of at most 34 requests, a fresh broker each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use common::wire::{frame, handshake, request, FrameReader};
use common::*;
use proptest::prelude::*;
use roomq_client::{proto as pb, ErrorCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use pb::client_frame::Body as Req;
use pb::server_frame::Body as Rep;

/// Room names; the last one is not a valid name.
const ROOMS: [&str; 3] = ["a", "b", "bad\u{0}"];
/// Subscription labels. The session's client id is [`CLIENT`], so "" and
/// "me" name the same durable membership.
const LABELS: [&str; 3] = ["", "me", "s1"];
const CLIENT: &str = "me";
/// Ack timeout and nack delay long enough that no timer fires in a case.
const A_DAY_MS: u64 = 86_400_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Start {
    Resume,
    New,
    Earliest,
    Seq(u64),
}

/// The membership handle a leave, ack, nack or in-progress names.
#[derive(Debug, Clone, Copy)]
enum Handle {
    /// The n-th (modulo their number) of the handles the session holds at
    /// that point, or ("a", "") if it holds none: requests that mostly meet
    /// a membership.
    Held(usize),
    /// Any (room, label), held or not.
    Named(usize, usize),
}

/// A seq named by an ack, nack or in-progress.
#[derive(Debug, Clone, Copy)]
enum SeqPick {
    /// The n-th (modulo their number) of the member's unacknowledged seqs,
    /// or the last seq delivered to it if none is: seqs that mostly exist.
    Outstanding(usize),
    /// This number, delivered or not.
    Raw(u64),
}

#[derive(Debug, Clone)]
enum Op {
    /// `mode` 3 is not a MemberMode.
    Join {
        room: usize,
        label: usize,
        mode: i32,
        start: Start,
    },
    Leave {
        to: Handle,
        forget: bool,
    },
    Publish {
        rooms: Vec<usize>,
    },
    Ack {
        to: Handle,
        seqs: Vec<SeqPick>,
        up_to: SeqPick,
    },
    Nack {
        to: Handle,
        seqs: Vec<SeqPick>,
        later: bool,
    },
    InProgress {
        to: Handle,
        seqs: Vec<SeqPick>,
    },
    Ping,
    ListRooms,
    SecondHandshake,
    NoBody,
}

/// Mostly room "a", so that requests meet the memberships and messages of
/// earlier ones; sometimes "b"; rarely the invalid name.
fn room() -> impl Strategy<Value = usize> + Clone {
    prop_oneof![6 => Just(0), 3 => Just(1), 1 => Just(2)]
}

fn label() -> impl Strategy<Value = usize> + Clone {
    prop_oneof![4 => Just(0), 1 => Just(1), 3 => Just(2)]
}

fn handle() -> impl Strategy<Value = Handle> + Clone {
    prop_oneof![
        3 => (0..4usize).prop_map(Handle::Held),
        1 => (room(), label()).prop_map(|(r, l)| Handle::Named(r, l)),
    ]
}

/// Mostly seqs the member holds; else small numbers, 0 among them.
fn seq_pick() -> impl Strategy<Value = SeqPick> + Clone {
    prop_oneof![
        3 => (0..4usize).prop_map(SeqPick::Outstanding),
        2 => prop_oneof![1 => Just(0), 8 => 1..8u64].prop_map(SeqPick::Raw),
    ]
}

fn seqs() -> impl Strategy<Value = Vec<SeqPick>> + Clone {
    prop_oneof![
        9 => proptest::collection::vec(seq_pick(), 1..3),
        1 => Just(Vec::new()),
    ]
}

fn join_op() -> impl Strategy<Value = Op> {
    let start = prop_oneof![
        2 => Just(Start::Resume),
        1 => Just(Start::New),
        2 => Just(Start::Earliest),
        1 => (0..8u64).prop_map(Start::Seq),
    ];
    // Auto, durable, ephemeral, and 3, which is not a mode.
    let mode = prop_oneof![5 => Just(0), 2 => Just(1), 3 => Just(2), 1 => Just(3)];
    (room(), label(), mode, start).prop_map(|(room, label, mode, start)| Op::Join {
        room,
        label,
        mode,
        start,
    })
}

fn op() -> impl Strategy<Value = Op> {
    let publish_rooms = prop_oneof![
        8 => proptest::collection::vec(room(), 1..2),
        3 => proptest::collection::vec(room(), 2..3),
        1 => Just(Vec::new()),
    ];
    let up_to = prop_oneof![3 => Just(SeqPick::Raw(0)), 2 => seq_pick()];
    prop_oneof![
        3 => join_op(),
        2 => (handle(), any::<bool>()).prop_map(|(to, forget)| Op::Leave { to, forget }),
        6 => publish_rooms.prop_map(|rooms| Op::Publish { rooms }),
        4 => (handle(), seqs(), up_to).prop_map(|(to, seqs, up_to)| Op::Ack { to, seqs, up_to }),
        3 => (handle(), seqs(), any::<bool>())
            .prop_map(|(to, seqs, later)| Op::Nack { to, seqs, later }),
        2 => (handle(), seqs()).prop_map(|(to, seqs)| Op::InProgress { to, seqs }),
        1 => Just(Op::Ping),
        1 => Just(Op::ListRooms),
        1 => Just(Op::SecondHandshake),
        1 => Just(Op::NoBody),
    ]
}

/// A session: one or two joins first (so that later requests mostly meet a
/// membership), then anything.
fn session() -> impl Strategy<Value = Vec<Op>> {
    (
        proptest::collection::vec(join_op(), 1..3),
        proptest::collection::vec(op(), 0..32),
    )
        .prop_map(|(mut joins, ops)| {
            joins.extend(ops);
            joins
        })
}

/// What the model says a request is answered with.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Error(ErrorCode),
    Pong(u64),
    JoinOk {
        durable: bool,
        subscription: String,
        next_seq: u64,
        last_seq: u64,
    },
    LeaveOk,
    PublishOk(Vec<(String, u64)>),
    AckOk(u64),
    NackOk,
    InProgressOk,
    /// (name, last_seq, members, connected_members), sorted by name.
    Rooms(Vec<(String, u64, u32, u32)>),
}

/// The broker's answer, in the model's terms.
fn outcome_of(body: Option<Rep>) -> Result<Outcome, String> {
    Ok(match body {
        Some(Rep::Error(e)) => {
            if e.fatal {
                return Err(format!("a fatal error: {e:?}"));
            }
            Outcome::Error(e.error_code().ok_or(format!("unknown code {}", e.code))?)
        }
        Some(Rep::Pong(p)) => Outcome::Pong(p.nonce),
        Some(Rep::JoinOk(j)) => Outcome::JoinOk {
            durable: j.durable,
            subscription: j.subscription,
            next_seq: j.next_seq,
            last_seq: j.last_seq,
        },
        Some(Rep::LeaveOk(_)) => Outcome::LeaveOk,
        Some(Rep::PublishOk(p)) => {
            if p.duplicate {
                return Err("a publish without a dedup id reported as a duplicate".into());
            }
            Outcome::PublishOk(p.seqs.into_iter().map(|s| (s.room, s.seq)).collect())
        }
        Some(Rep::AckOk(a)) => Outcome::AckOk(a.next_seq),
        Some(Rep::NackOk(_)) => Outcome::NackOk,
        Some(Rep::InProgressOk(_)) => Outcome::InProgressOk,
        Some(Rep::ListRoomsOk(l)) => {
            if l.truncated {
                return Err("a listing of three rooms truncated".into());
            }
            Outcome::Rooms(
                l.rooms
                    .into_iter()
                    .map(|r| (r.name, r.last_seq, r.members, r.connected_members))
                    .collect(),
            )
        }
        other => return Err(format!("not a reply: {other:?}")),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Durable(&'static str),
    Ephemeral(&'static str),
}

#[derive(Debug, Default)]
struct Member {
    /// The next seq to deliver for the first time.
    next: u64,
    /// Delivered, unacknowledged: seq -> (deliveries so far, due again).
    unacked: BTreeMap<u64, (u32, bool)>,
    /// The label of the session's handle, while attached.
    attached: Option<&'static str>,
}

impl Member {
    fn floor(&self) -> u64 {
        self.unacked.keys().next().copied().unwrap_or(self.next)
    }
}

#[derive(Debug, Default)]
struct Room {
    last: u64,
    members: HashMap<Key, Member>,
    /// The rooms of each multi-room publish stored here, by seq.
    multi: HashMap<u64, Vec<&'static str>>,
}

/// The model: rooms, members, the session's handles, and the deliveries
/// each handle should have received, in order.
#[derive(Debug, Default)]
struct Model {
    rooms: BTreeMap<&'static str, Room>,
    held: HashMap<(&'static str, &'static str), Key>,
    delivered: BTreeMap<(String, String), Vec<(u64, u32)>>,
}

fn valid(room: &str) -> bool {
    !room.chars().any(char::is_control)
}

impl Model {
    /// Delivers what `key` of `room` may have: due redeliveries lowest seq
    /// first, then new messages (in-flight limits are far away here).
    fn pump(&mut self, room: &'static str, key: Key) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let last = r.last;
        // A multi-room publish reaches the session once: in the first of
        // its rooms the session is in when it is first delivered.
        let held = &self.held;
        let elsewhere = |seq: u64| {
            r.multi.get(&seq).is_some_and(|rooms| {
                rooms
                    .iter()
                    .take_while(|n| **n != room)
                    .any(|n| held.keys().any(|(hr, _)| hr == n))
            })
        };
        let skip: Vec<u64> = (r.members.get(&key).map_or(last + 1, |m| m.next)..=last)
            .filter(|s| elsewhere(*s))
            .collect();
        let Some(m) = r.members.get_mut(&key) else {
            return;
        };
        let Some(label) = m.attached else {
            return;
        };
        let out = self
            .delivered
            .entry((room.to_string(), label.to_string()))
            .or_default();
        for (seq, (attempts, due)) in m.unacked.iter_mut() {
            if *due {
                *attempts += 1;
                *due = false;
                out.push((*seq, *attempts));
            }
        }
        while m.next <= last {
            if !skip.contains(&m.next) {
                m.unacked.insert(m.next, (1, false));
                out.push((m.next, 1));
            }
            m.next += 1;
        }
    }

    /// The request for `op` and what it must be answered with; updates the
    /// model as the broker will.
    fn apply(&mut self, op: &Op, id: u64) -> (pb::ClientFrame, Outcome) {
        use ErrorCode as C;
        use Outcome as O;
        let body = |b: Req| request(id, b);
        match *op {
            Op::Ping => (body(Req::Ping(pb::Ping { nonce: id })), O::Pong(id)),
            Op::NoBody => (
                pb::ClientFrame {
                    request_id: id,
                    body: None,
                },
                O::Error(C::InvalidRequest),
            ),
            Op::SecondHandshake => (handshake(id, "/", CLIENT), O::Error(C::InvalidRequest)),
            Op::ListRooms => {
                let rooms = self
                    .rooms
                    .iter()
                    .map(|(name, r)| {
                        let connected = r.members.values().filter(|m| m.attached.is_some()).count();
                        (
                            name.to_string(),
                            r.last,
                            r.members.len() as u32,
                            connected as u32,
                        )
                    })
                    .collect();
                (body(Req::ListRooms(pb::ListRooms {})), O::Rooms(rooms))
            }
            Op::Publish { ref rooms } => {
                let names: Vec<&'static str> = rooms.iter().map(|i| ROOMS[*i]).collect();
                let req = body(Req::Publish(pb::Publish {
                    rooms: names.iter().map(|n| n.to_string()).collect(),
                    event: "e".into(),
                    payload: bytes::Bytes::from_static(b"p"),
                    ..Default::default()
                }));
                if names.is_empty() {
                    return (req, O::Error(C::InvalidRequest));
                }
                for (i, n) in names.iter().enumerate() {
                    if !valid(n) {
                        return (req, O::Error(C::InvalidName));
                    }
                    if names[..i].contains(n) {
                        return (req, O::Error(C::InvalidRequest));
                    }
                }
                let mut seqs = Vec::new();
                for n in &names {
                    let r = self.rooms.entry(n).or_default();
                    r.last += 1;
                    if names.len() > 1 {
                        r.multi.insert(r.last, names.clone());
                    }
                    seqs.push((n.to_string(), r.last));
                }
                for n in &names {
                    let keys: Vec<Key> = self.rooms[n].members.keys().copied().collect();
                    for k in keys {
                        self.pump(n, k);
                    }
                }
                (req, O::PublishOk(seqs))
            }
            Op::Join {
                room,
                label,
                mode,
                start,
            } => {
                let (room, label) = (ROOMS[room], LABELS[label]);
                let (start_pos, start_seq) = match start {
                    Start::Resume => (pb::StartPosition::Resume, 0),
                    Start::New => (pb::StartPosition::New, 0),
                    Start::Earliest => (pb::StartPosition::Earliest, 0),
                    Start::Seq(s) => (pb::StartPosition::Seq, s),
                };
                let req = body(Req::Join(pb::Join {
                    room: room.into(),
                    subscription: label.into(),
                    mode,
                    start: start_pos as i32,
                    start_seq,
                    max_in_flight: 0,
                    ack_timeout_ms: A_DAY_MS,
                    ..Default::default()
                }));
                if !valid(room) {
                    return (req, O::Error(C::InvalidName));
                }
                let durable_name = match mode {
                    0 | 1 => Some(if label.is_empty() { CLIENT } else { label }),
                    2 => None,
                    _ => return (req, O::Error(C::InvalidRequest)),
                };
                if self.held.contains_key(&(room, label)) {
                    return (req, O::Error(C::AlreadyJoined));
                }
                let key = durable_name.map_or(Key::Ephemeral(label), Key::Durable);
                let r = self.rooms.entry(room).or_default();
                if r.members.get(&key).is_some_and(|m| m.attached.is_some()) {
                    // The same durable membership under another label.
                    return (req, O::Error(C::AlreadyJoined));
                }
                let end = r.last + 1;
                let position = match start {
                    Start::Resume | Start::New => end,
                    Start::Earliest => 1,
                    Start::Seq(s) => s.clamp(1, end),
                };
                let m = r.members.entry(key).or_insert_with(|| Member {
                    next: position,
                    ..Default::default()
                });
                if start != Start::Resume {
                    m.next = position;
                    m.unacked.clear();
                }
                m.attached = Some(label);
                let reply = O::JoinOk {
                    durable: durable_name.is_some(),
                    subscription: durable_name.unwrap_or("").to_string(),
                    next_seq: m.floor(),
                    last_seq: r.last,
                };
                self.held.insert((room, label), key);
                self.pump(room, key);
                (req, reply)
            }
            Op::Leave { to, forget } => {
                let (room, label) = self.resolve(to);
                let req = body(Req::Leave(pb::Leave {
                    room: room.into(),
                    subscription: label.into(),
                    forget,
                }));
                if !valid(room) {
                    return (req, O::Error(C::InvalidName));
                }
                let Some(key) = self.held.remove(&(room, label)) else {
                    return (req, O::Error(C::NotJoined));
                };
                let r = self.rooms.get_mut(room).expect("a held room exists");
                match key {
                    Key::Ephemeral(_) => {
                        r.members.remove(&key);
                    }
                    Key::Durable(_) if forget => {
                        r.members.remove(&key);
                    }
                    Key::Durable(_) => {
                        let m = r.members.get_mut(&key).expect("a held member exists");
                        m.attached = None;
                        for (_, due) in m.unacked.values_mut() {
                            *due = true;
                        }
                    }
                }
                (req, O::LeaveOk)
            }
            Op::Ack {
                to,
                ref seqs,
                up_to,
            } => {
                let (room, label) = self.resolve(to);
                let seqs = &self.pick(room, label, seqs);
                let up_to = self.pick(room, label, &[up_to])[0];
                let req = body(Req::Ack(pb::Ack {
                    room: room.into(),
                    subscription: label.into(),
                    seqs: seqs.clone(),
                    up_to,
                }));
                if !valid(room) {
                    return (req, O::Error(C::InvalidName));
                }
                if seqs.is_empty() && up_to == 0 {
                    return (req, O::Error(C::InvalidRequest));
                }
                let Some(m) = self.member(room, label) else {
                    return (req, O::Error(C::NotJoined));
                };
                if up_to >= m.next || seqs.iter().any(|s| *s == 0 || *s >= m.next) {
                    return (req, O::Error(C::UnknownSeq));
                }
                for s in seqs {
                    m.unacked.remove(s);
                }
                m.unacked.retain(|s, _| *s > up_to);
                let floor = m.floor();
                (req, O::AckOk(floor))
            }
            Op::Nack {
                to,
                ref seqs,
                later,
            } => {
                let (room, label) = self.resolve(to);
                let seqs = &self.pick(room, label, seqs);
                let req = body(Req::Nack(pb::Nack {
                    room: room.into(),
                    subscription: label.into(),
                    seqs: seqs.clone(),
                    delay_ms: if later { A_DAY_MS } else { 0 },
                    ..Default::default()
                }));
                if !valid(room) {
                    return (req, O::Error(C::InvalidName));
                }
                if seqs.is_empty() {
                    return (req, O::Error(C::InvalidRequest));
                }
                let Some(m) = self.member(room, label) else {
                    return (req, O::Error(C::NotJoined));
                };
                if seqs.iter().any(|s| !m.unacked.contains_key(s)) {
                    return (req, O::Error(C::UnknownSeq));
                }
                for s in seqs {
                    if let Some((_, due)) = m.unacked.get_mut(s) {
                        *due = !later;
                    }
                }
                let key = self.held[&(room, label)];
                self.pump(room, key);
                (req, O::NackOk)
            }
            Op::InProgress { to, ref seqs } => {
                let (room, label) = self.resolve(to);
                let seqs = &self.pick(room, label, seqs);
                let req = body(Req::InProgress(pb::InProgress {
                    room: room.into(),
                    subscription: label.into(),
                    seqs: seqs.clone(),
                }));
                if !valid(room) {
                    return (req, O::Error(C::InvalidName));
                }
                if seqs.is_empty() {
                    return (req, O::Error(C::InvalidRequest));
                }
                let Some(m) = self.member(room, label) else {
                    return (req, O::Error(C::NotJoined));
                };
                if seqs.iter().any(|s| *s == 0 || *s >= m.next) {
                    return (req, O::Error(C::UnknownSeq));
                }
                (req, O::InProgressOk)
            }
        }
    }

    /// The (room, label) a request names.
    fn resolve(&self, to: Handle) -> (&'static str, &'static str) {
        match to {
            Handle::Named(r, l) => (ROOMS[r], LABELS[l]),
            Handle::Held(n) => {
                let mut held: Vec<_> = self.held.keys().copied().collect();
                held.sort_unstable();
                held.get(n % held.len().max(1))
                    .copied()
                    .unwrap_or((ROOMS[0], LABELS[0]))
            }
        }
    }

    /// The seqs a request names, for the member behind (`room`, `label`).
    fn pick(&mut self, room: &'static str, label: &'static str, picks: &[SeqPick]) -> Vec<u64> {
        let m = self.member(room, label);
        let outstanding: Vec<u64> = m
            .as_ref()
            .map_or_else(Vec::new, |m| m.unacked.keys().copied().collect());
        let last_delivered = m.map_or(1, |m| m.next.saturating_sub(1));
        picks
            .iter()
            .map(|p| match *p {
                SeqPick::Raw(s) => s,
                SeqPick::Outstanding(n) => outstanding
                    .get(n % outstanding.len().max(1))
                    .copied()
                    .unwrap_or(last_delivered),
            })
            .collect()
    }

    /// The member behind the session's handle (`room`, `label`).
    fn member(&mut self, room: &'static str, label: &'static str) -> Option<&mut Member> {
        let key = self.held.get(&(room, label))?;
        self.rooms.get_mut(room)?.members.get_mut(key)
    }
}

/// Whether `got` is an answer the broker may give to `op` when requests
/// are pipelined, where the model predicted `want` for one at a time.
fn pipelined_ok(op: &Op, want: &Outcome, got: &Outcome) -> bool {
    use Outcome as O;
    match (op, want, got) {
        // Whether a seq has been delivered yet depends on when flushes land.
        (Op::Ack { .. }, O::AckOk(_) | O::Error(ErrorCode::UnknownSeq), g) => {
            matches!(g, O::AckOk(_) | O::Error(ErrorCode::UnknownSeq))
        }
        (Op::Nack { .. }, O::NackOk | O::Error(ErrorCode::UnknownSeq), g) => {
            matches!(g, O::NackOk | O::Error(ErrorCode::UnknownSeq))
        }
        (Op::InProgress { .. }, O::InProgressOk | O::Error(ErrorCode::UnknownSeq), g) => {
            matches!(g, O::InProgressOk | O::Error(ErrorCode::UnknownSeq))
        }
        // The cursor and the end of the log depend on it too.
        (
            _,
            O::JoinOk {
                durable,
                subscription,
                ..
            },
            O::JoinOk {
                durable: d,
                subscription: s,
                ..
            },
        ) => durable == d && subscription == s,
        // So does last_seq (it counts what is on disk).
        (_, O::Rooms(want), O::Rooms(got)) => {
            want.len() == got.len()
                && want
                    .iter()
                    .zip(got)
                    .all(|(w, g)| (&w.0, w.2, w.3) == (&g.0, g.2, g.3))
        }
        (_, w, g) => w == g,
    }
}

/// Where deliveries end up: per (room, subscription label), in order.
type Received = BTreeMap<(String, String), Vec<(u64, u32)>>;

fn record(received: &mut Received, d: pb::Delivery) -> Result<(), String> {
    let s = seq(&d);
    if d.redelivered != (d.attempt > 1) {
        return Err(format!("redelivered flag and attempt disagree: {d:?}"));
    }
    received
        .entry((d.room, d.subscription))
        .or_default()
        .push((s, d.attempt));
    Ok(())
}

/// The next frame that is not a delivery; deliveries go to `received`.
async fn next_reply(
    reader: &mut FrameReader,
    received: &mut Received,
) -> Result<pb::ServerFrame, String> {
    loop {
        let f = reader
            .next_within(WAIT)
            .await?
            .ok_or("the broker closed the connection")?;
        match f.body {
            Some(Rep::Delivery(d)) if f.request_id == 0 => record(received, d)?,
            _ if f.request_id == 0 => return Err(format!("an unexpected push: {f:?}")),
            _ => return Ok(f),
        }
    }
}

/// Starts a broker and a session for one case.
async fn open() -> (TestBroker, FrameReader, tokio::net::tcp::OwnedWriteHalf) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let broker = TestBroker::start_with(test_config(&dir), dir).await;
    let stream = TcpStream::connect(broker.addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    write
        .write_all(&frame(&handshake(1, "/", CLIENT)))
        .await
        .unwrap();
    let mut reader = FrameReader::new(read);
    let hello = reader.next(WAIT).await.unwrap();
    assert!(matches!(hello.body, Some(Rep::HandshakeOk(_))));
    (broker, reader, write)
}

/// One request at a time: the model predicts every reply and delivery.
async fn one_at_a_time(ops: &[Op]) -> Result<(), String> {
    let (broker, mut reader, mut write) = open().await;
    let mut model = Model::default();
    let mut received = Received::new();
    for (i, op) in ops.iter().enumerate() {
        let id = i as u64 + 2;
        let (req, want) = model.apply(op, id);
        write.write_all(&frame(&req)).await.unwrap();
        let f = next_reply(&mut reader, &mut received).await?;
        if f.request_id != id {
            return Err(format!(
                "request {id} ({op:?}): a reply to {}",
                f.request_id
            ));
        }
        let got = outcome_of(f.body)?;
        if got != want {
            return Err(format!("request {id} ({op:?}): {got:?}, expected {want:?}"));
        }
    }
    // A last ping: everything before it has been answered and delivered.
    let id = ops.len() as u64 + 2;
    write
        .write_all(&frame(&request(id, Req::Ping(pb::Ping { nonce: id }))))
        .await
        .unwrap();
    let f = next_reply(&mut reader, &mut received).await?;
    if f.request_id != id || !matches!(f.body, Some(Rep::Pong(_))) {
        return Err(format!("the last ping got {f:?}"));
    }
    let expected = std::mem::take(&mut model.delivered);
    let expected: Received = expected
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if received != expected {
        return Err(format!("deliveries {received:?}, expected {expected:?}"));
    }
    broker.stop().await;
    Ok(())
}

/// All requests at once: every one gets exactly one reply, and what does
/// not depend on timing is what the model says.
async fn pipelined(ops: &[Op]) -> Result<(), String> {
    let (broker, mut reader, mut write) = open().await;
    let mut model = Model::default();
    let mut wants = HashMap::new();
    let mut bytes = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let id = i as u64 + 2;
        let (req, want) = model.apply(op, id);
        bytes.extend(frame(&req));
        wants.insert(id, (op, want));
    }
    let last = ops.len() as u64 + 2;
    bytes.extend(frame(&request(last, Req::Ping(pb::Ping { nonce: last }))));
    write.write_all(&bytes).await.unwrap();
    let mut received = Received::new();
    let mut answered = 0;
    while answered <= ops.len() {
        let f = next_reply(&mut reader, &mut received).await?;
        answered += 1;
        if f.request_id == last {
            if !matches!(f.body, Some(Rep::Pong(_))) {
                return Err(format!("the last ping got {f:?}"));
            }
            continue;
        }
        let Some((op, want)) = wants.remove(&f.request_id) else {
            return Err(format!(
                "a reply to {}, unknown or answered twice",
                f.request_id
            ));
        };
        let got = outcome_of(f.body)?;
        if !pipelined_ok(op, &want, &got) {
            return Err(format!(
                "request {} ({op:?}): {got:?}, expected {want:?}",
                f.request_id
            ));
        }
    }
    if !wants.is_empty() {
        return Err(format!("unanswered: {:?}", wants.keys()));
    }
    broker.stop().await;
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    // One thread: the broker actor finishes each step before a writer runs,
    // so the deliveries a request causes are queued before its reply is
    // read (what makes them predictable one request at a time).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn one_request_at_a_time_matches_the_model(ops in session()) {
        let r = runtime().block_on(one_at_a_time(&ops));
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn pipelined_requests_get_one_reply_each(ops in session()) {
        let r = runtime().block_on(pipelined(&ops));
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
