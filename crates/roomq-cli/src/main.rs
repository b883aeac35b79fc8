//! `roomq`, the terminal CLI: publish, subscribe, list rooms, administer,
//! `stats` and a live `top`. Readable output
//! for people; `--json` gives one JSON object per line for scripts.

use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use roomq_client::{
    Client, Delivery, Gap, JoinOptions, PresenceChange, PresenceKind, Start, SubscriptionEvent,
    TlsOptions,
};
use serde_json::json;

mod admin;
mod args;
mod top;

use args::{parse_backoff, parse_ms_duration, parse_time};

#[derive(Debug, Parser)]
#[command(name = "roomq", version, about = "roomq terminal client")]
struct Cli {
    /// Broker address.
    #[arg(
        long,
        global = true,
        env = "ROOMQ_ADDR",
        default_value = "127.0.0.1:7420"
    )]
    addr: String,
    /// Namespace.
    #[arg(
        long,
        short = 'n',
        global = true,
        env = "ROOMQ_NAMESPACE",
        default_value = "/"
    )]
    namespace: String,
    /// Namespace token.
    #[arg(long, global = true, env = "ROOMQ_TOKEN", default_value = "")]
    token: String,
    /// Client id: names durable memberships (default: none).
    #[arg(long, global = true, env = "ROOMQ_CLIENT_ID")]
    client_id: Option<String>,
    /// One JSON object per line instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Connect with TLS, trusting the CA (or self-signed broker
    /// certificate) in this PEM file.
    #[arg(long, global = true, value_name = "PATH")]
    tls_ca: Option<std::path::PathBuf>,
    /// The name the broker's certificate must carry [default: the host part
    /// of --addr, or localhost].
    #[arg(long, global = true, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Publish DATA as EVENT to ROOM; prints the seq it was stored under.
    Publish {
        room: String,
        event: String,
        data: String,
        /// Also publish to these rooms.
        #[arg(long = "also")]
        also: Vec<String>,
        /// A header, NAME=VALUE (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Not to this client's own memberships.
        #[arg(long)]
        except_self: bool,
        /// Store only if ROOM's last seq is this (0: empty room).
        #[arg(long)]
        expect_last_seq: Option<u64>,
        /// Ordering key: a group hands messages with the same key to the
        /// same consumer, in order.
        #[arg(long)]
        key: Option<String>,
        /// Not delivered once this long has passed (ms, or 30s, 5m, 1h, 7d).
        #[arg(long, value_name = "MS", value_parser = parse_ms_duration)]
        ttl: Option<Duration>,
        /// Not delivered before this long has passed (ms, or 30s, 5m, ...).
        #[arg(long, value_name = "MS", value_parser = parse_ms_duration, conflicts_with = "deliver_at")]
        delay: Option<Duration>,
        /// Not delivered before this time: ms since the Unix epoch, or
        /// RFC 3339 (2024-05-01T12:00:00Z).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        deliver_at: Option<SystemTime>,
        /// Do not store it: only members joined now get it, if their
        /// queues have room; no seq, no redelivery.
        #[arg(long, conflicts_with_all = ["ttl", "delay", "deliver_at", "expect_last_seq"])]
        volatile: bool,
        /// Not to sessions that are members of this room (repeatable).
        #[arg(long, value_name = "ROOM")]
        except_room: Vec<String>,
        /// Not to this session id, a UUID (repeatable; see `roomq members`).
        #[arg(long, value_name = "UUID")]
        except_session: Vec<uuid::Uuid>,
    },
    /// Print (and acknowledge) what arrives in ROOM.
    Subscribe {
        room: String,
        /// Where to start: earliest, new, resume, or a seq.
        #[arg(long, default_value = "resume")]
        from: String,
        /// Start from the first message stored at or after this time: ms
        /// since the Unix epoch, or RFC 3339 (2024-05-01T12:00:00Z).
        #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with = "from")]
        from_time: Option<SystemTime>,
        /// Durable membership name (default: the client id, if any;
        /// otherwise ephemeral).
        #[arg(long)]
        durable: Option<String>,
        /// Consume for this group: its consumers share the messages.
        #[arg(long, value_name = "NAME")]
        group: Option<String>,
        /// With --group: only the first consumer gets messages, the others
        /// stand by.
        #[arg(long, requires = "group")]
        exclusive: bool,
        /// Ack timeout per delivery attempt, e.g. 100,1000,5000 (ms).
        #[arg(long, value_name = "MS,MS,...", value_parser = parse_backoff)]
        backoff: Option<args::Backoff>,
        /// Move a message to ROOM.dlq after this many deliveries (0 =
        /// never; default: the broker's, 20).
        #[arg(long, value_name = "N")]
        max_deliveries: Option<u32>,
        /// Only events matching this pattern (`*` = anything; repeatable).
        #[arg(long = "events", value_name = "PATTERN")]
        events: Vec<String>,
        /// Also print who joins and leaves the room.
        #[arg(long)]
        presence: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this long without a message (e.g. 2s, 500ms).
        #[arg(long, value_parser = parse_duration)]
        idle_exit: Option<Duration>,
    },
    /// List the rooms of the namespace.
    Rooms,
    /// List who is in ROOM now (one line per session).
    Members { room: String },
    /// Administration: connects to /admin with --token.
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// The broker's figures once: connections, latencies, namespaces, the
    /// rooms with the largest backlog (connects to /admin with --token).
    Stats {
        /// Most rooms listed (0: the broker's metrics.max_room_series).
        #[arg(long, default_value_t = 20)]
        rooms: u32,
        /// List the rooms with the highest publish rate instead.
        #[arg(long)]
        by_rate: bool,
    },
    /// A live full-screen view of the broker, refreshed every second: `s`
    /// switches the rooms' order (backlog / publish rate), `q` quits
    /// (connects to /admin with --token).
    Top {
        /// Time between refreshes (e.g. 1s, 500ms).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: use ms, s or m")),
    }
}

