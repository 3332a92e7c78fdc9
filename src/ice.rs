//! The ICE servers every client is handed (PROTOCOL.md section 12): the
//! configured `ICE_SERVERS` (STUN, or TURN with static credentials), plus, when
//! `TURN_URLS` and `TURN_SECRET` are set, one TURN entry with time-limited
//! credentials in the TURN REST format that coturn's `use-auth-secret` checks:
//! username `<expiry>:<user_id>`, credential base64(HMAC-SHA1(secret, username)).
//! A TURN server holding the same secret accepts them until the expiry without
//! any call back to this node.
//!
//! Everything is validated at startup, so a typo in `ICE_SERVERS` stops the node
//! with one line instead of reaching every browser as an `InvalidAccessError`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};

/// The ICE servers of this node: what `room_users` and `GET /ice-servers` carry.
#[derive(Clone, Default)]
pub struct IceServers {
    /// `ICE_SERVERS`, validated RTCIceServer objects, handed out as configured.
    fixed: Vec<Value>,
    /// Time-limited TURN credentials, when configured.
    turn: Option<Turn>,
}

/// `TURN_URLS`, `TURN_SECRET`, `TURN_TTL_SECONDS`.
#[derive(Clone)]
struct Turn {
    urls: Vec<String>,
    secret: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for IceServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("IceServers")
            .field("fixed", &self.fixed.len())
            .field("turn_urls", &self.turn.as_ref().map(|t| &t.urls))
            .field("turn_ttl", &self.turn.as_ref().map(|t| t.ttl))
            .finish()
    }
}

/// The list handed to one user, and when its TURN credentials expire.
#[derive(Debug, Clone, PartialEq)]
pub struct Handout {
    /// RTCIceServer objects, ready for `new RTCPeerConnection({iceServers})`.
    pub servers: Vec<Value>,
    /// Unix seconds the TURN credentials expire at; `None` without TURN.
    pub expires_at: Option<u64>,
}

impl IceServers {
    /// Validated settings. `fixed` is `ICE_SERVERS` as text (None: unset), `turn`
    /// the TURN URLs (comma-separated) with the secret and the credentials' life.
    /// The error says what is wrong (without the secret), for the startup line.
    pub fn new(
        fixed: Option<&str>,
        turn_urls: Option<&str>,
        turn_secret: Option<&str>,
        turn_ttl: Duration,
    ) -> Result<Self, IceError> {
        let fixed = match fixed {
            None => Vec::new(),
            Some(text) => parse_servers(text).map_err(IceError::Servers)?,
        };
        let turn = match (turn_urls, turn_secret) {
            (None, None) => None,
            (Some(_), None) => return Err(IceError::TurnSecretMissing),
            (None, Some(_)) => return Err(IceError::TurnUrlsMissing),
            (Some(urls), Some(secret)) => {
                if secret.is_empty() {
                    return Err(IceError::TurnSecretMissing);
                }
                Some(Turn {
                    urls: parse_turn_urls(urls).map_err(IceError::TurnUrls)?,
                    secret: secret.as_bytes().to_vec(),
                    ttl: turn_ttl,
                })
            }
        };
        Ok(Self { fixed, turn })
    }

    /// Whether time-limited TURN credentials are handed out.
    pub fn has_turn(&self) -> bool {
        self.turn.is_some()
    }

    /// The list for `user`, with TURN credentials valid from `now` for the TTL.
    pub fn for_user(&self, user: &str, now: SystemTime) -> Handout {
        let mut servers = self.fixed.clone();
        let expires_at = self.turn.as_ref().map(|turn| {
            let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            let expiry = (now + turn.ttl).as_secs();
            let username = format!("{expiry}:{user}");
            let credential = credential(&turn.secret, &username);
            servers.push(json!({
                "urls": turn.urls,
                "username": username,
                "credential": credential,
            }));
            expiry
        });
        Handout {
            servers,
            expires_at,
        }
    }
}

/// base64(HMAC-SHA1(secret, username)): the TURN REST credential.
pub fn credential(secret: &[u8], username: &str) -> String {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = match Hmac::<sha1::Sha1>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// What is wrong with the ICE settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IceError {
    /// `ICE_SERVERS` is not a JSON array of RTCIceServer objects.
    #[error("ICE_SERVERS: {0}")]
    Servers(String),
    /// A `TURN_URLS` entry is not a TURN URL.
    #[error("TURN_URLS: {0}")]
    TurnUrls(String),
    #[error("TURN_URLS is set but TURN_SECRET is not: the credentials need the TURN server's shared secret")]
    TurnSecretMissing,
    #[error(
        "TURN_SECRET is set but TURN_URLS is not: say which TURN servers the credentials are for"
    )]
    TurnUrlsMissing,
}

/// The schemes of RFC 7064 and RFC 7065.
const SCHEMES: [&str; 4] = ["stun:", "stuns:", "turn:", "turns:"];

/// Parses and checks `ICE_SERVERS` as browsers would (RTCPeerConnection throws
/// on a TURN entry without credentials, and ignores misspelled keys).
fn parse_servers(text: &str) -> Result<Vec<Value>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let Value::Array(entries) = value else {
        return Err("not a JSON array of RTCIceServer objects".to_owned());
    };
    for (i, entry) in entries.iter().enumerate() {
        check_server(entry).map_err(|e| format!("entry {i}: {e}"))?;
    }
    Ok(entries)
}

