//! `roomq stats` (one snapshot of the broker's figures) and `roomq top` (a
//! live full-screen view of them, refreshed every second). Both ask the
//! `/admin` namespace's `Stats` op; `top` draws with ratatui on crossterm.
//!
//! The screen is a pure function of two snapshots ([`render`]): the latest
//! and the one before, whose difference gives the rates and the mean
//! latencies over the last interval. Tests draw it on ratatui's
//! `TestBackend`.

use std::time::Duration;

use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use ratatui::Frame;
use roomq_client::proto as pb;
use roomq_client::raw::{ConnectOptions, Connection};
use serde_json::json;

/// Asks the broker for its figures.
async fn fetch(
    conn: &Connection,
    max_rooms: u32,
    order: pb::StatsOrder,
) -> Result<pb::BrokerStats> {
    let ok = conn
        .admin(pb::admin::Op::Stats(pb::AdminStats {
            max_rooms,
            order: order as i32,
        }))
        .await?;
    ok.stats.context("the broker's reply has no stats")
}

async fn connect(addr: &str, token: &str, name: &str) -> Result<Connection> {
    let opts = ConnectOptions::new(addr)
        .namespace("/admin")
        .token(token)
        .client_name(name);
    let (conn, _pushes) = Connection::connect(opts)
        .await
        .with_context(|| format!("cannot connect to {addr} /admin"))?;
    Ok(conn)
}

fn mean_ms(
    now: Option<&pb::HistogramSummary>,
    before: Option<&pb::HistogramSummary>,
) -> Option<f64> {
    let now = now?;
    let (c0, s0) = before.map_or((0, 0.0), |b| (b.count, b.sum));
    let n = now.count.checked_sub(c0).filter(|n| *n > 0)?;
    Some((now.sum - s0) / n as f64 * 1000.0)
}

fn all_time_mean_ms(h: Option<&pb::HistogramSummary>) -> Option<f64> {
    mean_ms(h, None)
}

fn ms_text(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |ms| format!("{ms:.2} ms"))
}

/// `roomq stats`: one snapshot, as text or one JSON object.
pub async fn stats(
    addr: &str,
    token: &str,
    json_out: bool,
    rooms: u32,
    by_rate: bool,
) -> Result<()> {
    let conn = connect(addr, token, "roomq-cli stats").await?;
    let order = if by_rate {
        pb::StatsOrder::PublishRate
    } else {
        pb::StatsOrder::Backlog
    };
    let s = fetch(&conn, rooms, order).await?;
    if json_out {
        println!("{}", stats_json(&s));
        return Ok(());
    }
    println!(
        "connections: {} tcp, {} ws   storage: {} bytes   rooms: {}   uptime: {} s",
        s.connections_tcp,
        s.connections_ws,
        s.storage_bytes,
        s.rooms_total,
        s.uptime_ms / 1000
    );
    println!(
        "commit flush: {} mean, {} commits   publish confirm: {} mean   delivery lag: {} mean",
        ms_text(all_time_mean_ms(s.commit_flush_seconds.as_ref())),
        s.commit_flush_seconds.as_ref().map_or(0, |h| h.count),
        ms_text(all_time_mean_ms(s.publish_confirm_seconds.as_ref())),
        ms_text(all_time_mean_ms(s.delivery_lag_seconds.as_ref())),
    );
    println!(
        "errors: {}   handshakes refused: {}   quota refusals: {}   slow consumers: {}",
        s.errors, s.handshakes_refused, s.quota_refusals, s.slow_consumer_disconnects
    );
    println!();
    println!(
        "{:<16} {:>8} {:>6} {:>8} {:>12} {:>12} {:>10} {:>8} {:>8}",
        "NAMESPACE",
        "SESSIONS",
        "ROOMS",
        "MEMBERS",
        "PUBLISHED",
        "DELIVERIES",
        "REDELIVER",
        "DEAD",
        "EXPIRED"
    );
    for n in &s.namespaces {
        println!(
            "{:<16} {:>8} {:>6} {:>8} {:>12} {:>12} {:>10} {:>8} {:>8}",
            n.name,
            n.sessions,
            n.rooms,
            n.members,
            n.published,
            n.deliveries,
            n.redeliveries,
            n.dead_lettered,
            n.expired
        );
    }
    println!();
    println!(
        "{:<16} {:<24} {:>10} {:>10} {:>8} {:>9} {:>10} {:>8}",
        "NAMESPACE", "ROOM", "MSG/S", "BACKLOG", "MEMBERS", "CONNECTED", "REDELIVER", "DEAD"
    );
    for r in &s.rooms {
        println!(
            "{:<16} {:<24} {:>10.1} {:>10} {:>8} {:>9} {:>10} {:>8}",
            r.namespace,
            r.name,
            r.publish_rate,
            r.backlog,
            r.members,
            r.connected_members,
            r.redeliveries,
            r.dead_lettered
        );
    }
    Ok(())
}

