//! Payload encryption across Redis (`PAYLOAD_ENCRYPTION_KEY`): every envelope a node
//! builds from client data is sealed with ChaCha20-Poly1305 under a fresh random
//! nonce before it is published, and opened by the receiving node, so Redis and
//! anyone tapping its traffic never see SDP, candidates or messages in clear.
//!
//! Sealed envelopes are `E {base64(nonce || ciphertext)}`, sealed with the name of
//! the channel they are published on as associated data: an envelope captured on
//! one user's channel does not open on another's, so it cannot be replayed to
//! another user (a broadcast is sealed once per member for that reason).
//!
//! The rule with a key set: **any envelope carrying a client payload must be
//! sealed**. Only envelopes that carry none may travel clear (see
//! [`crate::envelope::carries_no_client_payload`]): `K` (a session id and a reason)
//! and `J`/`L` whose body is exactly a membership frame about the member in the
//! header. Those are built by Lua scripts inside Redis, which cannot seal, and say
//! nothing Redis does not already store in clear (room membership). Everything
//! else that arrives clear (a frame, or a `J`/`L` carrying anything else) is refused.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

const SEALED_PREFIX: &str = "E ";
const NONCE_LEN: usize = 12;
/// What the key check stores in Redis, sealed, so nodes can compare keys.
const KEY_CHECK: &str = "signal-node payload key check";

/// Why an envelope could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Does not open: sealed with another key, for another channel (replayed), or
    /// tampered with. AEAD cannot tell these apart; a key mismatch between nodes is
    /// caught by the key check instead.
    #[error("does not open for this channel (another key, another channel, or tampered with)")]
    WrongKey,
    /// Sealed, but this node has no key.
    #[error("sealed, but this node has no PAYLOAD_ENCRYPTION_KEY")]
    NoKey,
    /// Clear, carrying a client payload, while this node has a key: forged or
    /// injected into Redis, since every node of the cluster seals those.
    #[error("not sealed, though PAYLOAD_ENCRYPTION_KEY is set")]
    Clear,
}

impl OpenError {
    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::WrongKey => "unopenable",
            Self::NoKey => "no_key",
            Self::Clear => "clear",
        }
    }
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

    /// Seals an envelope for publishing on `channel` (bound to it as associated data).
    pub fn seal(&self, channel: &str, envelope: &str) -> String {
        self.seal_with(channel.as_bytes(), envelope)
    }

    fn seal_with(&self, aad: &[u8], envelope: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: envelope.as_bytes(),
            aad,
        };
        // Encryption into a Vec cannot fail for inputs below the AEAD's 256 GiB limit.
        let ciphertext = self.cipher.encrypt(&nonce, payload).unwrap_or_default();
        let mut raw = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ciphertext);
        let mut out = String::with_capacity(SEALED_PREFIX.len() + raw.len() * 4 / 3 + 4);
        out.push_str(SEALED_PREFIX);
        B64.encode_string(&raw, &mut out);
        out
    }

    fn open_sealed(&self, aad: &[u8], body: &str) -> Result<String, OpenError> {
        let raw = B64.decode(body).map_err(|_| OpenError::WrongKey)?;
        if raw.len() < NONCE_LEN {
            return Err(OpenError::WrongKey);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad,
        };
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| OpenError::WrongKey)?;
        String::from_utf8(plain).map_err(|_| OpenError::WrongKey)
    }

    /// The value a node stores so others can tell whether they share its key.
    /// Sealed without associated data, as before channel binding, so nodes of
    /// either version agree on whether they share a key.
    pub fn key_check(&self) -> String {
        self.seal_with(b"", KEY_CHECK)
    }

    /// Whether a stored key check was sealed with this key.
    pub fn matches_key_check(&self, stored: &str) -> bool {
        stored
            .strip_prefix(SEALED_PREFIX)
            .and_then(|body| self.open_sealed(b"", body).ok())
            .is_some_and(|plain| plain == KEY_CHECK)
    }
}

