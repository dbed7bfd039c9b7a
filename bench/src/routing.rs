//! What each gateway consumed in a window, against the traffic of the rooms it serves: the
//! figures behind routing by room (`ROUTE_BY_ROOM`, issue 14). Each gateway counts the
//! deliveries it takes from its queue in `chat_events_consumed_total`; `load --consumed`
//! reads it from every gateway's `/metrics` before and after the window.

use anyhow::Context;
use serde_json::{json, Value};

use crate::load::Window;
use crate::output::Record;
use crate::stats::per;

/// The `http://host:port` of a gateway's websocket URL.
fn http_base(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("--consumed needs ws:// URLs, got {url}"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    Ok(format!("http://{authority}"))
}

/// The value of an unlabelled counter in a Prometheus text exposition; 0 if absent (the
/// gateway has not consumed anything yet).
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .map_or(0, |v| v as u64)
}

/// Every gateway's `chat_events_consumed_total` now, in URL order.
pub async fn consumed(urls: &[String]) -> anyhow::Result<Vec<u64>> {
    let mut counts = Vec::with_capacity(urls.len());
    for url in urls {
        let base = http_base(url)?;
        let (status, body) = crate::archive::http_get(&base, "/metrics").await?;
        anyhow::ensure!(status == 200, "{base}/metrics answered {status}");
        counts.push(counter(&body, "chat_events_consumed_total"));
    }
    Ok(counts)
}

/// The per-gateway figures: rooms served, messages sent in them, deliveries consumed, their
/// ratio, and CPU seconds per second (from `--pids` labelled `gw0`, `gw1`, … in URL order).
pub fn fields(r: &mut Record, w: &Window, served: &[Vec<bool>], consumed: &[u64]) {
    let wall = w.cpu.wall;
    let mut rows = Vec::new();
    let mut worst_dev: f64 = 0.0;
    for (g, (rooms, consumed)) in served.iter().zip(consumed).enumerate() {
        let own = w.own_traffic.get(g).copied().unwrap_or(0);
        let ratio = per(*consumed as f64, own as f64);
        worst_dev = worst_dev.max((ratio - 1.0).abs() * 100.0);
        let cpu = w.cpu.by_process.get(&format!("gw{g}")).copied();
        rows.push(json!({
            "gateway": g,
            "rooms": rooms.iter().filter(|s| **s).count(),
            "own_traffic": own,
            "consumed": consumed,
            "consumed_per_s": per(*consumed as f64, wall),
            "consumed_over_own": ratio,
            "cpu_s": cpu,
            "cpu_s_per_s": cpu.map(|c| per(c, wall)),
        }));
    }
    let list = |key: &str| {
        rows.iter()
            .map(|row| match &row[key] {
                Value::Number(n) => format!("{n}"),
                _ => "-".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let mean = |key: &str| {
        let values: Vec<f64> = rows.iter().filter_map(|row| row[key].as_f64()).collect();
        per(values.iter().sum(), values.len() as f64)
    };
    r.put("rooms_by_gateway", list("rooms"))
        .put("own_traffic_by_gateway", list("own_traffic"))
        .put("consumed_by_gateway", list("consumed"))
        .put("consumed_over_own_max_dev_pct", worst_dev)
        .put("consumed_per_s_mean", mean("consumed_per_s"))
        .put("gateway_cpu_s_per_s_mean", mean("cpu_s_per_s"))
        .put("gateway_cpu_s_per_s", list("cpu_s_per_s"))
        .detail("per_gateway", Value::Array(rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumed_counter_is_read_from_the_exposition() {
        let metrics = "# TYPE chat_events_consumed_total counter\n\
                       chat_events_consumed_total 1234\n\
                       chat_events_consumed_total_other 9\n";
        assert_eq!(counter(metrics, "chat_events_consumed_total"), 1234);
        assert_eq!(counter("", "chat_events_consumed_total"), 0);
        assert_eq!(
            http_base("ws://127.0.0.1:4401/ws").unwrap(),
            "http://127.0.0.1:4401"
        );
        assert!(http_base("wss://example.com").is_err());
    }
}
