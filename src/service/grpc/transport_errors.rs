//! What the gRPC stack itself answers before a handler runs, in the codes the README
//! documents: a body that does not decode as the request message (bad protobuf, invalid
//! UTF-8 in a string, a truncated frame or none at all, a bad compression flag) is
//! INVALID_ARGUMENT, not INTERNAL, and a message over the limit is INVALID_ARGUMENT whatever
//! its size (tonic answers OUT_OF_RANGE past its own cap). A tower layer over every gRPC
//! listener's routes that rewrites those trailers-only answers; the handlers' own statuses
//! come from [`super::status`] and pass through untouched.

use hyper::header::{HeaderMap, HeaderValue};

/// A gRPC listener's routes whose decode and size errors are INVALID_ARGUMENT (`limit`: the
/// configured `max_message_bytes`, named in a size error).
pub fn wrap<S>(
    routes: S,
    limit: usize,
) -> tower::util::MapResponse<
    S,
    impl FnOnce(hyper::Response<tonic::body::Body>) -> hyper::Response<tonic::body::Body> + Clone,
> {
    tower::util::MapResponse::new(routes, move |mut response: hyper::Response<_>| {
        rewrite(response.headers_mut(), limit);
        response
    })
}

/// The stack's own error messages (tonic's), and what each becomes.
fn invalid_input(code: &str, message: &str, limit: usize) -> Option<String> {
    const UNDECODABLE: [&str; 4] = [
        "failed to decode Protobuf message: ",
        "Unexpected EOF decoding stream",
        "protocol error: received message with ",
        "Missing request message",
    ];
    match code {
        "13" => UNDECODABLE
            .iter()
            .find(|p| message.starts_with(**p))
            .map(|_| {
                let detail = message
                    .strip_prefix(UNDECODABLE[0])
                    .unwrap_or(message)
                    .trim_end_matches('.');
                format!("request: the body is not a valid request message: {detail}")
            }),
        "11" if message.starts_with("Error, decoded message length too large") => Some(format!(
            "request: the message exceeds the limit of {limit} bytes"
        )),
        _ => None,
    }
}

fn rewrite(headers: &mut HeaderMap, limit: usize) {
    let Some(code) = headers.get("grpc-status").and_then(|v| v.to_str().ok()) else {
        return;
    };
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    let Some(new) = invalid_input(code, &message, limit) else {
        return;
    };
    headers.insert("grpc-status", HeaderValue::from_static("3"));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&new)) {
        headers.insert("grpc-message", v);
    }
}

/// gRPC's percent-decoding of `grpc-message`.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// gRPC's percent-encoding: printable ASCII but `%` as is, the rest as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_errors_become_invalid_argument_and_others_pass() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("13"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static(
                "failed%20to%20decode%20Protobuf%20message:%20invalid%20varint",
            ),
        );
        rewrite(&mut h, 1000);
        assert_eq!(h["grpc-status"], "3");
        assert_eq!(
            percent_decode(h["grpc-message"].to_str().unwrap()),
            "request: the body is not a valid request message: invalid varint"
        );
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static(
                "Error,%20decoded%20message%20length%20too%20large:%20found%205017%20bytes",
            ),
        );
        rewrite(&mut h, 1000);
        assert_eq!(h["grpc-status"], "3");
        assert!(h["grpc-message"]
            .to_str()
            .unwrap()
            .contains("limit of 1000 bytes"));
        // A handler's INTERNAL and OUT_OF_RANGE stay.
        for (code, message) in [("13", "internal%20error"), ("11", "revision%20pruned")] {
            let mut h = HeaderMap::new();
            h.insert("grpc-status", HeaderValue::from_static(code));
            h.insert("grpc-message", HeaderValue::from_static(message));
            rewrite(&mut h, 1000);
            assert_eq!(h["grpc-status"], code);
            assert_eq!(h["grpc-message"], message);
        }
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_encode("100% é"), "100%25 %C3%A9");
    }
}
