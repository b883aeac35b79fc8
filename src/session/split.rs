//! The writer's side of a publish split over shards. The reader queues an
//! [`Outbound::Expect`](super::Outbound::Expect) before it sends the parts,
//! so the writer knows of the split before any part is answered. Each
//! shard answers its part like a publish of its own rooms: a confirmation
//! or an error with the request's id. [`Splits`] holds those answers back
//! and, once every part has answered, gives the one frame the client gets:
//! the first error if a part was refused (parts that were stored stay
//! stored; a retry with the same dedup id makes the publish whole), or one
//! `PublishOk` with the seqs in the publish's room order, `duplicate` only
//! if every part was a duplicate, and the weakest durability.

use std::collections::HashMap;
use std::sync::Arc;

use roomq_wire::pb;

use super::outbound::RequestSlot;

/// A split publish whose parts are not all answered.
#[derive(Debug)]
struct Split {
    /// Parts still to answer.
    waiting: usize,
    rooms: Arc<[Arc<str>]>,
    seqs: Vec<(Arc<str>, u64)>,
    duplicate: bool,
    durability: Option<pb::Durability>,
    error: Option<Box<pb::ServerFrame>>,
    /// The request's slot in the session's budget.
    permit: RequestSlot,
}

/// One part's answer.
#[derive(Debug)]
pub enum Answer<'a> {
    Confirm {
        seqs: &'a [(Arc<str>, u64)],
        duplicate: bool,
        durability: pb::Durability,
    },
    Error(Box<pb::ServerFrame>),
}

/// Where a part's answer went.
#[derive(Debug)]
pub enum Taken {
    /// Not a part of a split: the writer writes it as it is.
    NotSplit,
    /// Held back; other parts are still to answer.
    Held,
    /// The last part: the frame to write, and the request's slot to
    /// release once it is written.
    Done(Box<pb::ServerFrame>, RequestSlot),
}

/// The splits of one session, by request id. A client that reuses a
/// request id while a split publish is pending gets its answers mixed up,
/// as it would without splits; every split still ends once as many
/// answers as it has parts have come.
#[derive(Debug, Default)]
pub struct Splits {
    pending: HashMap<u64, Vec<Split>>,
}

/// How strong a durability is; a merged confirmation says the weakest.
fn strength(d: pb::Durability) -> u8 {
    match d {
        pb::Durability::Volatile => 0,
        pb::Durability::Batched => 1,
        pb::Durability::Sync => 2,
        pb::Durability::Unspecified => 3,
    }
}

impl Splits {
    /// A publish `request_id` was split into `parts` over `rooms`.
    pub fn expect(
        &mut self,
        request_id: u64,
        parts: usize,
        rooms: Arc<[Arc<str>]>,
        permit: RequestSlot,
    ) {
        self.pending.entry(request_id).or_default().push(Split {
            waiting: parts,
            seqs: Vec::with_capacity(rooms.len()),
            rooms,
            duplicate: true,
            durability: None,
            error: None,
            permit,
        });
    }

    /// Whether an answer to `request_id` may be a part's.
    pub fn waits_for(&self, request_id: u64) -> bool {
        !self.pending.is_empty() && self.pending.contains_key(&request_id)
    }

