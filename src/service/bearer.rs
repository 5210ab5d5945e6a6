//! Caller credentials: the one comparison every listener that requires a bearer token uses,
//! and HTTP Basic client credentials for the AuthZEN listener.

/// Whether two byte strings are equal, in time that does not depend on where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an `authorization` value is `Bearer <token>`: the scheme in any case (RFC 7235),
/// one space, then the token compared in constant time.
pub(crate) fn bearer_matches(given: &[u8], token: &[u8]) -> bool {
    const SCHEME: &[u8] = b"bearer ";
    given.len() > SCHEME.len()
        && given[..SCHEME.len()].eq_ignore_ascii_case(SCHEME)
        && constant_time_eq(&given[SCHEME.len()..], token)
}

/// Whether an `authorization` value is `Basic <base64 of credentials>` (RFC 7617; the scheme
/// in any case), the decoded `id:secret` compared in constant time.
pub(crate) fn basic_matches(given: &[u8], credentials: &[u8]) -> bool {
    use base64::Engine;
    const SCHEME: &[u8] = b"basic ";
    if given.len() <= SCHEME.len() || !given[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return false;
    }
    let encoded = given[SCHEME.len()..].trim_ascii();
    match base64::engine::general_purpose::STANDARD.decode(encoded) {
        Ok(decoded) => constant_time_eq(&decoded, credentials),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{basic_matches, bearer_matches};

    #[test]
    fn basic_credentials_decode_and_compare_exactly() {
        // base64("client:s3cret") = Y2xpZW50OnMzY3JldA==
        assert!(basic_matches(
            b"Basic Y2xpZW50OnMzY3JldA==",
            b"client:s3cret"
        ));
        assert!(basic_matches(
            b"basic Y2xpZW50OnMzY3JldA==",
            b"client:s3cret"
        ));
        assert!(!basic_matches(
            b"Basic Y2xpZW50OnMzY3JldA==",
            b"client:other"
        ));
        assert!(!basic_matches(b"Basic not base64!", b"client:s3cret"));
        assert!(!basic_matches(b"Bearer client:s3cret", b"client:s3cret"));
        assert!(!basic_matches(b"Basic ", b""));
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_the_token_exact() {
        assert!(bearer_matches(b"Bearer s3cret", b"s3cret"));
        assert!(bearer_matches(b"bearer s3cret", b"s3cret"));
        assert!(bearer_matches(b"BEARER s3cret", b"s3cret"));
        assert!(!bearer_matches(b"Bearer S3CRET", b"s3cret"));
        assert!(!bearer_matches(b"Basic s3cret", b"s3cret"));
        assert!(!bearer_matches(b"Bearers3cret", b"s3cret"));
        assert!(!bearer_matches(b"Bearer ", b""));
    }
}
