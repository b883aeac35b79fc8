//! Prometheus metrics: one [`Metrics`] per broker, with its own registry,
//! served at `/metrics` on the HTTP listener (see [`crate::http`]).
//!
//! The per-message counters live in [`NamespaceMetrics`], resolved once per
//! namespace and held by its [`crate::tenancy::Tenant`], so counting a
//! message is an atomic add, never a label lookup. Gauges that describe the
//! broker's tables (rooms, members, sessions, room backlogs) are set from a
//! [`pb::BrokerStats`] snapshot that the broker actor takes when `/metrics`
//! is scraped; no other code writes them.
//!
//! Cardinality is bounded whatever clients do:
//! - `namespace`: the first `metrics.max_namespace_series` namespaces get
//!   their own value; later ones share [`OTHER_NAMESPACE`]. Namespaces are
//!   made by the config file and `/admin`, never by clients.
//! - `room` (only on `roomq_room_backlog_messages`): the
//!   `metrics.max_room_series` rooms with the largest backlog at scrape time.
//! - `transport`, `code`, `reason`, `quota`: fixed sets named in the code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

mod openmetrics;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use roomq_wire::{pb, ErrorCode};

/// The `namespace` label shared by namespaces beyond the cap.
pub const OTHER_NAMESPACE: &str = "_other";

/// Why a message was dead-lettered (the `reason` label): how its last
/// delivery came back.
#[derive(Debug, Clone, Copy)]
pub enum DeadReason {
    /// Its ack timeout ran out.
    AckTimeout,
    /// Its consumer left (disconnected, or left the room) holding it.
    ConsumerLeft,
    /// It was nacked.
    Nacked,
}

impl DeadReason {
    const ALL: [DeadReason; 3] = [
        DeadReason::AckTimeout,
        DeadReason::ConsumerLeft,
        DeadReason::Nacked,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DeadReason::AckTimeout => "ack_timeout",
            DeadReason::ConsumerLeft => "consumer_left",
            DeadReason::Nacked => "nacked",
        }
    }

    /// From the reason the room logic recorded with the last hand-back:
    /// its own words for a timeout or a departure, a client's for a nack.
    pub fn of(reason: Option<&str>) -> DeadReason {
        match reason {
            None | Some("ack timeout") => DeadReason::AckTimeout,
            Some("consumer left") => DeadReason::ConsumerLeft,
            Some(_) => DeadReason::Nacked,
        }
    }
}

/// Which quota refused a request (the `quota` label).
#[derive(Debug, Clone, Copy)]
pub enum Quota {
    Connections,
    MessageBytes,
    PublishRate,
    StoredBytes,
    Rooms,
    Memberships,
}

impl Quota {
    const ALL: [Quota; 6] = [
        Quota::Connections,
        Quota::MessageBytes,
        Quota::PublishRate,
        Quota::StoredBytes,
        Quota::Rooms,
        Quota::Memberships,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Quota::Connections => "connections",
            Quota::MessageBytes => "message_bytes",
            Quota::PublishRate => "publish_rate",
            Quota::StoredBytes => "stored_bytes",
            Quota::Rooms => "rooms",
            Quota::Memberships => "memberships",
        }
    }
}

/// One namespace's counters, resolved once (see the module doc).
#[derive(Debug)]
pub struct NamespaceMetrics {
    /// The label value: the namespace, or [`OTHER_NAMESPACE`].
    pub label: String,
    pub published: IntCounter,
    pub stored_bytes: IntCounter,
    pub duplicates: IntCounter,
    pub deliveries: IntCounter,
    pub redeliveries: IntCounter,
    pub acks: IntCounter,
    pub nacks: IntCounter,
    pub expired: IntCounter,
    /// By [`DeadReason`].
    dead: [IntCounter; 3],
    /// `roomq_quota_refusals_total` by quota (not by namespace).
    quota: [IntCounter; 6],
}

impl NamespaceMetrics {
    pub fn dead_lettered(&self, reason: DeadReason) {
        if let Some(c) = self.dead.get(reason as usize) {
            c.inc();
        }
    }

    /// Messages dead-lettered, whatever the reason.
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead.iter().map(IntCounter::get).sum()
    }

    /// Counts a request refused by `quota`.
    pub fn quota_refused(&self, quota: Quota) {
        if let Some(c) = self.quota.get(quota as usize) {
            c.inc();
        }
    }
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

/// Latency buckets from 50 µs to 10 s.
fn seconds_buckets() -> Vec<f64> {
    vec![
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 10.0,
    ]
}

