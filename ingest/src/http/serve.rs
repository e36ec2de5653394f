//! The accept loop of fleetpipe's HTTP listeners (the devices' and the
//! operators'), in place of `axum::serve`, which has no timeouts and no
//! connection cap.
//!
//! Every connection is in one phase at a time, and the phase decides how long
//! it may stay there:
//!
//! | phase | from | until | limit |
//! | --- | --- | --- | --- |
//! | idle | accepted, or the previous answer sent | first byte of a request | `idle_timeout` |
//! | header | that first byte | the request head is complete | `header_read_timeout` |
//! | body | the head, when a body follows | the body's last byte | the handler's (`ingest.http.body_timeout` for `POST /v1/pings`) |
//! | handling | the whole request read | the answer sent | none (the pipeline's own backpressure) |
//!
//! Whatever the phase, a write the peer takes no byte of for `idle_timeout`
//! (5 s once draining) fails and closes the connection
//! (`fleetpipe_http_timeouts_total{kind="write"}`): a reader that stopped,
//! such as a Server-Sent Events client or a WebSocket that reads nothing,
//! cannot hold its connection, its place under the cap or the drain.
//!
//! Past its limit a connection is closed without an answer. At most
//! `max_connections` connections (WebSocket sessions included) are open at
//! once per listener; one more is answered `503` and closed at once.
//!
//! A TLS listener (`ingest.http.tls`) first does the TLS handshake, in the
//! connection's own task, bounded by `header_read_timeout` from the
//! connection's acceptance: a client that sends no ClientHello, or sends it
//! too slowly, is closed then (counted in
//! `fleetpipe_http_tls_handshake_failures_total{reason="timeout"}`). The
//! connection holds its place under `max_connections` from acceptance, its
//! handshake included; one over the cap is closed without an answer (a
//! plaintext `503` would be no TLS). After the handshake the connection is
//! idle and the phases above apply, measured on the encrypted bytes (the
//! first byte of a TLS record carrying a request starts its header phase).
//!
//! On shutdown the listener stops accepting, connections that are idle, in
//! their TLS handshake, in their head or in their body are closed at once,
//! and requests already read are answered (then their connections close);
//! [`serve`] returns when every connection is done. WebSocket sessions, once
//! upgraded, are not connections of this loop any more: they end on the same
//! token (see [`super::routes`]), still holding their place under the cap
//! until then.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::ClientCertificate;
use crate::tls::ServerTls;

/// What a listener allows its connections (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimits {
    /// Label of the listener in metrics and logs (`device`, `ops`).
    pub name: &'static str,
    /// Longest wait for the first byte of a request, and longest a peer
    /// may take none of the bytes written to it.
    pub idle_timeout: Duration,
    /// Longest time from a request's first byte to the end of its head.
    pub header_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// The answer to a connection over the cap, written without waiting.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 83\r\nretry-after: 1\r\n\r\n{\"error\":{\"code\":\"unavailable\",\"message\":\"too many connections; connect again later\"}}";

/// Draining, the longest an idle connection is left for hyper to close.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// Draining, the longest a peer may take none of the bytes of an answer in
/// hand (or of a stream) before its connection is closed: long enough for
/// a reader that merely paused, short enough that one that stopped reading
/// does not hold the drain up to `pipeline.shutdown_timeout`.
const DRAIN_WRITE_GRACE: Duration = Duration::from_secs(5);

