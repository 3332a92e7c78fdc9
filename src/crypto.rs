//! Payload encryption across Redis (`PAYLOAD_ENCRYPTION_KEY`): every envelope a node
//! builds from client data is sealed with ChaCha20-Poly1305 under a fresh random
//! nonce before it is published, and opened by the receiving node, so Redis and
//! anyone tapping its traffic never see SDP, candidates or messages in clear.
//!
//! Sealed envelopes are `E {base64(nonce || ciphertext)}`. The membership and kick
//! envelopes that Lua scripts build (user ids only, no client data) stay clear.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

const SEALED_PREFIX: &str = "E ";
const NONCE_LEN: usize = 12;
/// What the key check stores in Redis, sealed, so nodes can compare keys.
const KEY_CHECK: &str = "signal-node payload key check";

/// Why an envelope could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Sealed with another key (or tampered with).
    #[error("sealed with a different PAYLOAD_ENCRYPTION_KEY")]
    WrongKey,
    /// Sealed, but this node has no key.
    #[error("sealed, but this node has no PAYLOAD_ENCRYPTION_KEY")]
    NoKey,
}

/// The cluster's payload key.
pub struct PayloadCipher {
    cipher: ChaCha20Poly1305,
}

impl PayloadCipher {
    /// A cipher for a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// Seals an envelope for Redis.
    pub fn seal(&self, envelope: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption into a Vec cannot fail for inputs below the AEAD's 256 GiB limit.
        let ciphertext = self
            .cipher
            .encrypt(&nonce, envelope.as_bytes())
            .unwrap_or_default();
        let mut raw = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ciphertext);
        let mut out = String::with_capacity(SEALED_PREFIX.len() + raw.len() * 4 / 3 + 4);
        out.push_str(SEALED_PREFIX);
        B64.encode_string(&raw, &mut out);
        out
    }

    fn open_sealed(&self, body: &str) -> Result<String, OpenError> {
        let raw = B64.decode(body).map_err(|_| OpenError::WrongKey)?;
        if raw.len() < NONCE_LEN {
            return Err(OpenError::WrongKey);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| OpenError::WrongKey)?;
        String::from_utf8(plain).map_err(|_| OpenError::WrongKey)
    }

    /// The value a node stores so others can tell whether they share its key.
    pub fn key_check(&self) -> String {
        self.seal(KEY_CHECK)
    }

    /// Whether a stored key check was sealed with this key.
    pub fn matches_key_check(&self, stored: &str) -> bool {
        stored
            .strip_prefix(SEALED_PREFIX)
            .and_then(|body| self.open_sealed(body).ok())
            .is_some_and(|plain| plain == KEY_CHECK)
    }
}

/// Opens an envelope as received from Redis: sealed ones with `cipher`, clear ones as they are.
pub fn open<'a>(cipher: Option<&PayloadCipher>, text: &'a str) -> Result<Cow<'a, str>, OpenError> {
    match (text.strip_prefix(SEALED_PREFIX), cipher) {
        (None, _) => Ok(Cow::Borrowed(text)),
        (Some(_), None) => Err(OpenError::NoKey),
        (Some(body), Some(cipher)) => cipher.open_sealed(body).map(Cow::Owned),
    }
}

/// Seals with `cipher` when there is one.
pub fn seal(cipher: Option<&PayloadCipher>, envelope: String) -> String {
    match cipher {
        Some(c) => c.seal(&envelope),
        None => envelope,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_and_hides_the_text() {
        let c = PayloadCipher::new(&[7; 32]);
        let sealed = c.seal("F\n{\"sdp\":\"v=0 secret\"}");
        assert!(sealed.starts_with("E ") && !sealed.contains("secret"));
        assert_eq!(
            open(Some(&c), &sealed).unwrap(),
            "F\n{\"sdp\":\"v=0 secret\"}"
        );
        assert_ne!(c.seal("x"), c.seal("x"), "fresh nonce every time");
    }

    #[test]
    fn other_keys_and_keyless_nodes_fail_loudly() {
        let (a, b) = (PayloadCipher::new(&[1; 32]), PayloadCipher::new(&[2; 32]));
        let sealed = a.seal("F\n{}");
        assert_eq!(open(Some(&b), &sealed), Err(OpenError::WrongKey));
        assert_eq!(open(None, &sealed), Err(OpenError::NoKey));
        assert_eq!(open(Some(&b), "E !!!"), Err(OpenError::WrongKey));
        assert_eq!(open(Some(&b), "K x kicked\n").unwrap(), "K x kicked\n");
        assert!(a.matches_key_check(&a.key_check()));
        assert!(!b.matches_key_check(&a.key_check()));
        assert!(!b.matches_key_check("none"));
    }
}