/// Every metric of one broker.
pub struct Metrics {
    registry: Registry,
    /// Room and namespace gauges follow the snapshot only when enabled.
    pub enabled: bool,
    max_namespaces: usize,
    max_rooms: usize,
    namespaces: Mutex<HashMap<String, Arc<NamespaceMetrics>>>,
    per_namespace: [IntCounterVec; 8],
    dead_lettered: IntCounterVec,
    connections: IntGaugeVec,
    sessions: IntGaugeVec,
    rooms: IntGaugeVec,
    members: IntGaugeVec,
    room_backlog: IntGaugeVec,
    handshakes_refused: IntCounterVec,
    errors: IntCounterVec,
    quota_refusals: IntCounterVec,
    pub slow_consumer_disconnects: IntCounter,
    /// Counted by the dedup table itself, which holds a clone.
    pub dedup_evicted: IntCounter,
    dedup_ids: IntGauge,
    pub storage_bytes: IntGauge,
    pub commit_batch: Histogram,
    pub commit_flush: Histogram,
    pub publish_confirm: Histogram,
    pub delivery_lag: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with every metric, and the process collector on Linux.
    pub fn new(config: &crate::config::MetricsConfig) -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let ns = &["namespace"];
        let per_namespace = [
            counter_vec(
                &r,
                "roomq_messages_published_total",
                "Messages stored (one per room a publish names).",
                ns,
            )?,
            counter_vec(
                &r,
                "roomq_messages_stored_bytes_total",
                "Bytes of the messages stored.",
                ns,
            )?,
            counter_vec(
                &r,
                "roomq_publish_duplicates_total",
                "Publishes answered with the seqs of an earlier one (dedup id seen).",
                ns,
            )?,
            counter_vec(
                &r,
                "roomq_deliveries_total",
                "Deliveries handed to sessions, redeliveries included.",
                ns,
            )?,
            counter_vec(
                &r,
                "roomq_redeliveries_total",
                "Deliveries of a message already delivered (attempt > 1).",
                ns,
            )?,
            counter_vec(&r, "roomq_acks_total", "Ack requests accepted.", ns)?,
            counter_vec(&r, "roomq_nacks_total", "Nack requests accepted.", ns)?,
            counter_vec(
                &r,
                "roomq_messages_expired_total",
                "Messages dropped for a member because their TTL ran out.",
                ns,
            )?,
        ];
        let dead_lettered = counter_vec(
            &r,
            "roomq_dead_lettered_total",
            "Messages moved to a dead-letter room.",
            &["namespace", "reason"],
        )?;
        let connections = gauge_vec(
            &r,
            "roomq_connections",
            "Sessions past their handshake, by transport.",
            &["transport"],
        )?;
        for t in ["tcp", "ws"] {
            connections.with_label_values(&[t]).set(0);
        }
        let sessions = gauge_vec(
            &r,
            "roomq_sessions",
            "Sessions past their handshake, by namespace.",
            ns,
        )?;
        let rooms = gauge_vec(&r, "roomq_rooms", "Rooms, by namespace.", ns)?;
        let members = gauge_vec(
            &r,
            "roomq_members",
            "Room members (durable and ephemeral), by namespace.",
            ns,
        )?;
        let room_backlog = gauge_vec(
            &r,
            "roomq_room_backlog_messages",
            "Messages stored but not yet acked by the room's slowest durable member; only the rooms with the largest backlog.",
            &["namespace", "room"],
        )?;
        let handshakes_refused = counter_vec(
            &r,
            "roomq_handshakes_refused_total",
            "Handshakes refused, by error code.",
            &["code"],
        )?;
        let errors = counter_vec(
            &r,
            "roomq_errors_total",
            "Error frames sent to clients, by error code.",
            &["code"],
        )?;
        let quota_refusals = counter_vec(
            &r,
            "roomq_quota_refusals_total",
            "Requests refused by a quota.",
            &["quota"],
        )?;
        for q in Quota::ALL {
            quota_refusals.with_label_values(&[q.as_str()]);
        }
        let slow_consumer_disconnects = IntCounter::new(
            "roomq_slow_consumer_disconnects_total",
            "Sessions disconnected because they did not read their deliveries in time.",
        )?;
        r.register(Box::new(slow_consumer_disconnects.clone()))?;
        let dedup_evicted = IntCounter::new(
            "roomq_dedup_evicted_total",
            "Dedup ids forgotten before their window ended, because limits.max_dedup_ids were held.",
        )?;
        r.register(Box::new(dedup_evicted.clone()))?;
        let dedup_ids = IntGauge::new(
            "roomq_dedup_ids",
            "Dedup ids remembered (pending and stored).",
        )?;
        r.register(Box::new(dedup_ids.clone()))?;
        let storage_bytes = IntGauge::new(
            "roomq_storage_bytes",
            "Bytes of the data directory on disk.",
        )?;
        r.register(Box::new(storage_bytes.clone()))?;
        let batch_buckets = vec![
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
            8192.0,
        ];
        let commit_batch = histogram(
            &r,
            "roomq_commit_batch_messages",
            "Messages written by one group commit.",
            batch_buckets,
        )?;
        let commit_flush = histogram(
            &r,
            "roomq_commit_flush_seconds",
            "Time to write and sync one group commit.",
            seconds_buckets(),
        )?;
        let publish_confirm = histogram(
            &r,
            "roomq_publish_confirm_seconds",
            "Broker-side time from a publish's arrival to its confirmation (sync durability).",
            seconds_buckets(),
        )?;
        let delivery_lag = histogram(
            &r,
            "roomq_delivery_lag_seconds",
            "Time from a message's storing to its first delivery.",
            seconds_buckets(),
        )?;
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry: r,
            enabled: config.enabled,
            max_namespaces: config.max_namespace_series as usize,
            max_rooms: config.max_room_series as usize,
            namespaces: Mutex::new(HashMap::new()),
            per_namespace,
            dead_lettered,
            connections,
            sessions,
            rooms,
            members,
            room_backlog,
            handshakes_refused,
            errors,
            quota_refusals,
            slow_consumer_disconnects,
            dedup_evicted,
            dedup_ids,
            storage_bytes,
            commit_batch,
            commit_flush,
            publish_confirm,
            delivery_lag,
        })
    }

    /// How many rooms `/metrics` shows a backlog for.
    pub fn max_room_series(&self) -> usize {
        self.max_rooms
    }

    /// The label value for `namespace`: its name while under the cap.
    fn label_for(&self, map: &HashMap<String, Arc<NamespaceMetrics>>, namespace: &str) -> String {
        if map.contains_key(namespace) || map.len() < self.max_namespaces {
            namespace.to_string()
        } else {
            OTHER_NAMESPACE.to_string()
        }
    }

    /// The counters of `namespace` (made on first use; shared by every
    /// namespace past the cap).
    pub fn namespace(&self, namespace: &str) -> Arc<NamespaceMetrics> {
        let mut map = match self.namespaces.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let label = self.label_for(&map, namespace);
        if let Some(m) = map.get(&label) {
            return m.clone();
        }
        let [published, stored_bytes, duplicates, deliveries, redeliveries, acks, nacks, expired] =
            self.per_namespace
                .each_ref()
                .map(|v| v.with_label_values(&[&label]));
        let m = Arc::new(NamespaceMetrics {
            published,
            stored_bytes,
            duplicates,
            deliveries,
            redeliveries,
            acks,
            nacks,
            expired,
            dead: DeadReason::ALL
                .map(|r| self.dead_lettered.with_label_values(&[&label, r.as_str()])),
            quota: Quota::ALL.map(|q| self.quota_refusals.with_label_values(&[q.as_str()])),
            label: label.clone(),
        });
        map.insert(label, m.clone());
        m
    }

    /// Counts a refused handshake.
    pub fn handshake_refused(&self, code: ErrorCode) {
        self.handshakes_refused
            .with_label_values(&[code.name()])
            .inc();
    }

    /// Counts an error frame sent to a client.
    pub fn error_sent(&self, code: u32) {
        let name = ErrorCode::from_u32(code).map_or("UNKNOWN", |c| c.name());
        self.errors.with_label_values(&[name]).inc();
    }

    /// Sums over the labels of the labelled broker-wide counters.
    pub fn totals(&self) -> Totals {
        Totals {
            errors: sum(&self.errors),
            handshakes_refused: sum(&self.handshakes_refused),
            quota_refusals: sum(&self.quota_refusals),
        }
    }

    /// Sets the gauges that describe the broker's tables from `stats`.
    pub fn update(&self, stats: &pb::BrokerStats) {
        self.connections
            .with_label_values(&["tcp"])
            .set(to_i64(stats.connections_tcp));
        self.connections
            .with_label_values(&["ws"])
            .set(to_i64(stats.connections_ws));
        self.storage_bytes
            .set(i64::try_from(stats.storage_bytes).unwrap_or(i64::MAX));
        self.dedup_ids
            .set(i64::try_from(stats.dedup_ids).unwrap_or(i64::MAX));
        // Rebuilt from scratch: a namespace or room that is gone (or has
        // left the top of the backlog) loses its series.
        self.sessions.reset();
        self.rooms.reset();
        self.members.reset();
        let mut by_label: HashMap<String, (u64, u64, u64)> = HashMap::new();
        {
            let map = match self.namespaces.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            for n in &stats.namespaces {
                let label = self.label_for(&map, &n.name);
                let e = by_label.entry(label).or_default();
                e.0 += u64::from(n.sessions);
                e.1 += n.rooms;
                e.2 += n.members;
            }
        }
        for (label, (sessions, rooms, members)) in by_label {
            self.sessions
                .with_label_values(&[&label])
                .set(to_i64(sessions));
            self.rooms.with_label_values(&[&label]).set(to_i64(rooms));
            self.members
                .with_label_values(&[&label])
                .set(to_i64(members));
        }
        self.room_backlog.reset();
        for room in stats.rooms.iter().take(self.max_rooms) {
            self.room_backlog
                .with_label_values(&[&room.namespace, &room.name])
                .set(to_i64(room.backlog));
        }
    }

    /// The exposition in the format asked for, and its content type.
    pub fn encode(&self, format: Exposition) -> Result<(Vec<u8>, &'static str), EncodeError> {
        let families = self.registry.gather();
        match format {
            Exposition::Prometheus => {
                let mut buf = Vec::with_capacity(16 * 1024);
                TextEncoder::new().encode(&families, &mut buf)?;
                Ok((buf, prometheus::TEXT_FORMAT))
            }
            Exposition::OpenMetrics => Ok((
                openmetrics::encode(families)?.into_bytes(),
                OPENMETRICS_CONTENT_TYPE,
            )),
        }
    }
}

