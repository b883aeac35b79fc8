//! Namespaces as tenants (SPEC §2, G5): their credentials, permissions,
//! quotas, durability and middleware.
//!
//! [`Tenants`] is the registry shared by every session (which look up their
//! namespace at the handshake) and the broker actor (which changes it for
//! `/admin`). A [`Tenant`] is one namespace: its [`Policy`] (replaced whole
//! when `/admin` changes it), its live [`Usage`], and its middleware chain.
//!
//! Layout:
//! - [`token`]: token generation, hashing and constant-time checks.
//! - [`pattern`]: room-name patterns of permissions.
//! - [`middleware`]: the hook trait and the built-in policies.

pub mod middleware;
pub mod pattern;
pub mod token;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::metrics::{Metrics, NamespaceMetrics};

use roomq_wire::names::check_namespace;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{Config, ConfigError, DurabilityMode, NamespaceConfig, Quotas, TokenConfig};
pub use middleware::{Grant, Middleware, Verdict};
use token::TokenHash;

/// The namespace reserved for administration.
pub const ADMIN_NAMESPACE: &str = "/admin";

/// A token as the broker checks it.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub name: Arc<str>,
    pub hash: TokenHash,
    pub publish: Arc<[String]>,
    pub subscribe: Arc<[String]>,
    /// Declared in the config file (then `/admin` cannot delete it).
    pub from_config: bool,
}

impl TokenEntry {
    fn from_config(t: &TokenConfig, from_config: bool) -> Result<TokenEntry, String> {
        let hash = TokenHash::parse(&t.hash).map_err(|e| format!("token {:?}: {e}", t.name))?;
        roomq_wire::names::check_name("token name", &t.name).map_err(|e| e.to_string())?;
        for p in t.publish.iter().chain(&t.subscribe) {
            roomq_wire::names::check_name("room pattern", p)
                .map_err(|e| format!("token {:?}: {e}", t.name))?;
        }
        Ok(TokenEntry {
            name: Arc::from(t.name.as_str()),
            hash,
            publish: Arc::from(t.publish.clone()),
            subscribe: Arc::from(t.subscribe.clone()),
            from_config,
        })
    }

    /// The stored form (`/admin`-created tokens are kept in the data dir).
    pub fn to_config(&self) -> TokenConfig {
        TokenConfig {
            name: self.name.to_string(),
            hash: self.hash.to_text(),
            publish: self.publish.to_vec(),
            subscribe: self.subscribe.to_vec(),
        }
    }
}

/// A namespace's rules, replaced whole when they change.
#[derive(Debug, Clone)]
pub struct Policy {
    pub open: bool,
    pub durability: DurabilityMode,
    pub create_rooms: bool,
    pub quotas: Quotas,
    pub tokens: Vec<TokenEntry>,
    pub retention: Vec<crate::config::RetentionRule>,
}

/// A namespace as kept in the data directory: one created through `/admin`
/// (with its settings), or one from the config file that `/admin` gave
/// tokens to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredNamespace {
    pub name: String,
    /// The settings of a namespace created through `/admin`.
    pub settings: Option<NamespaceConfig>,
    /// Tokens added through `/admin`.
    pub tokens: Vec<TokenConfig>,
}

/// What a tenant uses now. Updated by sessions (connections) and the
/// broker (stored bytes). (Its rooms are counted in the broker's table.)
#[derive(Debug, Default)]
pub struct Usage {
    connections: Arc<AtomicU32>,
    stored_bytes: AtomicU64,
    published: AtomicU64,
    /// Rooms of the namespace, on every shard: reserved before a room is
    /// created (`reserve_rooms`), so the room quota holds across shards.
    rooms: AtomicU64,
}

