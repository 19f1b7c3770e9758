//! Connection adapters below the handlers: the stream the front door serves
//! HTTP on ([`FrontIo`]: one deadline per request head, the request line
//! classified at the start of every head, request bodies with a deadline),
//! and the hand-off of a listener's socket (plain or TLS) to the fan-out.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use amphi_tls::{RecordOpener, RecordSealer};
use bytes::{Bytes, BytesMut};
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

impl ListenerConn for tokio_rustls::server::TlsStream<TcpStream> {
    async fn into_fanout(mut self) -> Option<FanoutSocket> {
        // Session tickets and anything else rustls still holds go out
        // first: the keys leave rustls only with nothing left to send.
        self.flush().await.ok()?;
        let (tcp, conn) = self.into_inner();
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

/// Time a client has to send a request head, from accept for the first
/// one (one deadline, however slowly the bytes trickle in), from the end
/// of the previous response for the next ones.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request body, from its head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a front-door connection's stream (below hyper), its service (above
/// hyper) and its task share.
pub struct Exchange<S> {
    /// Requests hyper passed to the service.
    started: AtomicU64,
    /// Responses whose body hyper is done with.
    done: AtomicU64,
    /// A response switched protocols (an events WebSocket): from then on
    /// bytes flow through untouched.
    upgraded: AtomicBool,
    /// The socket, for bounding the send buffer of an upgraded connection.
    fd: std::os::fd::RawFd,
    /// A listener request found at the start of a head (the 2nd or later
    /// request of a kept-alive connection): the stream, the bytes read of
    /// it, and the deadline of its head.
    handed: parking_lot::Mutex<Option<(S, BytesMut, Instant)>>,
}

/// Where a head is, as the stream below hyper sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// At the start of a request: nothing of it given to hyper yet, its
    /// request line not yet classified.
    Start,
    /// The head is being passed to hyper; its deadline runs.
    Head,
    /// The head is complete; the body and the response are hyper's and the
    /// service's (the body has its own deadline, [`DeadlineBody`]).
    Request,
    /// Upgraded: a plain pipe.
    Through,
}

/// Decides, from the start of a request, whether it is a listener stream
/// (`Some(true)`), not one (`Some(false)`), or needs more bytes (`None`).
pub type Classify = fn(&[u8]) -> Option<bool>;

/// The stream a front-door HTTP connection is served on. It gives every
/// request head ONE deadline (from accept for the first, from the end of
/// the previous response for the next ones), whatever trickles in, and
/// reads only on readiness. At the start of each head it classifies the
/// request line: a listener stream (`live.opus`, `live.ws`) is not given to
/// hyper; the stream is set aside for the fan-out and hyper sees the
/// connection end, so the hand-off works on any request of a kept-alive
/// connection.
pub struct FrontIo<S> {
    io: Option<S>,
    ex: Arc<Exchange<S>>,
    classify: Option<Classify>,
    phase: Phase,
    /// Bytes read but not yet given to hyper (only at the start of a head).
    buf: BytesMut,
    /// The end-of-head matcher: 1 after a `\n`, 2 after `\n\r`.
    matched: u8,
    /// Heads seen complete.
    heads: u64,
    deadline_at: Instant,
    deadline: Pin<Box<tokio::time::Sleep>>,
    head_timeout: Duration,
}

/// Largest read at the start of a head (the request line is classified
/// within its first 256 bytes).
const START_READ: usize = 512;

impl<S: AsyncRead + AsyncWrite + Unpin> FrontIo<S> {
    /// `io`, whose first head must be complete by `deadline`; later heads
    /// get `head_timeout` each. `classify`: `None` never hands off.
    pub fn new(
        io: S,
        fd: std::os::fd::RawFd,
        deadline: Instant,
        head_timeout: Duration,
        classify: Option<Classify>,
    ) -> Self {
        FrontIo {
            io: Some(io),
            ex: Arc::new(Exchange {
                started: AtomicU64::new(0),
                done: AtomicU64::new(0),
                upgraded: AtomicBool::new(false),
                fd,
                handed: parking_lot::Mutex::new(None),
            }),
            classify,
            phase: Phase::Start,
            buf: BytesMut::new(),
            matched: 0,
            heads: 0,
            deadline_at: deadline,
            deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
            head_timeout,
        }
    }

    /// Reads until the first request line is classified: `Ok(Some(true))`
    /// a listener stream ([`FrontIo::into_parts`] gives it up), `Ok(Some(false))`
    /// anything else, `Ok(None)` the peer left. Errors: the deadline passed
    /// or the socket failed.
    pub async fn first(&mut self) -> io::Result<Option<bool>> {
        std::future::poll_fn(|cx| self.poll_start(cx)).await
    }

    /// The stream and what was read of its head, with the head's deadline.
    pub fn into_parts(mut self) -> Option<(S, BytesMut, Instant)> {
        let io = self.io.take()?;
        Some((io, std::mem::take(&mut self.buf), self.deadline_at))
    }

    fn poll_start(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<bool>>> {
        loop {
            debug_assert_eq!(self.phase, Phase::Start);
            if !self.buf.is_empty() {
                match self.classify.map_or(Some(false), |f| f(&self.buf)) {
                    Some(true) => return Poll::Ready(Ok(Some(true))),
                    Some(false) => {
                        self.phase = Phase::Head;
                        let buf = std::mem::take(&mut self.buf);
                        self.scan(&buf);
                        self.buf = buf;
                        return Poll::Ready(Ok(Some(false)));
                    }
                    None => {}
                }
            }
            let Some(io) = self.io.as_mut() else {
                return Poll::Ready(Ok(None));
            };
            let mut tmp = [0u8; START_READ];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(())) => self.buf.extend_from_slice(rb.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.poll_deadline(cx).map(Err),
            }
        }
    }

