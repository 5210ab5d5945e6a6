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

/// Whether an `authorization` value is `Basic <base64 of id:secret>` for these credentials
/// (`id:secret`): the scheme in any case (RFC 7617), the id and the secret each taken as
/// written or form-urldecoded first, as OAuth's `client_secret_basic` sends them (RFC 6749
/// §2.3.1), and compared in constant time.
pub(crate) fn basic_matches(given: &[u8], credentials: &[u8]) -> bool {
    use base64::Engine;
    const SCHEME: &[u8] = b"basic ";
    if given.len() <= SCHEME.len() || !given[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return false;
    }
    let encoded = given[SCHEME.len()..].trim_ascii();
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return false;
    };
    if constant_time_eq(&decoded, credentials) {
        return true;
    }
    match (split_colon(&decoded), split_colon(credentials)) {
        (Some((id, secret)), Some((want_id, want_secret))) => {
            let id_ok = constant_time_eq(&form_urldecode(id), want_id);
            let secret_ok = constant_time_eq(&form_urldecode(secret), want_secret);
            id_ok & secret_ok
        }
        _ => false,
    }
}

/// `id:secret` split at its first colon.
fn split_colon(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = b.iter().position(|c| *c == b':')?;
    Some((&b[..at], &b[at + 1..]))
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; a `%` not
/// followed by two hex digits stays as it is.
pub(crate) fn form_urldecode(b: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
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
        // Form-urlencoded first, as client_secret_basic sends them: base64("my%20app:p%2Bw%3Ad")
        // for the id "my app" and the secret "p+w:d".
        assert!(basic_matches(
            b"Basic bXklMjBhcHA6cCUyQnclM0Fk",
            b"my app:p+w:d"
        ));
        assert!(!basic_matches(
            b"Basic bXklMjBhcHA6cCUyQnclM0Fk",
            b"my app:p+w:e"
        ));
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
