//! `roomq admin ...`: the `/admin` namespace's operations, for operators.
//! Connects to `/admin` with the admin token (`--token` / `ROOMQ_TOKEN`).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use roomq_client::proto as pb;
use roomq_client::raw::Connection;
use roomq_client::ConnectOptions;
use serde_json::json;

use crate::args::{describe_retention, parse_retention};

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// List namespaces with their settings and figures.
    Namespaces,
    /// List the rooms of NAMESPACE (every namespace when omitted) with
    /// their figures and members.
    Rooms { namespace: Option<String> },
    /// Create a namespace.
    CreateNamespace {
        name: String,
        #[command(flatten)]
        settings: NamespaceArgs,
    },
    /// Delete a namespace created through /admin, with all its rooms.
    DeleteNamespace { name: String },
    /// Create a room.
    CreateRoom { namespace: String, room: String },
    /// Delete a room with its messages and cursors.
    DeleteRoom { namespace: String, room: String },
    /// Delete every stored message of a room (seqs keep counting).
    Purge { namespace: String, room: String },
    /// Create a token; prints it once (only its hash is stored).
    CreateToken {
        namespace: String,
        name: String,
        /// Room pattern it may publish to (repeatable; default: every room).
        #[arg(long)]
        publish: Vec<String>,
        /// Room pattern it may join (repeatable; default: every room).
        #[arg(long)]
        subscribe: Vec<String>,
    },
    /// Delete a token created through /admin.
    DeleteToken { namespace: String, name: String },
    /// Close a session (its id as a UUID, from `roomq admin rooms`).
    Kick { session: String },
    /// Move the messages of a dead-letter room (e.g. orders.dlq) back to
    /// the rooms they came from.
    Redrive {
        namespace: String,
        /// The dead-letter room.
        room: String,
        /// At most this many in one call (0: the broker's default, 10000).
        #[arg(long, default_value_t = 0)]
        max: u32,
    },
}

#[derive(Debug, Args)]
pub struct NamespaceArgs {
    /// Sessions may connect without a token.
    #[arg(long)]
    open: bool,
    /// Confirm publishes before they are flushed.
    #[arg(long)]
    batched: bool,
    /// Rooms are created only through /admin.
    #[arg(long)]
    no_create_rooms: bool,
    #[arg(long, default_value_t = 0)]
    max_connections: u32,
    #[arg(long, default_value_t = 100_000)]
    max_rooms: u32,
    #[arg(long, default_value_t = 0)]
    max_stored_bytes: u64,
    /// Publishes per second (0 = no limit).
    #[arg(long, default_value_t = 0)]
    publish_rate: u32,
    #[arg(long, default_value_t = 0)]
    publish_burst: u32,
    #[arg(long, default_value_t = 0)]
    max_message_bytes: u32,
    /// A retention rule, PATTERN:MAX_MESSAGES:MAX_BYTES:MAX_AGE_MS (empty or
    /// 0 = no limit of that kind; the age also takes 30s, 12h, 7d).
    /// Repeatable: the first rule whose pattern matches a room applies.
    #[arg(long, value_name = "RULE", value_parser = parse_retention)]
    retention: Vec<pb::RetentionRule>,
}

fn uuid_text(bytes: &[u8]) -> String {
    uuid::Uuid::from_slice(bytes)
        .map(|u| u.to_string())
        .unwrap_or_default()
}

