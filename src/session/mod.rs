//! One client connection: a reader task (this module's [`serve`]) and a
//! writer task joined by a bounded channel.
//!
//! The transport may be plain TCP, TLS or WebSocket: [`serve`] takes a
//! [`FrameSource`] that yields whole frames, the socket's write half, and the
//! [`Framing`] that turns the writer's batches into the transport's bytes
//! (see [`crate::transport`]). Nothing below depends on which it is.
//!
//! The reader performs the handshake under its deadline, then decodes
//! frames, checks each request and forwards it to the broker actor. Every
//! request first takes a permit from the session's pending-request budget;
//! the permit travels with the request and its reply and is released when the
//! reply is written. When the budget is spent the reader stops reading, so a
//! client that pipelines without reading replies is slowed by TCP, never
//! buffered without bound.
//!
//! The writer drains the channel into one buffer and writes it with one
//! syscall where it can. A socket that takes no bytes for the write deadline
//! gets the session killed; its durable memberships keep everything.

mod outbound;
mod route;
mod split;

pub use outbound::{Outbound, RequestSlot, Seqs, SessionInfo, SessionRooms};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use roomq_wire::codec::{decode_client, encode_delivery_frame, encode_frame, DeliveryHead};
use roomq_wire::names::{check_name, check_namespace};
use roomq_wire::{pb, ErrorCode, FrameError, PROTOCOL_VERSION};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::broker::{self, error_frame, BrokerError, BrokerHandle, Request};
use crate::config::Config;
use crate::tenancy::middleware::{ConnectCtx, JoinCtx, SessionSetup};
use crate::tenancy::Tenants;
use crate::transport::{CloseReason, FrameSource, Framing, Transport};

/// Largest batch of frames the writer gathers before one write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Queue slots beyond the request and delivery budgets, for pushes.
const PUSH_SLOTS: usize = 8;

/// Slots of a session's outbound queue kept for replies (the broker hands
/// out deliveries only beyond them): one per pending request, plus, with
/// several shards, one per part of a split publish and its
/// `Outbound::Expect`; plus the push slots.
pub fn reply_slots(limits: &crate::config::Limits, shards: usize) -> usize {
    let per_request = if shards > 1 { shards + 1 } else { 1 };
    (limits.max_pending_requests as usize).saturating_mul(per_request) + PUSH_SLOTS
}

/// Serves one accepted connection, given as the source of its frames, the
/// write half of its stream and that transport's framing, until it closes,
/// the session is killed, or `shutdown` is cancelled. The handshake frame
/// must arrive by `handshake_deadline`, which the caller set when it
/// accepted the connection (a TLS handshake or an HTTP upgrade has already
/// used part of it).
#[allow(clippy::too_many_arguments)]
pub async fn serve<S, W, F>(
    mut frames: S,
    mut write_half: W,
    mut framing: F,
    peer: SocketAddr,
    config: Arc<Config>,
    tenants: Arc<Tenants>,
    broker: BrokerHandle,
    shutdown: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
    handshake_deadline: Instant,
    transport: Transport,
) where
    S: FrameSource,
    W: AsyncWrite + Unpin + Send + 'static,
    F: Framing,
{
    let limits = &config.limits;
    // Until the handshake is accepted, only a small frame is buffered.
    frames.set_max_frame(limits.max_handshake_bytes as usize);

    let admitted = admit(
        &mut frames,
        handshake_deadline,
        &shutdown,
        &tenants,
        &broker,
        peer,
        transport,
        &config,
    )
    .await;
    let Admitted {
        request_id: hs_request,
        info,
        resumed,
        tx,
        rx,
        blocked,
        kill,
        holds: _holds,
    } = match admitted {
        Ok(a) => a,
        Err(None) => {
            // The client left (or the broker is stopping) before a session
            // began. A transport with a closing handshake still answers it.
            if let Some(close) = framing.closing(CloseReason::Normal) {
                let _ = timeout(limits.write_timeout(), write_half.write_all(&close)).await;
            }
            return;
        }
        Err(Some(error)) => {
            let code = error.error_code().unwrap_or(ErrorCode::Internal);
            tenants.metrics.handshake_refused(code);
            tenants.metrics.error_sent(error.code);
            return refuse(&mut write_half, &mut framing, &mut frames, error, &config).await;
        }
    };
    let pending = limits.max_pending_requests as usize;

    tracker.spawn(write_loop(
        write_half,
        framing,
        rx,
        blocked,
        broker.clone(),
        kill.clone(),
        info.id,
        config.clone(),
        tenants.metrics.clone(),
    ));

    let ok = pb::ServerFrame {
        request_id: hs_request,
        body: Some(pb::server_frame::Body::HandshakeOk(pb::HandshakeOk {
            protocol_version: PROTOCOL_VERSION,
            session_id: bytes::Bytes::copy_from_slice(info.id.as_bytes()),
            resumed,
            limits: Some(pb::Limits {
                max_frame_bytes: limits.max_frame_bytes,
                max_in_flight: limits.max_in_flight,
                ack_timeout_ms: limits.ack_timeout_ms,
                idle_timeout_ms: limits.idle_timeout_ms,
                dedup_window_ms: limits.dedup_window_ms,
                max_rooms_per_publish: limits.max_rooms_per_publish,
                max_pending_requests: limits.max_pending_requests,
                max_deliveries: limits.max_deliveries,
                max_schedule_ms: limits.max_schedule_ms,
                max_backoff_steps: limits.max_backoff_steps,
                max_pending_bytes: limits.max_pending_bytes,
                max_headers: limits.max_headers,
                max_memberships_per_session: limits.max_memberships_per_session,
                max_message_bytes: info.tenant.policy().quotas.max_message_bytes,
            }),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
        })),
    };
    let _ = tx.try_send(Outbound::Reply {
        frame: Box::new(ok),
        permit: None,
    });

    let budget = Budget {
        requests: Arc::new(Semaphore::new(pending)),
        bytes: Arc::new(Semaphore::new(limits.max_pending_bytes as usize)),
    };
    let stopped_by_shutdown = read_loop(
        &mut frames,
        &tx,
        &budget,
        &broker,
        &info,
        &config,
        &tenants.metrics,
        &kill,
        &shutdown,
    )
    .await;
    if !stopped_by_shutdown {
        // On shutdown the broker drains and confirms first; it drops the
        // session itself.
        let _ = broker.unregister(info.id).await;
    }
}

