//! Who may do what: client tokens (JWT) for WebSockets and membership queries,
//! tokens minted by `POST /tokens`, and the admin bearer. Crypto and parsing are
//! jsonwebtoken's and subtle's, never ours.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{check_public_key, JwtKey, Security};
use crate::protocol::Role;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

/// The claims of a client token (PROTOCOL.md section 9).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id the token is for.
    pub sub: String,
    /// The room it admits to, or `*` for any.
    pub room: String,
    /// `host` or `audience` in moderated rooms; absent means audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    /// Whether the token admits to `room`.
    pub fn covers(&self, room: &str) -> bool {
        self.room == "*" || self.room == room
    }

    /// The role in a moderated room: `host` only when the token says so.
    pub fn moderated_role(&self) -> Role {
        match self.role.as_deref() {
            Some("host") => Role::Host,
            _ => Role::Audience,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Missing, malformed, badly signed, expired, wrong algorithm: 4401 / 401.
    Unauthorized,
    /// Valid, but for another user or room: 4403 / 403.
    Forbidden,
}

/// Verifies client tokens with the configured key and algorithm.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// The verifier for `AUTH_MODE=jwt`, or `None` when auth is off.
    pub fn new(security: &Security) -> Option<Self> {
        let (key, alg) = match security.auth.as_ref()? {
            JwtKey::Secret(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
            JwtKey::PublicPem(pem) => match check_public_key(pem).ok()? {
                Algorithm::RS256 => (DecodingKey::from_rsa_pem(pem).ok()?, Algorithm::RS256),
                _ => (DecodingKey::from_ec_pem(pem).ok()?, Algorithm::ES256),
            },
        };
        // One algorithm only: a token signed otherwise (or `alg: none`) is refused.
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not merely right when present.
        let mut required = vec!["exp", "sub"];
        match &security.jwt_issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &security.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Some(Self { key, validation })
    }

    /// Decodes and checks a token's signature and times.
    pub fn verify(&self, token: &str) -> Result<Claims, Denied> {
        decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|_| Denied::Unauthorized)
    }

    /// A token that lets `user` into `room`.
    pub fn admit(&self, token: Option<&str>, room: &str, user: &str) -> Result<Claims, Denied> {
        let claims = self.verify(token.ok_or(Denied::Unauthorized)?)?;
        if claims.sub != user || !claims.covers(room) {
            return Err(Denied::Forbidden);
        }
        Ok(claims)
    }
}

/// Why `POST /tokens` could not mint a token, so the handler can log the cause.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// `JWT_SECRET` is not set.
    #[error("no JWT_SECRET to sign with")]
    NoSecret,
    /// The system clock reads before 1970.
    #[error("the system clock is before the Unix epoch")]
    Clock,
    /// now + ttl does not fit a JWT `exp` (cannot happen with the configured
    /// range of `TOKEN_MAX_TTL_SECONDS`; checked rather than trusted).
    #[error("token expiry out of range")]
    Expiry,
    /// jsonwebtoken refused to sign.
    #[error("token signing failed: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
}

/// A token minted by `POST /tokens`, and when it expires (seconds since the epoch).
/// `ttl` is capped at `TOKEN_MAX_TTL_SECONDS`.
pub fn issue(
    security: &Security,
    user: &str,
    room: &str,
    role: Option<Role>,
    ttl: Duration,
) -> Result<(String, u64), IssueError> {
    let secret = security.token_secret.as_ref().ok_or(IssueError::NoSecret)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| IssueError::Clock)?
        .as_secs();
    // `exp` must also fit an i64 for RFC 3339 formatting and for verifiers.
    let exp = now
        .checked_add(ttl.min(security.token_max_ttl).as_secs().max(1))
        .filter(|exp| i64::try_from(*exp).is_ok())
        .ok_or(IssueError::Expiry)?;
    let claims = Claims {
        sub: user.to_owned(),
        room: room.to_owned(),
        role: role.map(|r| r.as_str().to_owned()),
        exp,
        nbf: None,
        iss: security.jwt_issuer.clone(),
        aud: security.jwt_audience.clone(),
    };
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?;
    Ok((token, exp))
}

