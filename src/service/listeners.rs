//! Listeners: every one (gRPC and HTTP, TCP and Unix sockets, TLS or not) accepts through one
//! loop with the same guards: at most `max_connections` open at once (at the limit, accepting
//! waits and the kernel's backlog holds the rest), a deadline for the TLS handshake and for a
//! client's first bytes (a connection that says nothing is dropped, not kept), failed accepts
//! (out of file descriptors, say) backed off instead of spun, HTTP/2 keepalive pings and a
//! limit on concurrent streams per connection. Served by hyper until told to stop, then
//! drained.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use super::error::ServeError;
use super::inflight::{Budget, InFlight, ReqBody};

/// The guards every listener applies to its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections per listener; past it, accepting waits.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams (calls) per connection.
    pub max_streams: u32,
    /// HTTP/2 keepalive ping interval (None: no pings).
    pub keepalive: Option<Duration>,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// How long the TLS handshake, and then the client's first bytes, may take.
    pub handshake_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 4096,
            max_streams: 256,
            keepalive: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// How long shutdown waits for in-flight connections.
const DRAIN: Duration = Duration::from_secs(10);

/// The servers started, and how to stop them.
pub(super) struct Listeners {
    pub(super) shutdown: Vec<oneshot::Sender<()>>,
    pub(super) tasks: Vec<JoinHandle<Result<(), ServeError>>>,
    /// What all requests in flight on every listener may hold (see [`super::inflight`]).
    budget: Budget,
}

impl Listeners {
    /// No listeners yet; every one spawned shares `budget`.
    pub(super) fn new(budget: Budget) -> Self {
        Listeners {
            shutdown: Vec::new(),
            tasks: Vec::new(),
            budget,
        }
    }

    /// Serves `service` on `listener` until the server stops, each request's body read first
    /// and charged against the budget.
    pub(super) fn spawn<L, S, B>(
        &mut self,
        listener: L,
        tls: Option<Arc<rustls::ServerConfig>>,
        service: S,
        protocol: Protocol,
        limits: ConnLimits,
    ) where
        L: Accept,
        S: tonic::codegen::Service<hyper::Request<ReqBody>, Response = hyper::Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: hyper::body::Body<Data = hyper::body::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let service = InFlight::new(service, self.budget.clone(), protocol == Protocol::Grpc);
        let (tx, rx) = oneshot::channel::<()>();
        self.shutdown.push(tx);
        let stop = async {
            let _ = rx.await;
        };
        self.tasks.push(tokio::spawn(serve(
            listener, tls, service, protocol, limits, stop,
        )));
    }
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// gRPC: HTTP/2 only (by prior knowledge in plaintext, ALPN `h2` over TLS).
    Grpc,
    /// HTTP/1.1 and HTTP/2.
    Http,
}

/// A listening socket whose connections [`serve`] accepts.
pub(super) trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<Self::Io> {
        let (stream, _) = self.accept().await?;
        // Small gRPC frames must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Io> {
        Ok(self.accept().await?.0)
    }
}

/// Accepts and serves connections until `stop` resolves, then lets in-flight calls finish
/// (for at most [`DRAIN`]).
async fn serve<L, S, B>(
    listener: L,
    tls: Option<Arc<rustls::ServerConfig>>,
    service: S,
    protocol: Protocol,
    limits: ConnLimits,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    L: Accept,
    S: tonic::codegen::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    // A client may shut its side once its request is sent: bodies are read whole before a
    // handler runs (`inflight.rs`), so the end of its bytes must not end the call.
    builder
        .http1()
        .timer(TokioTimer::new())
        .half_close(true)
        .header_read_timeout(limits.handshake_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .keep_alive_interval(limits.keepalive)
        .keep_alive_timeout(limits.keepalive_timeout);
    if protocol == Protocol::Grpc {
        builder = builder.http2_only();
    }
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = Duration::from_millis(5);
    let mut warned_full: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        // A free slot first: at the limit nothing more is accepted until a connection ends.
        if slots.available_permits() == 0
            && warned_full.is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            tracing::warn!(
                max_connections = limits.max_connections,
                "connection limit reached: new connections wait"
            );
            warned_full = Some(Instant::now());
        }
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept_one() => match accepted {
                Ok(stream) => {
                    backoff = Duration::from_millis(5);
                    stream
                }
                Err(e) => {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                    drop(permit);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = &mut stop => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let service = TowerToHyperService::new(service.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            // Either way the client's first bytes (after the handshake, with TLS) are due
            // within the timeout.
            let io = match acceptor {
                None => Box::new(FirstBytes::new(stream, timeout)) as Box<dyn Io>,
                Some(acceptor) => {
                    let handshake = acceptor.accept(FirstBytes::new(stream, timeout));
                    let Ok(Ok(tls)) = tokio::time::timeout(timeout, handshake).await else {
                        return;
                    };
                    Box::new(FirstBytes::new(tls, timeout))
                }
            };
            let conn = builder.serve_connection(TokioIo::new(io), service);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN) => {
            tracing::warn!("connections still open after the drain period");
        }
    }
    Ok(())
}

/// A connection as hyper serves it, plain or TLS (one box per connection).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection that must receive its first bytes before a deadline: reading fails with
/// `TimedOut` if nothing came by then, so a client that connects and says nothing does not
/// hold a connection slot.
struct FirstBytes<IO> {
    io: IO,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> FirstBytes<IO> {
    fn new(io: IO, timeout: Duration) -> Self {
        FirstBytes {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FirstBytes<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = match &mut this.deadline {
                    Some(deadline) => deadline.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client sent nothing within the handshake timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FirstBytes<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A Unix domain socket at `path` with file mode `mode`, replacing a stale socket file.
pub(super) fn bind_unix(
    path: &std::path::Path,
    mode: u32,
) -> Result<tokio::net::UnixListener, ServeError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err =
        |e: std::io::Error| ServeError::Config(format!("unix socket {}: {e}", path.display()));
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

pub(super) async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let err = |source| ServeError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}
