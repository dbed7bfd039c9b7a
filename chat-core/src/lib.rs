//! Shared pieces of the chat system: the event model every service speaks, the broker
//! topology they all agree on, and the plumbing (broker connection, durable subscriber loop,
//! telemetry, shutdown) that each binary would otherwise write again.
#![forbid(unsafe_code)]

pub mod broker;
pub mod dedupe;
pub mod event;
pub mod fdlimit;
pub mod history;
pub mod http;
pub mod logline;
pub mod metrics;
pub mod normalize;
pub mod probes;
pub mod shutdown;
pub mod subscriber;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod topology;

pub use event::{Event, EventKind};