fn histogram_json(h: Option<&pb::HistogramSummary>) -> serde_json::Value {
    let h = h.cloned().unwrap_or_default();
    json!({"count": h.count, "sum": h.sum})
}

/// A snapshot as one JSON object (the field names of `BrokerStats`).
pub fn stats_json(s: &pb::BrokerStats) -> serde_json::Value {
    json!({
        "time_ms": s.time_ms,
        "uptime_ms": s.uptime_ms,
        "connections_tcp": s.connections_tcp,
        "connections_ws": s.connections_ws,
        "storage_bytes": s.storage_bytes,
        "rooms_total": s.rooms_total,
        "commit_flush_seconds": histogram_json(s.commit_flush_seconds.as_ref()),
        "commit_batch_messages": histogram_json(s.commit_batch_messages.as_ref()),
        "publish_confirm_seconds": histogram_json(s.publish_confirm_seconds.as_ref()),
        "delivery_lag_seconds": histogram_json(s.delivery_lag_seconds.as_ref()),
        "errors": s.errors,
        "handshakes_refused": s.handshakes_refused,
        "slow_consumer_disconnects": s.slow_consumer_disconnects,
        "quota_refusals": s.quota_refusals,
        "namespaces": s.namespaces.iter().map(|n| json!({
            "name": n.name, "sessions": n.sessions, "rooms": n.rooms, "members": n.members,
            "published": n.published, "stored_bytes": n.stored_bytes, "duplicates": n.duplicates,
            "deliveries": n.deliveries, "redeliveries": n.redeliveries, "acks": n.acks,
            "nacks": n.nacks, "dead_lettered": n.dead_lettered, "expired": n.expired,
        })).collect::<Vec<_>>(),
        "rooms": s.rooms.iter().map(|r| json!({
            "namespace": r.namespace, "name": r.name, "last_seq": r.last_seq,
            "publish_rate": r.publish_rate, "backlog": r.backlog, "members": r.members,
            "connected_members": r.connected_members, "redeliveries": r.redeliveries,
            "dead_lettered": r.dead_lettered,
        })).collect::<Vec<_>>(),
    })
}

/// What `top` shows: the broker's address, the room order, and the last
/// two snapshots.
#[derive(Debug, Clone)]
pub struct View {
    pub addr: String,
    pub order: pb::StatsOrder,
    pub now: pb::BrokerStats,
    pub before: Option<pb::BrokerStats>,
}

