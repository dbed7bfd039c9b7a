//! The archiver's HTTP API (docs/api.md): rooms and pages of a room's history, plus a
//! health probe. Every bad query parameter gets a 400 with a JSON body naming the problem;
//! unknown paths get a JSON 404.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use chat_core::event::Event;
use chat_core::history::MAX_HISTORY;
use chat_core::normalize;
use chat_core::subscriber::Readiness;
use serde::Serialize;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::store::{LookupError, Store};

/// Health of the parts the archiver needs.
#[derive(Clone)]
pub struct Health {
    /// The archive subscriber is consuming.
    pub subscriber: Arc<Readiness>,
    /// The history responder is consuming.
    pub history: Arc<Readiness>,
}

/// All routes.
pub fn routes(
    store: Store,
    health: Health,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    rooms(store.clone())
        .or(room_events(store.clone()))
        .or(healthz(store, health))
        .recover(not_found)
}

/// GET /api/rooms
fn rooms(store: Store) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "rooms")
        .and(warp::get())
        .and(with_store(store))
        .then(|store: Store| async move {
            match store.rooms().await {
                Ok(rooms) => json(StatusCode::OK, &RoomsBody { rooms }),
                Err(err) => database_error(&err),
            }
        })
}

/// GET /api/rooms/{room}/events?limit=50&before=<id>
fn room_events(store: Store) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "rooms" / String / "events")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_store(store))
        .then(
            |room: String, query: HashMap<String, String>, store: Store| async move {
                let page = match PageQuery::parse(&room, &query) {
                    Ok(page) => page,
                    Err((code, message)) => return error(StatusCode::BAD_REQUEST, code, &message),
                };
                match store.page(&room, page.limit, page.before.as_deref()).await {
                    Ok(events) => json(
                        StatusCode::OK,
                        &EventsBody {
                            before: events.first().map(|e| e.id.clone()),
                            room,
                            events,
                        },
                    ),
                    Err(LookupError::Database(err)) => database_error(&err),
                    Err(err) => error(StatusCode::BAD_REQUEST, "unknown_event", &err.to_string()),
                }
            },
        )
}

/// GET /healthz: 200 while the database answers and both consumers run, else 503.
fn healthz(
    store: Store,
    health: Health,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("healthz")
        .and(warp::get())
        .and(with_store(store))
        .then(move |store: Store| {
            let health = health.clone();
            async move {
                let body = HealthBody {
                    database: store.ping().await,
                    broker: health.subscriber.is_ready(),
                    history: health.history.is_ready(),
                };
                let ok = body.database && body.broker && body.history;
                let status = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(status, &body)
            }
        })
}

/// Validated query of a history page.
struct PageQuery {
    limit: u32,
    before: Option<String>,
}

impl PageQuery {
    fn parse(room: &str, query: &HashMap<String, String>) -> Result<Self, (&'static str, String)> {
        normalize::room(room).map_err(|e| ("invalid_room", e.to_string()))?;
        if let Some(unknown) = query.keys().find(|k| *k != "limit" && *k != "before") {
            return Err(("invalid_query", format!("unknown parameter {unknown:?}")));
        }
        let limit = match query.get("limit") {
            None => 50,
            Some(raw) => match raw.parse::<u32>() {
                Ok(n) if (1..=MAX_HISTORY).contains(&n) => n,
                _ => {
                    return Err((
                        "invalid_limit",
                        format!("limit must be an integer from 1 to {MAX_HISTORY}"),
                    ))
                }
            },
        };
        let before = match query.get("before") {
            Some(id) if id.is_empty() => {
                return Err(("invalid_before", "before must be an event id".to_owned()))
            }
            other => other.cloned(),
        };
        Ok(Self { limit, before })
    }
}

#[derive(Serialize)]
struct RoomsBody {
    rooms: Vec<crate::store::RoomSummary>,
}

#[derive(Serialize)]
struct EventsBody {
    room: String,
    /// The events, oldest first.
    events: Vec<Event>,
    /// Pass as `before` to get the previous page; absent when the page is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<String>,
}

#[derive(Serialize)]
struct HealthBody {
    database: bool,
    broker: bool,
    history: bool,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

fn with_store(store: Store) -> impl Filter<Extract = (Store,), Error = Infallible> + Clone {
    warp::any().map(move || store.clone())
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> warp::reply::Response {
    json(
        status,
        &ErrorBody {
            error: ErrorDetail { code, message },
        },
    )
}

fn database_error(err: &sqlx::Error) -> warp::reply::Response {
    tracing::error!(error = %err, "archive query failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "database",
        "the archive is unavailable",
    )
}

async fn not_found(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        return Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is supported",
        ));
    }
    if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "the query string is malformed",
        ));
    }
    Ok(error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    ))
}