/// A connection whose handshake was accepted and which the broker has
/// registered as a session.
struct Admitted {
    request_id: u64,
    info: Arc<SessionInfo>,
    resumed: bool,
    tx: mpsc::Sender<Outbound>,
    rx: mpsc::Receiver<Outbound>,
    blocked: Arc<AtomicBool>,
    kill: CancellationToken,
    /// What connect hooks hold for the session's life (a connection-quota
    /// slot, say).
    holds: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

/// Why a handshake was not accepted: the error to refuse it with, or
/// `None` to close without a word (the client went away, or shutdown).
type Refusal = Option<pb::Error>;

/// Reads the handshake under its deadline, checks it, runs the namespace's
/// connect hooks and registers the session with the broker.
#[allow(clippy::too_many_arguments)]
async fn admit<S: FrameSource>(
    frames: &mut S,
    deadline: Instant,
    shutdown: &CancellationToken,
    tenants: &Tenants,
    broker: &BrokerHandle,
    peer: SocketAddr,
    transport: Transport,
    config: &Config,
) -> Result<Admitted, Refusal> {
    let limits = &config.limits;
    let refuse = |code: ErrorCode, message: String| Some(pb::Error::new(code, message));
    let hello = tokio::select! {
        _ = shutdown.cancelled() => return Err(None),
        r = timeout_at(deadline, frames.next_frame()) => r,
    };
    let raw = match hello {
        Err(_) => {
            let msg = format!("no handshake within {} ms", limits.handshake_timeout_ms);
            return Err(refuse(ErrorCode::HandshakeTimeout, msg));
        }
        Ok(None) | Ok(Some(Err(FrameError::Io(_)))) => return Err(None),
        Ok(Some(Err(e @ (FrameError::TooLarge { .. } | FrameError::Oversized { .. })))) => {
            return Err(refuse(ErrorCode::FrameTooLarge, e.to_string()))
        }
        Ok(Some(Err(e @ (FrameError::Malformed(_) | FrameError::Transport(_))))) => {
            return Err(refuse(ErrorCode::MalformedFrame, e.to_string()))
        }
        Ok(Some(Ok(raw))) => raw,
    };
    let (request_id, hs) = match decode_client(raw) {
        Err(e) => return Err(refuse(ErrorCode::MalformedFrame, e.to_string())),
        Ok(pb::ClientFrame {
            request_id,
            body: Some(pb::client_frame::Body::Handshake(h)),
        }) => (request_id, h),
        Ok(_) => {
            let msg = "the first frame must be a handshake".to_string();
            return Err(refuse(ErrorCode::HandshakeRequired, msg));
        }
    };
    frames.set_max_frame(limits.max_frame());
    if hs.protocol_version != PROTOCOL_VERSION {
        let msg = format!(
            "protocol version {} is not supported; this broker speaks {PROTOCOL_VERSION}",
            hs.protocol_version
        );
        return Err(refuse(ErrorCode::UnsupportedVersion, msg));
    }
    let namespace = if hs.namespace.is_empty() {
        "/".to_string()
    } else {
        hs.namespace
    };
    check_namespace(&namespace)
        .and_then(|()| match hs.client_id.is_empty() {
            true => Ok(()),
            false => check_name("client id", &hs.client_id),
        })
        .and_then(|()| match hs.client_name.is_empty() {
            true => Ok(()),
            false => check_name("client name", &hs.client_name),
        })
        .map_err(|e| refuse(ErrorCode::InvalidName, e.to_string()))?;
    let Some(tenant) = tenants.get(&namespace) else {
        let msg = format!("there is no namespace {namespace}");
        return Err(refuse(ErrorCode::NotFound, msg));
    };
    let peer_text = peer.to_string();
    let mut setup = SessionSetup::default();
    for hook in tenant.chain() {
        let mut ctx = ConnectCtx {
            tenant: &tenant,
            token: &hs.token,
            client_id: (!hs.client_id.is_empty()).then_some(hs.client_id.as_str()),
            client_name: &hs.client_name,
            peer: &peer_text,
            setup: &mut setup,
        };
        if let Some(error) = hook.connect(&mut ctx).await.into_error() {
            info!(namespace = %namespace, %peer, hook = hook.name(), "connection refused by middleware");
            return Err(Some(error));
        }
    }

    let id = Uuid::now_v7();
    let info = Arc::new(SessionInfo {
        id,
        id_bytes: bytes::Bytes::copy_from_slice(id.as_bytes()),
        namespace: Arc::from(namespace),
        client_id: (!hs.client_id.is_empty()).then(|| Arc::from(hs.client_id)),
        client_name: hs.client_name,
        peer: peer_text,
        transport,
        tenant,
        grant: setup.grant.unwrap_or_default(),
        attributes: setup.attributes,
        rooms: SessionRooms::default(),
    });
    let queue = reply_slots(limits, broker.shards()) + limits.max_queued_deliveries as usize;
    let (tx, rx) = mpsc::channel(queue);
    let blocked = Arc::new(AtomicBool::new(false));
    let kill = CancellationToken::new();
    let resumed = match broker.register(&info, &tx, &blocked, &kill).await {
        Ok(Some(resumed)) => resumed,
        Ok(None) => {
            let msg = format!("namespace {} was deleted", info.namespace);
            return Err(refuse(ErrorCode::NotFound, msg));
        }
        Err(_) => {
            let msg = "the broker is shutting down".to_string();
            return Err(refuse(ErrorCode::ShuttingDown, msg));
        }
    };
    info!(
        namespace = %info.namespace,
        session = %info.id,
        peer = %info.peer,
        transport = info.transport.as_str(),
        client_id = info.client_id.as_deref().unwrap_or(""),
        client_name = %info.client_name,
        resumed,
        "client connected"
    );
    Ok(Admitted {
        request_id,
        info,
        resumed,
        tx,
        rx,
        blocked,
        kill,
        holds: setup.holds,
    })
}

/// A session's budgets for requests awaiting a reply: their count and their
/// bytes. Spent budget stops the reader (TCP then slows the client).
struct Budget {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

/// Reads and dispatches requests. Returns true if it stopped for shutdown.
#[allow(clippy::too_many_arguments)]
async fn read_loop<S: FrameSource>(
    frames: &mut S,
    tx: &mpsc::Sender<Outbound>,
    budget: &Budget,
    broker: &BrokerHandle,
    info: &Arc<SessionInfo>,
    config: &Config,
    metrics: &crate::metrics::Metrics,
    kill: &CancellationToken,
    shutdown: &CancellationToken,
) -> bool {
    let limits = &config.limits;
    let fatal = |code: ErrorCode, msg: String| Outbound::Reply {
        frame: Box::new(error_frame(0, code, msg)),
        permit: None,
    };
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return true,
            _ = kill.cancelled() => return false,
            r = timeout(limits.idle_timeout(), frames.next_frame()) => r,
        };
        let raw = match next {
            Err(_) => {
                let msg = format!("nothing received for {} ms", limits.idle_timeout_ms);
                let _ = tx.try_send(fatal(ErrorCode::IdleTimeout, msg));
                return false;
            }
            Ok(None) => return false,
            Ok(Some(Err(e @ (FrameError::TooLarge { .. } | FrameError::Oversized { .. })))) => {
                let _ = tx.try_send(fatal(ErrorCode::FrameTooLarge, e.to_string()));
                return false;
            }
            Ok(Some(Err(e @ FrameError::Transport(_)))) => {
                let _ = tx.try_send(fatal(ErrorCode::MalformedFrame, e.to_string()));
                return false;
            }
            Ok(Some(Err(e))) => {
                debug!(session = %info.id, error = %e, "read failed");
                return false;
            }
            Ok(Some(Ok(raw))) => raw,
        };
        let frame_len = u32::try_from(raw.len()).unwrap_or(u32::MAX);
        let frame = match decode_client(raw) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.try_send(fatal(ErrorCode::MalformedFrame, e.to_string()));
                return false;
            }
        };
        let acquire = async {
            let count = budget.requests.clone().acquire_owned().await?;
            let bytes = budget.bytes.clone().acquire_many_owned(frame_len).await?;
            Ok::<_, tokio::sync::AcquireError>(RequestSlot::new(count, bytes))
        };
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return true,
            _ = kill.cancelled() => return false,
            p = acquire => match p {
                Ok(p) => p,
                Err(_) => return false,
            },
        };
        let request_id = frame.request_id;
        let admin = info.tenant.is_admin();
        use pb::client_frame::Body;
        let checked: Result<Request, BrokerError> = match frame.body {
            None => Err(BrokerError::InvalidRequest("frame has no request".into())),
            Some(Body::Handshake(_)) => Err(BrokerError::InvalidRequest(
                "the handshake is already done".into(),
            )),
            Some(Body::Ping(p)) => {
                let frame = pb::ServerFrame {
                    request_id,
                    body: Some(pb::server_frame::Body::Pong(pb::Pong { nonce: p.nonce })),
                };
                let _ = tx.try_send(Outbound::Reply {
                    frame: Box::new(frame),
                    permit: Some(permit),
                });
                continue;
            }
            Some(Body::Admin(a)) if admin => broker::admin::check(a).map(Request::Admin),
            Some(Body::Admin(_)) => Err(BrokerError::AdminOnly),
            Some(_) if admin => Err(BrokerError::AdminHasNoRooms),
            Some(Body::Join(j)) => match broker::join::check(j, limits) {
                Ok(req) => join_hooks(info, &req).await.map(|()| Request::Join(req)),
                Err(e) => Err(e),
            },
            Some(Body::Leave(l)) => broker::leave::check(l).map(Request::Leave),
            Some(Body::Publish(p)) => broker::publish::check(p, info, limits)
                .await
                .map(Request::Publish),
            Some(Body::Ack(a)) => broker::ack::check(a).map(Request::Ack),
            Some(Body::Nack(n)) => broker::nack::check(n).map(Request::Nack),
            Some(Body::InProgress(p)) => broker::in_progress::check(p).map(Request::InProgress),
            Some(Body::ListRooms(_)) => {
                // Every shard lists its own rooms.
                let Ok(rooms) = broker.list_rooms(&info.namespace).await else {
                    return true;
                };
                let frame = pb::ServerFrame {
                    request_id,
                    body: Some(broker::list_rooms::answer(rooms, config)),
                };
                let _ = tx.try_send(Outbound::Reply {
                    frame: Box::new(frame),
                    permit: Some(permit),
                });
                continue;
            }
            Some(Body::Members(m)) => broker::members::check(m, info).map(Request::Members),
        };
        match checked {
            Ok(request) => {
                let to = route::To {
                    broker,
                    tx,
                    info,
                    config,
                    metrics,
                };
                if to.send(request_id, permit, request).await.is_err() {
                    return true;
                }
            }
            Err(error) => {
                // The session's one edge from a refusal to its frame.
                let error = pb::Error::from(error);
                info!(
                    session = %info.id,
                    request_id,
                    code = error.name,
                    message = %error.message,
                    "request refused"
                );
                let frame = pb::ServerFrame {
                    request_id,
                    body: Some(pb::server_frame::Body::Error(error)),
                };
                let _ = tx.try_send(Outbound::Reply {
                    frame: Box::new(frame),
                    permit: Some(permit),
                });
            }
        }
    }
}

