//! Hooks run on connect, join and publish, per namespace and in order, like
//! Socket.IO's `namespace.use()`. Each may allow the request or reject it
//! with a code and a reason; a publish hook may also add headers.
//!
//! The broker's own policies are middleware too, and run first:
//! [`Authenticate`] (tokens), [`Authorize`] (room patterns per token) and
//! [`QuotaGuard`] (connections, message size, publish rate).
//! Hooks run on the session's own task, never on the broker actor, so a
//! slow hook delays only its own connection.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use roomq_wire::ErrorCode;

use super::{pattern, Tenant};
use crate::metrics::Quota;
use crate::session::SessionInfo;

/// A hook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse with this code; the reason is sent to the client.
    Reject {
        code: ErrorCode,
        reason: String,
    },
    /// Refuse with `QUOTA_EXCEEDED`, naming the quota (the error's `quota`
    /// field, e.g. `publish_rate`) so that a client can tell one that clears
    /// by itself from one that does not.
    Quota {
        quota: &'static str,
        reason: String,
    },
}

impl Verdict {
    /// The error a refusal is answered with; `None` for `Allow`.
    pub fn into_error(self) -> Option<roomq_wire::pb::Error> {
        match self {
            Verdict::Allow => None,
            Verdict::Reject { code, reason } => Some(roomq_wire::pb::Error::new(code, reason)),
            Verdict::Quota { quota, reason } => {
                Some(roomq_wire::pb::Error::new(ErrorCode::QuotaExceeded, reason).with_quota(quota))
            }
        }
    }

    /// A rejection with `PERMISSION_DENIED`.
    pub fn deny(reason: impl Into<String>) -> Verdict {
        Verdict::Reject {
            code: ErrorCode::PermissionDenied,
            reason: reason.into(),
        }
    }
}

/// What a session was granted at connect: kept for its life.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// The token that authenticated the session, if any.
    pub token_name: Option<Arc<str>>,
    /// Room patterns the session may publish to.
    pub publish: Arc<[String]>,
    /// Room patterns the session may join.
    pub subscribe: Arc<[String]>,
}

impl Grant {
    /// Every room, both ways (an open namespace without a token).
    pub fn everything() -> Grant {
        let all: Arc<[String]> = Arc::from(vec!["*".to_string()]);
        Grant {
            token_name: None,
            publish: all.clone(),
            subscribe: all,
        }
    }
}

/// The session being set up by connect hooks.
#[derive(Default)]
pub struct SessionSetup {
    /// Set by [`Authenticate`]; a session without a grant may do nothing.
    pub grant: Option<Grant>,
    /// Free-form attributes a hook may attach for later hooks.
    pub attributes: BTreeMap<String, String>,
    /// Values held for the session's life and dropped when it ends (a
    /// connection-quota slot, say).
    pub holds: Vec<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for SessionSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSetup")
            .field("grant", &self.grant)
            .field("attributes", &self.attributes)
            .field("holds", &self.holds.len())
            .finish()
    }
}

/// A connection's handshake, before it becomes a session.
#[derive(Debug)]
pub struct ConnectCtx<'a> {
    pub tenant: &'a Tenant,
    pub token: &'a str,
    pub client_id: Option<&'a str>,
    pub client_name: &'a str,
    pub peer: &'a str,
    pub setup: &'a mut SessionSetup,
}

/// A join request.
#[derive(Debug)]
pub struct JoinCtx<'a> {
    pub tenant: &'a Tenant,
    pub session: &'a SessionInfo,
    pub room: &'a str,
    pub subscription: &'a str,
}

/// A publish request. Hooks may add or change headers.
#[derive(Debug)]
pub struct PublishCtx<'a> {
    pub tenant: &'a Tenant,
    pub session: &'a SessionInfo,
    pub rooms: &'a [String],
    pub event: &'a str,
    pub payload: &'a Bytes,
    pub headers: &'a mut BTreeMap<String, String>,
}

impl PublishCtx<'_> {
    /// Payload plus header bytes: what `max_message_bytes` limits.
    pub fn message_bytes(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.payload.len() + headers) as u64
    }
}

/// A per-namespace hook. Every method allows by default.
#[async_trait]
pub trait Middleware: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;

    async fn connect(&self, _ctx: &mut ConnectCtx<'_>) -> Verdict {
        Verdict::Allow
    }

    async fn join(&self, _ctx: &JoinCtx<'_>) -> Verdict {
        Verdict::Allow
    }

    async fn publish(&self, _ctx: &mut PublishCtx<'_>) -> Verdict {
        Verdict::Allow
    }
}

