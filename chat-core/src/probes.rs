//! The operational endpoints every service serves, in one place so they mean the same
//! everywhere: `GET /livez` (the process answers: liveness), `GET /readyz` (it can do its
//! job: broker session up and topology declared, plus the service's own checks such as the
//! database), `GET /healthz` (the same as `/readyz`, the probe the earlier releases
//! documented) and `GET /metrics` (Prometheus text format).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{json, Value};
use warp::http::{header, StatusCode};
use warp::{Filter, Rejection, Reply};

/// A service's readiness check: whether it is ready, and a JSON body explaining the parts.
pub type Readiness =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = (bool, Value)> + Send>> + Send + Sync>;

/// `/livez`, `/readyz`, `/healthz` and `/metrics`.
pub fn routes(
    ready: Readiness,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let livez =
        warp::path!("livez").map(|| warp::reply::json(&json!({"status": "alive"})).into_response());
    let readyz = warp::path!("readyz")
        .or(warp::path!("healthz"))
        .unify()
        .and(with(ready))
        .then(|ready: Readiness| async move {
            let (ok, body) = ready().await;
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            warp::reply::with_status(warp::reply::json(&body), status).into_response()
        });
    let metrics = warp::path!("metrics").map(|| {
        let mut response = warp::reply::Response::new(crate::metrics::render().into());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    });
    warp::get().and(livez.or(readyz).unify().or(metrics).unify())
}

fn with(ready: Readiness) -> impl Filter<Extract = (Readiness,), Error = Infallible> + Clone {
    warp::any().map(move || ready.clone())
}

/// A JSON error response, the one shape every service's HTTP errors take:
/// `{"error": {"code": …, "message": …}}` (docs/api.md).
pub fn json_error(status: StatusCode, code: &str, message: &str) -> warp::reply::Response {
    let body = json!({"error": {"code": code, "message": message}});
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// Turns the rejections no route answered into JSON errors: 405 for a wrong method, 400
/// for a malformed query string, else 404. Every service ends its routes with
/// `.recover(probes::unanswered)`.
pub async fn unanswered(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    Ok(
        if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
            json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "only GET is supported",
            )
        } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
            json_error(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "the query string is malformed",
            )
        } else {
            json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        },
    )
}
