//! Routing a checked request to the shards, on the session's reader task.
//! A request about one room goes to the room's shard; a publish whose rooms
//! are all on one shard goes there whole (the common path: one hash per
//! room, no other cost); a publish to rooms on several shards is split into
//! one part per shard, each carrying the whole message (its `Extra` names
//! every room and except rule) and the same dedup id, and the writer merges
//! their answers (see `split.rs`). `/admin` requests go by operation: a
//! room's to its shard, namespace records and tokens to shard 0, and what
//! every shard answers for its own rooms is gathered here.

use std::sync::Arc;

use roomq_wire::pb;
use tokio::sync::mpsc;
use tracing::info;

use super::outbound::{Outbound, RequestSlot, SessionInfo};
use crate::broker::admin::AdminReq;
use crate::broker::publish::PublishReq;
use crate::broker::{BrokerError, BrokerGone, BrokerHandle, Command, Request};
use crate::config::Config;

/// Where a session's requests go.
pub(super) struct To<'a> {
    pub broker: &'a BrokerHandle,
    /// The session's own outbound queue.
    pub tx: &'a mpsc::Sender<Outbound>,
    pub info: &'a Arc<SessionInfo>,
    pub config: &'a Config,
    pub metrics: &'a crate::metrics::Metrics,
}

impl To<'_> {
    /// Sends `request` on its way. Fails only when the broker has stopped.
    pub async fn send(
        &self,
        request_id: u64,
        permit: RequestSlot,
        request: Request,
    ) -> Result<(), BrokerGone> {
        let shard = match &request {
            Request::Publish(_) | Request::Admin(_) => None,
            other => other.room().map(|room| self.shard(room)),
        };
        match request {
            Request::Publish(req) => self.publish(request_id, permit, req).await,
            Request::Admin(req) => self.admin(request_id, permit, req).await,
            other => {
                self.to_shard(shard.unwrap_or(0), request_id, permit, other)
                    .await
            }
        }
    }

    fn shard(&self, room: &str) -> usize {
        self.broker.shard_of(&self.info.namespace, room)
    }

    async fn to_shard(
        &self,
        shard: usize,
        request_id: u64,
        permit: RequestSlot,
        request: Request,
    ) -> Result<(), BrokerGone> {
        let cmd = Command::Request {
            session: self.info.id,
            request_id,
            permit,
            request,
        };
        self.broker.send_to(shard, cmd).await
    }

    /// A publish: whole to its rooms' shard, or split by shard.
    async fn publish(
        &self,
        request_id: u64,
        permit: RequestSlot,
        req: PublishReq,
    ) -> Result<(), BrokerGone> {
        let first = req.rooms.first().map_or(0, |room| self.shard(room));
        if self.broker.shards() == 1 || req.rooms.len() == 1 {
            return self
                .to_shard(first, request_id, permit, Request::Publish(req))
                .await;
        }
        // Rooms by shard, each part's in the publish's order.
        let mut parts: Vec<(usize, Vec<String>)> = Vec::new();
        for room in &req.rooms {
            let shard = self.shard(room);
            match parts.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, rooms)) => rooms.push(room.clone()),
                None => parts.push((shard, vec![room.clone()])),
            }
        }
        if parts.len() == 1 {
            return self
                .to_shard(first, request_id, permit, Request::Publish(req))
                .await;
        }
        let rooms: Arc<[Arc<str>]> = req.rooms.iter().map(|r| Arc::from(r.as_str())).collect();
        let expect = Outbound::Expect {
            request_id,
            parts: parts.len(),
            rooms,
            permit,
        };
        if self.tx.send(expect).await.is_err() {
            // The writer is gone: the session is ending.
            return Ok(());
        }
        for (shard, rooms) in parts {
            let part = Request::Publish(req.part(rooms));
            self.to_shard(shard, request_id, RequestSlot::none(), part)
                .await?;
        }
        Ok(())
    }

    /// An `/admin` request.
    async fn admin(
        &self,
        request_id: u64,
        permit: RequestSlot,
        req: AdminReq,
    ) -> Result<(), BrokerGone> {
        let gathered = matches!(
            req,
            AdminReq::Stats(..)
                | AdminReq::ListRooms(_)
                | AdminReq::Kick(_)
                | AdminReq::DeleteNamespace(_)
        );
        if !gathered {
            let shard = req
                .room()
                .map_or(0, |(ns, room)| self.broker.shard_of(ns, room));
            return self
                .to_shard(shard, request_id, permit, Request::Admin(req))
                .await;
        }
        let session = self.info.id;
        if !matches!(req, AdminReq::Stats(..)) {
            // (`roomq top` asks for stats every second.)
            info!(session = %session, request = ?req, "admin request");
        }
        let answer: Result<pb::AdminOk, BrokerError> = match req {
            AdminReq::Stats(max_rooms, order) => {
                let max_rooms = match max_rooms {
                    0 => self.metrics.max_room_series(),
                    n => n as usize,
                };
                let stats = self.broker.stats(max_rooms, order).await?;
                Ok(pb::AdminOk {
                    stats: Some(stats),
                    ..Default::default()
                })
            }
            AdminReq::ListRooms(namespace) => {
                let budget = self.config.limits.max_frame().saturating_sub(256);
                Ok(self.broker.admin_rooms(namespace, budget).await?)
            }
            AdminReq::Kick(id) => match self.broker.kick(id).await? {
                true => Ok(pb::AdminOk {
                    count: 1,
                    ..Default::default()
                }),
                false => Err(BrokerError::SessionNotFound(id)),
            },
            AdminReq::DeleteNamespace(name) => {
                self.broker
                    .delete_namespace(&name)
                    .await?
                    .map(|count| pb::AdminOk {
                        count,
                        ..Default::default()
                    })
            }
            // Sent to a shard above.
            other => Err(BrokerError::Internal(format!("not gathered: {other:?}"))),
        };
        let body = match answer {
            Ok(ok) => pb::server_frame::Body::AdminOk(ok),
            Err(e) => {
                let error = pb::Error::from(e);
                info!(session = %session, request_id, code = error.name, message = %error.message, "admin request refused");
                pb::server_frame::Body::Error(error)
            }
        };
        let frame = pb::ServerFrame {
            request_id,
            body: Some(body),
        };
        let _ = self.tx.try_send(Outbound::Reply {
            frame: Box::new(frame),
            permit: Some(permit),
        });
        Ok(())
    }
}