/// How long to pause after a failed `accept` (out of file descriptors, ...)
/// before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown`, then drains (see the
/// module docs). Returns when the last connection is closed. With `tls`,
/// every connection is TLS (its configuration kept current by whoever runs
/// [`ServerTls::watch`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    tls: Option<Arc<ServerTls>>,
    shutdown: CancellationToken,
) {
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let refused = crate::metrics::http_connections_refused(limits.name);
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(listener = limits.name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            refused.increment(1);
            tracing::debug!(listener = limits.name, %peer, "connection refused: max_connections reached");
            if tls.is_none() {
                // Best effort: a full send buffer just means no answer.
                let _ = stream.try_write(OVER_CAPACITY);
            }
            continue;
        };
        let io = TrackedIo::new(stream, permit, &limits, &shutdown);
        connections.spawn(connection(
            io,
            peer,
            tls.clone(),
            router.clone(),
            Arc::clone(&limits),
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one connection (after its TLS handshake, with `tls`) until it
/// ends, times out, or is closed by shutdown.
async fn connection(
    io: TrackedIo,
    peer: SocketAddr,
    tls: Option<Arc<ServerTls>>,
    router: Router,
    limits: Arc<ServeLimits>,
    shutdown: CancellationToken,
) {
    let phase = Arc::clone(&io.phase);
    let Some(tls) = tls else {
        return serve_http(io, None, phase, router, limits, shutdown).await;
    };
    let handshake = tls.handshake(
        io,
        limits.header_read_timeout,
        "ingest.http.header_read_timeout",
        limits.name,
        peer,
    );
    let done = tokio::select! {
        biased;
        // Not a request in hand: dropped like a connection in its head.
        () = shutdown.cancelled() => return,
        done = handshake => done,
    };
    let Some(done) = done else {
        return;
    };
    // The handshake's reads moved the phase on: the connection is idle now,
    // waiting for its first request.
    phase.set(Phase::Idle);
    let certificate = done.certificate.map(|c| ClientCertificate(Arc::new(c)));
    serve_http(done.stream, certificate, phase, router, limits, shutdown).await;
}

/// Runs HTTP/1.1 on `io` until the connection ends, its phase times out, or
/// shutdown closes it; every request carries `certificate`, if any.
async fn serve_http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
    certificate: Option<ClientCertificate>,
    phase: Arc<PhaseCell>,
    router: Router,
    limits: Arc<ServeLimits>,
    shutdown: CancellationToken,
) {
    let service = ConnService {
        router,
        phase: Arc::clone(&phase),
        certificate,
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    // When shutdown was requested.
    let mut draining: Option<Instant> = None;
    loop {
        let (now, since) = phase.load();
        if draining.is_some() && matches!(now, Phase::Header | Phase::Body) {
            // A request not fully read was not taken: close at once.
            return;
        }
        let limit = match now {
            Phase::Idle => Some((since + limits.idle_timeout, "idle")),
            Phase::Header => Some((since + limits.header_read_timeout, "header")),
            Phase::Body | Phase::Handling => None,
        };
        // Draining, hyper closes an idle connection itself once its last
        // answer is flushed; this is only the backstop, counted from when
        // the connection became idle so that an answer just given is not cut.
        let limit = match (now, draining) {
            (Phase::Idle, Some(at)) => Some((at.max(since) + DRAIN_IDLE_GRACE, "shutdown")),
            _ => limit,
        };
        let expiry = async {
            match limit {
                Some((at, _)) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(listener = limits.name, error = %e, "connection ended by error");
                }
                return;
            }
            () = expiry => {
                // Only if the phase did not move on meanwhile.
                if phase.load() == (now, since)
                    && let Some((_, kind)) = limit
                {
                    if kind != "shutdown" {
                        crate::metrics::http_timed_out(limits.name, kind);
                    }
                    tracing::debug!(listener = limits.name, kind, "connection closed");
                    return;
                }
            }
            () = phase.changed.notified() => {}
            () = shutdown.cancelled(), if draining.is_none() => {
                draining = Some(Instant::now());
                // hyper answers the request in hand, closes idle connections
                // (after flushing), and keeps no connection alive.
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Where a connection is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Header,
    Body,
    Handling,
}

impl Phase {
    fn code(self) -> u64 {
        match self {
            Phase::Idle => 0,
            Phase::Header => 1,
            Phase::Body => 2,
            Phase::Handling => 3,
        }
    }

    fn from_code(code: u64) -> Self {
        match code {
            1 => Phase::Header,
            2 => Phase::Body,
            3 => Phase::Handling,
            _ => Phase::Idle,
        }
    }
}

/// A connection's phase and since when, shared by its socket, its requests
/// and its watchdog.
#[derive(Debug)]
struct PhaseCell {
    /// Phase in the top 8 bits, microseconds since `epoch` below: one
    /// atomic, so the watchdog never sees one without the other.
    state: AtomicU64,
    epoch: Instant,
    changed: Notify,
}

impl PhaseCell {
    fn new() -> Self {
        Self {
            state: AtomicU64::new(Phase::Idle.code() << 56),
            epoch: Instant::now(),
            changed: Notify::new(),
        }
    }

    fn pack(&self, phase: Phase) -> u64 {
        let micros = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        (phase.code() << 56) | (micros & ((1 << 56) - 1))
    }

    fn load(&self) -> (Phase, Instant) {
        let state = self.state.load(Ordering::Acquire);
        let since = self.epoch + Duration::from_micros(state & ((1 << 56) - 1));
        (Phase::from_code(state >> 56), since)
    }

    fn set(&self, phase: Phase) {
        self.state.store(self.pack(phase), Ordering::Release);
        self.changed.notify_one();
    }

    /// Idle -> header, on the first byte of a request.
    fn bytes_read(&self) {
        let current = self.state.load(Ordering::Acquire);
        if Phase::from_code(current >> 56) == Phase::Idle {
            let next = self.pack(Phase::Header);
            if self
                .state
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.changed.notify_one();
            }
        }
    }
}

/// The accepted socket: reports reads to the phase, holds the connection's
/// place under the cap until it is dropped (after a WebSocket session too),
/// and ends a write the peer takes no byte of for too long ([`WriteStall`]).
#[derive(Debug)]
struct TrackedIo {
    stream: TcpStream,
    phase: Arc<PhaseCell>,
    gauge: metrics::Gauge,
    stall: WriteStall,
    _slot: OwnedSemaphorePermit,
}

impl TrackedIo {
    fn new(
        stream: TcpStream,
        slot: OwnedSemaphorePermit,
        limits: &ServeLimits,
        shutdown: &CancellationToken,
    ) -> Self {
        let gauge = crate::metrics::http_connections(limits.name);
        gauge.increment(1.0);
        Self {
            stream,
            phase: Arc::new(PhaseCell::new()),
            gauge,
            stall: WriteStall::new(limits.idle_timeout, limits.name, shutdown),
            _slot: slot,
        }
    }
}

impl Drop for TrackedIo {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.phase.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.stall.check(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.stall.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_flush(cx);
        this.stall.check(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.stall.check(cx, polled)
    }
}

/// How long a peer may take none of the bytes written to it: a reader
/// that stopped (a stalled SSE stream, an answer never read, a WebSocket
/// that reads nothing) would otherwise hold its connection, its place under
/// the cap and the kernel's send buffer for ever, and hold up the drain at
/// shutdown. Any progress restarts the clock.
#[derive(Debug)]
struct WriteStall {
    /// The stall allowed while serving: the listener's `idle_timeout` (a
    /// peer taking nothing is as idle as one sending nothing).
    limit: Duration,
    listener: &'static str,
    /// Resolves at shutdown, which shortens the stall allowed to
    /// [`DRAIN_WRITE_GRACE`]; polled while stalled so that shutdown wakes
    /// the stalled writer.
    shutdown: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    draining: bool,
    /// Since when the peer took nothing, and the timer at its limit.
    stalled: Option<(tokio::time::Instant, Pin<Box<tokio::time::Sleep>>)>,
}

impl WriteStall {
    fn new(limit: Duration, listener: &'static str, shutdown: &CancellationToken) -> Self {
        Self {
            limit,
            listener,
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
            draining: false,
            stalled: None,
        }
    }

    /// Passes a write's outcome on, unless the peer has taken nothing for
    /// longer than allowed: then the write fails (`TimedOut`), which ends
    /// the connection.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        if !self.draining && self.shutdown.as_mut().poll(cx).is_ready() {
            self.draining = true;
            // The deadline moves closer: restart the timer below.
            if let Some((since, timer)) = &mut self.stalled {
                timer
                    .as_mut()
                    .reset(*since + DRAIN_WRITE_GRACE.min(self.limit));
            }
        }
        let limit = if self.draining {
            DRAIN_WRITE_GRACE.min(self.limit)
        } else {
            self.limit
        };
        let (_, timer) = self.stalled.get_or_insert_with(|| {
            let now = tokio::time::Instant::now();
            (now, Box::pin(tokio::time::sleep_until(now + limit)))
        });
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.stalled = None;
        crate::metrics::http_timed_out(self.listener, "write");
        tracing::debug!(
            listener = self.listener,
            "connection closed: the peer took no bytes"
        );
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the peer took none of the bytes written to it within the limit",
        )))
    }
}

