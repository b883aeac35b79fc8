//! The WebSocket transport: one binary WebSocket message carries one
//! protocol frame's protobuf body, without the TCP length prefix.
//!
//! Frames are read with `fastwebsockets`, whose message limit can change at
//! any time: the session lowers it to `limits.max_handshake_bytes` until the
//! handshake is accepted, as on TCP. Fragmented messages are put together
//! here, so the limit covers the whole message: before each frame is read,
//! the limit is set to what the message may still grow by, and the library
//! refuses a frame from its announced length, before buffering its payload.
//!
//! The reader answers nothing itself: a ping's pong and the closing
//! handshake are written by the session's writer task (through
//! [`WsFraming`]), which owns the socket's write half. The two share a
//! [`Control`] cell.
//!
//! Close codes (RFC 6455 §7.4) sent by the broker: 1000 when the session
//! ends normally, 1001 when the broker shuts down, 1002 for a WebSocket
//! protocol violation or undecodable bytes, 1003 for a text message, 1009
//! for a message over the limit, 1011 for a storage failure, 1008 for every
//! other fatal protocol error (the error frame before it says which).

use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead};
use roomq_wire::{ErrorCode, FrameError, LENGTH_PREFIX};
use tokio::io::AsyncRead;
use tokio::sync::Notify;

use crate::transport::{CloseReason, FrameSource, Framing, LINGER, LINGER_BYTES};

/// The subprotocol a client must offer, and the broker selects.
pub const SUBPROTOCOL: &str = "roomq.v1";

/// Largest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;
/// Largest WebSocket frame header the broker writes.
const MAX_HEAD: usize = 14;
/// The write buffer is given back after a burst larger than this.
const KEEP_OUT_BYTES: usize = 512 * 1024;

/// Close codes, as named in RFC 6455 §7.4.1.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// The close code for a session that ends for `reason`.
pub fn close_code(reason: CloseReason) -> u16 {
    match reason {
        CloseReason::Normal => close::NORMAL,
        CloseReason::Error(code) => match code {
            ErrorCode::ShuttingDown => close::GOING_AWAY,
            ErrorCode::MalformedFrame => close::PROTOCOL_ERROR,
            ErrorCode::FrameTooLarge => close::MESSAGE_TOO_BIG,
            ErrorCode::StorageFailure | ErrorCode::Internal => close::INTERNAL_ERROR,
            _ => close::POLICY_VIOLATION,
        },
    }
}

/// What the reader leaves for the writer: a pong it owes, and how the
/// connection should be closed if the reader knows better than the error
/// code (a text message).
#[derive(Default)]
pub struct Control {
    state: Mutex<ControlState>,
    wake: Notify,
}

#[derive(Default)]
struct ControlState {
    /// The payload of the latest ping not yet answered (RFC 6455 §5.5.3:
    /// answering only the latest is allowed).
    pong: Option<Bytes>,
    /// The close code to use instead of the one the error implies.
    close: Option<u16>,
    /// The code of the client's close frame, if it sent one.
    peer_close: Option<u16>,
}

impl Control {
    fn update(&self, f: impl FnOnce(&mut ControlState)) {
        // A poisoned lock only means another thread panicked mid-update of
        // plain data; the data is still usable.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state);
    }
}

/// The frames of a WebSocket connection, read from its read half `R` (the
/// bytes after the HTTP upgrade).
pub struct WsSource<R> {
    ws: WebSocketRead<R>,
    control: Arc<Control>,
    /// Largest message accepted.
    max_frame: usize,
    /// Most frames one message may be split into.
    max_fragments: u32,
    /// The message being put together from fragments.
    partial: Option<BytesMut>,
    fragments: u32,
}

