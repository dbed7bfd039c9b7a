//! The gateway's HTTP surface: the page (`/`, `/app.js`, `/style.css`, embedded in the
//! binary so it runs from any directory), the websocket (`/ws`) and the health probe
//! (`/healthz`). The page is served with a Content-Security-Policy that forbids inline
//! script, so even a rendering bug could not turn user text into running code.

use std::convert::Infallible;
use std::sync::Arc;

use warp::http::{header, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::connection;
use crate::State;

const INDEX_HTML: &str = include_str!("../../static/index.html");
const APP_JS: &str = include_str!("../../static/app.js");
const STYLE_CSS: &str = include_str!("../../static/style.css");

/// The policy for the page: only our own script and styles, websockets to any host (the
/// page may be given other gateways' URLs to fail over to).
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                   style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; \
                   frame-ancestors 'none'";

/// Every route of the gateway.
pub fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    page()
        .or(websocket(state.clone()))
        .or(healthz(state))
        .recover(not_found)
}

/// GET /, /app.js, /style.css
fn page() -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let index = warp::path::end().map(|| asset(INDEX_HTML, "text/html; charset=utf-8"));
    let js = warp::path!("app.js").map(|| asset(APP_JS, "text/javascript; charset=utf-8"));
    let css = warp::path!("style.css").map(|| asset(STYLE_CSS, "text/css; charset=utf-8"));
    warp::get().and(index.or(js).unify().or(css).unify())
}

fn asset(body: &'static str, content_type: &'static str) -> warp::reply::Response {
    let mut response = warp::reply::Response::new(body.into());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    response
}

/// Why an upgrade was refused.
#[derive(Debug)]
enum Refused {
    /// The `Origin` is not allowed.
    Origin,
    /// The gateway holds `MAX_CONNECTIONS` already.
    Full,
}

impl warp::reject::Reject for Refused {}

/// Checks `Origin` and the connection limit before the upgrade.
fn admission(state: Arc<State>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("origin")
        .and(warp::header::optional::<String>("host"))
        .and_then(move |origin: Option<String>, host: Option<String>| {
            let state = state.clone();
            async move {
                if !state.origins.allows(origin.as_deref(), host.as_deref()) {
                    tracing::warn!(origin = ?origin, "refused a websocket from a foreign origin");
                    return Err(warp::reject::custom(Refused::Origin));
                }
                if state.connections.len() >= state.config.max_connections {
                    return Err(warp::reject::custom(Refused::Full));
                }
                Ok(())
            }
        })
        .untuple_one()
}

/// GET /ws: the chat websocket.
fn websocket(state: Arc<State>) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    // The hard cap on a message is well above `max_frame`, so that an oversized frame gets
    // a `too_large` error and the connection stays usable; only abuse beyond it is cut.
    let hard_cap = state.limits.max_frame.saturating_mul(4).max(64 * 1024);
    warp::path!("ws")
        .and(admission(state.clone()))
        .and(warp::ws())
        .map(move |ws: warp::ws::Ws| {
            let state = state.clone();
            ws.max_message_size(hard_cap)
                .max_frame_size(hard_cap)
                .on_upgrade(move |socket| {
                    let tracker = state.connections.clone();
                    tracker.track_future(connection::serve(socket, state))
                })
        })
}

/// GET /healthz: 200 while the broker link is up, 503 otherwise.
fn healthz(state: Arc<State>) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("healthz").and(warp::get()).map(move || {
        let ready = state.link.is_ready();
        let body = serde_json::json!({
            "gateway": state.gateway_id,
            "broker": ready,
            "rooms": state.rooms.room_count(),
            "clients": state.connections.len(),
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        warp::reply::with_status(warp::reply::json(&body), status)
    })
}

async fn not_found(rejection: Rejection) -> Result<impl Reply, Infallible> {
    let (status, code, message) = match rejection.find::<Refused>() {
        Some(Refused::Origin) => (
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "this origin may not open the chat; see ALLOWED_ORIGINS",
        ),
        Some(Refused::Full) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "this gateway is full; try another",
        ),
        None if rejection.find::<warp::reject::MethodNotAllowed>().is_some() => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is supported",
        ),
        None => (StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    };
    Ok(warp::reply::with_status(
        warp::reply::json(&serde_json::json!({"error": {"code": code, "message": message}})),
        status,
    ))
}
