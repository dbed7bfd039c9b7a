//! The archiver's HTTP API (docs/api.md, described in OpenAPI at `/api/openapi.json`):
//! rooms, pages of a room's history, full-text search, plus a health probe. Every bad query
//! parameter gets a 400 with a JSON body naming the problem; unknown paths get a JSON 404.
//!
//! With `AUTH_MODE=token`, every `/api/` path but the OpenAPI document needs
//! `Authorization: Bearer <token>` (401 without a valid one), a private room's history or
//! search needs its membership (403 otherwise, unless the token has `admin: true`), and
//! `/api/rooms` lists the public rooms and the caller's private ones. In open mode no token
//! is asked for and every caller is a guest: public rooms only.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use chat_core::auth::{Refused, Verifier};
use chat_core::event::Event;
use chat_core::history::MAX_HISTORY;
use chat_core::normalize;
use chat_core::subscriber::Readiness;
use serde::Serialize;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::caller::Caller;
use crate::search::{self, Query};
use crate::store::{LookupError, Store};

/// The OpenAPI 3.1 description of this API, served as is.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every path [`routes`] answers, as OpenAPI templates. Keep it in step with [`routes`]: a
/// test checks that the OpenAPI document describes exactly these paths and that each one
/// answers.
pub const PATHS: [&str; 8] = [
    "/api/rooms",
    "/api/rooms/{room}/events",
    "/api/search",
    "/api/openapi.json",
    "/healthz",
    "/readyz",
    "/livez",
    "/metrics",
];

/// A refused request: the error code and the message of a 400.
type Invalid = (&'static str, String);

/// Health of the parts the archiver needs.
#[derive(Clone)]
pub struct Health {
    /// The archive subscriber is consuming.
    pub subscriber: Arc<Readiness>,
    /// The history responder is consuming.
    pub history: Arc<Readiness>,
}

/// All routes. `auth` is the token verifier in token mode, `None` in open mode.
pub fn routes(
    store: Store,
    health: Health,
    auth: Option<Arc<Verifier>>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    rooms(store.clone(), auth.clone())
        .or(room_events(store.clone(), auth.clone()))
        .or(search(store.clone(), auth))
        .or(openapi())
        .or(probes(store, health))
        .recover(chat_core::probes::unanswered)
}

/// The caller of a request, or the 401 that refuses it.
fn with_caller(
    auth: Option<Arc<Verifier>>,
) -> impl Filter<Extract = (Result<Caller, Box<warp::reply::Response>>,), Error = Rejection> + Clone
{
    warp::header::optional::<String>("authorization")
        .map(move |header: Option<String>| identify(auth.as_deref(), header.as_deref()))
}

fn identify(
    auth: Option<&Verifier>,
    header: Option<&str>,
) -> Result<Caller, Box<warp::reply::Response>> {
    let token = header.and_then(|h| h.strip_prefix("Bearer "));
    match Caller::identify(auth, token) {
        Ok(caller) => Ok(caller),
        Err(refused) => {
            let code = match refused {
                Refused::Expired => "token_expired",
                _ => "unauthorized",
            };
            let message = match refused {
                Refused::Missing => "send Authorization: Bearer <token>".to_owned(),
                other => other.to_string(),
            };
            Err(Box::new(
                warp::reply::with_header(
                    error(StatusCode::UNAUTHORIZED, code, &message),
                    "www-authenticate",
                    "Bearer",
                )
                .into_response(),
            ))
        }
    }
}

/// The 403 for a room the caller may not read. The message does not say whether the room
/// exists: a private room's name is all a non-member could learn, and they typed it.
fn forbidden(room: &str) -> warp::reply::Response {
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        &format!("room {room:?} is private and you are not a member"),
    )
}

/// GET /api/rooms
fn rooms(
    store: Store,
    auth: Option<Arc<Verifier>>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "rooms")
        .and(warp::get())
        .and(with_caller(auth))
        .and(with_store(store))
        .then(
            |caller: Result<Caller, Box<warp::reply::Response>>, store: Store| async move {
                let caller = match caller {
                    Ok(caller) => caller,
                    Err(response) => return *response,
                };
                let hidden = match store.hidden_rooms(caller.reader()).await {
                    Ok(hidden) => hidden,
                    Err(err) => return database_error(&err),
                };
                match store.rooms().await {
                    Ok(mut rooms) => {
                        rooms.retain(|r| !hidden.contains(&r.room));
                        json(StatusCode::OK, &RoomsBody { rooms })
                    }
                    Err(err) => database_error(&err),
                }
            },
        )
}

