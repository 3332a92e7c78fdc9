//! The browser client and the demo page (PROTOCOL.md section 14):
//! `client/signal-client.js`, an ES module without dependencies, its TypeScript
//! declarations, and `client/demo.html` built on it, compiled into the binary so a
//! node serves exactly the client it was built and tested with. Open, like the
//! WebSocket endpoint the client talks to; nothing is fetched from elsewhere.

use axum::http::header;
use axum::response::IntoResponse;

/// The module's source, as in the repository.
const CLIENT_JS: &str = include_str!("../../client/signal-client.js");
/// Its type declarations.
const CLIENT_DTS: &str = include_str!("../../client/signal-client.d.ts");
/// The demo page.
const DEMO_HTML: &str = include_str!("../../client/demo.html");
/// Short enough that a node upgraded in a rolling restart serves its own client
/// within minutes; long enough that pages do not refetch it on every load.
const CACHE: &str = "public, max-age=300";

/// The browser client.
///
/// `signal-client.js`: an ES module without dependencies that speaks the whole
/// protocol (reconnect and resume, de-duplication by `seq`, held sends, a WebRTC
/// mesh helper).
#[utoipa::path(
    get,
    path = "/client/signal-client.js",
    tag = "session",
    security(()),
    responses(
        (status = 200, description = "The ES module.", body = String, content_type = "text/javascript"),
    ),
)]
pub(super) async fn client_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, CACHE),
        ],
        CLIENT_JS,
    )
}

/// The browser client's TypeScript declarations.
#[utoipa::path(
    get,
    path = "/client/signal-client.d.ts",
    tag = "session",
    security(()),
    responses(
        (status = 200, description = "The declarations.", body = String, content_type = "application/typescript"),
    ),
)]
pub(super) async fn client_dts() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/typescript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, CACHE),
        ],
        CLIENT_DTS,
    )
}

/// The demo page.
///
/// Join a room, see the members, video call and chat with each of them over WebRTC
/// data channels, and watch the protocol events. `?room=&user=` prefill the form.
#[utoipa::path(
    get,
    path = "/",
    tag = "session",
    security(()),
    responses(
        (status = 200, description = "The demo page.", body = String, content_type = "text/html"),
    ),
)]
pub(super) async fn demo() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, CACHE),
        ],
        DEMO_HTML,
    )
}
