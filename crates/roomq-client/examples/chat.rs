//! The Socket.IO chat example, made durable.
//!
//! Everyone in a room sees each line except its sender; joins and leaves are
//! announced; and whoever was offline gets what they missed when they come
//! back, even if the broker was restarted in between.
//!
//! ```text
//! cargo run --release --bin roomqd                                   # terminal 1
//! cargo run -p roomq-client --example chat -- alice                  # terminal 2
//! cargo run -p roomq-client --example chat -- bob                    # terminal 3
//! ```
//! Usage: `chat NAME [ROOM]` (room `general` by default). Set ROOMQ_ADDR to
//! reach a broker elsewhere than 127.0.0.1:7420. End with Ctrl-D.

use roomq_client::{Client, Event, JoinOptions};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(name) = args.next() else {
        eprintln!("usage: chat NAME [ROOM]");
        std::process::exit(2);
    };
    let room = args.next().unwrap_or_else(|| "general".to_string());
    let addr = std::env::var("ROOMQ_ADDR").unwrap_or_else(|_| "127.0.0.1:7420".into());

    // The client id makes the membership durable: the broker keeps this
    // person's place in the room while they are away.
    let client = Client::builder(addr)
        .client_id(format!("chat-{name}"))
        .client_name(name.clone())
        .connect()
        .await?;
    let mut events = client.events();
    let mut sub = client.join(&room, JoinOptions::new()).await?;
    let joined_at = now_ms();
    let missed =
        sub.last_seq_at_join() + 1 - sub.next_seq_at_join().min(sub.last_seq_at_join() + 1);
    println!("* you are {name} in #{room}; {missed} message(s) waiting for you");
    announce(&client, &room, "joined", &name).await;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(text) if !text.trim().is_empty() => {
                    client
                        .message("chat message", text)
                        .to(&room)
                        .header("from", &name)
                        .except_self()
                        .send()
                        .await?;
                }
                Some(_) => {}
                None => break,
            },
            delivery = sub.next() => {
                let Some(d) = delivery else { break };
                let from = d.headers.get("from").cloned().unwrap_or_else(|| "?".into());
                let text = String::from_utf8_lossy(&d.payload);
                let away = if d.timestamp_ms < joined_at { "  (while you were away)" } else { "" };
                match d.event.as_str() {
                    "joined" => println!("* {from} joined{away}"),
                    "left" => println!("* {from} left{away}"),
                    _ => println!("{from}: {text}{away}"),
                }
                d.ack().await?;
            }
            event = events.recv() => match event {
                Ok(Event::Disconnected { .. }) => println!("* connection lost; reconnecting..."),
                Ok(Event::Connected { reconnected: true, .. }) => println!("* reconnected"),
                _ => {}
            },
        }
    }
    announce(&client, &room, "left", &name).await;
    sub.leave().await?;
    client.close().await;
    Ok(())
}

async fn announce(client: &Client, room: &str, what: &str, name: &str) {
    let sent = client
        .message(what, "")
        .to(room)
        .header("from", name)
        .except_self()
        .send()
        .await;
    if let Err(e) = sent {
        eprintln!("* could not announce that you {what}: {e}");
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
