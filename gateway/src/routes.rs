//! The gateway's plain HTTP surface on warp: the page (`/`, `/style.css` and the ES
//! modules `/app.js`, `/connection.js`, …, embedded in the binary so it runs from any
//! directory) and the probes and metrics (`/livez`, `/readyz`, `/healthz`, `/metrics`,
//! see `chat_core::probes`).
//! The websocket (`/ws`) is upgraded in `upgrade.rs`. The page is served with a Content-Security-Policy that forbids inline
//! script, so even a rendering bug could not turn user text into running code.

use std::convert::Infallible;
use std::sync::Arc;

use warp::http::header;
use warp::{Filter, Rejection, Reply};

use chat_core::probes;

use crate::State;

const INDEX_HTML: &str = include_str!("../../static/index.html");
const STYLE_CSS: &str = include_str!("../../static/style.css");
/// The page's ES modules, by file name: `app.js` is the entry point, which imports the rest.
const SCRIPTS: &[(&str, &str)] = &[
    ("app.js", include_str!("../../static/app.js")),
    ("connection.js", include_str!("../../static/connection.js")),
    ("identity.js", include_str!("../../static/identity.js")),
    ("messages.js", include_str!("../../static/messages.js")),
    ("normalize.js", include_str!("../../static/normalize.js")),
    ("pending.js", include_str!("../../static/pending.js")),
    ("presence.js", include_str!("../../static/presence.js")),
    ("render.js", include_str!("../../static/render.js")),
    ("uuid.js", include_str!("../../static/uuid.js")),
];

/// The policy for the page: only our own script and styles, websockets to any host (the
/// page may be given other gateways' URLs to fail over to).
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                   style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; \
                   frame-ancestors 'none'";

/// Every route of the gateway.
pub fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    page().or(probes(state)).recover(probes::unanswered)
}

/// GET /, /style.css and the scripts (/app.js, /connection.js, … see `SCRIPTS`)
fn page() -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let index = warp::path::end().map(|| asset(INDEX_HTML, "text/html; charset=utf-8"));
    let js = warp::path::param::<String>()
        .and(warp::path::end())
        .and_then(|file: String| async move {
            SCRIPTS
                .iter()
                .find(|(name, _)| *name == file)
                .map(|(_, body)| asset(body, "text/javascript; charset=utf-8"))
                .ok_or_else(warp::reject::not_found)
        });
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

/// `/livez`, `/readyz` and `/healthz` (200 while the broker link is up and not blocked by
/// a resource alarm, 503 otherwise), `/metrics`.
fn probes(state: Arc<State>) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let ready: probes::Readiness = Arc::new(move || {
        let state = state.clone();
        Box::pin(async move {
            let linked = state.link.is_ready();
            // While the broker blocks publishes nobody can post or join here: tell the load
            // balancer to send new clients elsewhere.
            let blocked = state.link.blocked();
            let body = serde_json::json!({
                "gateway": state.gateway_id,
                "broker": linked,
                "blocked": blocked,
                "rooms": state.rooms.room_count(),
                "clients": state.connections.len(),
            });
            (linked && blocked.is_none(), body)
        })
    });
    probes::routes(ready)
}