    /// Takes a part's answer to `request_id`.
    pub fn take(&mut self, request_id: u64, answer: Answer<'_>) -> Taken {
        let Some(list) = self.pending.get_mut(&request_id) else {
            return Taken::NotSplit;
        };
        let Some(split) = list.first_mut() else {
            self.pending.remove(&request_id);
            return Taken::NotSplit;
        };
        match answer {
            Answer::Confirm {
                seqs,
                duplicate,
                durability,
            } => {
                split.seqs.extend(seqs.iter().cloned());
                split.duplicate &= duplicate;
                split.durability = Some(match split.durability {
                    Some(d) if strength(d) <= strength(durability) => d,
                    _ => durability,
                });
            }
            Answer::Error(frame) => {
                if split.error.is_none() {
                    split.error = Some(frame);
                }
            }
        }
        split.waiting = split.waiting.saturating_sub(1);
        if split.waiting > 0 {
            return Taken::Held;
        }
        let done = list.remove(0);
        if list.is_empty() {
            self.pending.remove(&request_id);
        }
        let frame = match done.error {
            Some(error) => error,
            None => {
                let mut seqs = done.seqs;
                let at = |room: &Arc<str>| done.rooms.iter().position(|r| r == room);
                seqs.sort_by_key(|(room, _)| at(room));
                let durability = done.durability.unwrap_or(pb::Durability::Sync);
                Box::new(crate::broker::publish::ok_frame(
                    request_id,
                    &seqs,
                    done.duplicate,
                    durability,
                ))
            }
        };
        Taken::Done(frame, done.permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(names: &[&str]) -> Arc<[Arc<str>]> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    fn seq(room: &str, seq: u64) -> (Arc<str>, u64) {
        (Arc::from(room), seq)
    }

    fn ok_of(t: Taken) -> pb::PublishOk {
        match t {
            Taken::Done(frame, _) => match frame.body {
                Some(pb::server_frame::Body::PublishOk(ok)) => ok,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parts_merge_in_room_order_with_the_weakest_durability() {
        let mut s = Splits::default();
        s.expect(7, 2, rooms(&["a", "b", "c"]), RequestSlot::none());
        assert!(s.waits_for(7));
        assert!(!s.waits_for(8));
        let first = [seq("b", 4)];
        let t = s.take(
            7,
            Answer::Confirm {
                seqs: &first,
                duplicate: true,
                durability: pb::Durability::Sync,
            },
        );
        assert!(matches!(t, Taken::Held));
        let second = [seq("c", 9), seq("a", 1)];
        let ok = ok_of(s.take(
            7,
            Answer::Confirm {
                seqs: &second,
                duplicate: false,
                durability: pb::Durability::Batched,
            },
        ));
        let got: Vec<(&str, u64)> = ok.seqs.iter().map(|r| (r.room.as_str(), r.seq)).collect();
        assert_eq!(got, [("a", 1), ("b", 4), ("c", 9)]);
        assert!(!ok.duplicate);
        assert_eq!(ok.durability, pb::Durability::Batched as i32);
        assert!(!s.waits_for(7));
        assert!(matches!(
            s.take(7, Answer::Error(Box::default())),
            Taken::NotSplit
        ));
    }

    #[test]
    fn a_refused_part_is_the_answer() {
        let mut s = Splits::default();
        s.expect(3, 2, rooms(&["a", "b"]), RequestSlot::none());
        let error = pb::ServerFrame {
            request_id: 3,
            body: Some(pb::server_frame::Body::Error(pb::Error::new(
                roomq_wire::ErrorCode::QuotaExceeded,
                "full",
            ))),
        };
        assert!(matches!(
            s.take(3, Answer::Error(Box::new(error.clone()))),
            Taken::Held
        ));
        let stored = [seq("a", 1)];
        match s.take(
            3,
            Answer::Confirm {
                seqs: &stored,
                duplicate: false,
                durability: pb::Durability::Sync,
            },
        ) {
            Taken::Done(frame, _) => assert_eq!(*frame, error),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn all_duplicates_make_a_duplicate() {
        let mut s = Splits::default();
        s.expect(1, 2, rooms(&["a", "b"]), RequestSlot::none());
        for part in [[seq("a", 1)], [seq("b", 2)]] {
            let t = s.take(
                1,
                Answer::Confirm {
                    seqs: &part,
                    duplicate: true,
                    durability: pb::Durability::Sync,
                },
            );
            if let Taken::Done(..) = t {
                assert!(ok_of(t).duplicate);
            }
        }
    }
}