/// A connection counted against its namespace until dropped.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<AtomicU32>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Usage {
    /// Counts one more connection unless `max` (0 = no limit) are counted.
    pub fn reserve_connection(&self, max: u32) -> Option<ConnectionSlot> {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(self.connections.clone()))
    }
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Acquire)
    }
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Acquire)
    }
    pub fn add_stored(&self, bytes: u64, messages: u64) {
        self.stored_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.published.fetch_add(messages, Ordering::Relaxed);
    }
    pub fn remove_stored(&self, bytes: u64) {
        let _ = self
            .stored_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(bytes))
            });
    }
    /// Counts `n` more rooms unless that would make more than `max`.
    pub fn reserve_rooms(&self, n: u64, max: u64) -> bool {
        self.rooms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |have| {
                have.checked_add(n).filter(|total| *total <= max)
            })
            .is_ok()
    }
    /// Counts `n` more rooms, whatever the quota (rooms found on disk, dead
    /// letter rooms, rooms made through `/admin`).
    pub fn add_rooms(&self, n: u64) {
        self.rooms.fetch_add(n, Ordering::AcqRel);
    }
    pub fn remove_rooms(&self, n: u64) {
        let _ = self
            .rooms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |have| {
                Some(have.saturating_sub(n))
            });
    }
    /// Rooms the namespace has, on every shard.
    pub fn rooms(&self) -> u64 {
        self.rooms.load(Ordering::Acquire)
    }
    /// Messages stored since the broker started.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

/// A token bucket for the publish rate.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// One namespace.
pub struct Tenant {
    pub name: Arc<str>,
    /// Declared in the config file (then `/admin` cannot delete it).
    pub from_config: bool,
    policy: RwLock<Arc<Policy>>,
    pub usage: Usage,
    /// Its counters, resolved once so that counting is an atomic add.
    pub metrics: Arc<NamespaceMetrics>,
    bucket: Mutex<Option<Bucket>>,
    chain: Vec<Arc<dyn Middleware>>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("name", &self.name)
            .field("from_config", &self.from_config)
            .finish_non_exhaustive()
    }
}

impl Tenant {
    /// The current policy.
    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_policy(&self, policy: Policy) {
        let mut guard = match self.policy.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(policy);
    }

    /// The middleware chain, built-ins first.
    pub fn chain(&self) -> &[Arc<dyn Middleware>] {
        &self.chain
    }

    /// Whether this is `/admin`.
    pub fn is_admin(&self) -> bool {
        &*self.name == ADMIN_NAMESPACE
    }

    /// Takes `n` publishes from the rate bucket set by `q`; false if it
    /// holds fewer.
    pub fn take_publish_tokens(&self, q: &Quotas, n: u32) -> bool {
        if q.publish_rate == 0 {
            return true;
        }
        let rate = f64::from(q.publish_rate);
        let burst = f64::from(if q.publish_burst == 0 {
            q.publish_rate
        } else {
            q.publish_burst
        });
        let now = Instant::now();
        let mut guard = match self.bucket.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let bucket = guard.get_or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = now;
        let want = f64::from(n);
        if bucket.tokens >= want {
            bucket.tokens -= want;
            true
        } else {
            false
        }
    }
}

/// Middleware registered by an embedding program.
#[derive(Default, Clone)]
pub struct Hooks {
    per_namespace: HashMap<String, Vec<Arc<dyn Middleware>>>,
    every: Vec<Arc<dyn Middleware>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("namespaces", &self.per_namespace.keys().collect::<Vec<_>>())
            .field("every", &self.every.len())
            .finish()
    }
}

impl Hooks {
    /// Runs `m` in `namespace`, after the built-ins and earlier hooks.
    pub fn add(&mut self, namespace: &str, m: Arc<dyn Middleware>) {
        self.per_namespace
            .entry(namespace.to_string())
            .or_default()
            .push(m);
    }

    /// Runs `m` in every namespace, after the built-ins and before
    /// per-namespace hooks.
    pub fn add_everywhere(&mut self, m: Arc<dyn Middleware>) {
        self.every.push(m);
    }

    fn chain_for(&self, namespace: &str) -> Vec<Arc<dyn Middleware>> {
        let mut chain: Vec<Arc<dyn Middleware>> = vec![
            Arc::new(middleware::Authenticate),
            Arc::new(middleware::Authorize),
            Arc::new(middleware::QuotaGuard),
        ];
        chain.extend(self.every.iter().cloned());
        chain.extend(
            self.per_namespace
                .get(namespace)
                .into_iter()
                .flatten()
                .cloned(),
        );
        chain
    }
}

