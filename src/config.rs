//! Broker configuration, in layers: built-in defaults, then a TOML file, then
//! `ROOMQ_*` environment variables, then command-line flags (applied by
//! `main`). [`Config::validate`] reports every problem it finds as an error;
//! nothing here panics.
//!
//! The environment variable for a setting is `ROOMQ_` followed by its section
//! and key in upper case: `limits.max_frame_bytes` is
//! `ROOMQ_LIMITS_MAX_FRAME_BYTES`, the top-level `listen` is `ROOMQ_LISTEN`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The commented default configuration, printed by `roomqd print-config`.
/// A unit test checks that it parses to [`Config::default`].
pub const DEFAULT_TOML: &str = include_str!("../roomq.example.toml");

/// Everything the broker can be configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the broker listens on.
    pub listen: SocketAddr,
    /// Directory holding the sled database; created if missing.
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub storage: StorageConfig,
    /// How the broker's rooms are spread over actors.
    pub broker: BrokerConfig,
    /// Tenants, by namespace path. `/` is declared open by default; a
    /// namespace not declared here (nor created through `/admin`) is
    /// refused at the handshake.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Credentials of the `/admin` namespace.
    pub admin: AdminConfig,
    pub tls: TlsConfig,
    pub http: HttpConfig,
    pub metrics: MetricsConfig,
    /// The NATS JetStream engine's connection and layout, used when
    /// `storage.engine = "jetstream"`.
    pub jetstream: JetStreamConfig,
}

/// One tenant (`[namespaces."/orders"]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceConfig {
    /// Sessions may connect without a token and may publish and subscribe
    /// everywhere in the namespace. A token, if one is given, must still be
    /// valid.
    pub open: bool,
    /// `sync`: a publish is confirmed after a flush covers it. `batched`:
    /// confirmed once accepted, flushed with the next commit.
    pub durability: DurabilityMode,
    /// A join or publish naming a room that does not exist creates it.
    /// Otherwise rooms are created through `/admin` only.
    pub create_rooms: bool,
    pub quotas: Quotas,
    /// Credentials; several may be valid at once, so they can be rotated.
    pub tokens: Vec<TokenConfig>,
    /// How much of each room's log is kept; the first rule whose `rooms`
    /// pattern matches a room applies to it. None: everything is kept
    /// until a member-independent purge.
    pub retention: Vec<RetentionRule>,
}

/// `[[namespaces."/x".retention]]`: limits on what a room keeps. Older
/// messages are deleted in the background (see `storage.retention_interval_ms`)
/// whether or not members have read them; a durable member left behind is
/// told with a gap notice. 0 = no limit of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionRule {
    /// Room pattern (`*` = any run of characters).
    pub rooms: String,
    /// Most messages kept.
    pub max_messages: u64,
    /// Most message bytes kept.
    pub max_bytes: u64,
    /// Messages older than this are deleted.
    pub max_age_ms: u64,
}

/// When a publish is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    #[default]
    Sync,
    Batched,
}

impl From<DurabilityMode> for roomq_wire::pb::Durability {
    fn from(d: DurabilityMode) -> Self {
        match d {
            DurabilityMode::Sync => roomq_wire::pb::Durability::Sync,
            DurabilityMode::Batched => roomq_wire::pb::Durability::Batched,
        }
    }
}

/// What one tenant may use. 0 means no limit for the settings that say so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Sessions connected at once (0 = only the broker-wide cap).
    pub max_connections: u32,
    /// Rooms that may exist.
    pub max_rooms: u32,
    /// Bytes of stored messages (0 = no limit).
    pub max_stored_bytes: u64,
    /// Publishes per second, refilled continuously (0 = no limit). A
    /// publish to several rooms counts once per room.
    pub publish_rate: u32,
    /// Publishes allowed in a burst above the rate (at least 1 when a rate
    /// is set).
    pub publish_burst: u32,
    /// Largest message payload plus headers, in bytes (0 = only the frame
    /// limit).
    pub max_message_bytes: u32,
}

