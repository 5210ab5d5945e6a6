//! A call to a service that another listener serves (`EntityStore` on the decision port,
//! `Authorizer` on the data port) is answered UNIMPLEMENTED with a message naming the listener
//! that serves it, instead of tonic's bare UNIMPLEMENTED. A tower wrapper over a listener's
//! routes: a path of one of the named services is answered here, every other call passes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Where each service is served, for the calls a listener does not serve.
pub type Elsewhere = &'static [(&'static str, &'static str)];

/// The gRPC services of this server and, for each, the listener that serves it.
pub const SERVED_ON: &[(&str, &str)] = &[
    (
        "blue.authz.v1.Authorizer",
        "the decision listener (--listen, --listen-unix)",
    ),
    (
        "blue.authz.v1.Policies",
        "the decision listener (--listen, --listen-unix)",
    ),
    (
        "envoy.service.auth.v3.Authorization",
        "the decision listener (--listen, --listen-unix)",
    ),
    (
        "blue.authz.v1.EntityStore",
        "the data listener (--data-listen, --data-listen-unix, with a --data-token)",
    ),
    (
        "grpc.health.v1.Health",
        "the decision listener and the health listener (--health-listen)",
    ),
    (
        "grpc.reflection.v1.ServerReflection",
        "the decision listener (--listen, --listen-unix)",
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "the decision listener (--listen, --listen-unix)",
    ),
];

/// `routes` on a listener called `this`, serving `served`: calls of the other services of
/// [`SERVED_ON`] are answered UNIMPLEMENTED, naming where they are served.
pub fn wrap<S>(routes: S, this: &'static str, served: &[&str]) -> Routed<S> {
    let others: Vec<(&'static str, String)> = SERVED_ON
        .iter()
        .filter(|(name, _)| !served.contains(name))
        .map(|(name, on)| {
            (
                *name,
                format!("{name} is not served on {this}: it is served on {on}"),
            )
        })
        .collect();
    Routed {
        inner: routes,
        others: std::sync::Arc::new(others),
    }
}

#[derive(Clone)]
pub struct Routed<S> {
    inner: S,
    others: std::sync::Arc<Vec<(&'static str, String)>>,
}

impl<S> Routed<S> {
    /// The message for a call to `path` (`/package.Service/Method`) served elsewhere.
    fn elsewhere(&self, path: &str) -> Option<&str> {
        let service = path.strip_prefix('/')?.split('/').next()?;
        self.others
            .iter()
            .find(|(name, _)| *name == service)
            .map(|(_, m)| m.as_str())
    }
}

impl<S, B> tower::Service<hyper::Request<B>> for Routed<S>
where
    S: tower::Service<hyper::Request<B>, Response = hyper::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Answer<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        match self.elsewhere(req.uri().path()) {
            Some(message) => Answer::Here {
                response: Some(tonic::Status::unimplemented(message).into_http()),
            },
            None => Answer::Inner {
                future: self.inner.call(req),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner routes' answer, or this wrapper's own.
    #[project = AnswerProj]
    pub enum Answer<F, R> {
        Inner { #[pin] future: F },
        Here { response: Option<R> },
    }
}

impl<F, R, E> Future for Answer<F, R>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AnswerProj::Inner { future } => future.poll(cx),
            AnswerProj::Here { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}