impl<R: AsyncRead + Unpin + Send + 'static> WsSource<R> {
    /// A source reading `read_half` as the server side, with messages of at
    /// most `max_frame` bytes in at most `max_fragments` frames, and the
    /// [`WsFraming`] that writes this connection's frames.
    pub fn new(read_half: R, max_frame: usize, max_fragments: u32) -> (Self, WsFraming) {
        let (mut ws, _unused_write) =
            fastwebsockets::after_handshake_split(read_half, tokio::io::sink(), Role::Server);
        // Pongs and the closing handshake are the writer's: see the module doc.
        ws.set_auto_pong(false);
        ws.set_auto_close(false);
        // Unmasked here, after checking that the client masked the frame.
        ws.set_auto_apply_mask(false);
        let control = Arc::new(Control::default());
        let framing = WsFraming {
            out: BytesMut::new(),
            control: control.clone(),
        };
        let source = WsSource {
            ws,
            control,
            max_frame,
            max_fragments: max_fragments.max(1),
            partial: None,
            fragments: 0,
        };
        (source, framing)
    }

    fn violation(&self, why: impl Into<String>) -> Option<Result<Bytes, FrameError>> {
        Some(Err(FrameError::Transport(why.into())))
    }

    /// A text message: refused, and the connection closed with 1003.
    fn text_message(&self) -> Option<Result<Bytes, FrameError>> {
        self.control
            .update(|s| s.close = Some(close::UNSUPPORTED_DATA));
        self.violation("text WebSocket messages are not part of the protocol; send binary messages")
    }

    async fn read(&mut self) -> Option<Result<Bytes, FrameError>> {
        loop {
            let used = self.partial.as_ref().map_or(0, |p| p.len());
            // A control frame may come between fragments; it always fits.
            let room = self.max_frame.saturating_sub(used).max(MAX_CONTROL);
            // The library refuses a payload of `max_message_size` bytes or more.
            self.ws.set_max_message_size(room.saturating_add(1));
            // Nothing is ever owed: auto pong and auto close are off.
            let mut never = |_: Frame<'_>| async { Ok::<(), std::convert::Infallible>(()) };
            let mut frame = match self.ws.read_frame(&mut never).await {
                Ok(f) => f,
                // A close in the middle of a message ends the connection
                // like any other; the partial message is dropped.
                Err(WebSocketError::UnexpectedEOF) => return None,
                Err(WebSocketError::IoError(e)) => return Some(Err(FrameError::Io(e))),
                Err(WebSocketError::FrameTooLarge) => {
                    return Some(Err(FrameError::Oversized {
                        max: self.max_frame,
                    }))
                }
                // With automatic close off, only a text frame is checked
                // for UTF-8 (still masked, so it fails): a text message.
                Err(WebSocketError::InvalidUTF8) => return self.text_message(),
                Err(e) => return self.violation(format!("WebSocket protocol violation: {e}")),
            };
            // RFC 6455 §5.1: a server must close on an unmasked client
            // frame. The library keeps the mask private; its header
            // encoding shows whether there was one.
            let mut head = [0u8; MAX_HEAD + 2];
            frame.fmt_head(&mut head);
            if head.get(1).is_none_or(|b| b & 0x80 == 0) {
                return self.violation("client WebSocket frames must be masked (RFC 6455 §5.1)");
            }
            frame.unmask();
            let fin = frame.fin;
            match frame.opcode {
                OpCode::Binary => {
                    if self.partial.is_some() {
                        return self
                            .violation("a WebSocket message began before the previous one ended");
                    }
                    let payload = into_bytes(frame.payload);
                    if fin {
                        return Some(Ok(payload.freeze()));
                    }
                    self.partial = Some(payload);
                    self.fragments = 1;
                }
                OpCode::Continuation => {
                    let Some(mut partial) = self.partial.take() else {
                        return self
                            .violation("a continuation frame without a message to continue");
                    };
                    self.fragments = self.fragments.saturating_add(1);
                    if self.fragments > self.max_fragments {
                        return self.violation(format!(
                            "a WebSocket message split into more than {} frames",
                            self.max_fragments
                        ));
                    }
                    let len = partial.len().saturating_add(frame.payload.len());
                    if len > self.max_frame {
                        return Some(Err(FrameError::Oversized {
                            max: self.max_frame,
                        }));
                    }
                    partial.extend_from_slice(&frame.payload);
                    if fin {
                        return Some(Ok(partial.freeze()));
                    }
                    self.partial = Some(partial);
                }
                OpCode::Text => return self.text_message(),
                OpCode::Ping => {
                    let payload = Bytes::copy_from_slice(&frame.payload);
                    self.control.update(|s| s.pong = Some(payload));
                    self.control.wake.notify_one();
                }
                OpCode::Pong => {}
                OpCode::Close => {
                    let code = frame
                        .payload
                        .get(..2)
                        .and_then(|b| <[u8; 2]>::try_from(b).ok())
                        .map(u16::from_be_bytes);
                    self.control.update(|s| s.peer_close = code);
                    return None;
                }
            }
        }
    }
}

