//! The codec of blue-authz's gRPC services: prost's, except that a batch is counted before it
//! is decoded. A `BatchIsAuthorizedRequest` of two million empty requests is 4 MB on the wire
//! and ~0.9 GB decoded; its `requests` are counted on the wire first, and one with more than
//! the listener's `max_batch` is refused INVALID_ARGUMENT without decoding any of them.
//!
//! The codec is built by tonic's generated code with `Default`, so the limit reaches it through
//! [`with_max_batch`]: a service wrapper that makes it known while the call's future is polled
//! (decoding happens inside that poll).

use std::any::TypeId;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use super::pb;
use super::status::ServiceError;
use crate::engine::error::RequestError;

thread_local! {
    /// The `max_batch` of the call being polled on this thread (None: no limit known).
    static MAX_BATCH: Cell<Option<usize>> = const { Cell::new(None) };
}

/// prost's codec, with batches counted before they are decoded.
pub struct BoundedCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        BoundedCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(self.0.decoder())
    }
}

pub struct BoundedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default + 'static> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if TypeId::of::<U>() == TypeId::of::<pb::BatchIsAuthorizedRequest>() {
            if let Some(max) = MAX_BATCH.get() {
                use bytes::Buf;
                // `requests` is field 1 of BatchIsAuthorizedRequest.
                if count_field(buf.chunk(), 1).is_some_and(|n| n > max) {
                    return Err(ServiceError::from(RequestError::edge(
                        "requests",
                        format!("more than {max} requests exceed the limit of {max} per call"),
                    ))
                    .into());
                }
            }
        }
        self.0.decode(buf)
    }
}

/// How many times top-level field `field` occurs in an encoded message; None if the bytes are
/// not a well-formed message (prost's decoder then says what is wrong).
fn count_field(mut b: &[u8], field: u64) -> Option<usize> {
    let mut n = 0;
    while !b.is_empty() {
        let key = prost::encoding::decode_varint(&mut b).ok()?;
        if key >> 3 == field {
            n += 1;
        }
        match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut b).ok()?;
            }
            1 => b = b.get(8..)?,
            2 => {
                let len = usize::try_from(prost::encoding::decode_varint(&mut b).ok()?).ok()?;
                b = b.get(len..)?;
            }
            5 => b = b.get(4..)?,
            _ => return None,
        }
    }
    Some(n)
}

/// `routes` with the listener's `max_batch` known to the codec while each call is polled.
pub fn with_max_batch<S>(routes: S, max_batch: usize) -> WithMaxBatch<S> {
    WithMaxBatch {
        inner: routes,
        max_batch,
    }
}

#[derive(Clone)]
pub struct WithMaxBatch<S> {
    inner: S,
    max_batch: usize,
}

impl<S, R> tower::Service<R> for WithMaxBatch<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Limited<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        Limited {
            future: self.inner.call(req),
            max_batch: self.max_batch,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's future, polled with its listener's `max_batch` set.
    pub struct Limited<F> {
        #[pin]
        future: F,
        max_batch: usize,
    }
}

impl<F: Future> Future for Limited<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let before = MAX_BATCH.replace(Some(*this.max_batch));
        let out = this.future.poll(cx);
        MAX_BATCH.set(before);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_on_the_wire() {
        let batch = pb::BatchIsAuthorizedRequest {
            requests: vec![pb::IsAuthorizedRequest::default(); 5],
            min_revision: 7,
        };
        assert_eq!(count_field(&batch.encode_to_vec(), 1), Some(5));
        assert_eq!(count_field(&batch.encode_to_vec(), 2), Some(1));
        let one = pb::IsAuthorizedRequest {
            context_json: "{}".into(),
            ..Default::default()
        };
        let batch = pb::BatchIsAuthorizedRequest {
            requests: vec![one; 3],
            min_revision: 0,
        };
        assert_eq!(count_field(&batch.encode_to_vec(), 1), Some(3));
        // Truncated: not a message, left to prost to name.
        let bytes = batch.encode_to_vec();
        assert_eq!(count_field(&bytes[..bytes.len() - 1], 1), None);
    }
}
