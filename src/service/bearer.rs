//! Caller tokens: the one comparison every listener that requires a bearer token uses.

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

#[cfg(test)]
mod tests {
    use super::bearer_matches;

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