/// Every namespace, by name.
#[derive(Debug)]
pub struct Tenants {
    map: RwLock<HashMap<Arc<str>, Arc<Tenant>>>,
    /// The broker's metrics (one registry per broker).
    pub metrics: Arc<Metrics>,
    /// The config file's namespaces, which `/admin` may not delete.
    declared: HashMap<String, NamespaceConfig>,
    hooks: Hooks,
    /// Bumped whenever a namespace is added, restored or removed, so that
    /// each shard notices (retention) without asking every turn.
    generation: AtomicU64,
}

fn policy_of(settings: &NamespaceConfig, extra: &[TokenConfig]) -> Result<Policy, String> {
    let mut tokens = Vec::new();
    for t in &settings.tokens {
        tokens.push(TokenEntry::from_config(t, true)?);
    }
    for t in extra {
        tokens.push(TokenEntry::from_config(t, false)?);
    }
    let mut names: Vec<&str> = tokens.iter().map(|t| &*t.name).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w.first() == w.get(1)) {
        return Err(format!("token name {:?} is used twice", w.first()));
    }
    if settings.retention.iter().any(|r| r.rooms.is_empty()) {
        return Err("a retention rule needs a `rooms` pattern".to_string());
    }
    Ok(Policy {
        open: settings.open,
        durability: settings.durability,
        create_rooms: settings.create_rooms,
        quotas: settings.quotas.clone(),
        tokens,
        retention: settings.retention.clone(),
    })
}

/// Checks one namespace's settings (used by [`Config::validate`]).
pub fn validate_namespace(name: &str, settings: &NamespaceConfig) -> Result<(), String> {
    check_namespace(name).map_err(|e| e.to_string())?;
    if name == ADMIN_NAMESPACE {
        return Err(format!(
            "{ADMIN_NAMESPACE} is configured under [admin], not [namespaces]"
        ));
    }
    policy_of(settings, &[]).map(|_| ())
}

/// Checks the `[admin]` tokens.
pub fn validate_admin(tokens: &[TokenConfig]) -> Result<(), String> {
    policy_of(&admin_settings(tokens), &[]).map(|_| ())
}

fn admin_settings(tokens: &[TokenConfig]) -> NamespaceConfig {
    NamespaceConfig {
        open: false,
        create_rooms: false,
        tokens: tokens.to_vec(),
        ..NamespaceConfig::default()
    }
}

impl Tenants {
    /// The namespaces of `config` (and `/admin`), with `hooks`.
    pub fn new(config: &Config, hooks: Hooks) -> Result<Tenants, ConfigError> {
        let metrics = Metrics::new(&config.metrics)
            .map_err(|e| ConfigError::Invalid(format!("metrics: {e}")))?;
        let tenants = Tenants {
            map: RwLock::new(HashMap::new()),
            metrics: Arc::new(metrics),
            declared: config.namespaces.clone().into_iter().collect(),
            hooks,
            generation: AtomicU64::new(1),
        };
        for (name, settings) in &config.namespaces {
            let policy = policy_of(settings, &[])
                .map_err(|e| ConfigError::Invalid(format!("namespace {name}: {e}")))?;
            tenants.insert(name, policy, true);
        }
        let admin = policy_of(&admin_settings(&config.admin.tokens), &[])
            .map_err(|e| ConfigError::Invalid(format!("[admin]: {e}")))?;
        tenants.insert(ADMIN_NAMESPACE, admin, true);
        Ok(tenants)
    }

    fn insert(&self, name: &str, policy: Policy, from_config: bool) -> Arc<Tenant> {
        let chain = if name == ADMIN_NAMESPACE {
            vec![Arc::new(middleware::Authenticate) as Arc<dyn Middleware>]
        } else {
            self.hooks.chain_for(name)
        };
        let tenant = Arc::new(Tenant {
            name: Arc::from(name),
            from_config,
            policy: RwLock::new(Arc::new(policy)),
            usage: Usage::default(),
            metrics: self.metrics.namespace(name),
            bucket: Mutex::new(None),
            chain,
        });
        let mut map = match self.map.write() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.insert(tenant.name.clone(), tenant.clone());
        tenant
    }