/// Checks the handshake's token against the namespace's tokens and grants
/// that token's permissions (or everything, in an open namespace without a
/// token).
#[derive(Debug)]
pub struct Authenticate;

#[async_trait]
impl Middleware for Authenticate {
    fn name(&self) -> &str {
        "authenticate"
    }

    async fn connect(&self, ctx: &mut ConnectCtx<'_>) -> Verdict {
        let policy = ctx.tenant.policy();
        if ctx.token.is_empty() {
            if policy.open {
                ctx.setup.grant = Some(Grant::everything());
                return Verdict::Allow;
            }
            return Verdict::Reject {
                code: ErrorCode::Unauthenticated,
                reason: format!("namespace {} needs a token", ctx.tenant.name),
            };
        }
        // Every token is compared, each in constant time.
        let mut found = None;
        for t in &policy.tokens {
            if t.hash.matches(ctx.token) && found.is_none() {
                found = Some(t);
            }
        }
        match found {
            Some(t) => {
                ctx.setup.grant = Some(Grant {
                    token_name: Some(t.name.clone()),
                    publish: t.publish.clone(),
                    subscribe: t.subscribe.clone(),
                });
                Verdict::Allow
            }
            None => Verdict::Reject {
                code: ErrorCode::Unauthenticated,
                reason: format!("the token is not valid for namespace {}", ctx.tenant.name),
            },
        }
    }
}

/// Applies the session's grant: joins need a matching `subscribe` pattern,
/// publishes a matching `publish` pattern for every room.
#[derive(Debug)]
pub struct Authorize;

#[async_trait]
impl Middleware for Authorize {
    fn name(&self) -> &str {
        "authorize"
    }

    async fn join(&self, ctx: &JoinCtx<'_>) -> Verdict {
        if pattern::any_matches(&ctx.session.grant.subscribe, ctx.room) {
            return Verdict::Allow;
        }
        Verdict::deny(format!("this session may not join room {:?}", ctx.room))
    }

    async fn publish(&self, ctx: &mut PublishCtx<'_>) -> Verdict {
        match ctx
            .rooms
            .iter()
            .find(|r| !pattern::any_matches(&ctx.session.grant.publish, r))
        {
            None => Verdict::Allow,
            Some(room) => Verdict::deny(format!("this session may not publish to room {room:?}")),
        }
    }
}

/// Enforces the namespace's quotas that a session can check on its own:
/// connections, message size and publish rate. (The room count and the
/// stored bytes depend on what other sessions did just before; the broker
/// actor enforces them.)
#[derive(Debug)]
pub struct QuotaGuard;

fn quota(quota: &'static str, reason: String) -> Verdict {
    Verdict::Quota { quota, reason }
}

#[async_trait]
impl Middleware for QuotaGuard {
    fn name(&self) -> &str {
        "quotas"
    }

    async fn connect(&self, ctx: &mut ConnectCtx<'_>) -> Verdict {
        let max = ctx.tenant.policy().quotas.max_connections;
        match ctx.tenant.usage.reserve_connection(max) {
            Some(slot) => {
                ctx.setup.holds.push(Box::new(slot));
                Verdict::Allow
            }
            None => {
                ctx.tenant.metrics.quota_refused(Quota::Connections);
                quota(
                    "max_connections",
                    format!(
                        "namespace {} has its maximum of {max} connections",
                        ctx.tenant.name
                    ),
                )
            }
        }
    }

    async fn publish(&self, ctx: &mut PublishCtx<'_>) -> Verdict {
        let policy = ctx.tenant.policy();
        let q = &policy.quotas;
        let size = ctx.message_bytes();
        if q.max_message_bytes > 0 && size > u64::from(q.max_message_bytes) {
            ctx.tenant.metrics.quota_refused(Quota::MessageBytes);
            return quota(
                "max_message_bytes",
                format!(
                    "message of {size} bytes; namespace {} allows {}",
                    ctx.tenant.name, q.max_message_bytes
                ),
            );
        }
        if !ctx.tenant.take_publish_tokens(q, ctx.rooms.len() as u32) {
            ctx.tenant.metrics.quota_refused(Quota::PublishRate);
            return quota(
                "publish_rate",
                format!(
                    "namespace {} is over its rate of {} publishes per second",
                    ctx.tenant.name, q.publish_rate
                ),
            );
        }
        Verdict::Allow
    }
}
