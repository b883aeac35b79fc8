//! A tiny publish/subscribe tool for the README tour (the full CLI comes
//! with the SDK issue).
//!
//! ```text
//! cargo run -p roomq-client --example tour -- subscribe general alice
//! cargo run -p roomq-client --example tour -- publish general "chat message" "hello"
//! ```
//! Set ROOMQ_ADDR to reach a broker elsewhere than 127.0.0.1:7420.

use roomq_client::raw::{ConnectOptions, Connection as Client};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = std::env::var("ROOMQ_ADDR").unwrap_or_else(|_| "127.0.0.1:7420".into());
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["publish", room, event, data] => {
            let (client, _) = Client::connect(ConnectOptions::new(addr)).await?;
            let seq = client.publish(room, event, data.to_string()).await?;
            println!("stored in {room} as seq {seq}");
        }
        ["subscribe", room, client_id] => {
            let opts = ConnectOptions::new(addr).client_id(*client_id);
            let (client, mut deliveries) = Client::connect(opts).await?;
            let joined = client.join(room).await?;
            println!(
                "joined {room} as {:?} (durable: {}), next seq {}",
                joined.subscription, joined.durable, joined.next_seq
            );
            while let Some(d) = deliveries.next_delivery().await {
                let Some(m) = &d.message else { continue };
                let again = if d.redelivered { " (again)" } else { "" };
                println!(
                    "[{}#{}] {}: {}{again}",
                    d.room,
                    m.seq,
                    m.event,
                    String::from_utf8_lossy(&m.payload)
                );
                client.ack(&d.room, &d.subscription, &[m.seq]).await?;
            }
        }
        _ => {
            eprintln!("usage: tour publish ROOM EVENT DATA | tour subscribe ROOM CLIENT_ID");
            std::process::exit(2);
        }
    }
    Ok(())
}