    /// The namespace `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<Tenant>> {
        let map = match self.map.read() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.get(name).cloned()
    }

    /// Every namespace except `/admin`, by name.
    pub fn list(&self) -> Vec<Arc<Tenant>> {
        let map = match self.map.read() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut all: Vec<_> = map.values().filter(|t| !t.is_admin()).cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Applies what the data directory holds. The config file wins over a
    /// stored namespace of the same name; its stored tokens still apply.
    /// A stored namespace that no longer parses is skipped with a warning.
    pub fn restore(&self, stored: Vec<StoredNamespace>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for s in stored {
            let settings = match (self.declared.get(&s.name), &s.settings) {
                (Some(declared), _) => declared.clone(),
                (None, Some(own)) => own.clone(),
                (None, None) => continue,
            };
            match policy_of(&settings, &s.tokens) {
                Ok(policy) => match self.get(&s.name) {
                    Some(t) => t.set_policy(policy),
                    None => {
                        self.insert(&s.name, policy, false);
                    }
                },
                Err(e) => {
                    tracing::warn!(namespace = %s.name, error = %e, "stored namespace skipped")
                }
            }
        }
    }

    /// Creates a namespace (through `/admin`).
    pub fn create(&self, name: &str, settings: NamespaceConfig) -> Result<Arc<Tenant>, String> {
        validate_namespace(name, &settings)?;
        if self.get(name).is_some() {
            return Err(format!("namespace {name} exists"));
        }
        let policy = policy_of(&settings, &[])?;
        let tenant = self.insert(name, policy, false);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(tenant)
    }

    /// Changes with every namespace added or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Removes a namespace created through `/admin`.
    pub fn remove(&self, name: &str) -> Result<Arc<Tenant>, String> {
        if self.declared.contains_key(name) || name == ADMIN_NAMESPACE {
            return Err(format!(
                "namespace {name} is declared in the config file; remove it there"
            ));
        }
        let mut map = match self.map.write() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let removed = map
            .remove(name)
            .ok_or_else(|| format!("no namespace {name}"));
        self.generation.fetch_add(1, Ordering::AcqRel);
        removed
    }

    /// Adds a token to `tenant`; returns what must be stored.
    pub fn add_token(
        &self,
        tenant: &Tenant,
        token: TokenConfig,
    ) -> Result<StoredNamespace, String> {
        let mut extra = self.stored_tokens(tenant);
        extra.push(token);
        self.apply_tokens(tenant, extra)
    }

    /// Deletes an `/admin`-created token; returns what must be stored.
    pub fn delete_token(&self, tenant: &Tenant, name: &str) -> Result<StoredNamespace, String> {
        let policy = tenant.policy();
        match policy.tokens.iter().find(|t| &*t.name == name) {
            None => return Err(format!("no token {name:?} in {}", tenant.name)),
            Some(t) if t.from_config => {
                return Err(format!(
                    "token {name:?} is declared in the config file; remove it there"
                ))
            }
            Some(_) => {}
        }
        let extra = self
            .stored_tokens(tenant)
            .into_iter()
            .filter(|t| t.name != name)
            .collect();
        self.apply_tokens(tenant, extra)
    }

    fn stored_tokens(&self, tenant: &Tenant) -> Vec<TokenConfig> {
        tenant
            .policy()
            .tokens
            .iter()
            .filter(|t| !t.from_config)
            .map(TokenEntry::to_config)
            .collect()
    }

    fn apply_tokens(
        &self,
        tenant: &Tenant,
        extra: Vec<TokenConfig>,
    ) -> Result<StoredNamespace, String> {
        let policy = policy_of(&self.settings_of(tenant), &extra)?;
        tenant.set_policy(policy);
        Ok(self.record_of(tenant))
    }

    /// The settings a namespace was declared or created with (without its
    /// `/admin` tokens).
    pub fn settings_of(&self, tenant: &Tenant) -> NamespaceConfig {
        if let Some(declared) = self.declared.get(&*tenant.name) {
            return declared.clone();
        }
        let p = tenant.policy();
        NamespaceConfig {
            open: p.open,
            durability: p.durability,
            create_rooms: p.create_rooms,
            quotas: p.quotas.clone(),
            tokens: Vec::new(),
            retention: p.retention.clone(),
        }
    }

    /// The stored record of a namespace created through `/admin`.
    pub fn record_of(&self, tenant: &Tenant) -> StoredNamespace {
        StoredNamespace {
            name: tenant.name.to_string(),
            settings: (!tenant.from_config).then(|| self.settings_of(tenant)),
            tokens: self.stored_tokens(tenant),
        }
    }
}
