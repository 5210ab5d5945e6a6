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