/// A room password's argon2id hash (PHC string, random salt). Slow on purpose:
/// call it off the async threads (`spawn_blocking`).
pub fn hash_password(password: &str) -> Option<String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .ok()
        .map(|h| h.to_string())
}

/// Whether `password` matches a stored hash. Slow: call it off the async threads.
/// Allocates the 19 MiB that one check needs; [`verify_password_in`] reuses them.
pub fn verify_password(password: &str, hash: &str) -> bool {
    let mut blocks = password_memory();
    verify_password_in(password, hash, &mut blocks)
}

/// The working memory of one password check (`argon2::Params::DEFAULT`: 19 MiB).
pub fn password_memory() -> Vec<argon2::Block> {
    vec![argon2::Block::default(); argon2::Params::DEFAULT.block_count()]
}

/// Whether `password` matches a stored hash, computed in `blocks` (from
/// [`password_memory`]) and compared in constant time. Only hashes made with this
/// node's own fixed cost (argon2id v19, 19 MiB, 2 passes, 1 lane, 32-byte output:
/// `argon2::Params::DEFAULT`) are checked, so a hash planted in Redis cannot make
/// one check cost gigabytes; and since the memory is the caller's, checks never
/// grow the allocator's per-thread arenas.
pub fn verify_password_in(password: &str, hash: &str, blocks: &mut [argon2::Block]) -> bool {
    use argon2::password_hash::PasswordHash;
    use subtle::ConstantTimeEq;
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let fixed = argon2::Params::DEFAULT;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let same_cost = parsed.algorithm == argon2::ARGON2ID_IDENT
        && parsed.version.is_none_or(|v| v == 0x13)
        && expected.len() == argon2::Params::DEFAULT_OUTPUT_LEN
        && argon2::Params::try_from(&parsed).is_ok_and(|p| {
            (p.m_cost(), p.t_cost(), p.p_cost()) == (fixed.m_cost(), fixed.t_cost(), fixed.p_cost())
        });
    if !same_cost {
        tracing::error!("room password hash has another cost than this node's; refusing it");
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, fixed);
    let mut out = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    if argon
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks)
        .is_err()
    {
        return false;
    }
    out.ct_eq(expected.as_bytes()).into()
}

/// Why an admin request was refused (PROTOCOL.md section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminDenied {
    /// `ADMIN_TOKEN` is not configured: 403 `admin_disabled`.
    Disabled,
    /// No bearer: 401 `unauthorized`.
    Missing,
    /// A wrong bearer: 403 `forbidden`.
    Wrong,
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether `presented` equals the configured secret (admin or metrics token), compared in constant time.
pub fn secret_matches(configured: Option<&str>, presented: Option<&str>) -> bool {
    let (Some(configured), Some(presented)) = (configured, presented) else {
        return false;
    };
    // `ct_eq` on slices returns early when the lengths differ, which would tell a
    // prober the secret's length. SHA-256 digests are always 32 bytes, so the
    // comparison's time depends on neither input.
    let configured = Sha256::digest(configured.as_bytes());
    let presented = Sha256::digest(presented.as_bytes());
    bool::from(configured.as_slice().ct_eq(presented.as_slice()))
}