/// Draws `view` on `frame`: a header with the broker's figures, then the
/// rooms in the chosen order.
pub fn render(frame: &mut Frame, view: &View) {
    let s = &view.now;
    let b = view.before.as_ref();
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let secs = b
        .map(|b| s.time_ms.saturating_sub(b.time_ms) as f64 / 1000.0)
        .filter(|d| *d > 0.0);
    let published: u64 = s.namespaces.iter().map(|n| n.published).sum();
    let delivered: u64 = s.namespaces.iter().map(|n| n.deliveries).sum();
    let rate = |now: u64, before: Option<u64>| match (secs, before) {
        (Some(d), Some(x)) => format!("{:.0}/s", now.saturating_sub(x) as f64 / d),
        _ => "-".to_string(),
    };
    let pub_before = b.map(|b| b.namespaces.iter().map(|n| n.published).sum());
    let del_before = b.map(|b| b.namespaces.iter().map(|n| n.deliveries).sum());
    let flush = mean_ms(
        s.commit_flush_seconds.as_ref(),
        b.and_then(|b| b.commit_flush_seconds.as_ref()),
    );
    let confirm = mean_ms(
        s.publish_confirm_seconds.as_ref(),
        b.and_then(|b| b.publish_confirm_seconds.as_ref()),
    );
    let lines = vec![
        Line::from(format!(
            "roomq {}   up {} s   connections {} (tcp {}, ws {})   rooms {}   storage {} MiB",
            view.addr,
            s.uptime_ms / 1000,
            s.connections_tcp + s.connections_ws,
            s.connections_tcp,
            s.connections_ws,
            s.rooms_total,
            s.storage_bytes / (1024 * 1024),
        )),
        Line::from(format!(
            "commit latency {} (flush, mean over the last second)   publish confirm {}",
            ms_text(flush),
            ms_text(confirm),
        )),
        Line::from(format!(
            "published {} ({})   delivered {} ({})   errors {}   quota refusals {}   slow consumers {}",
            published,
            rate(published, pub_before),
            delivered,
            rate(delivered, del_before),
            s.errors,
            s.quota_refusals,
            s.slow_consumer_disconnects,
        )),
    ];
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" roomq top ")),
        head,
    );
    let sorted = match view.order {
        pb::StatsOrder::Backlog => "backlog",
        pb::StatsOrder::PublishRate => "publish rate",
    };
    let header = Row::new([
        "NAMESPACE",
        "ROOM",
        "MSG/S",
        "BACKLOG",
        "LAST SEQ",
        "MEMBERS",
        "CONNECTED",
        "REDELIVERED",
        "DEAD",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let rows = s.rooms.iter().map(|r| {
        Row::new([
            r.namespace.clone(),
            r.name.clone(),
            format!("{:.0}", r.publish_rate),
            r.backlog.to_string(),
            r.last_seq.to_string(),
            r.members.to_string(),
            r.connected_members.to_string(),
            r.redeliveries.to_string(),
            r.dead_lettered.to_string(),
        ])
    });
    let widths = [
        Constraint::Length(12),
        Constraint::Min(16),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(12),
        Constraint::Length(6),
    ];
    let title = format!(
        " rooms by {sorted} ({} of {}) ",
        s.rooms.len(),
        s.rooms_total
    );
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::default().borders(Borders::ALL).title(title)),
        body,
    );
    frame.render_widget(
        Paragraph::new("q quit   s sort by backlog / publish rate"),
        foot,
    );
}

/// Puts the terminal back however `top` ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen);
    }
}