/// A credential of a namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Names the token in logs and in `/admin` (not secret).
    pub name: String,
    /// `sha256:` and the hex SHA-256 of the token (`roomqd token` makes
    /// one). The token itself is never stored.
    pub hash: String,
    /// Room-name patterns this token may publish to (`*` matches any run
    /// of characters). Default: every room.
    #[serde(default = "every_room")]
    pub publish: Vec<String>,
    /// Room-name patterns this token may join. Default: every room.
    #[serde(default = "every_room")]
    pub subscribe: Vec<String>,
}

fn every_room() -> Vec<String> {
    vec!["*".to_string()]
}

/// `[admin]`: who may use the `/admin` namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Tokens of the `/admin` namespace (their `publish`/`subscribe`
    /// patterns are not used). None by default: `/admin` is closed.
    pub tokens: Vec<TokenConfig>,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            open: false,
            durability: DurabilityMode::Sync,
            create_rooms: true,
            quotas: Quotas::default(),
            tokens: Vec::new(),
            retention: Vec::new(),
        }
    }
}

impl NamespaceConfig {
    /// The built-in `/`: open, so a first run needs no credentials.
    pub fn open_default() -> Self {
        NamespaceConfig {
            open: true,
            ..NamespaceConfig::default()
        }
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_connections: 0,
            max_rooms: 100_000,
            max_stored_bytes: 0,
            publish_rate: 0,
            publish_burst: 0,
            max_message_bytes: 0,
        }
    }
}

/// Limits that protect the broker from clients (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest frame accepted or sent, length prefix excluded.
    pub max_frame_bytes: u32,
    /// Time a new connection has to send its handshake.
    pub handshake_timeout_ms: u64,
    /// Largest first frame (the handshake) accepted, so that a connection
    /// that has not authenticated cannot make the broker buffer a full
    /// frame.
    pub max_handshake_bytes: u32,
    /// A connection that sends nothing (not even a ping) for this long is
    /// closed.
    pub idle_timeout_ms: u64,
    /// A connection whose socket accepts no bytes for this long is closed;
    /// its durable memberships keep everything for its return.
    pub write_timeout_ms: u64,
    /// Connections served at once; more are refused with an error.
    pub max_connections: u32,
    /// Requests of one connection awaiting their reply. When reached, the
    /// broker stops reading from that connection until replies go out.
    pub max_pending_requests: u32,
    /// Bytes of the requests of one connection awaiting their reply (a
    /// publish holds its bytes until it is stored). When reached, the broker
    /// stops reading from that connection until replies go out.
    pub max_pending_bytes: u32,
    /// Deliveries queued for one connection's socket. When reached, the
    /// broker stops handing that connection new deliveries until it drains.
    pub max_queued_deliveries: u32,
    /// Upper bound and default for a member's unacknowledged deliveries.
    pub max_in_flight: u32,
    /// Default time a delivery may stay unacknowledged before redelivery.
    pub ack_timeout_ms: u64,
    /// How long a dedup id is remembered.
    pub dedup_window_ms: u64,
    /// Most dedup ids remembered at once (0 = no limit); beyond it the
    /// oldest are forgotten before their window ends.
    pub max_dedup_ids: u64,
    /// Rooms named by one publish.
    pub max_rooms_per_publish: u32,
    /// Headers on one message.
    pub max_headers: u32,
    /// Memberships one connection may hold.
    pub max_memberships_per_session: u32,
    /// Default for a join's `max_deliveries`: deliveries of one message to
    /// a member before it goes to the dead-letter room (0 = unlimited).
    pub max_deliveries: u32,
    /// Furthest ahead a publish may schedule its delivery (`deliver_at_ms`,
    /// `delay_ms`).
    pub max_schedule_ms: u64,
    /// Entries in a join's `backoff_ms` list.
    pub max_backoff_steps: u32,
}

/// The broker's actors. The default, `shards = 0`, is one per core.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Shards: actors that each own a part of the rooms (placed by a hash
    /// of the namespace and the room's base name). 0 = one per available
    /// core.
    pub shards: u32,
}

/// Most shards a broker may be configured with.
pub const MAX_SHARDS: u32 = 1024;

impl BrokerConfig {
    /// How many shards to run: `shards`, or one per available core.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        }
    }
}