    /// Pending until the head's deadline, then the error that ends it.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not complete in time",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Looks for the end of the head in `bytes` (a blank line, `\r\n\r\n`
    /// or `\n\n`); past it the head is complete.
    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.matched = match (self.matched, b) {
                (1 | 2, b'\n') => {
                    self.matched = 0;
                    self.heads += 1;
                    self.phase = Phase::Request;
                    return;
                }
                (_, b'\n') => 1,
                (1, b'\r') => 2,
                _ => 0,
            };
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for FrontIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ex.upgraded.load(Ordering::Acquire) {
            this.phase = Phase::Through;
        }
        if this.phase == Phase::Request
            && this.ex.started.load(Ordering::Acquire) == this.ex.done.load(Ordering::Acquire)
            && this.ex.done.load(Ordering::Acquire) >= this.heads
        {
            // Every request seen is answered: what comes next starts a
            // head, with a deadline of its own.
            this.phase = Phase::Start;
            this.deadline_at = Instant::now() + this.head_timeout;
            this.deadline.as_mut().reset(this.deadline_at.into());
        }
        if this.phase == Phase::Start {
            match ready!(this.poll_start(cx)) {
                Ok(Some(true)) => {
                    // A listener stream: set aside for the fan-out; hyper,
                    // idle between requests, sees the connection end.
                    if let Some(parts) = this.io.take() {
                        let buf = std::mem::take(&mut this.buf);
                        *this.ex.handed.lock() = Some((parts, buf, this.deadline_at));
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Some(false)) => {}
                Ok(None) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if !this.buf.is_empty() {
            let n = this.buf.len().min(out.remaining());
            out.put_slice(&this.buf.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let before = out.filled().len();
        match Pin::new(io).poll_read(cx, out) {
            Poll::Ready(Ok(())) => {
                if this.phase == Phase::Head {
                    this.scan(&out.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.phase == Phase::Head => this.poll_deadline(cx).map(Err),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrontIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }
}

/// Kernel send buffer of an upgraded (events WebSocket) connection: a
/// client that stops reading holds at most about twice this in the kernel
/// (Linux doubles it), and its next send then waits, and times out.
pub const UPGRADED_SNDBUF: usize = 32 * 1024;

/// Sets `SO_SNDBUF` (which also ends the kernel's autotuning of it).
pub fn bound_send_buffer(fd: std::os::fd::RawFd, bytes: usize) {
    let v = bytes as libc::c_int;
    // SAFETY: a socket option on a descriptor the caller owns, with a
    // pointer to a live c_int and its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Serves HTTP on `io` with `router` until the connection ends; each
/// request body must arrive within `body_timeout` of its head. Returns a
/// listener stream found on a later request of the connection, for the
/// caller to hand to the fan-out.
pub async fn serve_http<S>(
    io: FrontIo<S>,
    router: axum::Router,
    peer: Option<std::net::SocketAddr>,
    head_timeout: Duration,
    body_timeout: Duration,
) -> Option<(S, BytesMut, Instant)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let ex = io.ex.clone();
    let svc_ex = ex.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let ex = svc_ex.clone();
        ex.started.fetch_add(1, Ordering::AcqRel);
        let mut req = req.map(|b| {
            if hyper::body::Body::is_end_stream(&b) {
                axum::body::Body::new(b)
            } else {
                axum::body::Body::new(DeadlineBody {
                    inner: b,
                    deadline: Box::pin(tokio::time::sleep(body_timeout)),
                })
            }
        });
        // The peer's address (`ConnectInfo`), for joins and bans.
        if let Some(peer) = peer {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
        }
        let call = router.clone().oneshot(req);
        async move {
            let res = call.await?;
            if res.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS {
                ex.upgraded.store(true, Ordering::Release);
                bound_send_buffer(ex.fd, UPGRADED_SNDBUF);
            }
            Ok::<_, std::convert::Infallible>(res.map(|b| {
                axum::body::Body::new(Answered {
                    inner: b,
                    ex: ex.clone(),
                })
            }))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
    ex.handed.lock().take()
}

/// A response body that counts its response answered when hyper drops it.
struct Answered<S> {
    inner: axum::body::Body,
    ex: Arc<Exchange<S>>,
}

impl<S> Drop for Answered<S> {
    fn drop(&mut self) {
        self.ex.done.fetch_add(1, Ordering::AcqRel);
    }
}

impl<S: Send + 'static> hyper::body::Body for Answered<S> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Body pieces smaller than this are copied rather than sliced.
const SMALL_PIECE: usize = 4096;

/// A request body that must be complete by a deadline: a trickled body
/// fails then (the handler answers 400 and the connection closes).
struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_frame(cx) {
            // A small piece is copied out: as a slice it would pin the whole
            // read buffer it arrived in (8 KiB for each trickled byte).
            return Poll::Ready(r.map(|r| {
                r.map(|f| {
                    f.map_data(|d| {
                        if d.len() < SMALL_PIECE {
                            Bytes::copy_from_slice(&d)
                        } else {
                            d
                        }
                    })
                })
                .map_err(io::Error::other)
            }));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request body not complete in time",
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