/// The router, as hyper calls it for each request of one connection.
#[derive(Debug, Clone)]
struct ConnService {
    router: Router,
    phase: Arc<PhaseCell>,
    /// The connection's client certificate (mutual TLS), added to each
    /// request for the handlers.
    certificate: Option<ClientCertificate>,
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let phase = Arc::clone(&self.phase);
        let has_body = !http_body::Body::is_end_stream(request.body());
        phase.set(if has_body {
            Phase::Body
        } else {
            Phase::Handling
        });
        let mut request: Request = request.map(|body| {
            Body::new(TrackedBody {
                inner: Body::new(body),
                on_end: has_body.then(|| Arc::clone(&phase)),
                _idle_on_drop: None,
            })
        });
        if let Some(certificate) = &self.certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        let router = self.router.clone();
        Box::pin(async move {
            let response = match router.oneshot(request).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            // The connection is idle again once the answer is written
            // (hyper drops its body then).
            Ok(response.map(|inner| TrackedBody {
                inner,
                on_end: None,
                _idle_on_drop: Some(IdleOnDrop(phase)),
            }))
        })
    }
}

/// Sets the connection idle when dropped.
#[derive(Debug)]
struct IdleOnDrop(Arc<PhaseCell>);

impl Drop for IdleOnDrop {
    fn drop(&mut self) {
        self.0.set(Phase::Idle);
    }
}

/// A request body that moves its connection from `body` to `handling` when
/// read to its end, or a response body that sets it idle when dropped.
#[derive(Debug)]
struct TrackedBody {
    inner: Body,
    on_end: Option<Arc<PhaseCell>>,
    _idle_on_drop: Option<IdleOnDrop>,
}

impl TrackedBody {
    fn ended(&mut self) {
        if let Some(phase) = self.on_end.take() {
            phase.set(Phase::Handling);
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.ended(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.ended(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