/// Storage tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The storage engine. `"sled"` (the default, and the only one so far)
    /// stores everything in the data directory.
    pub engine: crate::storage::Engine,
    /// sled's page cache. sled's own default is 1 GiB; we set it explicitly.
    pub cache_bytes: u64,
    /// Recently stored messages kept in memory per room for fast delivery.
    pub room_cache_messages: u32,
    /// Byte bound of the same per-room cache.
    pub room_cache_bytes: u64,
    /// Acks are written to disk at most this often (they ride along with
    /// publishes sooner). A crash may lose the acks of this last interval,
    /// which causes redelivery, never loss.
    pub cursor_sync_interval_ms: u64,
    /// A commit (write + flush) that has not finished after this long is
    /// treated as a storage failure: the broker stops (fail-stop) instead
    /// of hanging with every publish unconfirmed.
    pub commit_timeout_ms: u64,
    /// How often retention rules are applied.
    pub retention_interval_ms: u64,
    /// Most reads of stored messages (those no longer in a room's cache:
    /// replays, redeliveries of old messages) running at once. More wait
    /// in order.
    pub max_reads_in_flight: u32,
    /// How long after a failed read of stored messages it is tried again
    /// (ms). The members that needed it wait meanwhile; nothing is skipped.
    pub read_retry_ms: u64,
}

/// TLS for client connections: on when both files are set. An empty path
/// means "not set" (rather than an `Option`), so that the keys appear in the
/// defaults and get their `ROOMQ_TLS_*` variables like every other setting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the broker's certificate chain, its own certificate
    /// first.
    pub cert_path: PathBuf,
    /// PEM file with the private key of that certificate.
    pub key_path: PathBuf,
}

/// `[http]`: the HTTP listener beside the TCP one, serving the WebSocket
/// endpoint `/ws`, `/healthz`, `/readyz` and the web page at `/`. It uses the
/// `[tls]` certificate when TLS is on (HTTPS and WSS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP listener; empty turns it off. A string rather
    /// than an address so that `ROOMQ_HTTP_LISTEN=""` can turn it off.
    pub listen: String,
    /// Directory whose files are served instead of the embedded page
    /// (empty: the embedded page). No directory listings; paths that leave
    /// the directory are refused.
    pub static_dir: PathBuf,
    /// Origins whose pages may open a WebSocket (`scheme://host[:port]`; a
    /// port of `*` matches any port; `*` alone allows every origin). Pages
    /// this listener served when reached by an IP address or `localhost` are
    /// always allowed (a DNS name could be rebound, so a listener reached by
    /// one lists its origin here), and so are clients that send no `Origin`
    /// (programs, not browsers).
    pub allowed_origins: Vec<String>,
    /// Largest request head (request line and headers) accepted, in bytes;
    /// at least 8192.
    pub max_header_bytes: u32,
    /// Most WebSocket frames one message may be split into.
    pub max_ws_fragments: u32,
    /// HTTP connections accepted beyond `limits.max_connections` for
    /// `/healthz` and `/readyz` only, so that a full broker does not look
    /// dead to its health checks.
    pub max_probe_connections: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:7421".to_string(),
            static_dir: PathBuf::new(),
            allowed_origins: [
                "http://localhost:*",
                "http://127.0.0.1:*",
                "http://[::1]:*",
                "https://localhost:*",
                "https://127.0.0.1:*",
                "https://[::1]:*",
            ]
            .map(String::from)
            .to_vec(),
            max_header_bytes: 16 * 1024,
            max_ws_fragments: 128,
            max_probe_connections: 16,
        }
    }
}

/// `/metrics` and the figures behind it (`[metrics]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` and count per-message figures. Off: `/metrics`
    /// answers 404 and the per-message counters and histograms are not
    /// touched (`roomq stats` then shows zeros for them).
    pub enabled: bool,
    /// A bearer token `/metrics` requires (`Authorization: Bearer ...`).
    /// Empty: no token, and then only loopback peers may scrape.
    pub token: String,
    /// Rooms `roomq_room_backlog_messages` shows, those with the largest
    /// backlog at scrape time.
    pub max_room_series: u32,
    /// Namespaces with a `namespace` label value of their own; the rest
    /// share `_other`.
    pub max_namespace_series: u32,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            token: String::new(),
            max_room_series: 100,
            max_namespace_series: 100,
        }
    }
}

