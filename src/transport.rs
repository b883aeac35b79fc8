//! What a session needs from the thing that carries its frames, so that TCP,
//! TLS and WebSocket differ only in how bytes become frames and back.
//!
//! - A [`FrameSource`] yields the bodies of whole frames (one protobuf
//!   message each), checked against a limit that the session lowers for the
//!   handshake and raises after it.
//! - A [`Framing`] turns the session's outgoing batch (frames written with
//!   the TCP length prefix, the form the wire crate encodes) into the bytes
//!   this transport puts on the socket, and says what to write before the
//!   connection closes.
//!
//! The length-prefixed TCP stream (plain or inside TLS) implements both here;
//! WebSocket implements them in [`crate::ws`].

use std::future::Future;

use bytes::Bytes;
use futures::StreamExt;
use roomq_wire::{ErrorCode, FrameCodec, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::FramedRead;

/// How long a refused connection's input is drained before closing.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(500);
/// How much of a refused connection's input is drained at most.
pub const LINGER_BYTES: usize = 64 * 1024;

/// Which listener a session came through (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The TCP listener, plain or TLS.
    Tcp,
    /// The HTTP listener's `/ws`, plain or TLS.
    WebSocket,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::WebSocket => "ws",
        }
    }
}

/// Frames arriving from a client.
pub trait FrameSource: Send + Unpin + 'static {
    /// The next frame's protobuf body; `None` when the client closed.
    /// Cancelling the returned future may lose a partly read frame: the
    /// session only cancels it to close the connection.
    fn next_frame(&mut self) -> impl Future<Output = Option<Result<Bytes, FrameError>>> + Send;

    /// Frames longer than `max` are refused from now on, before their
    /// bytes are buffered.
    fn set_max_frame(&mut self, max: usize);

    /// Reads and discards input for a moment (at most [`LINGER`] and
    /// [`LINGER_BYTES`]) or until the client closes. Called after a refusal
    /// was written: closing a socket with unread input makes the kernel send
    /// a reset, which can destroy the refusal before the client reads it.
    fn linger(&mut self) -> impl Future<Output = ()> + Send;
}

/// Why a connection is being closed, for transports that can say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The session ended without an error (the client left, or it was
    /// dropped after a failed write).
    Normal,
    /// The broker sent a fatal error with this code.
    Error(ErrorCode),
}

/// Turns outgoing frames into this transport's bytes.
pub trait Framing: Send + 'static {
    /// The bytes to write for `batch`: whole frames, each with its 4-byte
    /// length prefix. May also carry control data the transport owes the
    /// client (a WebSocket pong), ahead of the frames.
    fn wire<'a>(&'a mut self, batch: &'a [u8]) -> &'a [u8];

    /// Resolves when the transport has control data to write although no
    /// frame is queued; the writer then calls [`Framing::wire`] with an
    /// empty batch. Never resolves for TCP.
    fn control_pending(&self) -> impl Future<Output = ()> + Send;

    /// Bytes to write just before the socket is shut down.
    fn closing(&mut self, reason: CloseReason) -> Option<Bytes>;
}

/// Length-prefixed frames on a byte stream: TCP, or TLS over TCP.
pub struct PrefixedSource<R> {
    frames: FramedRead<R, FrameCodec>,
}

impl<R: AsyncRead + Unpin + Send + 'static> PrefixedSource<R> {
    /// Reads frames of at most `max_frame` bytes from `read_half`.
    pub fn new(read_half: R, max_frame: usize) -> Self {
        PrefixedSource {
            frames: FramedRead::new(read_half, FrameCodec::new(max_frame)),
        }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> FrameSource for PrefixedSource<R> {
    fn next_frame(&mut self) -> impl Future<Output = Option<Result<Bytes, FrameError>>> + Send {
        self.frames.next()
    }

    fn set_max_frame(&mut self, max: usize) {
        self.frames.decoder_mut().set_max_frame(max);
    }

    fn linger(&mut self) -> impl Future<Output = ()> + Send {
        drain(self.frames.get_mut())
    }
}

/// Reads and discards what `input` sends, within [`LINGER`] and
/// [`LINGER_BYTES`].
pub async fn drain<R: AsyncRead + Unpin>(input: &mut R) {
    let mut scratch = [0u8; 4096];
    let mut total = 0;
    let read = async {
        while total < LINGER_BYTES {
            match input.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, read).await;
}

/// TCP's framing: the batch is already what goes on the wire.
pub struct PrefixedFraming;

impl Framing for PrefixedFraming {
    fn wire<'a>(&'a mut self, batch: &'a [u8]) -> &'a [u8] {
        batch
    }

    fn control_pending(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    fn closing(&mut self, _reason: CloseReason) -> Option<Bytes> {
        None
    }
}
