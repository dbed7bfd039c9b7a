//! The targets, checked against one run's results: each target with our figure, the
//! figure it is compared with (the peer's, the broker's, or a fixed bound), and whether this
//! run met it. Written at the top of BENCHMARKS.md so that a reader sees at once where we
//! stand; the tables below give the detail.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

/// One target's outcome in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub target: String,
    pub ours: Option<f64>,
    pub reference: Option<f64>,
    /// Ours / reference, when the target is a ratio.
    pub ratio: Option<f64>,
    pub met: Option<bool>,
}

fn get(results: &BTreeMap<String, Value>, name: &str, key: &str) -> Option<f64> {
    results.get(name)?.get(key)?.as_f64()
}

/// A target on the ratio of one key of two results (`ours` / `reference`), met as `met`
/// says.
fn ratio_of(
    results: &BTreeMap<String, Value>,
    target: &str,
    (ours, reference): (&str, &str),
    key: &str,
    met: impl Fn(f64) -> bool,
) -> Outcome {
    let ours = get(results, ours, key);
    let reference = get(results, reference, key);
    let ratio = match (ours, reference) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    };
    Outcome {
        target: target.to_owned(),
        ours,
        reference,
        ratio,
        met: ratio.map(met),
    }
}

/// A target on ours / peer for one key of one scenario.
fn versus_peer(
    results: &BTreeMap<String, Value>,
    target: &str,
    scenario: &str,
    key: &str,
    met: impl Fn(f64) -> bool,
) -> Outcome {
    let names = (format!("chat-{scenario}"), format!("socketio-{scenario}"));
    ratio_of(results, target, (&names.0, &names.1), key, met)
}

/// Fanout CPU per delivery against the one-write-per-delivery floor (`chat-bench floor`).
fn of_floor(results: &BTreeMap<String, Value>) -> Outcome {
    // A floor that fell behind (lost deliveries: starved on a busy machine) is no floor.
    let kept_up = get(results, "floor-fanout", "lost") == Some(0.0);
    let mut outcome = ratio_of(
        results,
        "… and within 1.3x of the floor's (one write per delivery)",
        ("chat-fanout", "floor-fanout"),
        "cpu_us_per_delivery",
        |r| r <= 1.3,
    );
    if !kept_up {
        outcome.met = None;
    }
    outcome
}

/// Ours with presence and typing active in the fanout room against the same fanout quiet
/// (issue 10: within 10 %), for one key where `higher` says which way is better.
fn active_against_quiet(
    results: &BTreeMap<String, Value>,
    target: &str,
    scenario: &str,
    key: &str,
    higher: bool,
) -> Outcome {
    let names = (
        format!("chat-{scenario}-active"),
        format!("chat-{scenario}"),
    );
    ratio_of(results, target, (&names.0, &names.1), key, |r| {
        if higher {
            r >= 0.9
        } else {
            r <= 1.1
        }
    })
}

/// Every target the issue sets, in its order.
pub fn evaluate(results: &BTreeMap<String, Value>) -> Vec<Outcome> {
    let mut out = vec![
        versus_peer(
            results,
            "fanout: CPU per delivery (µs) at most 1/3 of the peer's",
            "fanout",
            "cpu_us_per_delivery",
            |r| r <= 1.0 / 3.0,
        ),
        of_floor(results),
        versus_peer(
            results,
            "fanout: capacity (messages/s) at least 3x the peer's",
            "fanout-capacity",
            "capacity_rate",
            |r| r >= 3.0,
        ),
        versus_peer(
            results,
            "ingest: CPU per message (µs) at most 2/3 of the peer's",
            "ingest",
            "cpu_us_per_msg",
            |r| r <= 2.0 / 3.0,
        ),
    ];
    let capacity = versus_peer(
        results,
        "ingest: capacity (messages/s) at least 1.5x the peer's",
        "ingest-capacity",
        "capacity_rate",
        |r| r >= 1.5,
    );
    let broker = get(results, "broker-capacity", "capacity_rate");
    let of_broker = match (capacity.ours, broker) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    };
    let within_broker = Outcome {
        target: "… or within 10% of the broker-only capacity (messages/s) for our topology"
            .to_owned(),
        ours: capacity.ours,
        reference: broker,
        ratio: of_broker,
        met: of_broker.map(|r| r >= 0.9),
    };
    out.push(capacity);
    out.push(within_broker);
    let memory = versus_peer(
        results,
        "idle 10 000: RSS per connection (KiB) at most 1/3 of the peer's",
        "idle-10000",
        "rss_kb_per_conn",
        |r| r <= 1.0 / 3.0,
    );
    let kib = memory.ours;
    out.push(memory);
    out.push(Outcome {
        target: "… and at most 8 KiB".to_owned(),
        ours: kib,
        reference: Some(8.0),
        ratio: None,
        met: kib.map(|kib| kib <= 8.0),
    });
    // Archive lag: the fastest archive scenario, if it offered at least our ingest capacity.
    let ingest_capacity = get(results, "chat-ingest-capacity", "capacity_rate");
    let fastest = results
        .iter()
        .filter(|(name, _)| name.starts_with("chat-archive"))
        .max_by(|a, b| {
            let rate = |v: &Value| v["rate"].as_f64().unwrap_or_default();
            rate(a.1).total_cmp(&rate(b.1))
        });
    let (rate, lag) = fastest.map_or((None, None), |(_, v)| {
        (v["rate"].as_f64(), v["lag_ms"].as_f64())
    });
    out.push(Outcome {
        target: format!(
            "archive lag (ms) under 1 s at the ingest capacity (measured at {} events/s offered)",
            rate.map_or("–".to_owned(), |r| format!("{r:.0}"))
        ),
        ours: lag,
        reference: Some(1000.0),
        ratio: None,
        met: match (lag, rate, ingest_capacity) {
            (Some(lag), Some(rate), Some(capacity)) => Some(lag < 1000.0 && rate >= capacity),
            _ => None,
        },
    });
    out.push(active_against_quiet(
        results,
        "fanout with presence and typing active: CPU per delivery (µs) within 10% of the quiet fanout's",
        "fanout",
        "cpu_us_per_delivery",
        false,
    ));
    out.push(active_against_quiet(
        results,
        "fanout with presence and typing active: capacity (messages/s) within 10% of the quiet fanout's",
        "fanout-capacity",
        "capacity_rate",
        true,
    ));
    let held = get(results, "chat-idle-one-10000", "still_connected");
    let errors = get(results, "chat-idle-one-10000", "connect_errors");
    out.push(Outcome {
        target: "one gateway holds 10 000 connections (connections still open)".to_owned(),
        ours: held,
        reference: Some(10_000.0),
        ratio: None,
        met: held.map(|n| n >= 10_000.0 && errors == Some(0.0)),
    });
    out
}