/// The host part of a `host:port` address, or of a `ws://` or `wss://` URL
/// (brackets of an IPv6 address removed), or "localhost" when there is none.
fn default_server_name(addr: &str) -> &str {
    let addr = addr
        .strip_prefix("wss://")
        .or_else(|| addr.strip_prefix("ws://"))
        .map_or(addr, |rest| {
            rest.split(['/', '?', '#']).next().unwrap_or(rest)
        });
    let has_port = match addr.rfind(']') {
        Some(end) => addr.get(end..).is_some_and(|t| t.contains(':')),
        None => addr.contains(':'),
    };
    let host = match (has_port, addr.rsplit_once(':')) {
        (true, Some((host, _))) => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        "localhost"
    } else {
        host
    }
}

fn parse_start(from: &str) -> Result<Start> {
    Ok(match from {
        "earliest" => Start::Earliest,
        "new" => Start::New,
        "resume" => Start::Resume,
        seq => {
            Start::Seq(seq.parse().with_context(|| {
                format!("--from {seq:?}: expected earliest, new, resume or a seq")
            })?)
        }
    })
}

fn print_delivery(d: &Delivery, json_out: bool) {
    let text = String::from_utf8_lossy(&d.payload);
    if json_out {
        println!(
            "{}",
            json!({
                "room": d.room, "seq": d.seq, "event": d.event, "data": text,
                "headers": d.headers, "timestamp_ms": d.timestamp_ms,
                "attempt": d.attempt, "redelivered": d.redelivered,
                "key": d.key, "volatile": d.volatile,
                "expires_at_ms": d.expires_at_ms, "deliver_at_ms": d.deliver_at_ms,
            })
        );
        return;
    }
    let position = if d.volatile {
        "volatile".to_string()
    } else {
        format!("#{}", d.seq)
    };
    let key = if d.key.is_empty() {
        String::new()
    } else {
        format!(" key={}", d.key)
    };
    let again = if d.redelivered {
        format!(" (redelivered, attempt {})", d.attempt)
    } else {
        String::new()
    };
    println!("[{}{position}{key}] {}: {text}{again}", d.room, d.event);
}

