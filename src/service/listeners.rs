//! Listeners: TCP (with TCP_NODELAY and optional TLS) and Unix domain sockets, each serving a
//! set of gRPC routes until told to stop.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic::transport::{Server, ServerTlsConfig};

use super::error::ServeError;

/// The servers started, and how to stop them.
#[derive(Default)]
pub(super) struct Listeners {
    pub(super) shutdown: Vec<oneshot::Sender<()>>,
    pub(super) tasks: Vec<JoinHandle<Result<(), ServeError>>>,
}

impl Listeners {
    pub(super) fn spawn<I, IO, IE>(
        &mut self,
        routes: Routes,
        incoming: I,
        tls: Option<ServerTlsConfig>,
    ) -> Result<(), ServeError>
    where
        I: tokio_stream::Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
        IO::ConnectInfo: Clone + Send + Sync + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        let (tx, rx) = oneshot::channel::<()>();
        self.shutdown.push(tx);
        let server = builder
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            });
        self.tasks
            .push(tokio::spawn(async move { Ok(server.await?) }));
        Ok(())
    }
}

/// A Unix domain socket at `path` with file mode `mode`, replacing a stale socket file.
pub(super) fn bind_unix(
    path: &std::path::Path,
    mode: u32,
) -> Result<tokio_stream::wrappers::UnixListenerStream, ServeError> {
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
    Ok(tokio_stream::wrappers::UnixListenerStream::new(listener))
}

/// Accepted connections with TCP_NODELAY: small gRPC frames must not wait for Nagle.
pub(super) fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

pub(super) async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let err = |source| ServeError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long shutdown waits for in-flight HTTP connections.
const HTTP_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves an axum router over HTTP/1.1 and HTTP/2 (h2c by prior knowledge in plaintext; ALPN
/// over TLS) until `stop` resolves, then lets in-flight requests finish. Failed accepts (out
/// of file descriptors, say) back off instead of spinning.
pub(super) async fn serve_http(
    listener: TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    app: axum::Router,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = Builder::new(TokioExecutor::new());
    let mut backoff = std::time::Duration::from_millis(5);
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = std::time::Duration::from_millis(5);
                    stream
                }
                Err(e) => {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "HTTP accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match &acceptor {
            None => {
                tokio::spawn(async move {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(HTTP_DRAIN) => {
            tracing::warn!("HTTP connections still open after the drain period");
        }
    }
    Ok(())
}