/// Where and how the JetStream engine stores rooms (`[jetstream]`, read
/// only with `storage.engine = "jetstream"`; docs/cluster.md). Empty
/// strings mean "not set", as in `[tls]`, so that every key has its
/// `ROOMQ_JETSTREAM_*` variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// The NATS servers, comma-separated (`nats://host:port` or
    /// `tls://host:port`). List every server of the NATS cluster.
    pub urls: String,
    /// Prefix of every stream, bucket and subject roomq uses, so that two
    /// brokers can share one NATS account: `[a-z][a-z0-9_]{0,15}`.
    pub prefix: String,
    /// Replicas of every stream and bucket roomq creates: 1, 3 or 5. An
    /// existing stream keeps the replicas it was created with.
    pub replicas: u32,
    /// A NATS `.creds` file (JWT and nkey seed).
    pub credentials_file: PathBuf,
    /// A NATS token.
    pub token: String,
    /// A NATS user; needs `password`.
    pub user: String,
    pub password: String,
    /// A CA certificate (PEM) to verify the NATS servers with, for `tls://`.
    pub tls_ca_file: PathBuf,
    /// How long a connection attempt, and any one JetStream request, may
    /// take before it counts as failed (ms).
    pub request_timeout_ms: u64,
    /// Largest record: the bytes of one room's messages written in one
    /// commit. Must stay below the servers' `max_payload` minus 64 KiB of
    /// headers; checked at connect.
    pub record_max_bytes: u32,
    /// Most messages in one record.
    pub record_max_messages: u32,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            urls: "nats://127.0.0.1:4222".to_string(),
            prefix: "roomq".to_string(),
            replicas: 3,
            credentials_file: PathBuf::new(),
            token: String::new(),
            user: String::new(),
            password: String::new(),
            tls_ca_file: PathBuf::new(),
            request_timeout_ms: 5_000,
            record_max_bytes: 256 * 1024,
            record_max_messages: 1024,
        }
    }
}