/// Gaps are printed on stderr as text, or as a `"type": "gap"` object with
/// `--json`, so message lines stay as they were.
fn print_gap(g: &Gap, json_out: bool) {
    if json_out {
        println!(
            "{}",
            json!({
                "type": "gap", "room": g.room, "subscription": g.subscription,
                "from_seq": g.from_seq, "to_seq": g.to_seq, "missed": g.missed,
            })
        );
    } else {
        eprintln!(
            "gap in {}: seqs {}..={} were deleted before they were acknowledged ({} missed)",
            g.room, g.from_seq, g.to_seq, g.missed
        );
    }
}

fn print_presence(p: &PresenceChange, json_out: bool) {
    let kind = match p.kind {
        PresenceKind::Joined => "joined",
        PresenceKind::Left => "left",
    };
    let m = &p.member;
    if json_out {
        println!(
            "{}",
            json!({
                "type": "presence", "room": p.room, "kind": kind,
                "session": m.session_id.to_string(), "client_id": m.client_id,
                "client_name": m.client_name, "subscription": m.subscription,
                "durable": m.durable, "group": m.group,
            })
        );
        return;
    }
    let who = match (m.client_name.is_empty(), m.client_id.is_empty()) {
        (false, false) => format!("{} ({})", m.client_name, m.client_id),
        (false, true) => m.client_name.clone(),
        (true, false) => m.client_id.clone(),
        (true, true) => "a session".to_string(),
    };
    let group = if m.group.is_empty() {
        String::new()
    } else {
        format!(", group {}", m.group)
    };
    eprintln!(
        "presence {}: {who} {kind} [session {}{group}]",
        p.room, m.session_id
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Admin(cmd) = cli.command {
        return admin::run(&cli.addr, &cli.token, cli.json, cmd).await;
    }
    if let Cmd::Stats { rooms, by_rate } = cli.command {
        return top::stats(&cli.addr, &cli.token, cli.json, rooms, by_rate).await;
    }
    if let Cmd::Top { interval } = cli.command {
        return top::top(&cli.addr, &cli.token, interval).await;
    }
    let mut builder = Client::builder(cli.addr.clone())
        .namespace(cli.namespace.clone())
        .token(cli.token.clone())
        .client_name("roomq-cli");
    if let Some(id) = &cli.client_id {
        builder = builder.client_id(id.clone());
    }
    if let Some(ca) = &cli.tls_ca {
        let name = cli
            .tls_server_name
            .as_deref()
            .unwrap_or_else(|| default_server_name(&cli.addr));
        let tls = TlsOptions::trusting_pem_file(ca, name)
            .with_context(|| format!("--tls-ca {}", ca.display()))?;
        builder = builder.tls(tls);
    }
    let client = builder
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", cli.addr))?;
    match cli.command {
        Cmd::Publish {
            room,
            event,
            data,
            also,
            headers,
            except_self,
            expect_last_seq,
            key,
            ttl,
            delay,
            deliver_at,
            volatile,
            except_room,
            except_session,
        } => {
            let mut message = client.message(&event, data).to(&room);
            for r in &also {
                message = message.to(r);
            }
            for h in &headers {
                let Some((name, value)) = h.split_once('=') else {
                    bail!("--header {h:?}: expected NAME=VALUE");
                };
                message = message.header(name, value);
            }
            if except_self {
                message = message.except_self();
            }
            if let Some(key) = &key {
                message = message.key(key);
            }
            for r in &except_room {
                message = message.except_room(r);
            }
            for s in &except_session {
                message = message.except_session(*s);
            }
            if volatile {
                message.volatile().send().await?;
                let rooms: Vec<&str> = std::iter::once(room.as_str())
                    .chain(also.iter().map(String::as_str))
                    .collect();
                if cli.json {
                    println!("{}", json!({"rooms": rooms, "volatile": true}));
                } else {
                    println!("sent to {} (volatile: not stored)", rooms.join(", "));
                }
                client.close().await;
                return Ok(());
            }
            if let Some(seq) = expect_last_seq {
                message = message.expect_last_seq(seq);
            }
            if let Some(ttl) = ttl {
                message = message.ttl(ttl);
            }
            if let Some(delay) = delay {
                message = message.delay(delay);
            }
            if let Some(at) = deliver_at {
                message = message.deliver_at(at);
            }
            let ok = message.send().await?;
            for (room, seq) in &ok.seqs {
                if cli.json {
                    println!(
                        "{}",
                        json!({"room": room, "seq": seq, "duplicate": ok.duplicate, "dedup_id": ok.dedup_id.to_string()})
                    );
                } else {
                    println!("stored in {room} as seq {seq}");
                }
            }
        }
        Cmd::Subscribe {
            room,
            from,
            from_time,
            durable,
            group,
            exclusive,
            backoff,
            max_deliveries,
            events,
            presence,
            count,
            idle_exit,
        } => {
            let start = match from_time {
                Some(t) => Start::Time(t),
                None => parse_start(&from)?,
            };
            let mut options = JoinOptions::new().start(start).presence(presence);
            if let Some(name) = durable {
                options = options.durable(name);
            }
            if let Some(name) = &group {
                options = options.group(name.clone());
            }
            if exclusive {
                options = options.exclusive();
            }
            if let Some(args::Backoff(steps)) = backoff {
                options = options.backoff(steps);
            }
            if let Some(n) = max_deliveries {
                options = options.max_deliveries(n);
            }
            if !events.is_empty() {
                options = options.events(events);
            }
            let mut sub = client.join(&room, options).await?;
            if !cli.json {
                let kind = match sub.group() {
                    Some(g) => format!("group {g:?}"),
                    None if sub.is_durable() => format!("durable {:?}", sub.durable_name()),
                    None => "ephemeral".to_string(),
                };
                eprintln!(
                    "joined {room} ({kind}), from seq {}; room has {} stored",
                    sub.next_seq_at_join(),
                    sub.last_seq_at_join()
                );
            }
            let mut received = 0u64;
            let mut idle_since = tokio::time::Instant::now();
            while count.is_none_or(|c| received < c) {
                let next = match idle_exit {
                    Some(idle) => {
                        match tokio::time::timeout_at(idle_since + idle, sub.next_event()).await {
                            Ok(event) => event,
                            Err(_) => break,
                        }
                    }
                    None => sub.next_event().await,
                };
                let Some(event) = next else { break };
                match event {
                    SubscriptionEvent::Message(d) => {
                        print_delivery(&d, cli.json);
                        d.ack().await?;
                        received += 1;
                        idle_since = tokio::time::Instant::now();
                    }
                    SubscriptionEvent::Gap(g) => print_gap(&g, cli.json),
                    SubscriptionEvent::Presence(p) => print_presence(&p, cli.json),
                }
            }
            if sub.dropped() > 0 && !cli.json {
                eprintln!(
                    "({} volatile messages or notices dropped: not read in time)",
                    sub.dropped()
                );
            }
            sub.leave().await?;
        }
        Cmd::Members { room } => {
            let list = client.members(&room).await?;
            if cli.json {
                for m in &list.members {
                    println!(
                        "{}",
                        json!({
                            "room": room, "session": m.session_id.to_string(),
                            "client_id": m.client_id, "client_name": m.client_name,
                            "subscription": m.subscription, "durable": m.durable, "group": m.group,
                        })
                    );
                }
            } else if list.members.is_empty() {
                println!("nobody in {room}");
            } else {
                println!(
                    "{:<36}  {:<20} {:<20} {:<20} GROUP",
                    "SESSION", "CLIENT ID", "NAME", "SUBSCRIPTION"
                );
                for m in &list.members {
                    let subscription = if m.durable {
                        m.subscription.as_str()
                    } else {
                        "(ephemeral)"
                    };
                    println!(
                        "{:<36}  {:<20} {:<20} {:<20} {}",
                        m.session_id, m.client_id, m.client_name, subscription, m.group
                    );
                }
            }
            if list.truncated && !cli.json {
                println!("(more members exist than fit in one reply)");
            }
        }
        Cmd::Rooms => {
            let rooms = client.rooms().await?;
            if cli.json {
                for r in &rooms {
                    println!(
                        "{}",
                        json!({"room": r.name, "last_seq": r.last_seq, "members": r.members, "connected_members": r.connected_members})
                    );
                }
            } else if rooms.is_empty() {
                println!("no rooms in {}", cli.namespace);
            } else {
                println!(
                    "{:<32} {:>12} {:>8} {:>10}",
                    "ROOM", "LAST SEQ", "MEMBERS", "CONNECTED"
                );
                for r in &rooms {
                    println!(
                        "{:<32} {:>12} {:>8} {:>10}",
                        r.name, r.last_seq, r.members, r.connected_members
                    );
                }
            }
        }
        Cmd::Admin(_) | Cmd::Stats { .. } | Cmd::Top { .. } => {}
    }
    client.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn publish_and_subscribe_flags_parse() {
        let cli = Cli::try_parse_from([
            "roomq",
            "publish",
            "orders",
            "created",
            "{}",
            "--key",
            "c7",
            "--ttl",
            "30s",
            "--delay",
            "250",
            "--except-room",
            "muted",
            "--except-room",
            "banned",
            "--except-session",
            "0190b4a2-7c5e-7000-8000-000000000001",
        ])
        .unwrap();
        let Cmd::Publish {
            key,
            ttl,
            delay,
            except_room,
            except_session,
            volatile,
            ..
        } = cli.command
        else {
            panic!("not a publish")
        };
        assert_eq!(key.as_deref(), Some("c7"));
        assert_eq!(ttl, Some(Duration::from_secs(30)));
        assert_eq!(delay, Some(Duration::from_millis(250)));
        assert_eq!(except_room, vec!["muted", "banned"]);
        assert_eq!(except_session.len(), 1);
        assert!(!volatile);

        // Volatile excludes what only a stored message can have.
        let both = Cli::try_parse_from([
            "roomq",
            "publish",
            "r",
            "e",
            "d",
            "--volatile",
            "--ttl",
            "5",
        ]);
        assert!(both.is_err());
        let both = Cli::try_parse_from([
            "roomq",
            "publish",
            "r",
            "e",
            "d",
            "--delay",
            "5",
            "--deliver-at",
            "1700000000000",
        ]);
        assert!(both.is_err(), "delay and deliver-at exclude each other");
        let bad = Cli::try_parse_from(["roomq", "publish", "r", "e", "d", "--except-session", "x"]);
        assert!(bad.is_err());

        let cli = Cli::try_parse_from([
            "roomq",
            "subscribe",
            "jobs",
            "--group",
            "workers",
            "--exclusive",
            "--backoff",
            "100,1000,5000",
            "--max-deliveries",
            "0",
            "--events",
            "order.*",
            "--events",
            "refund",
            "--presence",
            "--from-time",
            "2023-11-14T22:13:20Z",
        ])
        .unwrap();
        let Cmd::Subscribe {
            group,
            exclusive,
            backoff,
            max_deliveries,
            events,
            presence,
            from_time,
            ..
        } = cli.command
        else {
            panic!("not a subscribe")
        };
        assert_eq!(group.as_deref(), Some("workers"));
        assert!(exclusive && presence);
        assert_eq!(
            backoff,
            Some(args::Backoff(vec![
                Duration::from_millis(100),
                Duration::from_secs(1),
                Duration::from_secs(5)
            ]))
        );
        assert_eq!(max_deliveries, Some(0));
        assert_eq!(events, vec!["order.*", "refund"]);
        assert_eq!(from_time.map(args::epoch_ms), Some(1_700_000_000_000));

        assert!(Cli::try_parse_from(["roomq", "subscribe", "jobs", "--exclusive"]).is_err());
        assert!(Cli::try_parse_from([
            "roomq",
            "subscribe",
            "jobs",
            "--from",
            "earliest",
            "--from-time",
            "0"
        ])
        .is_err());
    }

    #[test]
    fn server_name_is_the_host_of_the_address() {
        assert_eq!(
            default_server_name("broker.example.com:7420"),
            "broker.example.com"
        );
        assert_eq!(default_server_name("127.0.0.1:7420"), "127.0.0.1");
        assert_eq!(default_server_name("[::1]:7420"), "::1");
        assert_eq!(default_server_name(":7420"), "localhost");
        assert_eq!(default_server_name("broker"), "broker");
        assert_eq!(
            default_server_name("wss://broker.example:7421/ws"),
            "broker.example"
        );
        assert_eq!(
            default_server_name("wss://broker.example"),
            "broker.example"
        );
        assert_eq!(default_server_name("ws://[::1]/ws"), "::1");
    }
}
