//! One bound on what all requests in flight may hold, across every listener
//! (`max_inflight_bytes`). A request's body is read before any handler runs, each frame charged
//! against a shared budget of bytes, and the charge is held until the handler's answer is
//! ready. A request the budget cannot take is refused at once and never decoded: gRPC
//! RESOURCE_EXHAUSTED, HTTP 503 with `Retry-After`. What a handler builds from a body is a small
//! multiple of its size (the codecs count items as they decode), so this bounds the memory of
//! all calls together. A body past `max_message_bytes` is handed on as it comes, charged up to
//! the limit, for the handler to refuse with its own size error.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Bytes, Incoming};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body a handler reads: what was buffered, then (past the size limit) the rest as it
/// comes.
pub struct ReqBody {
    /// The frames read, in order (handed on as they came: no copy); most bodies are one.
    first: Option<Bytes>,
    more: std::collections::VecDeque<Bytes>,
    rest: Option<Incoming>,
}

impl hyper::body::Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        if let Some(chunk) = self.first.take().or_else(|| self.more.pop_front()) {
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))));
        }
        match &mut self.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none()
            && self.more.is_empty()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let head: u64 = self
            .first
            .iter()
            .chain(&self.more)
            .map(|c| c.len() as u64)
            .sum();
        match &self.rest {
            None => hyper::body::SizeHint::with_exact(head),
            Some(rest) => {
                let r = rest.size_hint();
                let mut hint = hyper::body::SizeHint::new();
                hint.set_lower(r.lower() + head);
                if let Some(upper) = r.upper() {
                    hint.set_upper(upper + head);
                }
                hint
            }
        }
    }
}

/// The shared budget of bytes (cheap to clone: every listener holds the same one).
#[derive(Clone, Debug)]
pub struct Budget {
    /// Bytes charged now (never waited on: a call that does not fit is refused).
    used: Arc<AtomicUsize>,
    bytes: usize,
    /// Bytes a body is buffered up to (the largest request message, and gRPC's frame header).
    per_request: usize,
}

impl Budget {
    /// A budget of `bytes`; bodies are buffered up to `max_message_bytes`.
    pub fn new(bytes: usize, max_message_bytes: usize) -> Budget {
        Budget {
            used: Arc::new(AtomicUsize::new(0)),
            bytes,
            per_request: max_message_bytes.saturating_add(5),
        }
    }

    /// Bytes charged to requests in flight now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn refusal(&self) -> String {
        format!(
            "the requests in flight hold more than max_inflight_bytes ({} bytes): retry later",
            self.bytes
        )
    }
}

/// Bytes taken from a budget, given back when dropped.
struct Charge {
    budget: Budget,
    held: usize,
}

impl Charge {
    fn take(&mut self, n: usize) -> bool {
        let used = &self.budget.used;
        let taken = used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
            u.checked_add(n).filter(|&total| total <= self.budget.bytes)
        });
        if taken.is_ok() {
            self.held += n;
        }
        taken.is_ok()
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.held > 0 {
            self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
        }
    }
}

/// A listener's service behind the budget.
#[derive(Clone)]
pub struct InFlight<S> {
    inner: S,
    budget: Budget,
    /// Whether the listener speaks gRPC (else HTTP): how a refusal is answered.
    grpc: bool,
}

impl<S> InFlight<S> {
    pub fn new(inner: S, budget: Budget, grpc: bool) -> Self {
        InFlight {
            inner,
            budget,
            grpc,
        }
    }
}

/// The answer to a request the budget cannot take.
fn refused<B>(grpc: bool, message: &str) -> hyper::Response<Either<B, Full<Bytes>>> {
    let builder = hyper::Response::builder();
    let response = match grpc {
        // Trailers-only: the status in the headers, no message.
        true => builder
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", "8")
            .header("grpc-message", message)
            .body(Either::Right(Full::new(Bytes::new()))),
        false => {
            let body = serde_json::json!({"error": {"status": 503, "message": message}});
            builder
                .status(503)
                .header("content-type", "application/json")
                .header("retry-after", "1")
                .body(Either::Right(Full::new(Bytes::from(body.to_string()))))
        }
    };
    response.unwrap_or_else(|_| hyper::Response::new(Either::Right(Full::new(Bytes::new()))))
}

impl<S, B> tower::Service<hyper::Request<Incoming>> for InFlight<S>
where
    S: tower::Service<hyper::Request<ReqBody>, Response = hyper::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = hyper::Response<Either<B, Full<Bytes>>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: hyper::Request<Incoming>) -> Self::Future {
        // The clone that was made ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let budget = self.budget.clone();
        let grpc = self.grpc;
        Box::pin(async move {
            let (parts, mut body) = request.into_parts();
            let mut charge = Charge {
                budget: budget.clone(),
                held: 0,
            };
            let (mut first, mut more) = (None, std::collections::VecDeque::new());
            let mut read = 0usize;
            let mut rest = None;
            while let Some(frame) = body.frame().await {
                let frame = frame?;
                let Ok(data) = frame.into_data() else {
                    continue; // request trailers: no handler reads them
                };
                if !charge.take(data.len()) {
                    tracing::warn!(
                        max_inflight_bytes = budget.bytes,
                        in_use = budget.in_use(),
                        "a request was refused: the requests in flight hold the whole budget"
                    );
                    return Ok(refused(grpc, &budget.refusal()));
                }
                read += data.len();
                if first.is_none() {
                    first = Some(data);
                } else if !data.is_empty() {
                    more.push_back(data);
                }
                if read > budget.per_request {
                    rest = Some(body);
                    break;
                }
            }
            let body = ReqBody { first, more, rest };
            let response = inner
                .call(hyper::Request::from_parts(parts, body))
                .await
                .map_err(Into::into)?;
            drop(charge);
            Ok(response.map(Either::Left))
        })
    }
}
