//! `roomq`, the terminal CLI: publish, subscribe, list rooms. Readable output
//! for people; `--json` gives one JSON object per line for scripts.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use roomq_client::{Client, JoinOptions, Start, TlsOptions};
use serde_json::json;

mod admin;

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
    },
    /// Print (and acknowledge) what arrives in ROOM.
    Subscribe {
        room: String,
        /// Where to start: earliest, new, resume, or a seq.
        #[arg(long, default_value = "resume")]
        from: String,
        /// Durable membership name (default: the client id, if any;
        /// otherwise ephemeral).
        #[arg(long)]
        durable: Option<String>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this long without a message (e.g. 2s, 500ms).
        #[arg(long, value_parser = parse_duration)]
        idle_exit: Option<Duration>,
    },
    /// List the rooms of the namespace.
    Rooms,
    /// Administration: connects to /admin with --token.
    #[command(subcommand)]
    Admin(admin::AdminCmd),
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

/// The host part of a `host:port` address (brackets of an IPv6 address
/// removed), or "localhost" when there is none.
fn default_server_name(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
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

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Admin(cmd) = cli.command {
        return admin::run(&cli.addr, &cli.token, cli.json, cmd).await;
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
            if let Some(seq) = expect_last_seq {
                message = message.expect_last_seq(seq);
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
            durable,
            count,
            idle_exit,
        } => {
            let mut options = JoinOptions::new().start(parse_start(&from)?);
            if let Some(name) = durable {
                options = options.durable(name);
            }
            let mut sub = client.join(&room, options).await?;
            if !cli.json {
                let kind = if sub.is_durable() {
                    format!("durable {:?}", sub.durable_name())
                } else {
                    "ephemeral".to_string()
                };
                eprintln!(
                    "joined {room} ({kind}), from seq {}; room has {} stored",
                    sub.next_seq_at_join(),
                    sub.last_seq_at_join()
                );
            }
            let mut received = 0u64;
            while count.is_none_or(|c| received < c) {
                let next = match idle_exit {
                    Some(idle) => match tokio::time::timeout(idle, sub.next()).await {
                        Ok(d) => d,
                        Err(_) => break,
                    },
                    None => sub.next().await,
                };
                let Some(d) = next else { break };
                let text = String::from_utf8_lossy(&d.payload).into_owned();
                if cli.json {
                    println!(
                        "{}",
                        json!({
                            "room": d.room, "seq": d.seq, "event": d.event, "data": text,
                            "headers": d.headers, "timestamp_ms": d.timestamp_ms,
                            "attempt": d.attempt, "redelivered": d.redelivered,
                        })
                    );
                } else {
                    let again = if d.redelivered { " (redelivered)" } else { "" };
                    println!("[{}#{}] {}: {}{again}", d.room, d.seq, d.event, text);
                }
                d.ack().await?;
                received += 1;
            }
            sub.leave().await?;
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
        Cmd::Admin(_) => {}
    }
    client.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::default_server_name;

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
    }
}
