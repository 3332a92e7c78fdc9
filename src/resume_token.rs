//! Resume tokens (PROTOCOL.md section 11): what a client presents to take its
//! session back after its connection dropped. A token is 256 random bits; only its
//! SHA-256 digest is stored (in the member's record), so a copy of Redis cannot
//! resume anyone, and the token itself is never logged.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use sha2::{Digest, Sha256};

/// A freshly issued token and the digest that is stored in its place.
pub struct IssuedToken {
    /// What the client gets in `room_users.payload.session.resume_token`.
    pub token: String,
    /// What the store keeps: [`digest`] of `token`.
    pub digest: String,
}

/// Issues a new single-use token.
pub fn issue() -> IssuedToken {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let token = B64.encode(bytes);
    let digest = digest(&token);
    IssuedToken { token, digest }
}

/// The stored form of a token: lowercase hex SHA-256, 64 characters without
/// spaces, so it fits a space-separated record. Any string hashes, so garbage
/// presented by a client just never matches.
pub fn digest(token: &str) -> String {
    let hash = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A resume as the client asked for it in the query string.
#[derive(Clone)]
pub struct ResumeAsk {
    /// The digest of the presented token (the token itself is dropped at once).
    pub digest: String,
    /// The last `seq` the client received.
    pub last_seq: u64,
}

impl std::fmt::Debug for ResumeAsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumeAsk")
            .field("last_seq", &self.last_seq)
            .finish_non_exhaustive()
    }
}

impl ResumeAsk {
    /// Reads `resume` and `last_seq`: `None` (an ordinary join) without a token, or
    /// when `last_seq` is not a non-negative integer. A missing `last_seq` is 0.
    pub fn from_query(resume: Option<&str>, last_seq: Option<&str>) -> Option<Self> {
        let token = resume.filter(|t| !t.is_empty() && t.len() <= 256)?;
        let last_seq = match last_seq {
            None => 0,
            Some(text) => text.parse::<u64>().ok()?,
        };
        Some(Self {
            digest: digest(token),
            last_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_stored_as_digests() {
        let a = issue();
        let b = issue();
        assert_ne!(a.token, b.token);
        assert_eq!(a.token.len(), 43);
        assert_eq!(a.digest, digest(&a.token));
        assert_eq!(a.digest.len(), 64);
        assert!(!a.digest.contains(&a.token));
    }

    #[test]
    fn queries_that_are_not_a_resume_give_an_ordinary_join() {
        assert!(ResumeAsk::from_query(None, Some("3")).is_none());
        assert!(ResumeAsk::from_query(Some(""), None).is_none());
        assert!(ResumeAsk::from_query(Some("t"), Some("-1")).is_none());
        assert!(ResumeAsk::from_query(Some("t"), Some("1.5")).is_none());
        assert!(ResumeAsk::from_query(Some("t"), Some("x")).is_none());
        assert_eq!(
            ResumeAsk::from_query(Some("t"), None).map(|r| r.last_seq),
            Some(0)
        );
        assert_eq!(
            ResumeAsk::from_query(Some("t"), Some("7")).map(|r| r.last_seq),
            Some(7)
        );
        let ask = ResumeAsk::from_query(Some("secret-token"), None).unwrap();
        assert!(!format!("{ask:?}").contains("secret"));
    }
}
