//! What an operation answers with. A handler returns a [`Reply`] (or a
//! [`super::BrokerError`]); the dispatcher (`Broker::handle`) sends it
//! with the request's slot in the session's budget, or files the slot with
//! the answer that waits for a commit.

use roomq_wire::pb;
use roomq_wire::pb::server_frame::Body;
use tokio::time::Instant;
use uuid::Uuid;

use super::core::Broker;
use super::dedup::DedupKey;
use super::pipeline::{PendingConfirm, PendingReply};
use super::room::MemberKey;
use super::Request;
use crate::session::{RequestSlot, Seqs};
use crate::storage::RoomId;
use futures::future::BoxFuture;

/// A request's answer.
#[derive(Debug)]
pub(super) enum Reply {
    /// Sent now.
    Now(Body),
    /// Sent now; then the member is pumped, so that what the request freed
    /// (an ack, a nack) or started (a join) is delivered after the answer.
    NowThenPump(Body, RoomId, MemberKey),
    /// The member is pumped, then this is sent: what the request released
    /// (a leave's consumer had in flight) goes to the member's other
    /// consumers before the answer, for a handler that cannot pump.
    PumpThenNow(Body, RoomId, MemberKey),
    /// A publish confirmation, sent now.
    Confirm {
        seqs: Seqs,
        duplicate: bool,
        durability: pb::Durability,
    },
    /// Sent once the open batch is synced to disk: what the request changed
    /// must survive a crash before the client is told.
    AfterSync(Deferred),
    /// A retry of a publish whose batch is being written: confirmed with
    /// the original, once it is on disk.
    WithOriginal(DedupKey),
    /// The request needs stored data first: `Resume` reads it beside the
    /// actor and yields the request again, completed with what it read,
    /// which is then handled like a new one (it keeps its slot meanwhile).
    AfterRead(Resume),
    /// Nothing is sent: the session (or the room it joined) vanished while
    /// the request was handled. The dispatcher checks the session first, so
    /// this is a guard, not a path taken today.
    Gone,
}

/// Storage work a request waits for, yielding the request to handle then.
pub(super) struct Resume(pub(super) BoxFuture<'static, Request>);

impl Resume {
    pub(super) fn new<R: Into<Request>>(
        work: impl std::future::Future<Output = R> + Send + 'static,
    ) -> Self {
        Resume(Box::pin(async move { work.await.into() }))
    }
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resume(..)")
    }
}

/// An answer that waits for a sync.
// A frame body is the largest variant; boxing it would cost an allocation
// per durable join to save bytes in the open batch's short queue.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Deferred {
    /// A frame body (a durable join's, an admin change's); then `then_pump`
    /// starts delivering to the member that joined.
    Frame {
        body: Body,
        then_pump: Option<(RoomId, MemberKey)>,
    },
    /// A publish confirmation. `received`: when the broker took the publish
    /// (for `roomq_publish_confirm_seconds`).
    Confirm {
        seqs: Seqs,
        duplicate: bool,
        received: Option<Instant>,
    },
}

impl Broker {
    /// Sends `reply` to `request_id` of `session`, or files it (and the
    /// request's slot) to be sent once its batch is on disk.
    pub(super) fn answer(
        &mut self,
        session: Uuid,
        request_id: u64,
        permit: RequestSlot,
        reply: Reply,
    ) {
        let frame = |body| pb::ServerFrame {
            request_id,
            body: Some(body),
        };
        match reply {
            Reply::Now(body) => self.reply(session, frame(body), Some(permit)),
            Reply::NowThenPump(body, room_id, key) => {
                self.reply(session, frame(body), Some(permit));
                self.pump(room_id, &key);
            }
            Reply::PumpThenNow(body, room_id, key) => {
                self.pump(room_id, &key);
                self.reply(session, frame(body), Some(permit));
            }
            Reply::Confirm {
                seqs,
                duplicate,
                durability,
            } => self.confirm_publish(session, request_id, seqs, duplicate, durability, permit),
            Reply::AfterSync(deferred) => {
                let (reply, then_pump, received) = match deferred {
                    Deferred::Frame { body, then_pump } => {
                        (PendingReply::Frame(frame(body)), then_pump, None)
                    }
                    Deferred::Confirm {
                        seqs,
                        duplicate,
                        received,
                    } => {
                        let reply = PendingReply::Confirm {
                            request_id,
                            seqs,
                            duplicate,
                        };
                        (reply, None, received)
                    }
                };
                self.pipeline.after_sync(PendingConfirm {
                    session,
                    reply,
                    permit,
                    then_pump,
                    received,
                });
            }
            Reply::WithOriginal(key) => {
                // The handler found the id pending just now, and nothing ran
                // since: the request waits with the original's other retries.
                // (Were it not pending, the retry's slot would be dropped
                // unanswered; the handler returned this just now.)
                let _ = self.dedup.wait(&key, (session, request_id, permit));
            }
            Reply::AfterRead(work) => self
                .outlet
                .reads
                .resume(session, request_id, permit, work.0),
            Reply::Gone => {}
        }
    }
}
