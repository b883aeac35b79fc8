//! The fenced append (docs/cluster.md §4, "The fence"): a record is
//! published with `Nats-Expected-Last-Subject-Sequence` = the stream
//! sequence of the room's previous record, and a `Nats-Msg-Id` unique to
//! this process and chain position, so that a retry after an unknown
//! outcome is recognised as the same record.
//!
//! - Acknowledged (also as a duplicate of an earlier attempt): stored, at
//!   the sequence the acknowledgement names.
//! - Refused for a wrong last sequence on the first attempt (10071, or
//!   10164 while another process's append to the subject is in flight):
//!   another process wrote the room. The commit fails; nothing of it is
//!   confirmed.
//! - Refused so on a retry: the first attempt may have landed after the
//!   duplicate window; the subject's last record, read from the stream
//!   leader, says whether it carries this record's message id.
//! - Timed out, connection lost, 10158 (the first attempt is still being
//!   proposed), 10164 on a retry, or any other error (no responders while
//!   NATS elects a leader): sent again, the same record with the same
//!   headers, backing off up to [`super::MAX_RETRY_DELAY`], for up to
//!   `Inner::retry_for`.

use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{stream, ErrorCode};
use bytes::Bytes;

use super::head::Head;
use super::{engine, record_key, Inner, MAX_RETRY_DELAY};
use crate::storage::{RoomId, StoreError};

/// What to do after a failed attempt.
enum Next {
    /// The subject's last record is not the one this append expects.
    Refused,
    /// The outcome is unknown, or the failure may pass: send again.
    Retry,
    /// Sending again cannot help.
    Fail,
}

/// The server's error code behind a publish error, if it sent one.
fn error_code(e: &PublishError) -> Option<ErrorCode> {
    let source = std::error::Error::source(e)?;
    source
        .downcast_ref::<async_nats::jetstream::Error>()
        .map(|e| e.error_code())
}

fn classify(e: &PublishError, first_attempt: bool) -> Next {
    match e.kind() {
        PublishErrorKind::WrongLastSequence => Next::Refused,
        PublishErrorKind::MaxPayloadExceeded => Next::Fail,
        PublishErrorKind::Other => match error_code(e) {
            Some(ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT) if first_attempt => Next::Refused,
            _ => Next::Retry,
        },
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => Next::Retry,
    }
}

impl Inner {
    /// Appends the record (`head`, `payload`) to `room`'s log `subject`
    /// in `stream`, after the record at stream sequence `expected` (0: the
    /// room has none). Returns the new record's stream sequence.
    pub(super) async fn append(
        &self,
        stream: &stream::Stream,
        subject: &str,
        room: RoomId,
        head: &Head,
        payload: Bytes,
        expected: u64,
    ) -> Result<u64, StoreError> {
        let msg_id = format!("{}.{room}.{expected}", self.incarnation);
        let mut headers = head.to_headers();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string(),
        );
        let mut attempt = 0u32;
        let start = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let sent = self
                .js
                .publish_with_headers(subject.to_string(), headers.clone(), payload.clone())
                .await;
            let outcome = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            let e = match outcome {
                Ok(ack) => return Ok(ack.sequence),
                Err(e) => e,
            };
            match classify(&e, attempt == 0) {
                Next::Refused if attempt == 0 => return Err(fenced(subject, expected, &e)),
                Next::Refused => {
                    // Did an earlier attempt land?
                    return match stream.get_last_raw_message_by_subject(subject).await {
                        Ok(last)
                            if last
                                .headers
                                .get(async_nats::header::NATS_MESSAGE_ID)
                                .is_some_and(|id| id.as_str() == msg_id) =>
                        {
                            Ok(last.sequence)
                        }
                        Ok(_) => Err(fenced(subject, expected, &e)),
                        Err(read) => Err(engine(
                            format!("append to {subject} refused ({e}); reading its last record"),
                            read,
                        )),
                    };
                }
                Next::Fail => return Err(engine(format!("append to {subject}"), e)),
                Next::Retry if start.elapsed() + delay >= self.retry_for => {
                    return Err(engine(
                        format!(
                            "append to {subject} unconfirmed after {} attempts in {:?}",
                            attempt + 1,
                            start.elapsed()
                        ),
                        e,
                    ))
                }
                Next::Retry => {
                    attempt += 1;
                    tracing::warn!(subject, attempt, error = %e, "append unconfirmed, sending again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }
}

fn fenced(subject: &str, expected: u64, e: &PublishError) -> StoreError {
    engine(
        format!(
            "{} is not the last record of {subject}: another process wrote this room \
             (fenced; nothing of this commit is confirmed)",
            record_key(subject, expected)
        ),
        e,
    )
}
