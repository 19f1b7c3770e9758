//! Connection adapters below the handlers: a stream whose first bytes
//! were already read, and the hand-off of a listener's socket (plain or
//! TLS) to the fan-out.

use std::pin::Pin;
use std::task::{Context, Poll};

use amphi_tls::{RecordOpener, RecordSealer};
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Whether listeners' TLS records are sealed by the kernel (checked once).
fn kernel_tls() -> bool {
    static KTLS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KTLS.get_or_init(|| {
        let on = amphi_tls::ktls::available();
        tracing::info!(
            kernel_tls = on,
            "listener TLS records are sealed by {}",
            if on {
                "the kernel"
            } else {
                "the fan-out workers"
            }
        );
        on
    })
}

/// A listener's connection as the fan-out takes it: the socket and, over
/// TLS, the sealer of its records and the opener of the client's (for
/// `wss` control frames).
pub type FanoutSocket = (
    std::net::TcpStream,
    Option<Box<RecordSealer>>,
    Option<Box<RecordOpener>>,
);

/// A connection a listener stream arrives on.
pub trait ListenerConn: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Gives up the connection for the fan-out (`None`: it could not be).
    fn into_fanout(self) -> impl Future<Output = Option<FanoutSocket>> + Send;
}

impl ListenerConn for TcpStream {
    async fn into_fanout(self) -> Option<FanoutSocket> {
        self.into_std().ok().map(|s| (s, None, None))
    }
}

impl ListenerConn for Prefixed<tokio_rustls::server::TlsStream<TcpStream>> {
    async fn into_fanout(mut self) -> Option<FanoutSocket> {
        // Session tickets and anything else rustls still holds go out
        // first: the keys leave rustls only with nothing left to send.
        self.inner.flush().await.ok()?;
        let (tcp, conn) = self.inner.into_inner();
        let secrets = conn
            .dangerous_extract_secrets()
            .inspect_err(|e| tracing::debug!(error = %e, "TLS secrets not extractable"))
            .ok()?;
        let std = tcp.into_std().ok()?;
        // The client's records are opened by the fan-out either way (a
        // wss listener's control frames; the kernel takes only the
        // transmit keys).
        let opener = RecordOpener::new(secrets.rx).ok().map(Box::new);
        if kernel_tls() {
            // The kernel seals: the fan-out's plain path, unchanged.
            use std::os::fd::AsRawFd;
            return match amphi_tls::ktls::enable_tx(std.as_raw_fd(), secrets.tx) {
                Ok(()) => Some((std, None, opener)),
                Err(e) => {
                    tracing::warn!(error = %e, "kernel TLS refused a listener's keys");
                    None
                }
            };
        }
        let sealer = RecordSealer::new(secrets.tx).ok()?;
        Some((std, Some(Box::new(sealer)), opener))
    }
}

/// A stream whose first bytes were already read (the request line read to
/// route it): they are read again first.
pub struct Prefixed<S> {
    pub prefix: Bytes,
    pub inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
