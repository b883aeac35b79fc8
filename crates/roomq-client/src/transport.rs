//! How a connection's frames travel: length-prefixed on a TCP (or TLS)
//! stream, or one binary message per frame on a WebSocket (`ws://` and
//! `wss://` addresses, the broker's `/ws` endpoint). The rest of the client
//! sees frames only.

use std::pin::Pin;

use bytes::{Buf, Bytes, BytesMut};
use futures::{SinkExt, Stream, StreamExt};
use roomq_wire::{FrameCodec, FrameError, LENGTH_PREFIX};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::FramedRead;

use crate::raw::ConnectOptions;
use crate::ClientError;

/// The WebSocket subprotocol of the roomq protocol.
pub const SUBPROTOCOL: &str = "roomq.v1";

/// A byte stream of either kind, boxed so one type serves TCP and TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The frames the broker sends, as protobuf bodies.
pub(crate) type FrameStream = Pin<Box<dyn Stream<Item = Result<Bytes, FrameError>> + Send>>;

/// Where the client's frames go.
pub(crate) enum FrameWriter {
    /// Length-prefixed frames on a byte stream.
    Prefixed(Box<dyn AsyncWrite + Unpin + Send>),
    /// One binary message per frame.
    WebSocket(futures::stream::SplitSink<WebSocketStream<Box<dyn Io>>, Message>),
}

impl FrameWriter {
    /// Writes `batch` (frames with their length prefixes) and flushes;
    /// leaves `batch` empty.
    pub(crate) async fn write_batch(&mut self, batch: &mut BytesMut) -> Result<(), ClientError> {
        match self {
            FrameWriter::Prefixed(w) => {
                w.write_all(batch).await?;
                // Flushing matters for TLS, which may keep encrypted bytes back.
                w.flush().await?;
                batch.clear();
            }
            FrameWriter::WebSocket(sink) => {
                while batch.len() >= LENGTH_PREFIX {
                    let len = batch.get_u32() as usize;
                    let body = batch.split_to(len.min(batch.len())).freeze();
                    sink.feed(Message::Binary(body)).await.map_err(ws_error)?;
                }
                batch.clear();
                sink.flush().await.map_err(ws_error)?;
            }
        }
        Ok(())
    }

    /// Closes the connection's sending side.
    pub(crate) async fn close(&mut self) {
        match self {
            FrameWriter::Prefixed(w) => {
                let _ = w.shutdown().await;
            }
            FrameWriter::WebSocket(sink) => {
                let _ = sink.close().await;
            }
        }
    }
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> ClientError {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(e) => ClientError::Io(e),
        Error::ConnectionClosed | Error::AlreadyClosed => ClientError::Closed,
        e => ClientError::Protocol(format!("WebSocket: {e}")),
    }
}

/// A WebSocket address, split into what the TCP connect and the upgrade
/// request need.
struct WsAddr {
    secure: bool,
    /// `host:port`, the port filled in from the scheme if absent.
    authority: String,
    url: String,
}

/// `Some` for `ws://` and `wss://` addresses.
fn ws_addr(addr: &str) -> Option<Result<WsAddr, ClientError>> {
    let (secure, rest) = if let Some(rest) = addr.strip_prefix("ws://") {
        (false, rest)
    } else if let Some(rest) = addr.strip_prefix("wss://") {
        (true, rest)
    } else {
        return None;
    };
    let host_port = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host_port.is_empty() {
        return Some(Err(ClientError::Protocol(format!(
            "{addr:?} names no host"
        ))));
    }
    // An IPv6 literal is bracketed, so a port is a colon after the last `]`.
    let has_port = match host_port.rfind(']') {
        Some(end) => host_port.get(end..).is_some_and(|t| t.contains(':')),
        None => host_port.contains(':'),
    };
    let authority = if has_port {
        host_port.to_string()
    } else {
        format!("{host_port}:{}", if secure { 443 } else { 80 })
    };
    // `ws://host:port` alone (or with `/`) means the broker's endpoint.
    let path = rest.get(host_port.len()..).unwrap_or_default();
    let url = if path.is_empty() || path == "/" {
        let addr = addr.strip_suffix('/').unwrap_or(addr);
        format!("{addr}/ws")
    } else {
        addr.to_string()
    };
    Some(Ok(WsAddr {
        secure,
        authority,
        url,
    }))
}

