//! The HTTP handlers in process: `router(state).oneshot(request)` on the memory
//! engine, no sockets, no Redis, no child process. Fast enough to cover every
//! status and error code of PROTOCOL.md section 8 that does not need a live session.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use signal_node::config::Config;
use signal_node::state::AppState;
use tower::ServiceExt;

const ADMIN: &str = "admin-secret";

/// A standalone node's state built from `vars` (no `REDIS_*`: the memory engine).
fn state(vars: &[(&str, &str)]) -> AppState {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let config = Config::from_vars(
        |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
        || "inproc".to_owned(),
    )
    .expect("test config is valid");
    AppState::new(config).expect("the memory engine needs nothing external")
}

fn admin_state() -> AppState {
    state(&[("ADMIN_TOKEN", ADMIN)])
}

/// Sends one request through a fresh router; returns the status and the body
/// (JSON when it parses, else the text as a JSON string).
async fn call(
    state: &AppState,
    method: Method,
    uri: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(token) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_owned())),
        None => req.body(Body::empty()),
    }
    .expect("valid request");
    let resp = signal_node::http::router(state.clone())
        .oneshot(req)
        .await
        .expect("the router is infallible");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

async fn get(state: &AppState, uri: &str, bearer: Option<&str>) -> (StatusCode, Value) {
    call(state, Method::GET, uri, bearer, None).await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test]
async fn healthz_and_readyz() {
    let s = state(&[]);
    let (status, body) = get(&s, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["node_id"], "inproc");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));

    let (status, body) = get(&s, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"status": "ready", "node_id": "inproc", "mode": "standalone", "redis_mode": null})
    );
}

#[tokio::test]
async fn unknown_route_and_wrong_method_answer_json() {
    let s = state(&[]);
    let (status, body) = get(&s, "/no/such/endpoint", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "not_found");

    let (status, body) = call(&s, Method::PUT, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(code(&body), "method_not_allowed");
    let (status, body) = call(&s, Method::DELETE, "/rooms", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(code(&body), "method_not_allowed");
}

#[tokio::test]
async fn invalid_ids_are_400() {
    let s = state(&[]);
    for uri in [
        "/rooms/bad%20id/users",
        "/rooms/a!b/users",
        "/users/bad%20id",
        "/users/%FF",
        &format!("/users/{}", "u".repeat(65)),
    ] {
        let (status, body) = get(&s, uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(code(&body), "invalid_id", "{uri}");
    }
    // Valid ids on an empty engine: an empty room, an unknown user.
    let (status, body) = get(&s, "/rooms/r1/users", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"room_id": "r1", "count": 0, "users": []}));
    let (status, body) = get(&s, "/users/u1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "user_not_found");
}

#[tokio::test]
async fn admin_auth_disabled_missing_wrong_right() {
    let off = state(&[]);
    let (status, body) = get(&off, "/rooms", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&body), "admin_disabled");

    let on = admin_state();
    let (status, body) = get(&on, "/rooms", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "unauthorized");
    let (status, body) = get(&on, "/rooms", Some("not-the-token")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&body), "forbidden");
    let (status, _) = get(&on, "/rooms", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
    // The same guard on every admin endpoint.
    for uri in ["/stats", "/nodes", "/rooms/r1"] {
        let (status, body) = get(&on, uri, Some("nope")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(code(&body), "forbidden", "{uri}");
    }
}

#[tokio::test]
async fn create_room_then_conflict_then_bad_bodies() {
    let s = admin_state();
    let post = |body: &'static str| {
        let s = s.clone();
        async move { call(&s, Method::POST, "/rooms", Some(ADMIN), Some(body)).await }
    };
    let (status, body) = post(r#"{"room_id":"lobby","max_users":4,"moderated":true}"#).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["room_id"], "lobby");
    assert_eq!(body["count"], 0);
    assert_eq!(body["max_users"], 4);
    assert_eq!(body["moderated"], true);
    assert_eq!(body["password_protected"], false);
    assert!(body["created_at"].is_string());

    let (status, body) = post(r#"{"room_id":"lobby"}"#).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&body), "room_exists");

    // No room_id: the node picks one.
    let (status, body) = post("{}").await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(body["room_id"].as_str().is_some_and(|id| !id.is_empty()));

    let (status, body) = get(&s, "/rooms/lobby", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["moderated"], true);

    for (bad, want) in [
        ("not json", "invalid_request"),
        (r#"{"maxUsers":3}"#, "invalid_request"),
        (r#"{"max_users":0}"#, "invalid_request"),
        (r#"{"max_users":-1}"#, "invalid_request"),
        (r#"{"password":""}"#, "invalid_request"),
        (r#"{"room_id":"bad id"}"#, "invalid_id"),
        (r#"{"hosts":["ok","bad id"]}"#, "invalid_id"),
    ] {
        let (status, body) = post(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(code(&body), want, "{bad}");
    }

    // Not declared as JSON.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/rooms")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .expect("valid request");
    let resp = signal_node::http::router(s.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn list_rooms_paging_on_an_empty_engine() {
    let s = admin_state();
    let (status, body) = get(&s, "/rooms", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"rooms": [], "next_cursor": null}));
    let (status, body) = get(&s, "/rooms?limit=1&cursor=", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"rooms": [], "next_cursor": null}));
    let (status, body) = get(&s, "/rooms?limit=1000&cursor=zzz", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["rooms"], json!([]));
    for bad in ["0", "1001", "-1", "ten"] {
        let (status, body) = get(&s, &format!("/rooms?limit={bad}"), Some(ADMIN)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit={bad}");
        assert_eq!(code(&body), "invalid_request", "limit={bad}");
    }
    let (status, body) = get(&s, "/rooms?limit=1&limit=2", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "invalid_request");
}

#[tokio::test]
async fn tokens_need_jwt_secret() {
    let body = r#"{"user_id":"alice","room_id":"r1","role":"host","ttl_seconds":60}"#;
    let off = admin_state();
    let (status, resp) = call(&off, Method::POST, "/tokens", Some(ADMIN), Some(body)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&resp), "tokens_disabled");

    let on = state(&[
        ("ADMIN_TOKEN", ADMIN),
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
    ]);
    let (status, resp) = call(&on, Method::POST, "/tokens", Some(ADMIN), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{resp}");
    assert_eq!(
        resp["token"].as_str().map(|t| t.split('.').count()),
        Some(3)
    );
    assert!(resp["expires_at"].is_string());

    for bad in [
        r#"{"user_id":"alice","room_id":"r1","role":"king"}"#,
        r#"{"user_id":"alice","room_id":"r1","ttl_seconds":0}"#,
        r#"{"user_id":"alice"}"#,
    ] {
        let (status, resp) = call(&on, Method::POST, "/tokens", Some(ADMIN), Some(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(code(&resp), "invalid_request", "{bad}");
    }
    let (status, resp) = call(
        &on,
        Method::POST,
        "/tokens",
        Some(ADMIN),
        Some(r#"{"user_id":"bad id","room_id":"r1"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&resp), "invalid_id");
}

#[tokio::test]
async fn metrics_open_unless_metrics_token() {
    // Only one recorder per process: whichever state got it renders text, the
    // others an empty body. The status and content type are what is checked.
    let open = state(&[]);
    let (status, _) = get(&open, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);

    let closed = state(&[("METRICS_TOKEN", "scrape-me")]);
    let (status, body) = get(&closed, "/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "unauthorized");
    let (status, body) = get(&closed, "/metrics", Some("wrong")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&body), "forbidden");
    let (status, _) = get(&closed, "/metrics", Some("scrape-me")).await;
    assert_eq!(status, StatusCode::OK);
}
