//! The command line (src/cli.rs) through the real binary: `--help` lists every
//! setting with its variable and default, a flag wins over its variable and is
//! checked the same way (one line, exit 2), and `signal-node token` prints a token
//! that a jwt-mode node admits exactly as it admits one from `POST /tokens`.

mod support;

use serde_json::Value;
use support::*;

/// `--help` names every setting's variable next to its flag with a default, the
/// three subcommands, and never a variable's value (secrets live there).
#[test]
fn help_lists_every_setting_with_its_variable_and_default() {
    let secret = "do-not-print-me-0123456789";
    let (status, stderr, help) = run_command_expecting_exit(
        &["--help"],
        &[("ADMIN_TOKEN", secret), ("TURN_SECRET", secret)],
    );
    assert!(status.success(), "--help: {status}\n{stderr}");
    assert_eq!(CONFIG_VARS.len(), 44, "every setting of README's table");
    for var in CONFIG_VARS {
        let flag = format!("--{}", var.to_lowercase().replace('_', "-"));
        let entry = help
            .split("\n      --")
            .find(|e| e.starts_with(&flag[2..]))
            .unwrap_or_else(|| panic!("no {flag} in --help:\n{help}"));
        assert!(entry.contains(&format!("[env: {var}]")), "{flag}: {entry}");
        assert!(
            entry.contains("[default: "),
            "{flag} shows no default: {entry}"
        );
    }
    for command in ["serve", "healthcheck", "token"] {
        assert!(
            help.contains(&format!("\n  {command} ")),
            "no {command} in:\n{help}"
        );
    }
    assert!(!help.contains(secret), "a variable's value in --help");
}

/// A flag wins over its variable and is refused the same way, in one line.
#[test]
fn flags_win_over_variables_and_are_checked_alike() {
    let (status, stderr, _) = run_command_expecting_exit(
        &["--resume-grace-seconds", "99999"],
        &[("RESUME_GRACE_SECONDS", "5")],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("RESUME_GRACE_SECONDS") && lines[0].contains("99999"),
        "{stderr}"
    );
    let (status, stderr, _) = run_command_expecting_exit(&["--no-such-flag"], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
}

/// The claims of a token, unverified (the node verifies it below).
fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// `signal-node token` prints a token signed with JWT_SECRET for the user, room,
/// role and lifetime asked; a jwt-mode node admits it to that room only; without
/// a secret, or for a bad id, it exits 2 with one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_prints_a_token_the_nodes_accept() {
    let room = room_id();
    let env = [("JWT_SECRET", security::SECRET)];
    let args = [
        "token", "--user", "alice", "--room", &room, "--role", "host", "--ttl", "120",
    ];
    let (status, stderr, stdout) = run_command_expecting_exit(&args, &env);
    assert!(status.success(), "{status}: {stderr}");
    let token = stdout.trim().to_owned();
    let claims = claims_of(&token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["room"], room.as_str());
    assert_eq!(claims["role"], "host");
    let left = claims["exp"].as_i64().unwrap_or_default() - security::now();
    assert!((110..=121).contains(&left), "exp {left} s ahead");

    let node = TestNode::start(
        None,
        &key_prefix(),
        &[("AUTH_MODE", "jwt"), ("JWT_SECRET", security::SECRET)],
    )
    .await;
    // Not moderated: the token's role does not apply, alice joins as a peer.
    let (client, _) = security::join_token(&node, &room, "alice", &token, "peer").await;
    client.close().await;
    let query = format!("token={token}");
    let other = room_id();
    security::rejected(
        &node,
        &other,
        "alice",
        &query,
        &[],
        ("forbidden", 4403),
        "other room",
    )
    .await;

    let (status, stderr, _) = run_command_expecting_exit(&args, &[]);
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.trim().lines().count() == 1 && stderr.contains("JWT_SECRET"),
        "{stderr}"
    );
    let bad_user = ["token", "--user", "not valid", "--room", "r"];
    let (status, stderr, _) = run_command_expecting_exit(&bad_user, &env);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--user"), "{stderr}");
}