/// Runs the namespace's join hooks.
async fn join_hooks(info: &SessionInfo, req: &broker::join::JoinReq) -> Result<(), BrokerError> {
    let tenant = info.tenant.clone();
    for hook in tenant.chain() {
        let ctx = JoinCtx {
            tenant: &tenant,
            session: info,
            room: &req.room,
            subscription: &req.label,
        };
        if let Some(error) = BrokerError::refused_by(hook.join(&ctx).await) {
            return Err(error);
        }
    }
    Ok(())
}

/// Why the writer stopped writing to its socket.
enum WriteFailure {
    /// The socket failed or closed.
    Broken,
    /// No progress within the write timeout: the client is not reading.
    Stalled,
}

/// Writes all of `wire` and flushes it. The deadline `limit` is for
/// progress: each write must move some bytes within it, however long the
/// whole buffer takes.
async fn write_wire<W: AsyncWrite + Unpin>(
    socket: &mut W,
    wire: &[u8],
    limit: std::time::Duration,
) -> Result<(), WriteFailure> {
    let mut written = 0;
    while written < wire.len() {
        let chunk = wire.get(written..).unwrap_or_default();
        match timeout(limit, socket.write(chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(WriteFailure::Broken),
            Ok(Ok(n)) => written += n,
            Err(_) => return Err(WriteFailure::Stalled),
        }
    }
    // TLS keeps encrypted bytes it could not write yet; TCP has none.
    match timeout(limit, socket.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteFailure::Broken),
        Err(_) => Err(WriteFailure::Stalled),
    }
}