/// Opens an envelope as received from Redis on `channel`: sealed ones with `cipher`
/// (bound to `channel`); clear ones as they are without a key, and with a key only
/// when they carry no client payload (module docs).
pub fn open<'a>(
    cipher: Option<&PayloadCipher>,
    channel: &str,
    text: &'a str,
) -> Result<Cow<'a, str>, OpenError> {
    // A numbered frame: Redis wrote the header, the node sealed what it wraps.
    if let Some((header, inner)) = text
        .strip_prefix("S ")
        .and_then(crate::envelope::split_line)
    {
        return Ok(match open(cipher, channel, inner)? {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(opened) => Cow::Owned(format!("S {header}\n{opened}")),
        });
    }
    match (text.strip_prefix(SEALED_PREFIX), cipher) {
        (None, None) => Ok(Cow::Borrowed(text)),
        (None, Some(_)) if crate::envelope::carries_no_client_payload(text) => {
            Ok(Cow::Borrowed(text))
        }
        (None, Some(_)) => Err(OpenError::Clear),
        (Some(_), None) => Err(OpenError::NoKey),
        (Some(body), Some(cipher)) => cipher.open_sealed(channel.as_bytes(), body).map(Cow::Owned),
    }
}

/// Seals with `cipher` for `channel` when there is a cipher.
pub fn seal(cipher: Option<&PayloadCipher>, channel: &str, envelope: String) -> String {
    match cipher {
        Some(c) => c.seal(channel, &envelope),
        None => envelope,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_and_hides_the_text() {
        let c = PayloadCipher::new(&[7; 32]);
        let sealed = c.seal("ch:a", "F\n{\"sdp\":\"v=0 secret\"}");
        assert!(sealed.starts_with("E ") && !sealed.contains("secret"));
        assert_eq!(
            open(Some(&c), "ch:a", &sealed).unwrap(),
            "F\n{\"sdp\":\"v=0 secret\"}"
        );
        assert_ne!(
            c.seal("ch:a", "x"),
            c.seal("ch:a", "x"),
            "fresh nonce every time"
        );
    }

    #[test]
    fn sealed_envelopes_are_bound_to_their_channel() {
        let c = PayloadCipher::new(&[7; 32]);
        let sealed = c.seal("signal:user:{alice}:ch", "F\n{}");
        assert_eq!(
            open(Some(&c), "signal:user:{bob}:ch", &sealed),
            Err(OpenError::WrongKey)
        );
        assert!(open(Some(&c), "signal:user:{alice}:ch", &sealed).is_ok());
    }

    #[test]
    fn with_a_key_only_envelopes_without_client_payload_travel_clear() {
        let c = PayloadCipher::new(&[7; 32]);
        let s = crate::ids::SessionId::new();
        let kick = crate::envelope::kick(s, crate::envelope::KickReason::Kicked);
        assert!(open(Some(&c), "ch", &kick).is_ok());
        let left = crate::envelope::left(
            "bob",
            s,
            r#"{"type":"user_left","payload":{"user_id":"bob","room_id":"r1","reason":"left"}}"#,
        );
        assert!(open(Some(&c), "ch", &left).is_ok());
        let frame = crate::envelope::frame(r#"{"type":"message","from":"x","payload":1}"#);
        assert_eq!(open(Some(&c), "ch", &frame), Err(OpenError::Clear));
        assert!(
            open(None, "ch", &frame).is_ok(),
            "no key: clear is the format"
        );
    }

    #[test]
    fn other_keys_and_keyless_nodes_fail_loudly() {
        let (a, b) = (PayloadCipher::new(&[1; 32]), PayloadCipher::new(&[2; 32]));
        let sealed = a.seal("ch", "F\n{}");
        assert_eq!(open(Some(&b), "ch", &sealed), Err(OpenError::WrongKey));
        assert_eq!(open(None, "ch", &sealed), Err(OpenError::NoKey));
        assert_eq!(open(Some(&b), "ch", "E !!!"), Err(OpenError::WrongKey));
        assert!(a.matches_key_check(&a.key_check()));
        assert!(!b.matches_key_check(&a.key_check()));
        assert!(!b.matches_key_check("none"));
    }
}