/// The content type of the OpenMetrics text exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The text formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// Prometheus text format 0.0.4: the default.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Exposition {
    /// The format an `Accept` header prefers: OpenMetrics when it ranks
    /// `application/openmetrics-text` above every other type it accepts
    /// (ties go to OpenMetrics, which is what a scraper that lists it at
    /// all is after); the Prometheus text format otherwise, including when
    /// there is no header.
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        let Some(accept) = accept else {
            return Exposition::Prometheus;
        };
        let mut openmetrics = 0.0_f64;
        let mut other = 0.0_f64;
        for entry in accept.split(',') {
            let mut parts = entry.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f64>().ok())
                .filter(|q| q.is_finite())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            if media == "application/openmetrics-text" {
                openmetrics = openmetrics.max(q);
            } else if !media.is_empty() {
                other = other.max(q);
            }
        }
        if openmetrics > 0.0 && openmetrics >= other {
            Exposition::OpenMetrics
        } else {
            Exposition::Prometheus
        }
    }
}

/// Why the exposition could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("prometheus text: {0}")]
    Prometheus(#[from] prometheus::Error),
    #[error("openmetrics text could not be written")]
    OpenMetrics(#[from] std::fmt::Error),
}

/// Broker-wide counter sums for a stats snapshot.
#[derive(Debug, Default)]
pub struct Totals {
    pub errors: u64,
    pub handshakes_refused: u64,
    pub quota_refusals: u64,
}

fn sum(v: &IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    v.collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

fn to_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// Sum of a histogram for a stats snapshot.
pub fn summary(h: &Histogram) -> pb::HistogramSummary {
    pb::HistogramSummary {
        count: h.get_sample_count(),
        sum: h.get_sample_sum(),
    }
}

/// Bytes of the files under `dir` (the data directory), not following
/// symbolic links.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::Exposition;

    #[test]
    fn openmetrics_only_when_the_accept_header_ranks_it_first() {
        let negotiate = Exposition::negotiate;
        assert_eq!(negotiate(None), Exposition::Prometheus);
        assert_eq!(negotiate(Some("*/*")), Exposition::Prometheus);
        assert_eq!(negotiate(Some("text/plain")), Exposition::Prometheus);
        assert_eq!(
            negotiate(Some("application/openmetrics-text; version=1.0.0")),
            Exposition::OpenMetrics
        );
        // Prometheus 2.x's default order.
        assert_eq!(
            negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Exposition::OpenMetrics
        );
        // Ranked below the text format, or refused outright.
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0.2,text/plain;q=0.9")),
            Exposition::Prometheus
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0")),
            Exposition::Prometheus
        );
        // Nonsense q-values are read as the default rather than trusted.
        assert_eq!(
            negotiate(Some("APPLICATION/OpenMetrics-Text;q=NaN")),
            Exposition::OpenMetrics
        );
    }
}