/// Encodes queued frames in batches and writes them until the queue closes
/// or the session is killed.
#[allow(clippy::too_many_arguments)]
async fn write_loop<W: AsyncWrite + Unpin, F: Framing>(
    mut socket: W,
    mut framing: F,
    mut rx: mpsc::Receiver<Outbound>,
    blocked: Arc<AtomicBool>,
    broker: BrokerHandle,
    kill: CancellationToken,
    session: Uuid,
    config: Arc<Config>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let limits = &config.limits;
    let max_frame = limits.max_frame();
    // Allocated on first use and shrunk after bursts, so an idle connection
    // holds no write buffer.
    let mut buf = BytesMut::new();
    let mut permits = Vec::new();
    let mut splits = split::Splits::default();
    let mut closing = false;
    // The fatal error sent, if any: the transport may say it when closing.
    let mut close_reason = CloseReason::Normal;
    // Whether the socket still takes bytes (a close frame is worth sending).
    let mut writable = true;
    'outer: loop {
        let first = tokio::select! {
            _ = kill.cancelled() => break,
            // Control data the transport owes (a WebSocket pong): write an
            // empty batch, which carries it.
            _ = framing.control_pending() => None,
            o = rx.recv() => match o {
                Some(o) => Some(o),
                None => break,
            },
        };
        let mut next = first;
        while let Some(out) = next.take() {
            // The parts of a split publish are answered as one.
            let out = match out {
                Outbound::Expect {
                    request_id,
                    parts,
                    rooms,
                    permit,
                } => {
                    splits.expect(request_id, parts, rooms, permit);
                    None
                }
                Outbound::Reply {
                    frame,
                    permit: Some(_),
                } if splits.waits_for(frame.request_id)
                    && matches!(frame.body, Some(pb::server_frame::Body::Error(_))) =>
                {
                    match splits.take(frame.request_id, split::Answer::Error(frame)) {
                        split::Taken::Done(frame, slot) => Some(Outbound::Reply {
                            frame,
                            permit: Some(slot),
                        }),
                        split::Taken::Held | split::Taken::NotSplit => None,
                    }
                }
                Outbound::Confirm {
                    request_id,
                    seqs,
                    duplicate,
                    durability,
                    permit,
                } if splits.waits_for(request_id) => {
                    let answer = split::Answer::Confirm {
                        seqs: &seqs,
                        duplicate,
                        durability,
                    };
                    match splits.take(request_id, answer) {
                        split::Taken::Done(frame, slot) => {
                            permits.push(permit);
                            Some(Outbound::Reply {
                                frame,
                                permit: Some(slot),
                            })
                        }
                        split::Taken::Held => {
                            permits.push(permit);
                            None
                        }
                        split::Taken::NotSplit => Some(Outbound::Confirm {
                            request_id,
                            seqs,
                            duplicate,
                            durability,
                            permit,
                        }),
                    }
                }
                other => Some(other),
            };
            match out {
                None => {}
                Some(Outbound::Expect { .. }) => {}
                Some(Outbound::Reply { frame, permit }) => {
                    if let Some(pb::server_frame::Body::Error(e)) = &frame.body {
                        metrics.error_sent(e.code);
                        if e.fatal {
                            closing = true;
                            if let Some(code) = e.error_code() {
                                close_reason = CloseReason::Error(code);
                            }
                        }
                    }
                    if let Err(e) = encode_frame(&frame, max_frame, &mut buf) {
                        warn!(session = %session, error = %e, "reply not sent");
                    }
                    permits.extend(permit);
                }
                Some(Outbound::Confirm {
                    request_id,
                    seqs,
                    duplicate,
                    durability,
                    permit,
                }) => {
                    let frame = broker::publish::ok_frame(request_id, &seqs, duplicate, durability);
                    if let Err(e) = encode_frame(&frame, max_frame, &mut buf) {
                        warn!(session = %session, error = %e, "confirmation not sent");
                    }
                    permits.push(permit);
                }
                Some(Outbound::Delivery {
                    room,
                    label,
                    attempt,
                    redelivered,
                    volatile,
                    msg,
                }) => {
                    let head = DeliveryHead {
                        room: &room,
                        subscription: &label,
                        attempt,
                        redelivered,
                        volatile,
                    };
                    if let Err(e) =
                        encode_delivery_frame(head, msg.seq, &msg.encoded, max_frame, &mut buf)
                    {
                        warn!(session = %session, error = %e, "delivery not sent");
                    }
                }
            }
            if closing || buf.len() >= WRITE_BATCH_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        // The deadline is for progress: each write must move some bytes
        // within it, however long the whole buffer takes.
        let wire = framing.wire(&buf);
        if let Err(failure) = write_wire(&mut socket, wire, limits.write_timeout()).await {
            match failure {
                WriteFailure::Broken => debug!(session = %session, "write failed; closing"),
                WriteFailure::Stalled => {
                    warn!(
                        session = %session,
                        write_timeout_ms = limits.write_timeout_ms,
                        "client is not reading; disconnecting (slow consumer)"
                    );
                    metrics.slow_consumer_disconnects.inc();
                }
            }
            writable = false;
            kill.cancel();
            break 'outer;
        }
        if buf.capacity() > 2 * WRITE_BATCH_BYTES {
            buf = BytesMut::new();
        } else {
            buf.clear();
        }
        permits.clear();
        if closing {
            kill.cancel();
            break;
        }
        if blocked.swap(false, Ordering::SeqCst) {
            let _ = broker.writable(session).await;
        }
    }
    if writable {
        if let Some(close) = framing.closing(close_reason) {
            let _ = timeout(limits.write_timeout(), socket.write_all(&close)).await;
        }
    }
    let _ = timeout(limits.write_timeout(), socket.shutdown()).await;
}

/// Answers a connection that failed its handshake with an error, then closes
/// after a short drain of what the client sent: closing a socket with unread
/// input makes the kernel send a reset, which can destroy the error frame
/// before the client reads it.
async fn refuse<W: AsyncWrite + Unpin, F: Framing, S: FrameSource>(
    socket: &mut W,
    framing: &mut F,
    input: &mut S,
    mut error: pb::Error,
    config: &Config,
) {
    info!(code = error.name, message = %error.message, "connection refused");
    error.fatal = true;
    let code = error.error_code().unwrap_or(ErrorCode::Internal);
    let frame = pb::ServerFrame {
        request_id: 0,
        body: Some(pb::server_frame::Body::Error(error)),
    };
    let mut buf = BytesMut::new();
    let write_timeout = config.limits.write_timeout();
    if encode_frame(&frame, config.limits.max_frame(), &mut buf).is_ok() {
        let wire = framing.wire(&buf);
        let _ = timeout(write_timeout, socket.write_all(wire)).await;
    }
    if let Some(close) = framing.closing(CloseReason::Error(code)) {
        let _ = timeout(write_timeout, socket.write_all(&close)).await;
    }
    let _ = timeout(write_timeout, socket.shutdown()).await;
    input.linger().await;
}