fn number(value: Option<f64>) -> String {
    match value {
        None => "–".to_owned(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// The targets as a Markdown table.
pub fn render(results: &BTreeMap<String, Value>) -> String {
    let mut md = String::from(
        "### Targets\n\n| target | ours | compared with | ratio | met in this run |\n|---|---:|---:|---:|---|\n",
    );
    for o in evaluate(results) {
        let met = match o.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {met} |",
            o.target,
            number(o.ours),
            number(o.reference),
            o.ratio.map_or("–".to_owned(), |r| format!("{r:.2}"))
        );
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn results() -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("chat-fanout".into(), json!({"cpu_us_per_delivery": 5.0})),
            (
                "floor-fanout".into(),
                json!({"cpu_us_per_delivery": 4.0, "lost": 0}),
            ),
            (
                "socketio-fanout".into(),
                json!({"cpu_us_per_delivery": 16.0}),
            ),
            (
                "chat-ingest-capacity".into(),
                json!({"capacity_rate": 3000.0}),
            ),
            (
                "socketio-ingest-capacity".into(),
                json!({"capacity_rate": 2500.0}),
            ),
            ("broker-capacity".into(), json!({"capacity_rate": 3125.0})),
            ("chat-idle-10000".into(), json!({"rss_kb_per_conn": 5.5})),
            (
                "socketio-idle-10000".into(),
                json!({"rss_kb_per_conn": 18.0}),
            ),
            (
                "chat-archive-1000".into(),
                json!({"rate": 1000.0, "lag_ms": 100.0}),
            ),
            (
                "chat-archive-5000".into(),
                json!({"rate": 5000.0, "lag_ms": 450.0}),
            ),
            (
                "chat-idle-one-10000".into(),
                json!({"still_connected": 10000, "connect_errors": 0}),
            ),
        ])
    }

    fn outcome<'a>(all: &'a [Outcome], start: &str) -> &'a Outcome {
        all.iter().find(|o| o.target.starts_with(start)).unwrap()
    }

    #[test]
    fn ratios_are_ours_over_the_reference_and_judged_against_the_bound() {
        let all = evaluate(&results());
        let fanout = outcome(&all, "fanout: CPU");
        assert_eq!(fanout.ratio, Some(5.0 / 16.0));
        assert_eq!(fanout.met, Some(true));
        let floor = outcome(&all, "… and within 1.3x of the floor");
        assert_eq!((floor.ratio, floor.met), (Some(1.25), Some(true)));
        let mut behind = results();
        behind.insert(
            "floor-fanout".into(),
            json!({"cpu_us_per_delivery": 4.0, "lost": 7}),
        );
        let all_behind = evaluate(&behind);
        let floor = outcome(&all_behind, "… and within 1.3x of the floor");
        assert_eq!(
            floor.met, None,
            "a floor that lost deliveries is not measured"
        );
        let capacity = outcome(&all, "ingest: capacity");
        assert_eq!(capacity.met, Some(false), "1.2x the peer is short of 1.5x");
        let broker = outcome(&all, "… or within 10%");
        assert_eq!(broker.met, Some(true), "96% of the broker's capacity");
        assert_eq!(outcome(&all, "idle 10 000").met, Some(true));
        assert_eq!(outcome(&all, "… and at most 8 KiB").met, Some(true));
        assert_eq!(outcome(&all, "one gateway").met, Some(true));
    }

    #[test]
    fn archive_lag_is_judged_at_the_fastest_rate_and_only_if_it_reached_the_capacity() {
        let mut r = results();
        let all = evaluate(&r);
        let lag = outcome(&all, "archive lag");
        assert_eq!((lag.ours, lag.met), (Some(450.0), Some(true)));
        assert!(lag.target.contains("5000 events/s"));
        r.insert(
            "chat-ingest-capacity".into(),
            json!({"capacity_rate": 6000.0}),
        );
        assert_eq!(outcome(&evaluate(&r), "archive lag").met, Some(false));
    }

    #[test]
    fn a_scenario_that_did_not_run_is_not_measured_rather_than_failed() {
        let all = evaluate(&BTreeMap::new());
        assert!(all.iter().all(|o| o.met.is_none()));
        assert!(render(&BTreeMap::new()).contains("not measured"));
    }
}