/// Runs one admin command and prints its result.
pub async fn run(addr: &str, token: &str, json_out: bool, cmd: AdminCmd) -> Result<()> {
    let opts = ConnectOptions::new(addr)
        .namespace("/admin")
        .token(token)
        .client_name("roomq-cli admin");
    let (conn, _pushes) = Connection::connect(opts)
        .await
        .with_context(|| format!("cannot connect to {addr} /admin"))?;
    use pb::admin::Op;
    let op = match &cmd {
        AdminCmd::Namespaces => Op::ListNamespaces(pb::AdminListNamespaces {}),
        AdminCmd::Rooms { namespace } => Op::ListRooms(pb::AdminListRooms {
            namespace: namespace.clone().unwrap_or_default(),
        }),
        AdminCmd::CreateNamespace { name, settings: s } => {
            Op::CreateNamespace(pb::AdminCreateNamespace {
                name: name.clone(),
                open: s.open,
                durability: if s.batched {
                    pb::Durability::Batched as i32
                } else {
                    pb::Durability::Sync as i32
                },
                create_rooms: Some(!s.no_create_rooms),
                quotas: Some(pb::NamespaceQuotas {
                    max_connections: s.max_connections,
                    max_rooms: s.max_rooms,
                    max_stored_bytes: s.max_stored_bytes,
                    publish_rate: s.publish_rate,
                    publish_burst: s.publish_burst,
                    max_message_bytes: s.max_message_bytes,
                }),
                retention: s.retention.clone(),
            })
        }
        AdminCmd::DeleteNamespace { name } => {
            Op::DeleteNamespace(pb::AdminDeleteNamespace { name: name.clone() })
        }
        AdminCmd::CreateRoom { namespace, room } => Op::CreateRoom(pb::AdminCreateRoom {
            namespace: namespace.clone(),
            room: room.clone(),
        }),
        AdminCmd::DeleteRoom { namespace, room } => Op::DeleteRoom(pb::AdminDeleteRoom {
            namespace: namespace.clone(),
            room: room.clone(),
        }),
        AdminCmd::Purge { namespace, room } => Op::PurgeRoom(pb::AdminPurgeRoom {
            namespace: namespace.clone(),
            room: room.clone(),
        }),
        AdminCmd::CreateToken {
            namespace,
            name,
            publish,
            subscribe,
        } => Op::CreateToken(pb::AdminCreateToken {
            namespace: namespace.clone(),
            name: name.clone(),
            publish: publish.clone(),
            subscribe: subscribe.clone(),
        }),
        AdminCmd::DeleteToken { namespace, name } => Op::DeleteToken(pb::AdminDeleteToken {
            namespace: namespace.clone(),
            name: name.clone(),
        }),
        AdminCmd::Kick { session } => {
            let id = uuid::Uuid::parse_str(session)
                .with_context(|| format!("{session:?} is not a session id (a UUID)"))?;
            Op::Kick(pb::AdminKick {
                session_id: id.as_bytes().to_vec().into(),
            })
        }
        AdminCmd::Redrive {
            namespace,
            room,
            max,
        } => Op::Redrive(pb::AdminRedrive {
            namespace: namespace.clone(),
            room: room.clone(),
            max: *max,
        }),
    };
    let ok = conn.admin(op).await?;
    match cmd {
        AdminCmd::Namespaces => print_namespaces(&ok.namespaces, json_out),
        AdminCmd::Rooms { .. } => print_rooms(&ok, json_out),
        AdminCmd::CreateToken {
            namespace, name, ..
        } => {
            if json_out {
                println!(
                    "{}",
                    json!({"namespace": namespace, "name": name, "token": ok.token})
                );
            } else {
                println!("token {name:?} for {namespace} (shown once; keep it safe):");
                println!("{}", ok.token);
            }
        }
        AdminCmd::Redrive {
            namespace, room, ..
        } => {
            if json_out {
                println!(
                    "{}",
                    json!({"ok": true, "count": ok.count, "truncated": ok.truncated})
                );
            } else {
                println!(
                    "done: {} messages moved from {room} in {namespace} back to their rooms",
                    ok.count
                );
                if ok.truncated {
                    println!("(more remain in {room}: run it again)");
                }
            }
        }
        other => {
            if json_out {
                println!("{}", json!({"ok": true, "count": ok.count}));
            } else {
                println!("done: {}", describe(&other, ok.count));
            }
        }
    }
    drop(conn);
    Ok(())
}

fn describe(cmd: &AdminCmd, count: u64) -> String {
    match cmd {
        AdminCmd::CreateNamespace { name, .. } => format!("namespace {name} created"),
        AdminCmd::DeleteNamespace { name } => format!("namespace {name} deleted ({count} rooms)"),
        AdminCmd::CreateRoom { namespace, room } if count == 0 => {
            format!("room {room} already exists in {namespace}")
        }
        AdminCmd::CreateRoom { namespace, room } => format!("room {room} created in {namespace}"),
        AdminCmd::DeleteRoom { namespace, room } => format!("room {room} deleted from {namespace}"),
        AdminCmd::Purge { namespace, room } => {
            format!("{count} messages purged from {room} in {namespace}")
        }
        AdminCmd::DeleteToken { namespace, name } => {
            format!("token {name} deleted from {namespace}")
        }
        AdminCmd::Kick { session } => format!("session {session} closed"),
        _ => String::new(),
    }
}