impl JetStreamConfig {
    /// The server URLs, trimmed, empty entries dropped.
    pub fn url_list(&self) -> Vec<&str> {
        self.urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// Checks the section (only when the engine uses it).
    fn validate(&self) -> Result<(), String> {
        let urls = self.url_list();
        if urls.is_empty() {
            return Err("jetstream.urls must list at least one NATS server".into());
        }
        for url in &urls {
            let rest = url
                .strip_prefix("nats://")
                .or_else(|| url.strip_prefix("tls://"))
                .ok_or_else(|| {
                    format!("jetstream.urls: {url:?} must start with nats:// or tls://")
                })?;
            let host_port = rest.rsplit('@').next().unwrap_or(rest);
            let port_ok = host_port
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(format!("jetstream.urls: {url:?} needs a host and a port"));
            }
        }
        let mut chars = self.prefix.chars();
        let prefix_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && self.prefix.len() <= 16
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !prefix_ok {
            return Err(
                "jetstream.prefix must be a lowercase letter then up to 15 of a-z, 0-9 and _"
                    .into(),
            );
        }
        if ![1, 3, 5].contains(&self.replicas) {
            return Err("jetstream.replicas must be 1, 3 or 5".into());
        }
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        let ways = [
            set(&self.credentials_file),
            !self.token.is_empty(),
            !self.user.is_empty(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(
                "jetstream: set at most one of credentials_file, token and user/password".into(),
            );
        }
        if self.user.is_empty() != self.password.is_empty() {
            return Err("jetstream.user and jetstream.password must be set together".into());
        }
        if !(100..=MAX_DURATION_MS).contains(&self.request_timeout_ms) {
            return Err("jetstream.request_timeout_ms must be at least 100".into());
        }
        if !(64 * 1024..=16 * 1024 * 1024).contains(&self.record_max_bytes) {
            return Err("jetstream.record_max_bytes must be between 65536 and 16777216".into());
        }
        if !(1..=2048).contains(&self.record_max_messages) {
            return Err("jetstream.record_max_messages must be between 1 and 2048".into());
        }
        Ok(())
    }
}

impl HttpConfig {
    /// The listener's address, or `None` when it is off. Checked by
    /// [`Config::validate`].
    pub fn addr(&self) -> Option<SocketAddr> {
        let text = self.listen.trim();
        (!text.is_empty()).then(|| text.parse().ok()).flatten()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            data_dir: PathBuf::from("./roomq-data"),
            limits: Limits::default(),
            storage: StorageConfig::default(),
            broker: BrokerConfig::default(),
            namespaces: BTreeMap::from([("/".to_string(), NamespaceConfig::open_default())]),
            admin: AdminConfig::default(),
            tls: TlsConfig::default(),
            http: HttpConfig::default(),
            metrics: MetricsConfig::default(),
            jetstream: JetStreamConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1024 * 1024,
            handshake_timeout_ms: 5_000,
            max_handshake_bytes: 4_096,
            idle_timeout_ms: 60_000,
            write_timeout_ms: 10_000,
            max_connections: 10_000,
            max_pending_requests: 1_024,
            max_pending_bytes: 64 * 1024 * 1024,
            max_queued_deliveries: 1_024,
            max_in_flight: 1_000,
            ack_timeout_ms: 30_000,
            dedup_window_ms: 120_000,
            max_dedup_ids: 10_000_000,
            max_rooms_per_publish: 64,
            max_headers: 64,
            max_memberships_per_session: 1_024,
            max_deliveries: 20,
            max_schedule_ms: 90 * 24 * 3600 * 1000,
            max_backoff_steps: 32,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            engine: crate::storage::Engine::Sled,
            cache_bytes: 256 * 1024 * 1024,
            room_cache_messages: 8_192,
            room_cache_bytes: 8 * 1024 * 1024,
            cursor_sync_interval_ms: 100,
            commit_timeout_ms: 30_000,
            retention_interval_ms: 1_000,
            max_reads_in_flight: 16,
            read_retry_ms: 1_000,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {name}: {why}")]
    Env { name: String, why: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, overlaid with the TOML file (if any), overlaid with
    /// `ROOMQ_*` variables from `env`, then validated.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|source| ConfigError::Parse {
                        path: path.to_path_buf(),
                        source: Box::new(source),
                    })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let mut config: Config =
            table
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: file.map(|p| p.to_path_buf()).unwrap_or_default(),
                    source: Box::new(e),
                })?;
        // Declaring namespaces does not close `/`; declaring `/` does.
        config
            .namespaces
            .entry("/".to_string())
            .or_insert_with(NamespaceConfig::open_default);
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting, returning the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let s = &self.storage;
        let t = &self.tls;
        let h = &self.http;
        let m = &self.metrics;
        let checks: [(bool, &str); 27] = [
            (
                self.broker.shards <= MAX_SHARDS,
                "broker.shards must be at most 1024 (0 = one per available core)",
            ),
            (
                m.max_room_series <= 10_000,
                "metrics.max_room_series must be at most 10000",
            ),
            (
                (1..=10_000).contains(&m.max_namespace_series),
                "metrics.max_namespace_series must be between 1 and 10000",
            ),
            (
                h.listen.trim().is_empty() || h.addr().is_some(),
                "http.listen must be an address such as 127.0.0.1:7421, or empty to turn it off",
            ),
            (
                (8192..=1024 * 1024).contains(&h.max_header_bytes),
                "http.max_header_bytes must be between 8192 and 1048576",
            ),
            (h.max_ws_fragments > 0, "http.max_ws_fragments must be > 0"),
            (
                s.commit_timeout_ms > 0,
                "storage.commit_timeout_ms must be > 0",
            ),
            (
                l.max_pending_bytes >= l.max_frame_bytes,
                "limits.max_pending_bytes must be >= limits.max_frame_bytes",
            ),
            (
                (1024..=64 * 1024 * 1024).contains(&l.max_frame_bytes),
                "limits.max_frame_bytes must be between 1024 and 67108864",
            ),
            (
                l.handshake_timeout_ms > 0,
                "limits.handshake_timeout_ms must be > 0",
            ),
            (
                l.max_handshake_bytes >= 1024 && l.max_handshake_bytes <= l.max_frame_bytes,
                "limits.max_handshake_bytes must be between 1024 and limits.max_frame_bytes",
            ),
            (l.idle_timeout_ms > 0, "limits.idle_timeout_ms must be > 0"),
            (
                l.write_timeout_ms > 0,
                "limits.write_timeout_ms must be > 0",
            ),
            (l.max_connections > 0, "limits.max_connections must be > 0"),
            (
                l.max_pending_requests > 0,
                "limits.max_pending_requests must be > 0",
            ),
            (
                l.max_queued_deliveries > 0,
                "limits.max_queued_deliveries must be > 0",
            ),
            (l.max_in_flight > 0, "limits.max_in_flight must be > 0"),
            (l.ack_timeout_ms > 0, "limits.ack_timeout_ms must be > 0"),
            (
                l.max_rooms_per_publish > 0,
                "limits.max_rooms_per_publish must be > 0",
            ),
            (
                l.max_memberships_per_session > 0,
                "limits.max_memberships_per_session must be > 0",
            ),
            (
                s.cache_bytes >= 1024 * 1024,
                "storage.cache_bytes must be >= 1048576",
            ),
            (
                s.room_cache_messages > 0,
                "storage.room_cache_messages must be > 0",
            ),
            (
                s.cursor_sync_interval_ms > 0,
                "storage.cursor_sync_interval_ms must be > 0",
            ),
            (
                s.retention_interval_ms > 0,
                "storage.retention_interval_ms must be > 0",
            ),
            (
                s.max_reads_in_flight > 0,
                "storage.max_reads_in_flight must be > 0",
            ),
            (s.read_retry_ms > 0, "storage.read_retry_ms must be > 0"),
            (
                t.cert_path.as_os_str().is_empty() == t.key_path.as_os_str().is_empty(),
                "tls.cert_path and tls.key_path must be set together",
            ),
        ];
        // Durations are added to clock readings; an absurd value must be an
        // error here, not an overflow later.
        let durations = [
            ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
            ("limits.idle_timeout_ms", l.idle_timeout_ms),
            ("limits.write_timeout_ms", l.write_timeout_ms),
            ("limits.ack_timeout_ms", l.ack_timeout_ms),
            ("limits.dedup_window_ms", l.dedup_window_ms),
            ("storage.cursor_sync_interval_ms", s.cursor_sync_interval_ms),
            ("storage.commit_timeout_ms", s.commit_timeout_ms),
            ("storage.retention_interval_ms", s.retention_interval_ms),
            ("limits.max_schedule_ms", l.max_schedule_ms),
        ];
        for (name, ns) in &self.namespaces {
            crate::tenancy::validate_namespace(name, ns)
                .map_err(|e| ConfigError::Invalid(format!("namespace {name:?}: {e}")))?;
        }
        crate::tenancy::validate_admin(&self.admin.tokens)
            .map_err(|e| ConfigError::Invalid(format!("[admin]: {e}")))?;
        if s.engine == crate::storage::Engine::Jetstream {
            if !cfg!(feature = "cluster") {
                return Err(ConfigError::Invalid(
                    "storage.engine = \"jetstream\" needs a roomqd built with the cluster feature (cargo build --features cluster)".into(),
                ));
            }
            self.jetstream.validate().map_err(ConfigError::Invalid)?;
        }
        if let Some((name, _)) = durations.iter().find(|(_, ms)| *ms > MAX_DURATION_MS) {
            return Err(ConfigError::Invalid(format!(
                "{name} must be at most {MAX_DURATION_MS} (ten years)"
            )));
        }
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(ConfigError::Invalid((*why).to_string())),
            None => Ok(()),
        }
    }
}