/// Checks an admin request's bearer.
pub fn check_admin(configured: Option<&str>, presented: Option<&str>) -> Result<(), AdminDenied> {
    let configured = configured.ok_or(AdminDenied::Disabled)?;
    let presented = presented.ok_or(AdminDenied::Missing)?;
    if secret_matches(Some(configured), Some(presented)) {
        Ok(())
    } else {
        Err(AdminDenied::Wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(secret: &str) -> Security {
        Security {
            auth: Some(JwtKey::Secret(secret.as_bytes().to_vec())),
            token_secret: Some(secret.as_bytes().to_vec()),
            token_max_ttl: Duration::from_secs(60),
            ..Security::default()
        }
    }

    #[test]
    fn issued_tokens_verify_and_are_scoped() {
        let s = security("k1");
        let v = Verifier::new(&s).unwrap();
        let (token, exp) = issue(
            &s,
            "alice",
            "r1",
            Some(Role::Host),
            Duration::from_secs(9999),
        )
        .unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(exp <= now + 60, "ttl is capped");
        let claims = v.admit(Some(&token), "r1", "alice").unwrap();
        assert_eq!(claims.moderated_role(), Role::Host);
        assert_eq!(
            v.admit(Some(&token), "r2", "alice").unwrap_err(),
            Denied::Forbidden
        );
        assert_eq!(
            v.admit(Some(&token), "r1", "bob").unwrap_err(),
            Denied::Forbidden
        );
        assert_eq!(
            v.admit(None, "r1", "alice").unwrap_err(),
            Denied::Unauthorized
        );
        let other = Verifier::new(&security("k2")).unwrap();
        assert_eq!(
            other.admit(Some(&token), "r1", "alice").unwrap_err(),
            Denied::Unauthorized
        );
    }

    #[test]
    fn unsigned_and_expired_tokens_are_refused() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let v = Verifier::new(&security("k1")).unwrap();
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"alice","room":"*","exp":9999999999}"#)
        );
        assert_eq!(v.verify(&none).unwrap_err(), Denied::Unauthorized);
        let expired = encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "alice".into(),
                room: "*".into(),
                role: None,
                exp: 1_000,
                nbf: None,
                iss: None,
                aud: None,
            },
            &EncodingKey::from_secret(b"k1"),
        )
        .unwrap();
        assert_eq!(v.verify(&expired).unwrap_err(), Denied::Unauthorized);
    }

    #[test]
    fn configured_issuer_and_audience_are_required() {
        let mut s = security("k1");
        s.jwt_issuer = Some("me".into());
        s.jwt_audience = Some("us".into());
        let v = Verifier::new(&s).unwrap();
        let (good, _) = issue(&s, "alice", "r1", None, Duration::from_secs(60)).unwrap();
        assert!(v.verify(&good).is_ok());
        let plain = security("k1");
        let (bare, _) = issue(&plain, "alice", "r1", None, Duration::from_secs(60)).unwrap();
        assert_eq!(v.verify(&bare).unwrap_err(), Denied::Unauthorized);
    }

    #[test]
    fn admin_bearer_rules() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(check_admin(None, Some("x")), Err(AdminDenied::Disabled));
        assert_eq!(check_admin(Some("t"), None), Err(AdminDenied::Missing));
        assert_eq!(check_admin(Some("t"), Some("u")), Err(AdminDenied::Wrong));
        assert_eq!(check_admin(Some("t"), Some("t")), Ok(()));
    }

    #[test]
    fn secrets_compare_by_digest_whatever_their_lengths() {
        let secret = "s3cret-admin-token";
        assert!(secret_matches(Some(secret), Some(secret)));
        // A prefix, an extension and another length all fail like any wrong token.
        assert!(!secret_matches(Some(secret), Some("s3cret")));
        assert!(!secret_matches(
            Some(secret),
            Some("s3cret-admin-token-and-more")
        ));
        assert!(!secret_matches(Some(secret), Some("")));
        assert!(!secret_matches(Some(""), Some(secret)));
        assert!(!secret_matches(None, Some(secret)));
        assert!(!secret_matches(Some(secret), None));
    }

    #[test]
    fn passwords_are_stored_as_argon2_hashes() {
        let hash = hash_password("hunter2").unwrap();
        assert!(hash.starts_with("$argon2") && !hash.contains("hunter2"));
        assert!(verify_password("hunter2", &hash));
        assert!(!verify_password("hunter3", &hash));
        assert!(!verify_password("hunter2", "not a hash"));
        // Another cost (here 64 MiB) is refused without running it.
        let costly = hash.replace("m=19456", "m=65536");
        assert_ne!(costly, hash);
        assert!(!verify_password("hunter2", &costly));
    }

    #[test]
    fn public_keys_pick_their_algorithm() {
        let key = rcgen::KeyPair::generate().unwrap();
        assert_eq!(
            check_public_key(key.public_key_pem().as_bytes()),
            Ok(Algorithm::ES256)
        );
        assert!(check_public_key(b"not a key").is_err());
    }
}