fn durability_name(d: i32) -> &'static str {
    match pb::Durability::try_from(d) {
        Ok(pb::Durability::Batched) => "batched",
        _ => "sync",
    }
}

fn print_namespaces(list: &[pb::NamespaceInfo], json_out: bool) {
    if json_out {
        for n in list {
            let q = n.quotas.unwrap_or_default();
            println!(
                "{}",
                json!({
                    "namespace": n.name, "open": n.open, "durability": durability_name(n.durability),
                    "create_rooms": n.create_rooms, "from_config": n.from_config, "tokens": n.tokens,
                    "connections": n.connections, "rooms": n.rooms, "stored_bytes": n.stored_bytes,
                    "published": n.published,
                    "retention": n.retention.iter().map(|r| json!({
                        "rooms": r.rooms, "max_messages": r.max_messages,
                        "max_bytes": r.max_bytes, "max_age_ms": r.max_age_ms,
                    })).collect::<Vec<_>>(),
                    "quotas": {
                        "max_connections": q.max_connections, "max_rooms": q.max_rooms,
                        "max_stored_bytes": q.max_stored_bytes, "publish_rate": q.publish_rate,
                        "publish_burst": q.publish_burst, "max_message_bytes": q.max_message_bytes,
                    },
                })
            );
        }
        return;
    }
    println!(
        "{:<24} {:<6} {:<8} {:>6} {:>8} {:>14} {:>12}  TOKENS",
        "NAMESPACE", "OPEN", "DURABLE", "CONNS", "ROOMS", "STORED BYTES", "PUBLISHED"
    );
    for n in list {
        println!(
            "{:<24} {:<6} {:<8} {:>6} {:>8} {:>14} {:>12}  {}",
            n.name,
            if n.open { "yes" } else { "no" },
            durability_name(n.durability),
            n.connections,
            n.rooms,
            n.stored_bytes,
            n.published,
            n.tokens.join(",")
        );
        for r in &n.retention {
            println!("  retention {}", describe_retention(r));
        }
    }
}

fn print_rooms(ok: &pb::AdminOk, json_out: bool) {
    for r in &ok.rooms {
        if json_out {
            let members: Vec<_> = r
                .members
                .iter()
                .map(|m| {
                    json!({
                        "name": m.name, "durable": m.durable, "connected": m.connected,
                        "session": uuid_text(&m.session_id), "next_seq": m.next_seq,
                        "backlog": m.backlog, "unacked": m.unacked,
                        "group": m.group, "consumers": m.consumers,
                    })
                })
                .collect();
            println!(
                "{}",
                json!({
                    "namespace": r.namespace, "room": r.name, "first_seq": r.first_seq,
                    "last_seq": r.last_seq, "stored_bytes": r.stored_bytes,
                    "publish_rate": r.publish_rate, "members": members,
                })
            );
            continue;
        }
        println!(
            "{} {}: seqs {}..={}, {} bytes, {:.1} msg/s",
            r.namespace, r.name, r.first_seq, r.last_seq, r.stored_bytes, r.publish_rate
        );
        for m in &r.members {
            let name = if !m.group.is_empty() {
                format!("group {}", m.group)
            } else if m.name.is_empty() {
                "(ephemeral)".to_string()
            } else {
                m.name.clone()
            };
            let session = if !m.group.is_empty() {
                format!("{} consumers", m.consumers)
            } else if m.connected {
                uuid_text(&m.session_id)
            } else {
                "offline".to_string()
            };
            println!(
                "  {name:<24} next {:>10} backlog {:>10} unacked {:>6}  {session}",
                m.next_seq, m.backlog, m.unacked
            );
        }
    }
    if ok.truncated {
        println!("(more rooms exist than fit in one reply)");
    }
}
