//! `GET /openapi.json` (PROTOCOL.md section 8) through a real node: the document
//! is OpenAPI 3.1, open, and lists every route the node serves with its methods;
//! an independent validator (the Python package `openapi-spec-validator`, shown
//! able to fail on a broken copy) accepts it; and the node's actual answers have
//! the documented shapes, so the document describes what is served.
//!
//! The validator is a hard requirement, never a skip: `python3 -m pip install
//! openapi-spec-validator` (`.ci/run` does it).

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "openapi-admin-token";

/// Every route of the node and the methods it serves (src/http/mod.rs).
const ROUTES: &[(&str, &[&str])] = &[
    ("/ws/{room_id}/{user_id}", &["get"]),
    ("/rooms/{room_id}/users", &["get"]),
    ("/users/{user_id}", &["get"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
    ("/stats", &["get"]),
    ("/nodes", &["get"]),
    ("/rooms", &["get", "post"]),
    ("/rooms/{room_id}", &["get", "delete"]),
    ("/rooms/{room_id}/users/{user_id}", &["delete"]),
    ("/tokens", &["post"]),
    ("/ice-servers", &["get"]),
    ("/openapi.json", &["get"]),
];

/// Routes PROTOCOL.md section 14 adds (the demo page, the browser client and its
/// types): the document must list them exactly when the node serves them.
const LATER_ROUTES: &[&str] = &[
    "/",
    "/client/signal-client.js",
    "/client/signal-client.d.ts",
];

/// The operations that need the admin bearer (PROTOCOL.md section 8).
const ADMIN_ONLY: &[(&str, &str)] = &[
    ("/stats", "get"),
    ("/nodes", "get"),
    ("/rooms", "get"),
    ("/rooms", "post"),
    ("/rooms/{room_id}", "get"),
    ("/rooms/{room_id}", "delete"),
    ("/rooms/{room_id}/users/{user_id}", "delete"),
    ("/tokens", "post"),
];

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// How long the validator may take (it starts a Python interpreter).
const VALIDATOR_TIMEOUT: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str = "the Python package openapi-spec-validator is required by this \
     test (never skipped): install it with `python3 -m pip install openapi-spec-validator` \
     (bash .ci/run does)";

/// Fetches the document, checking it is served open, as JSON.
async fn fetch_document(node: &TestNode) -> Value {
    let reply = node.request("GET", "/openapi.json", &[], None).await;
    assert_eq!(reply.status, 200, "GET /openapi.json: {}", reply.text);
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "GET /openapi.json Content-Type: {content_type:?}"
    );
    reply.json()
}

/// The methods `doc` documents for `path`.
fn documented_methods(doc: &Value, path: &str) -> BTreeSet<String> {
    doc["paths"][path]
        .as_object()
        .map(|ops| {
            ops.keys()
                .filter(|k| HTTP_METHODS.contains(&k.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_every_route_with_its_methods_statuses_and_security() {
    let node = TestNode::start(None, &key_prefix(), &[]).await;
    let doc = fetch_document(&node).await;

    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1"), "openapi is {version:?}");
    let (_, health) = node.get("/healthz").await;
    assert_eq!(doc["info"]["version"], health["version"], "info.version");
    assert_eq!(doc["info"]["title"], "signal-node", "info.title");

    let mut expected: Vec<(String, BTreeSet<String>)> = ROUTES
        .iter()
        .map(|(path, methods)| {
            let methods = methods.iter().map(|m| m.to_string()).collect();
            (path.to_string(), methods)
        })
        .collect();
    for path in LATER_ROUTES {
        let served = node.request("GET", path, &[], None).await.status != 404;
        let documented = doc["paths"].get(*path).is_some();
        assert_eq!(
            served, documented,
            "{path}: served = {served}, but documented = {documented}"
        );
        if served {
            expected.push((path.to_string(), BTreeSet::from(["get".to_owned()])));
        }
    }
    for (path, methods) in &expected {
        assert_eq!(
            &documented_methods(&doc, path),
            methods,
            "methods documented for {path}"
        );
    }
    let listed: BTreeSet<&str> = doc["paths"]
        .as_object()
        .expect("paths is an object")
        .keys()
        .map(String::as_str)
        .collect();
    let routes: BTreeSet<&str> = expected.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(listed, routes, "documented paths vs routes");

    // The statuses the endpoints answer that the contract names.
    for (path, method, status) in [
        ("/ws/{room_id}/{user_id}", "get", "101"),
        ("/ws/{room_id}/{user_id}", "get", "403"),
        ("/ws/{room_id}/{user_id}", "get", "426"),
        ("/rooms/{room_id}/users", "get", "400"),
        ("/users/{user_id}", "get", "404"),
        ("/readyz", "get", "503"),
        ("/rooms", "post", "201"),
        ("/rooms", "post", "409"),
        ("/rooms/{room_id}", "get", "404"),
        ("/rooms/{room_id}", "delete", "204"),
        ("/rooms/{room_id}/users/{user_id}", "delete", "204"),
        ("/tokens", "post", "201"),
        ("/tokens", "post", "409"),
        ("/metrics", "get", "401"),
        ("/ice-servers", "get", "401"),
    ] {
        assert!(
            doc["paths"][path][method]["responses"]
                .get(status)
                .is_some(),
            "{method} {path} documents no {status}"
        );
    }
    let metrics = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
    assert!(
        metrics
            .as_object()
            .is_some_and(|c| c.keys().all(|k| k.starts_with("text/plain"))),
        "/metrics 200 is text/plain: {metrics}"
    );

    // Every error answer is the documented error body, and the codes are listed.
    for (path, methods) in &expected {
        for method in methods {
            let responses = doc["paths"][path.as_str()][method.as_str()]["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} has no responses"));
            for (status, response) in responses {
                let errorish = status.starts_with('4') || status.starts_with('5');
                if errorish && !(path == "/readyz" && status == "503") {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    let codes = &doc["components"]["schemas"]["HttpErrorCode"]["enum"];
    for code in [
        "invalid_id",
        "user_not_found",
        "room_not_found",
        "room_exists",
        "tokens_disabled",
        "admin_disabled",
        "unauthorized",
        "forbidden",
        "upgrade_required",
        "unavailable",
    ] {
        assert!(
            codes.as_array().is_some_and(|c| c.contains(&json!(code))),
            "{code} in {codes}"
        );
    }

    // Bearer schemes, and who needs which.
    for scheme in ["admin_token", "client_token", "metrics_token"] {
        let s = &doc["components"]["securitySchemes"][scheme];
        assert_eq!(s["type"], "http", "{scheme}: {s}");
        assert_eq!(s["scheme"], "bearer", "{scheme}: {s}");
    }
    for (path, method) in ADMIN_ONLY {
        assert_eq!(
            doc["paths"][path][method]["security"],
            json!([{"admin_token": []}]),
            "{method} {path} security"
        );
    }
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(
            doc["paths"][path]["get"]["security"],
            json!([{}]),
            "{path} is open"
        );
    }
    let metrics_security = &doc["paths"]["/metrics"]["get"]["security"];
    assert_eq!(metrics_security, &json!([{}, {"metrics_token": []}]));
    let ws_security = &doc["paths"]["/ws/{room_id}/{user_id}"]["get"]["security"];
    assert!(
        ws_security
            .as_array()
            .is_some_and(|s| s.contains(&json!({"client_token": []}))),
        "/ws security: {ws_security}"
    );
}

/// Fails the test, with the install hint, unless the validator can be imported.
fn require_validator() {
    let probe = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match probe {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("`import openapi_spec_validator` failed ({status}): {INSTALL_HINT}"),
        Err(e) => panic!("python3 could not run ({e}): {INSTALL_HINT}"),
    }
}

/// Runs `python3 -m openapi_spec_validator` on the file `name` of `dir` →
/// (accepted, what it printed). Output goes to files, so a long report cannot
/// fill a pipe; the run is bounded by VALIDATOR_TIMEOUT.
fn validate(dir: &TempDir, name: &str) -> (bool, String) {
    let document = dir.path().join(name);
    let log_path = dir.path().join(format!("{name}.validator.log"));
    let log = File::create(&log_path).expect("create validator log");
    let mut child = Command::new("python3")
        .arg("-m")
        .arg("openapi_spec_validator")
        .arg(&document)
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("python3 could not run ({e}): {INSTALL_HINT}"));
    let deadline = Instant::now() + VALIDATOR_TIMEOUT;
    let status = loop {
        match child.try_wait().expect("wait for the validator") {
            Some(status) => break status,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("openapi-spec-validator ran over {VALIDATOR_TIMEOUT:?} on {name}");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    (status.success(), output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_validator_accepts_the_document_and_rejects_broken_copies() {
    require_validator();
    let node = TestNode::start(None, &key_prefix(), &[]).await;
    let doc = fetch_document(&node).await;
    let dir = TempDir::new();

    dir.write("openapi.json", doc.to_string().as_bytes());
    let (accepted, output) = validate(&dir, "openapi.json");
    assert!(
        accepted,
        "openapi-spec-validator rejects the document:\n{output}"
    );
    assert!(output.contains("OK"), "validator output: {output}");

    // Negative controls: the validator must be able to fail, or its OK proves nothing.
    let mut dangling = doc.clone();
    dangling["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"] = json!({"$ref": "#/components/schemas/NoSuchSchema"});
    dir.write("dangling-ref.json", dangling.to_string().as_bytes());
    let (accepted, output) = validate(&dir, "dangling-ref.json");
    assert!(
        !accepted,
        "a $ref to a missing schema was accepted:\n{output}"
    );
    assert!(
        output.contains("NoSuchSchema"),
        "the rejection names the missing schema: {output}"
    );

    let mut bad_version = doc.clone();
    bad_version["openapi"] = json!("banana");
    dir.write("bad-version.json", bad_version.to_string().as_bytes());
    let (accepted, output) = validate(&dir, "bad-version.json");
    assert!(!accepted, "`openapi: banana` was accepted:\n{output}");
}

/// Follows a local `$ref` (`#/components/schemas/X`).
fn deref<'a>(doc: &'a Value, schema: &'a Value) -> Result<&'a Value, String> {
    match schema.get("$ref").and_then(Value::as_str) {
        None => Ok(schema),
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .ok_or_else(|| format!("non-local $ref {reference}"))?;
            let target = doc
                .pointer(pointer)
                .ok_or_else(|| format!("dangling $ref {reference}"))?;
            deref(doc, target)
        }
    }
}

/// The properties and required keys of an object schema, over its `allOf` parts.
#[derive(Default)]
struct ObjectShape {
    properties: serde_json::Map<String, Value>,
    required: Vec<String>,
}

fn object_shape(doc: &Value, schema: &Value) -> Result<ObjectShape, String> {
    let mut shape = ObjectShape::default();
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        shape.properties.extend(properties.clone());
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        let names = required.iter().filter_map(Value::as_str).map(str::to_owned);
        shape.required.extend(names);
    }
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let part = object_shape(doc, deref(doc, part)?)?;
        shape.properties.extend(part.properties);
        shape.required.extend(part.required);
    }
    Ok(shape)
}

fn json_type_fits(kind: &str, value: &Value) -> bool {
    match kind {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

/// Whether `value` has the shape `schema` documents: types, enums, and for
/// objects exactly the documented property names (every required one present,
/// none undocumented). The subset of JSON Schema that utoipa emits for this API.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = deref(doc, schema)?;
    if let Some(options) = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
    {
        let errors: Vec<String> = options
            .iter()
            .filter_map(|option| conforms(doc, option, value, at).err())
            .collect();
        if errors.len() == options.len() {
            return Err(format!("{at}: fits none of oneOf: {errors:?}"));
        }
    }
    if let Some(kind) = schema.get("type") {
        let kinds: Vec<&str> = match kind {
            Value::String(k) => vec![k.as_str()],
            Value::Array(ks) => ks.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !kinds.iter().any(|k| json_type_fits(k, value)) {
            return Err(format!("{at}: {value} is not of type {kind}"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let Some(object) = value.as_object() {
        if schema.get("properties").is_some() || schema.get("allOf").is_some() {
            let shape = object_shape(doc, schema)?;
            for key in &shape.required {
                if !object.contains_key(key) {
                    return Err(format!("{at}: required key {key:?} missing in {value}"));
                }
            }
            for (key, field) in object {
                let Some(property) = shape.properties.get(key) else {
                    return Err(format!("{at}: key {key:?} is not documented"));
                };
                conforms(doc, property, field, &format!("{at}.{key}"))?;
            }
        }
    }
    if let (Some(items), Some(elements)) = (schema.get("items"), value.as_array()) {
        for (i, element) in elements.iter().enumerate() {
            conforms(doc, items, element, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Asserts `body`, answered with `status` by `method path` (`path` as documented),
/// has the schema the document gives that answer.
#[track_caller]
fn assert_documented(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let response = &doc["paths"][path][method]["responses"][status.to_string()];
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path}: no JSON schema documented for {status}: {response}"
    );
    if let Err(e) = conforms(doc, schema, body, "body") {
        panic!("{method} {path} {status} does not match the document: {e}\nbody: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_answers_what_the_document_describes() {
    const ICE: &str = r#"[{"urls":"stun:stun.example.org:3478"},{"urls":["turn:static.example.org:3478"],"username":"u","credential":"c"}]"#;
    let env = [
        ("ADMIN_TOKEN", ADMIN),
        ("ICE_SERVERS", ICE),
        ("TURN_URLS", "turn:127.0.0.1:3478"),
        ("TURN_SECRET", "openapi-turn-secret-0123456789"),
    ];
    let node = TestNode::start(None, &key_prefix(), &env).await;
    let doc = fetch_document(&node).await;
    let room = room_id();
    let (_alice, _) = TestClient::connect_join(&node, &room, "alice").await;

    // The checker itself can fail: an undocumented key, a value outside the enum.
    let health = &doc["paths"]["/healthz"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    let extra = json!({"status": "ok", "node_id": "n", "version": "1", "extra": 1});
    assert!(conforms(&doc, health, &extra, "body").is_err());
    let wrong = json!({"status": "fine", "node_id": "n", "version": "1"});
    assert!(conforms(&doc, health, &wrong, "body").is_err());
    let missing = json!({"status": "ok", "node_id": "n"});
    assert!(conforms(&doc, health, &missing, "body").is_err());

    let get = |path: &'static str| node.get(path);
    let (status, body) = get("/healthz").await;
    assert_documented(&doc, "get", "/healthz", status, &body);
    let (status, body) = get("/readyz").await;
    assert_documented(&doc, "get", "/readyz", status, &body);

    let (status, body) = node.get("/ice-servers?user_id=bob").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["ice_servers"].as_array().map(Vec::len),
        Some(3),
        "{body}"
    );
    assert_documented(&doc, "get", "/ice-servers", status, &body);

    let (status, body) = node.get(&format!("/rooms/{room}/users")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 1, "{body}");
    assert_documented(&doc, "get", "/rooms/{room_id}/users", status, &body);
    let (status, body) = node.get("/users/alice").await;
    assert_eq!(status, 200, "{body}");
    assert_documented(&doc, "get", "/users/{user_id}", status, &body);

    // Error bodies.
    let (status, body) = node.get("/users/nobody").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("user_not_found"))
    );
    assert_documented(&doc, "get", "/users/{user_id}", status, &body);
    let (status, body) = node.get("/rooms/bad%20id/users").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_id"))
    );
    assert_documented(&doc, "get", "/rooms/{room_id}/users", status, &body);
    let (status, body) = node.get("/ws/r/u").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (426, &json!("upgrade_required"))
    );
    assert_documented(&doc, "get", "/ws/{room_id}/{user_id}", status, &body);

    // Admin endpoints.
    let admin = |method: &'static str, path: String, body: Option<Value>| {
        let node = &node;
        async move {
            node.bearer_request(method, &path, Some(ADMIN), body.as_ref())
                .await
        }
    };
    let (status, body) = node.bearer_request("GET", "/stats", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert_documented(&doc, "get", "/stats", status, &body);
    let (status, body) = admin("GET", "/stats".into(), None).await;
    assert_eq!(status, 200, "{body}");
    assert_documented(&doc, "get", "/stats", status, &body);
    let (status, body) = admin("GET", "/nodes".into(), None).await;
    assert_eq!(status, 200, "{body}");
    assert_documented(&doc, "get", "/nodes", status, &body);
    let (status, body) = admin("GET", "/rooms?limit=10".into(), None).await;
    assert_eq!(status, 200, "{body}");
    assert_documented(&doc, "get", "/rooms", status, &body);
    let (status, body) = admin("GET", format!("/rooms/{room}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_documented(&doc, "get", "/rooms/{room_id}", status, &body);
    let created = room_id();
    let new_room = json!({"room_id": created, "max_users": 4, "moderated": true});
    let (status, body) = admin("POST", "/rooms".into(), Some(new_room.clone())).await;
    assert_eq!(status, 201, "{body}");
    assert_documented(&doc, "post", "/rooms", status, &body);
    let (status, body) = admin("POST", "/rooms".into(), Some(new_room)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("room_exists"))
    );
    assert_documented(&doc, "post", "/rooms", status, &body);
    let token = json!({"user_id": "bob", "room_id": created});
    let (status, body) = admin("POST", "/tokens".into(), Some(token)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("tokens_disabled"))
    );
    assert_documented(&doc, "post", "/tokens", status, &body);
    let (status, body) = admin("DELETE", format!("/rooms/{created}"), None).await;
    assert_eq!(status, 204, "{body}");
    assert!(
        doc["paths"]["/rooms/{room_id}"]["delete"]["responses"]["204"]
            .get("content")
            .is_none(),
        "204 documents no body"
    );

    // `/metrics` is text in the documented content type.
    let reply = node.request("GET", "/metrics", &[], None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let content_type = reply.header("content-type").unwrap_or_default();
    let documented = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
    assert!(
        documented.get(content_type.as_str()).is_some(),
        "/metrics answers {content_type:?}, documented {documented}"
    );
}
