//! A real HTTP client for the AuthZEN tests: one connection, HTTP/1.1 or HTTP/2 (h2c by
//! prior knowledge, or ALPN over TLS), answers read as JSON.

use std::net::SocketAddr;
use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

/// One HTTP connection, HTTP/1.1 or HTTP/2.
pub enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

pub struct Http {
    pub sender: Sender,
    pub authority: String,
}

/// A response: status, headers, body as JSON (Null if it is not JSON).
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Value,
}

impl Http {
    pub async fn handshake<IO>(io: IO, h2: bool, authority: String) -> Http
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let sender = if h2 {
            let (s, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(s)
        };
        Http { sender, authority }
    }

    /// Plaintext: HTTP/1.1, or HTTP/2 by prior knowledge (h2c).
    pub async fn connect(addr: SocketAddr, h2: bool) -> Http {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        Http::handshake(tcp, h2, addr.to_string()).await
    }

    /// TLS trusting `ca`, asking for h2 or http/1.1 by ALPN.
    pub async fn connect_tls(addr: SocketAddr, ca: &Path, h2: bool) -> Http {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let want: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        assert_eq!(negotiated.as_deref(), Some(want), "ALPN");
        Http::handshake(tls, h2, format!("localhost:{}", addr.port())).await
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(match self.sender {
                Sender::H1(_) => path.to_string(),
                Sender::H2(_) => format!("http://{}{path}", self.authority),
            });
        if matches!(self.sender, Sender::H1(_)) {
            b = b.header("host", &self.authority);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let res = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
            Sender::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        };
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A JSON POST.
    pub async fn post(&mut self, path: &str, body: &Value) -> Answer {
        self.send(
            "POST",
            path,
            &[("content-type", "application/json")],
            &body.to_string(),
        )
        .await
    }
}
