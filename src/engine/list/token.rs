//! Page tokens: opaque to callers, bound to their query, and valid across restarts and
//! replicas (nothing in them depends on the process). A token is the hex form of a version
//! byte, the query's fingerprint, the cursor (the last id returned) and a check over all of
//! them; a token whose check fails, or that was issued for another query, is refused.
//!
//! The check detects damage and mixing up, not forgery: whoever forges a cursor only moves
//! where their own listing resumes, among results they may see anyway.

use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const CHECK: usize = 8;

/// The fingerprint of a query: everything that decides its answer but the page size.
pub fn fingerprint(parts: &[&str]) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(b"blue-authz listing query");
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    d[..8].try_into().expect("a digest is 32 bytes")
}

fn check(body: &[u8]) -> [u8; CHECK] {
    let d = Sha256::new()
        .chain_update(b"blue-authz page token")
        .chain_update(body)
        .finalize();
    d[..CHECK].try_into().expect("a digest is 32 bytes")
}

/// The token of the page after `cursor`.
pub fn encode(query: [u8; 8], cursor: &str) -> String {
    let mut body = vec![VERSION];
    body.extend_from_slice(&query);
    body.extend_from_slice(cursor.as_bytes());
    let c = check(&body);
    body.extend_from_slice(&c);
    body.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a token is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("is not a page token of this service (damaged or made up)")]
    Malformed,
    #[error("was issued for another query: a page token only continues the listing it came from")]
    OtherQuery,
}

/// The cursor of a token issued for `query`.
pub fn decode(token: &str, query: [u8; 8]) -> Result<String, TokenError> {
    let bytes = hex(token).ok_or(TokenError::Malformed)?;
    if bytes.len() < 1 + 8 + CHECK || bytes[0] != VERSION {
        return Err(TokenError::Malformed);
    }
    let (body, c) = bytes.split_at(bytes.len() - CHECK);
    if check(body) != c {
        return Err(TokenError::Malformed);
    }
    if body[1..9] != query {
        return Err(TokenError::OtherQuery);
    }
    String::from_utf8(body[9..].to_vec()).map_err(|_| TokenError::Malformed)
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_damage_and_other_queries() {
        let q = fingerprint(&["resources", "Blue::User::\"ada\"", "viewRecord"]);
        let other = fingerprint(&["resources", "Blue::User::\"bob\"", "viewRecord"]);
        assert_ne!(q, other);
        let t = encode(q, "r-0042");
        assert_eq!(decode(&t, q), Ok("r-0042".to_string()));
        assert_eq!(decode(&t, other), Err(TokenError::OtherQuery));
        // Every single-character change is caught.
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            let damaged = String::from_utf8(b).unwrap();
            assert!(decode(&damaged, q).is_err(), "{damaged}");
        }
        assert_eq!(decode("zz", q), Err(TokenError::Malformed));
        assert_eq!(decode("", q), Err(TokenError::Malformed));
        assert_eq!(decode(&t[..t.len() - 2], q), Err(TokenError::Malformed));
    }
}