/// `GET /api/rooms/{room}/events?limit=50&before=<id>`
fn room_events(
    store: Store,
    auth: Option<Arc<Verifier>>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "rooms" / String / "events")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_caller(auth))
        .and(with_store(store))
        .then(
            |room: String,
             query: HashMap<String, String>,
             caller: Result<Caller, Box<warp::reply::Response>>,
             store: Store| async move {
                let caller = match caller {
                    Ok(caller) => caller,
                    Err(response) => return *response,
                };
                let page = match PageQuery::parse(&room, &query) {
                    Ok(page) => page,
                    Err((code, message)) => return error(StatusCode::BAD_REQUEST, code, &message),
                };
                match store.can_read(&room, caller.reader()).await {
                    Ok(true) => {}
                    Ok(false) => return forbidden(&room),
                    Err(err) => return database_error(&err),
                }
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

/// GET /api/search?q=words&room=lobby&limit=50
fn search(
    store: Store,
    auth: Option<Arc<Verifier>>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "search")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_caller(auth))
        .and(with_store(store))
        .then(
            |query: HashMap<String, String>,
             caller: Result<Caller, Box<warp::reply::Response>>,
             store: Store| async move {
                let caller = match caller {
                    Ok(caller) => caller,
                    Err(response) => return *response,
                };
                let search = match SearchQuery::parse(&query) {
                    Ok(search) => search,
                    Err((code, message)) => return error(StatusCode::BAD_REQUEST, code, &message),
                };
                if let Some(room) = &search.room {
                    match store.can_read(room, caller.reader()).await {
                        Ok(true) => {}
                        Ok(false) => return forbidden(room),
                        Err(err) => return database_error(&err),
                    }
                }
                let hidden = match store.hidden_rooms(caller.reader()).await {
                    Ok(hidden) => hidden,
                    Err(err) => return database_error(&err),
                };
                match store
                    .search(&search.query, search.room.as_deref(), search.limit)
                    .await
                {
                    // Matches in rooms the caller may not read are dropped (a page may then
                    // hold fewer than `limit` results).
                    Ok(mut events) => {
                        events.retain(|e| !hidden.contains(&e.room));
                        json(
                            StatusCode::OK,
                            &SearchBody {
                                query: search.query.text(),
                                events,
                            },
                        )
                    }
                    Err(err) => database_error(&err),
                }
            },
        )
}

/// GET /api/openapi.json
fn openapi() -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "openapi.json")
        .and(warp::get())
        .map(|| warp::reply::with_header(OPENAPI, "content-type", "application/json"))
}

/// `/livez`, `/readyz` and `/healthz` (200 while the database answers and both consumers
/// run, else 503), `/metrics`.
fn probes(
    store: Store,
    health: Health,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let ready: chat_core::probes::Readiness = Arc::new(move || {
        let (store, health) = (store.clone(), health.clone());
        Box::pin(async move {
            let body = HealthBody {
                database: store.ping().await,
                broker: health.subscriber.is_ready(),
                history: health.history.is_ready(),
                blocked: health
                    .history
                    .blocked
                    .reason()
                    .or_else(|| health.subscriber.blocked.reason()),
            };
            // While the broker blocks our publishes, history replies cannot be sent.
            let ok = body.database && body.broker && body.history && body.blocked.is_none();
            (ok, serde_json::to_value(&body).unwrap_or_default())
        })
    });
    chat_core::probes::routes(ready)
}

/// Validated query of a history page.
struct PageQuery {
    limit: u32,
    before: Option<String>,
}

impl PageQuery {
    fn parse(room: &str, query: &HashMap<String, String>) -> Result<Self, Invalid> {
        normalize::room(room).map_err(|e| ("invalid_room", e.to_string()))?;
        only(query, &["limit", "before"])?;
        let limit = limit(query, 50, MAX_HISTORY)?;
        let before = match query.get("before") {
            Some(id) if id.is_empty() => {
                return Err(("invalid_before", "before must be an event id".to_owned()))
            }
            other => other.cloned(),
        };
        Ok(Self { limit, before })
    }
}

/// Validated query of a search.
struct SearchQuery {
    query: Query,
    room: Option<String>,
    limit: u32,
}

impl SearchQuery {
    fn parse(query: &HashMap<String, String>) -> Result<Self, Invalid> {
        only(query, &["q", "room", "limit"])?;
        let words = query.get("q").map_or("", String::as_str);
        let words = Query::parse(words).map_err(|e| ("invalid_query", format!("q: {e}")))?;
        let room = query
            .get("room")
            .map(|room| normalize::room(room).map(str::to_owned))
            .transpose()
            .map_err(|e| ("invalid_room", e.to_string()))?;
        let limit = limit(query, search::DEFAULT_RESULTS, search::MAX_RESULTS)?;
        Ok(Self {
            query: words,
            room,
            limit,
        })
    }
}

/// Refuses any parameter not in `allowed`.
fn only(query: &HashMap<String, String>, allowed: &[&str]) -> Result<(), Invalid> {
    match query.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(("invalid_query", format!("unknown parameter {unknown:?}"))),
        None => Ok(()),
    }
}

/// The `limit` parameter: `default` when absent, else an integer from 1 to `max`.
fn limit(query: &HashMap<String, String>, default: u32, max: u32) -> Result<u32, Invalid> {
    match query.get("limit") {
        None => Ok(default),
        Some(raw) => match raw.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err((
                "invalid_limit",
                format!("limit must be an integer from 1 to {max}"),
            )),
        },
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
struct SearchBody {
    /// The words searched for, separated by single spaces.
    query: String,
    /// The matching messages, newest first.
    events: Vec<Event>,
}

#[derive(Serialize)]
struct HealthBody {
    database: bool,
    broker: bool,
    history: bool,
    /// The broker's reason while it blocks our publishes (a resource alarm), else null.
    blocked: Option<String>,
}

fn with_store(store: Store) -> impl Filter<Extract = (Store,), Error = Infallible> + Clone {
    warp::any().map(move || store.clone())
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> warp::reply::Response {
    chat_core::probes::json_error(status, code, message)
}

fn database_error(err: &sqlx::Error) -> warp::reply::Response {
    tracing::error!(error = %err, "archive query failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "database",
        "the archive is unavailable",
    )
}
