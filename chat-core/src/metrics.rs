//! Prometheus metrics shared by every service: one recorder per process, installed on first
//! use, rendered by each service's `/metrics` route. Names follow Prometheus conventions
//! (`chat_` prefix, `_total` counters, `_seconds` durations); docs/operations.md lists them.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Bucket bounds for durations, from 0.5 ms to 10 s.
const SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's metrics handle, installing the recorder the first time. Every service
/// calls it at start: until the recorder is installed, recorded values are dropped.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
            .expect("bucket bounds are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // In tests several services share a process: the first install wins, and every
        // service renders the same registry.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

/// The text exposition format, for `/metrics`.
pub fn render() -> String {
    handle().render()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "chat_broker_connected",
        "1 while the service's broker session is up"
    );
    describe_counter!(
        "chat_broker_connects_total",
        "Broker connections opened (reconnects included)"
    );
    describe_counter!(
        "chat_dead_lettered_total",
        "Deliveries rejected as not valid events (dead-lettered), by consumer"
    );
    describe_counter!(
        "chat_log_skipped_total",
        "Entries of the event log stream a reader did not hand on, by reader and why"
    );
    describe_histogram!(
        "chat_batch_seconds",
        Unit::Seconds,
        "Time to make one batch durable, by subscriber"
    );
    describe_gauge!(
        "chat_subscriber_lag_seconds",
        Unit::Seconds,
        "Age of the newest event in the last stored batch, by subscriber"
    );
    describe_counter!(
        "chat_events_stored_total",
        "Events made durable by a side subscriber, by subscriber"
    );
    describe_counter!("chat_events_logged_total", "Lines written to the chat log");
    describe_counter!(
        "chat_events_archived_total",
        "Events newly stored in the archive"
    );
    describe_gauge!(
        "chat_archive_lag_seconds",
        Unit::Seconds,
        "Age of the newest event when its batch was committed to the archive"
    );
    describe_counter!(
        "chat_history_requests_total",
        "History requests answered by the archiver, by outcome"
    );
    describe_counter!(
        "chat_history_asks_total",
        "History a gateway needed, by role: asked of the archive, or shared with an identical request in flight"
    );
    describe_gauge!(
        "chat_clients_connected",
        "Websocket clients connected to this gateway"
    );
    describe_gauge!(
        "chat_rooms_active",
        "Rooms with at least one client on this gateway"
    );
    describe_counter!(
        "chat_events_published_total",
        "Events confirmed by the broker, by type"
    );
    describe_counter!(
        "chat_publish_failures_total",
        "Publishes not confirmed (the client got `unavailable`)"
    );
    describe_histogram!(
        "chat_publish_confirm_seconds",
        Unit::Seconds,
        "From publish to the broker's confirm"
    );
    describe_counter!(
        "chat_events_delivered_total",
        "Event frames queued to clients"
    );
    describe_histogram!(
        "chat_delivery_latency_seconds",
        Unit::Seconds,
        "From an event's creation to its fanout on this gateway"
    );
    describe_counter!(
        "chat_events_recovered_total",
        "Events delivered by gap repair after a broker outage"
    );
    describe_counter!(
        "chat_clients_disconnected_total",
        "Clients disconnected by the gateway, by reason"
    );
    describe_counter!(
        "chat_rate_limited_total",
        "Client frames refused by the rate limit"
    );
}