/// `roomq top`: redraws every `interval` until `q` (or Esc, or Ctrl-C).
pub async fn top(addr: &str, token: &str, interval: Duration) -> Result<()> {
    let conn = connect(addr, token, "roomq-cli top").await?;
    let mut order = pb::StatsOrder::Backlog;
    let mut before: Option<pb::BrokerStats> = None;
    enable_raw_mode().context("cannot put the terminal in raw mode")?;
    let _restore = Restore;
    execute!(std::io::stdout(), EnterAlternateScreen)?;
    let mut terminal =
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
    loop {
        let rows = terminal.size()?.height.saturating_sub(10).max(1);
        let now = fetch(&conn, u32::from(rows), order).await?;
        let view = View {
            addr: addr.to_string(),
            order,
            now: now.clone(),
            before: before.take(),
        };
        terminal.draw(|f| render(f, &view))?;
        before = Some(now);
        let deadline = std::time::Instant::now() + interval;
        // Keys until the next refresh (crossterm's poll blocks this thread).
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let key = tokio::task::block_in_place(|| -> std::io::Result<Option<Event>> {
                if event::poll(left)? {
                    event::read().map(Some)
                } else {
                    Ok(None)
                }
            })?;
            let Some(Event::Key(k)) = key else {
                continue;
            };
            if k.kind != KeyEventKind::Press {
                continue;
            }
            let ctrl_c =
                k.code == KeyCode::Char('c') && k.modifiers.contains(event::KeyModifiers::CONTROL);
            match k.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                _ if ctrl_c => return Ok(()),
                KeyCode::Char('s') | KeyCode::Char('o') => {
                    order = match order {
                        pb::StatsOrder::Backlog => pb::StatsOrder::PublishRate,
                        pb::StatsOrder::PublishRate => pb::StatsOrder::Backlog,
                    };
                    // A new order asks again now (rates need the next one).
                    break;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;

    fn snapshot(time_ms: u64, published: u64, flush: (u64, f64)) -> pb::BrokerStats {
        pb::BrokerStats {
            time_ms,
            uptime_ms: 42_000,
            connections_tcp: 5,
            connections_ws: 2,
            storage_bytes: 3 << 20,
            rooms_total: 2,
            namespaces: vec![pb::NamespaceStats {
                name: "/".into(),
                published,
                deliveries: published,
                ..Default::default()
            }],
            rooms: vec![pb::RoomStats {
                namespace: "/".into(),
                name: "orders".into(),
                last_seq: 1234,
                publish_rate: 250.0,
                backlog: 77,
                members: 3,
                connected_members: 2,
                redeliveries: 9,
                dead_lettered: 4,
            }],
            commit_flush_seconds: Some(pb::HistogramSummary {
                count: flush.0,
                sum: flush.1,
            }),
            ..Default::default()
        }
    }

    fn screen(view: &View) -> String {
        let mut terminal = ratatui::Terminal::new(TestBackend::new(120, 16)).unwrap();
        terminal.draw(|f| render(f, view)).unwrap();
        let buf = terminal.backend().buffer().clone();
        let mut text = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                text.push_str(buf[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    #[test]
    fn the_screen_shows_a_rooms_figures_and_the_brokers() {
        let view = View {
            addr: "127.0.0.1:7420".into(),
            order: pb::StatsOrder::Backlog,
            before: Some(snapshot(1_000, 1_000, (10, 0.010))),
            now: snapshot(2_000, 1_500, (20, 0.030)),
        };
        let text = screen(&view);
        let row = text
            .lines()
            .find(|l| l.contains("orders"))
            .unwrap_or_else(|| panic!("no row for the room:\n{text}"));
        let cells: Vec<&str> = row
            .split(|c: char| c.is_whitespace() || c == '│')
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(
            cells,
            ["/", "orders", "250", "77", "1234", "3", "2", "9", "4"],
            "{text}"
        );
        // Ten commits took 20 ms in the last second: 2 ms each.
        assert!(text.contains("commit latency 2.00 ms"), "{text}");
        assert!(text.contains("connections 7 (tcp 5, ws 2)"), "{text}");
        assert!(text.contains("published 1500 (500/s)"), "{text}");
        assert!(text.contains("rooms by backlog (1 of 2)"), "{text}");
    }

    #[test]
    fn the_first_screen_has_no_rates_yet() {
        let view = View {
            addr: "ws://127.0.0.1:7421/ws".into(),
            order: pb::StatsOrder::PublishRate,
            before: None,
            now: snapshot(2_000, 1_500, (0, 0.0)),
        };
        let text = screen(&view);
        assert!(text.contains("commit latency - "), "{text}");
        assert!(text.contains("rooms by publish rate"), "{text}");
        assert!(text.contains("orders"), "{text}");
    }
}