fn into_bytes(payload: Payload<'_>) -> BytesMut {
    match payload {
        Payload::Bytes(b) => b,
        other => BytesMut::from(&other[..]),
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> FrameSource for WsSource<R> {
    fn next_frame(&mut self) -> impl Future<Output = Option<Result<Bytes, FrameError>>> + Send {
        self.read()
    }

    fn set_max_frame(&mut self, max: usize) {
        self.max_frame = max;
    }

    async fn linger(&mut self) {
        // Read frames (a pipelined request, the client's close) so the
        // refusal is not destroyed by a reset; bounded like TCP's.
        self.max_frame = self.max_frame.min(LINGER_BYTES);
        let drain = async { while let Some(Ok(_)) = self.read().await {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

/// Writes a session's frames as binary WebSocket messages.
pub struct WsFraming {
    out: BytesMut,
    control: Arc<Control>,
}

impl WsFraming {
    fn push_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut head = [0u8; MAX_HEAD];
        let n = Frame::new(true, opcode, None, Payload::Borrowed(payload)).fmt_head(&mut head);
        self.out
            .extend_from_slice(head.get(..n).unwrap_or_default());
        self.out.extend_from_slice(payload);
    }
}

impl Framing for WsFraming {
    fn wire<'a>(&'a mut self, batch: &'a [u8]) -> &'a [u8] {
        if self.out.capacity() > KEEP_OUT_BYTES && batch.len() < KEEP_OUT_BYTES / 2 {
            self.out = BytesMut::new();
        }
        self.out.clear();
        let mut pong = None;
        self.control.update(|s| pong = s.pong.take());
        if let Some(p) = pong {
            self.push_frame(OpCode::Pong, &p);
        }
        let mut rest = batch;
        // The batch is the session's own output: whole frames, each with its
        // prefix. `get` keeps a malformed batch from panicking all the same.
        while let Some(prefix) = rest.get(..LENGTH_PREFIX) {
            let mut len = [0u8; LENGTH_PREFIX];
            len.copy_from_slice(prefix);
            let end = LENGTH_PREFIX.saturating_add(u32::from_be_bytes(len) as usize);
            let Some(body) = rest.get(LENGTH_PREFIX..end) else {
                break;
            };
            self.push_frame(OpCode::Binary, body);
            rest = rest.get(end..).unwrap_or_default();
        }
        &self.out
    }

    fn control_pending(&self) -> impl Future<Output = ()> + Send {
        self.control.wake.notified()
    }

    fn closing(&mut self, reason: CloseReason) -> Option<Bytes> {
        let mut code = close_code(reason);
        self.control.update(|s| {
            if let Some(c) = s.close {
                code = c;
            } else if s.peer_close.is_some() && reason == CloseReason::Normal {
                // Echo the client's close (RFC 6455 §5.5.1).
                code = close::NORMAL;
            }
        });
        let reason_text: &[u8] = match reason {
            CloseReason::Normal => b"",
            CloseReason::Error(c) => c.name().as_bytes(),
        };
        let mut payload = Vec::with_capacity(2 + reason_text.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason_text.get(..MAX_CONTROL - 2).unwrap_or(reason_text));
        self.out.clear();
        self.push_frame(OpCode::Close, &payload);
        Some(self.out.split().freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_become_one_binary_message_per_frame() {
        let (_source, mut framing) = WsSource::new(tokio::io::empty(), 1024, 4);
        let mut batch = Vec::new();
        for body in [&b"ab"[..], &[7u8; 200][..], b""] {
            batch.extend_from_slice(&(body.len() as u32).to_be_bytes());
            batch.extend_from_slice(body);
        }
        let out = framing.wire(&batch).to_vec();
        // 0x82 = FIN + binary; lengths as RFC 6455 §5.2 encodes them.
        let mut want = vec![0x82, 2, b'a', b'b', 0x82, 126, 0, 200];
        want.extend_from_slice(&[7u8; 200]);
        want.extend_from_slice(&[0x82, 0]);
        assert_eq!(out, want);
    }

    #[test]
    fn close_codes_follow_the_error() {
        assert_eq!(close_code(CloseReason::Normal), 1000);
        let e = |c| close_code(CloseReason::Error(c));
        assert_eq!(e(ErrorCode::ShuttingDown), 1001);
        assert_eq!(e(ErrorCode::FrameTooLarge), 1009);
        assert_eq!(e(ErrorCode::MalformedFrame), 1002);
        assert_eq!(e(ErrorCode::HandshakeTimeout), 1008);
    }
}
