//! Shared pieces of the chat system: the event model every service speaks, the broker
//! topology they all agree on, and the plumbing (broker connection, durable subscriber loop,
//! telemetry, shutdown) that each binary would otherwise write again. The server stack
//! (`http`, `probes`, `metrics`, `telemetry`, `fdlimit`, `auth`) sits behind the default `server`
//! feature; tools and external subscribers take the rest with `default-features = false`
//! (ARCHITECTURE.md, "Why one shared crate").
#![forbid(unsafe_code)]

pub mod access;
#[cfg(feature = "server")]
pub mod auth;
mod batch;
pub mod broker;
pub mod dedupe;
pub mod event;
#[cfg(feature = "server")]
pub mod fdlimit;
pub mod history;
#[cfg(feature = "server")]
pub mod http;
pub mod log_stream;
pub mod logline;
#[cfg(feature = "server")]
pub mod metrics;
pub mod migrate;
pub mod normalize;
#[cfg(feature = "server")]
pub mod probes;
pub mod projection;
pub mod replay;
pub mod shutdown;
pub mod subscriber;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod topology;

pub use event::{Event, EventKind, Role, Visibility};