fn check_server(entry: &Value) -> Result<(), String> {
    let Value::Object(fields) = entry else {
        return Err("not an object".to_owned());
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "urls" | "username" | "credential"))
    {
        return Err(format!(
            "unknown key {unknown:?} (an RTCIceServer has urls, username, credential)"
        ));
    }
    let urls: Vec<&str> = match fields.get("urls") {
        Some(Value::String(url)) => vec![url.as_str()],
        Some(Value::Array(urls)) if !urls.is_empty() => urls
            .iter()
            .map(|u| u.as_str().ok_or("urls must be strings"))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("urls must be a URL or a non-empty array of URLs".to_owned()),
        None => return Err("urls is missing".to_owned()),
    };
    for url in &urls {
        check_url(url)?;
    }
    for key in ["username", "credential"] {
        if fields.get(key).is_some_and(|v| !v.is_string()) {
            return Err(format!("{key} must be a string"));
        }
    }
    let is_turn = urls.iter().any(|u| u.starts_with("turn"));
    if is_turn && !has_strings(fields, &["username", "credential"]) {
        return Err("a TURN server needs username and credential".to_owned());
    }
    Ok(())
}

fn has_strings(fields: &Map<String, Value>, keys: &[&str]) -> bool {
    keys.iter()
        .all(|k| fields.get(*k).and_then(Value::as_str).is_some())
}

fn check_url(url: &str) -> Result<(), String> {
    let Some(scheme) = SCHEMES.iter().find(|s| url.starts_with(**s)) else {
        return Err(format!(
            "{url:?} is not a stun:, stuns:, turn: or turns: URL"
        ));
    };
    let rest = &url[scheme.len()..];
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(format!("{url:?} names no host"));
    }
    Ok(())
}

/// `TURN_URLS`: comma-separated `turn:`/`turns:` URLs, at least one.
fn parse_turn_urls(text: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Err("no URL".to_owned());
    }
    for url in &urls {
        check_url(url)?;
        if !url.starts_with("turn") {
            return Err(format!("{url:?} is not a turn: or turns: URL"));
        }
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_format() {
        // The example of draft-uberti-behave-turn-rest-00, section 2.2 style:
        // base64(HMAC-SHA1(secret, "expiry:user")).
        let ice = IceServers::new(
            Some(r#"[{"urls":"stun:stun.example.org:3478"}]"#),
            Some("turn:turn.example.org:3478?transport=udp, turns:turn.example.org:5349"),
            Some("north"),
            Duration::from_secs(86400),
        )
        .expect("valid settings");
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let handout = ice.for_user("alice", now);
        assert_eq!(handout.expires_at, Some(1_700_086_400));
        assert_eq!(handout.servers.len(), 2);
        let turn = &handout.servers[1];
        assert_eq!(turn["username"], "1700086400:alice");
        assert_eq!(turn["urls"][1], "turns:turn.example.org:5349");
        assert_eq!(
            turn["credential"],
            credential(b"north", "1700086400:alice").as_str()
        );
        // A known vector: HMAC-SHA1("key", "The quick brown fox jumps over the lazy dog").
        assert_eq!(
            credential(b"key", "The quick brown fox jumps over the lazy dog"),
            "3nybhbi3iqa8ino29wqQcBydtNk="
        );
        assert!(!format!("{ice:?}").contains("north"));
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let ttl = Duration::from_secs(60);
        let bad = |servers: &str| IceServers::new(Some(servers), None, None, ttl).unwrap_err();
        assert!(bad("stun:x").to_string().contains("not valid JSON"));
        assert!(bad(r#"{"urls":"stun:x"}"#).to_string().contains("array"));
        assert!(bad(r#"["stun:x"]"#).to_string().contains("not an object"));
        assert!(bad(r#"[{"url":"stun:x"}]"#)
            .to_string()
            .contains("unknown key"));
        assert!(bad(r#"[{"urls":[]}]"#).to_string().contains("non-empty"));
        assert!(bad(r#"[{"urls":"http://x"}]"#)
            .to_string()
            .contains("stun:"));
        assert!(bad(r#"[{"urls":"turn:x"}]"#)
            .to_string()
            .contains("username"));
        assert!(bad(r#"[{"urls":"stun:"}]"#).to_string().contains("no host"));
        assert!(IceServers::new(
            Some(r#"[{"urls":["turn:x"],"username":"u","credential":"c"}]"#),
            None,
            None,
            ttl
        )
        .is_ok());
        assert_eq!(
            IceServers::new(None, Some("turn:x"), None, ttl).unwrap_err(),
            IceError::TurnSecretMissing
        );
        assert_eq!(
            IceServers::new(None, None, Some("s"), ttl).unwrap_err(),
            IceError::TurnUrlsMissing
        );
        assert!(IceServers::new(None, Some("stun:x"), Some("s"), ttl).is_err());
        let none = IceServers::new(None, None, None, ttl).expect("nothing set");
        assert_eq!(
            none.for_user("bob", SystemTime::now()),
            Handout {
                servers: vec![],
                expires_at: None
            }
        );
    }
}
