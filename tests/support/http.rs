//! HTTP requests to a node: any method, headers and body, bearer shortcuts.

use serde_json::Value;

use super::node::TestNode;
use super::util::TIMEOUT;

pub(super) fn http_client() -> reqwest::Client {
    // One client per call: a pooled client must not outlive the runtime of the
    // test that created it.
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .expect("build reqwest client")
}

/// An HTTP reply: status, headers and the body as text.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl HttpReply {
    /// The body as JSON (`Null` when empty); panics naming the body otherwise.
    #[track_caller]
    pub fn json(&self) -> Value {
        if self.text.is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "HTTP {}: body is not JSON ({e}): {:?}",
                self.status, self.text
            )
        })
    }

    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

impl TestNode {
    /// `METHOD path` with extra `headers` and an optional raw body (sent as
    /// `application/json`); bounded by TIMEOUT.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> HttpReply {
        let url = format!("{}{path}", self.http_url());
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid HTTP method");
        let mut request = http_client().request(method.clone(), &url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let resp = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading body failed: {e}"));
        HttpReply {
            status,
            headers,
            text,
        }
    }

    /// `METHOD path` with `Authorization: Bearer {bearer}` (none when `None`) and an
    /// optional JSON body → (status, JSON body or `Null` when empty).
    pub async fn bearer_request(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let body = body.map(Value::to_string);
        let reply = self.request(method, path, &headers, body.as_deref()).await;
        (reply.status, reply.json())
    }
}