impl Limits {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }
    pub fn dedup_window(&self) -> Duration {
        Duration::from_millis(self.dedup_window_ms)
    }
    pub fn max_frame(&self) -> usize {
        self.max_frame_bytes as usize
    }
}

impl TlsConfig {
    /// The certificate and key files, if TLS is on.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        (set(&self.cert_path) && set(&self.key_path))
            .then_some((self.cert_path.as_path(), self.key_path.as_path()))
    }
}

/// Longest duration any setting may have: ten years, in ms.
pub const MAX_DURATION_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// `ROOMQ_*` variables that are read elsewhere, not settings.
const NOT_SETTINGS: [&str; 6] = [
    "ROOMQ_CONFIG",
    "ROOMQ_ADDR",
    "ROOMQ_LOG",
    "ROOMQ_NAMESPACE",
    "ROOMQ_TOKEN",
    "ROOMQ_CLIENT_ID",
];

/// Overlays `ROOMQ_<SECTION>_<KEY>` variables onto `table`. The set of keys
/// comes from the defaults, so a new setting gets its variable for free.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = toml::Table::try_from(Config::default())
        .map_err(|e| ConfigError::Invalid(format!("cannot list settings: {e}")))?;
    let mut known = std::collections::HashMap::new();
    for (key, value) in &defaults {
        match value {
            toml::Value::Table(section) => {
                // Tables and lists (namespaces, tokens) come from the file.
                let scalars = section
                    .iter()
                    .filter(|(_, v)| !matches!(v, toml::Value::Table(_) | toml::Value::Array(_)))
                    .map(|(k, _)| k);
                for sub in scalars {
                    let name = format!("ROOMQ_{}_{}", key, sub).to_uppercase();
                    known.insert(name, (Some(key.clone()), sub.clone()));
                }
            }
            _ => {
                known.insert(format!("ROOMQ_{key}").to_uppercase(), (None, key.clone()));
            }
        }
    }
    for (name, raw) in env {
        let Some((section, key)) = known.get(&name) else {
            if name.starts_with("ROOMQ_") && !NOT_SETTINGS.contains(&name.as_str()) {
                // Not fatal: client tools share the prefix. But a typo in a
                // setting's name should not pass unnoticed.
                eprintln!("roomqd: ignoring {name}: not a setting");
            }
            continue;
        };
        let default_value = match section {
            Some(s) => defaults.get(s).and_then(|t| t.get(key)),
            None => defaults.get(key),
        };
        let value = match default_value {
            Some(toml::Value::Integer(_)) => {
                toml::Value::Integer(raw.trim().parse().map_err(|_| ConfigError::Env {
                    name: name.clone(),
                    why: format!("{raw:?} is not an integer"),
                })?)
            }
            Some(toml::Value::Boolean(_)) => {
                toml::Value::Boolean(raw.trim().parse().map_err(|_| ConfigError::Env {
                    name: name.clone(),
                    why: format!("{raw:?} is not true or false"),
                })?)
            }
            _ => toml::Value::String(raw),
        };
        let target = match section {
            Some(s) => match table
                .entry(s.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Invalid(format!("[{s}] must be a table")));
                }
            },
            None => &mut *table,
        };
        target.insert(key.clone(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_is_the_default() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn env_overrides_file_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[limits]\nmax_in_flight = 5\nack_timeout_ms = 7\n").unwrap();
        let env = vec![
            ("ROOMQ_LIMITS_MAX_IN_FLIGHT".to_string(), "9".to_string()),
            ("ROOMQ_LISTEN".to_string(), "127.0.0.1:9999".to_string()),
            ("ROOMQ_UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::load(Some(&path), env).unwrap();
        assert_eq!(c.limits.max_in_flight, 9);
        assert_eq!(c.limits.ack_timeout_ms, 7);
        assert_eq!(c.listen.port(), 9999);

        let env = vec![("ROOMQ_METRICS_ENABLED".to_string(), "false".to_string())];
        assert!(!Config::load(None, env).unwrap().metrics.enabled);
        let env = vec![("ROOMQ_METRICS_ENABLED".to_string(), "no".to_string())];
        assert!(Config::load(None, env).is_err());
        let env = vec![("ROOMQ_LIMITS_MAX_IN_FLIGHT".to_string(), "lots".to_string())];
        assert!(matches!(
            Config::load(None, env),
            Err(ConfigError::Env { .. })
        ));
        std::fs::write(&path, "[limits]\nmax_infligt = 5\n").unwrap();
        assert!(matches!(
            Config::load(Some(&path), vec![]),
            Err(ConfigError::Parse { .. })
        ));
        std::fs::write(
            &path,
            "[storage]\ncursor_sync_interval_ms = 99999999999999\n",
        )
        .unwrap();
        assert!(matches!(
            Config::load(Some(&path), vec![]),
            Err(ConfigError::Invalid(_))
        ));
        std::fs::write(&path, "[limits]\nmax_in_flight = 0\n").unwrap();
        assert!(matches!(
            Config::load(Some(&path), vec![]),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn namespaces_merge_with_the_open_root_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let hash = crate::tenancy::token::TokenHash::of("secret").to_text();
        std::fs::write(
            &path,
            format!(
                "[namespaces.\"/orders\"]\n[[namespaces.\"/orders\".tokens]]\nname = \"app\"\nhash = \"{hash}\"\npublish = [\"orders.*\"]\n"
            ),
        )
        .unwrap();
        let c = Config::load(Some(&path), vec![]).unwrap();
        assert!(c.namespaces["/"].open, "declaring /orders keeps / open");
        let orders = &c.namespaces["/orders"];
        assert!(!orders.open, "a declared namespace is closed by default");
        assert_eq!(orders.tokens[0].publish, vec!["orders.*".to_string()]);
        assert_eq!(orders.tokens[0].subscribe, vec!["*".to_string()]);

        std::fs::write(&path, "[namespaces.\"/\"]\n").unwrap();
        let c = Config::load(Some(&path), vec![]).unwrap();
        assert!(!c.namespaces["/"].open, "declaring / closes it");

        for bad in [
            "[namespaces.\"/admin\"]\n",
            "[namespaces.\"no-slash\"]\n",
            "[[namespaces.\"/x\".tokens]]\nname = \"a\"\nhash = \"sha256:00\"\n",
            "[namespaces.\"/x\"]\ndurability = \"eventually\"\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(Config::load(Some(&path), vec![]).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_needs_both_files() {
        assert_eq!(Config::default().tls.files(), None);
        let var = |key: &str, value: &str| (format!("ROOMQ_TLS_{key}"), value.to_string());
        let c = Config::load(
            None,
            vec![var("CERT_PATH", "c.pem"), var("KEY_PATH", "k.pem")],
        )
        .unwrap();
        assert_eq!(
            c.tls.files(),
            Some((Path::new("c.pem"), Path::new("k.pem")))
        );
        for only in ["CERT_PATH", "KEY_PATH"] {
            match Config::load(None, vec![var(only, "x.pem")]) {
                Err(ConfigError::Invalid(why)) => assert!(why.contains("together"), "{why}"),
                other => panic!("only {only} set: {other:?}"),
            }
        }
    }

    #[test]
    fn the_jetstream_engine_is_checked_only_when_chosen() {
        let var = |key: &str, value: &str| (format!("ROOMQ_JETSTREAM_{key}"), value.to_string());
        let engine = ("ROOMQ_STORAGE_ENGINE".to_string(), "jetstream".to_string());
        // With sled, a bad [jetstream] section is not read.
        assert!(Config::load(None, vec![var("REPLICAS", "2")]).is_ok());
        let load = |extra: Vec<(String, String)>| {
            let mut env = vec![engine.clone()];
            env.extend(extra);
            Config::load(None, env)
        };
        if !cfg!(feature = "cluster") {
            match load(vec![]) {
                Err(ConfigError::Invalid(why)) => assert!(why.contains("cluster feature"), "{why}"),
                other => panic!("jetstream without the feature: {other:?}"),
            }
            return;
        }
        let c = load(vec![var("URLS", "nats://a:4222, tls://b:4223")]).unwrap();
        assert_eq!(
            c.jetstream.url_list(),
            vec!["nats://a:4222", "tls://b:4223"]
        );
        let bad = [
            (vec![var("URLS", " , ")], "at least one"),
            (vec![var("URLS", "http://a:4222")], "nats://"),
            (vec![var("URLS", "nats://a")], "host and a port"),
            (vec![var("URLS", "nats://:4222")], "host and a port"),
            (vec![var("PREFIX", "Roomq")], "prefix"),
            (vec![var("PREFIX", "a.b")], "prefix"),
            (vec![var("PREFIX", "abcdefghijklmnopq")], "prefix"),
            (vec![var("REPLICAS", "2")], "replicas"),
            (
                vec![var("TOKEN", "t"), var("USER", "u"), var("PASSWORD", "p")],
                "at most one",
            ),
            (vec![var("USER", "u")], "together"),
            (vec![var("REQUEST_TIMEOUT_MS", "10")], "request_timeout_ms"),
            (vec![var("RECORD_MAX_BYTES", "1000")], "record_max_bytes"),
            (vec![var("RECORD_MAX_MESSAGES", "0")], "record_max_messages"),
        ];
        for (env, want) in bad {
            match load(env.clone()) {
                Err(ConfigError::Invalid(why)) => assert!(why.contains(want), "{env:?}: {why}"),
                other => panic!("{env:?} accepted: {other:?}"),
            }
        }
    }
}