/// Opens the transport `opts.addr` names: `host:port` for TCP (TLS if
/// `opts.tls` is set), `ws://host:port[/path]` or `wss://...` for WebSocket
/// (the path defaults to `/ws`; `wss` needs `opts.tls`).
pub(crate) async fn open(opts: &ConnectOptions) -> Result<(FrameStream, FrameWriter), ClientError> {
    let max_read = opts.max_frame + 64 * 1024;
    let ws = match ws_addr(&opts.addr) {
        Some(ws) => Some(ws?),
        None => None,
    };
    let tcp_addr = ws
        .as_ref()
        .map_or(opts.addr.as_str(), |w| w.authority.as_str());
    let stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(tcp_addr))
        .await
        .map_err(|_| ClientError::Timeout)??;
    stream.set_nodelay(true)?;
    let Some(ws) = ws else {
        return Ok(match &opts.tls {
            None => {
                let (read_half, write_half) = stream.into_split();
                prefixed(read_half, write_half, max_read)
            }
            Some(tls) => {
                let stream = tokio::time::timeout(opts.connect_timeout, tls.connect(stream))
                    .await
                    .map_err(|_| ClientError::Timeout)??;
                let (read_half, write_half) = tokio::io::split(stream);
                prefixed(read_half, write_half, max_read)
            }
        });
    };
    let io: Box<dyn Io> = match (&opts.tls, ws.secure) {
        (None, false) => Box::new(stream),
        (Some(tls), true) => Box::new(
            tokio::time::timeout(opts.connect_timeout, tls.connect(stream))
                .await
                .map_err(|_| ClientError::Timeout)??,
        ),
        (None, true) => {
            return Err(ClientError::Tls(
                "a wss:// address needs TLS options (.tls(...))".into(),
            ))
        }
        (Some(_), false) => {
            return Err(ClientError::Tls(
                "TLS options were given for a ws:// address; use wss://".into(),
            ))
        }
    };
    let mut request = ws
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::Protocol(format!("{:?}: {e}", ws.url)))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max_read);
    config.max_frame_size = Some(max_read);
    let upgrade = tokio_tungstenite::client_async_with_config(request, io, Some(config));
    let (socket, response) = tokio::time::timeout(opts.connect_timeout, upgrade)
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => ClientError::Protocol(format!(
                "WebSocket upgrade refused with HTTP {}: {}",
                r.status(),
                String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).trim()
            )),
            e => ws_error(e),
        })?;
    let selected = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if selected != Some(SUBPROTOCOL) {
        return Err(ClientError::Protocol(format!(
            "the server did not select the WebSocket subprotocol {SUBPROTOCOL}"
        )));
    }
    let (sink, stream) = socket.split();
    let frames = futures::stream::unfold(stream, |mut stream| async move {
        loop {
            match stream.next().await? {
                Ok(Message::Binary(body)) => return Some((Ok(body), stream)),
                Ok(Message::Text(_)) => {
                    let e = FrameError::Transport("the broker sent a text message".into());
                    return Some((Err(e), stream));
                }
                Ok(Message::Close(_)) => return None,
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Err(e) => {
                    let e = match e {
                        tokio_tungstenite::tungstenite::Error::Io(e) => FrameError::Io(e),
                        e => FrameError::Transport(e.to_string()),
                    };
                    return Some((Err(e), stream));
                }
            }
        }
    });
    Ok((Box::pin(frames), FrameWriter::WebSocket(sink)))
}

fn prefixed<R, W>(read_half: R, write_half: W, max_read: usize) -> (FrameStream, FrameWriter)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let frames = FramedRead::new(read_half, FrameCodec::new(max_read));
    (
        Box::pin(frames),
        FrameWriter::Prefixed(Box::new(write_half)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_addresses() {
        let a = ws_addr("ws://127.0.0.1:7421").unwrap().unwrap();
        assert_eq!(
            (a.secure, a.authority.as_str(), a.url.as_str()),
            (false, "127.0.0.1:7421", "ws://127.0.0.1:7421/ws")
        );
        let a = ws_addr("wss://broker.example/custom/ws").unwrap().unwrap();
        assert_eq!(
            (a.secure, a.authority.as_str(), a.url.as_str()),
            (true, "broker.example:443", "wss://broker.example/custom/ws")
        );
        let a = ws_addr("ws://127.0.0.1:7421/").unwrap().unwrap();
        assert_eq!(a.url, "ws://127.0.0.1:7421/ws");
        let a = ws_addr("ws://[::1]/ws").unwrap().unwrap();
        assert_eq!(a.authority, "[::1]:80");
        assert!(ws_addr("127.0.0.1:7420").is_none());
        assert!(ws_addr("ws:///ws").unwrap().is_err());
    }
}
