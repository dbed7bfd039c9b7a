//! Turns a directory of JSON results (`<system>-<scenario>.json`, system `chat`,
//! `socketio` or `broker`) into the Markdown tables of BENCHMARKS.md: one table per
//! scenario with both systems side by side and the ratio ours / peer.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// Which way is better for a figure.
#[derive(Clone, Copy)]
enum Better {
    Lower,
    Higher,
    Neither,
}

struct Row {
    label: &'static str,
    key: &'static str,
    better: Better,
}

const fn row(label: &'static str, key: &'static str, better: Better) -> Row {
    Row { label, key, better }
}

struct Table {
    title: &'static str,
    scenario: &'static str,
    note: &'static str,
    rows: &'static [Row],
}

use Better::{Higher, Lower, Neither};

const WINDOW_ROWS: &[Row] = &[
    row("messages sent", "sent", Neither),
    row("deliveries expected", "expected", Neither),
    row("deliveries received", "received", Higher),
    row("loss (%)", "loss_pct", Lower),
    row("deliveries/s", "deliveries_per_s", Higher),
    row("latency p50 (ms)", "p50_ms", Lower),
    row("latency p90 (ms)", "p90_ms", Lower),
    row("latency p99 (ms)", "p99_ms", Lower),
    row("latency max (ms)", "max_ms", Lower),
    row("system CPU (s)", "cpu_s", Lower),
    row("… of which in the kernel (%)", "cpu_kernel_pct", Neither),
    row("system CPU per delivery (µs)", "cpu_us_per_delivery", Lower),
    row("system CPU per message (µs)", "cpu_us_per_msg", Lower),
    row(
        "broker CPU per message (µs)",
        "broker_cpu_us_per_msg",
        Lower,
    ),
    row("bench tool CPU (s)", "bench_cpu_s", Neither),
    row("other programs' CPU (s, noise)", "other_cpu_s", Neither),
    row("machine busy (% of all CPUs)", "machine_busy_pct", Neither),
    row("connect rate (clients/s)", "connect_per_s", Higher),
    row("handshake p50 (ms)", "handshake_p50_ms", Lower),
    row("errors", "errors", Lower),
    row("disconnects", "disconnects", Lower),
];

const CAPACITY_ROWS: &[Row] = &[
    row("capacity (messages/s)", "capacity_rate", Higher),
    row(
        "deliveries/s at capacity",
        "capacity_deliveries_per_s",
        Higher,
    ),
    row("p99 at capacity (ms)", "capacity_p99_ms", Lower),
    row(
        "system CPU per delivery at capacity (µs)",
        "capacity_cpu_us_per_delivery",
        Lower,
    ),
    row(
        "system CPU per message at capacity (µs)",
        "capacity_cpu_us_per_msg",
        Lower,
    ),
    row("search ended by", "stopped", Neither),
];

const IDLE_ROWS: &[Row] = &[
    row("connections made", "connected", Higher),
    row("time to connect all (s)", "connect_s", Lower),
    row("connect rate (clients/s)", "connect_per_s", Higher),
    row("handshake p50 (ms)", "handshake_p50_ms", Lower),
    row("handshake p99 (ms)", "handshake_p99_ms", Lower),
    row("RSS before (KiB, both gateways)", "rss_before_kb", Neither),
    row("RSS after (KiB, both gateways)", "rss_after_kb", Neither),
    row("RSS growth per connection (KiB)", "rss_kb_per_conn", Lower),
    row(
        "VmData growth per connection (KiB)",
        "vmdata_kb_per_conn",
        Lower,
    ),
    row("connect errors", "connect_errors", Lower),
    row("still connected at the end", "still_connected", Higher),
];

const TABLES: &[Table] = &[
    Table {
        title: "Fanout: 500 receivers in one room, 4 senders, 100 messages/s",
        scenario: "fanout",
        note: "",
        rows: WINDOW_ROWS,
    },
    Table {
        title: "Fanout capacity: from 100 messages/s up by 1.25x (CAPACITY_FACTOR; the steps show the rates tried)",
        scenario: "fanout-capacity",
        note: "Capacity = highest rate with no loss and p99 ≤ 50 ms (a step fails only if it fails twice).",
        rows: CAPACITY_ROWS,
    },
    Table {
        title: "Ingest: 10 receivers, 20 senders, 2000 messages/s",
        scenario: "ingest",
        note: "",
        rows: WINDOW_ROWS,
    },
    Table {
        title: "Ingest capacity: from 2000 messages/s up by 1.25x",
        scenario: "ingest-capacity",
        note: "",
        rows: CAPACITY_ROWS,
    },
    Table {
        title: "Many rooms: 2000 clients in 200 rooms (1800 receivers, 200 senders), 1000 messages/s",
        scenario: "rooms",
        note: "The peer has no rooms: every client gets every message and the benchmark client drops those of other rooms (`foreign`); only deliveries within the room count.",
        rows: WINDOW_ROWS,
    },
    Table {
        title: "Idle: 8000 connections",
        scenario: "idle-8000",
        note: "RSS of the gateway processes (ours: both gateways; peer: both node processes), before and after connecting.",
        rows: IDLE_ROWS,
    },
    Table {
        title: "Idle: 10000 connections",
        scenario: "idle-10000",
        note: "",
        rows: IDLE_ROWS,
    },
    Table {
        title: "Idle: 10000 connections on one gateway (ours only)",
        scenario: "idle-one-10000",
        note: "All clients on the first gateway; RSS is that gateway's.",
        rows: IDLE_ROWS,
    },
];

fn load(dir: &Path) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut results = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {dir:?}"))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let text = std::fs::read_to_string(&path)?;
        let value: Value =
            serde_json::from_str(text.trim()).with_context(|| format!("{path:?} is not JSON"))?;
        results.insert(name, value);
    }
    Ok(results)
}

/// A number as people read it: integers plain, others with 1 to 3 significant decimals.
fn show(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "–".to_owned(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(Value::Number(n)) => {
            let f = n.as_f64().unwrap_or_default();
            let a = f.abs();
            if a >= 100.0 {
                format!("{f:.0}")
            } else if a >= 10.0 {
                format!("{f:.1}")
            } else if a >= 0.1 || a == 0.0 {
                format!("{f:.2}")
            } else {
                format!("{f:.3}")
            }
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn ratio(ours: Option<&Value>, peer: Option<&Value>, better: Better) -> String {
    let (Some(a), Some(b)) = (ours.and_then(Value::as_f64), peer.and_then(Value::as_f64)) else {
        return "–".to_owned();
    };
    if matches!(better, Neither) || b == 0.0 {
        return "–".to_owned();
    }
    let r = a / b;
    let verdict = match better {
        Lower if r < 1.0 => " (ours better)",
        Higher if r > 1.0 => " (ours better)",
        _ if (r - 1.0).abs() < 1e-9 => "",
        _ => " (peer better)",
    };
    format!("{r:.2}{verdict}")
}

/// The tables, as Markdown.
pub fn render(dir: &Path) -> anyhow::Result<String> {
    let results = load(dir)?;
    let mut md = crate::targets::render(&results);
    for table in TABLES {
        let ours = results.get(&format!("chat-{}", table.scenario));
        let peer = results.get(&format!("socketio-{}", table.scenario));
        if ours.is_none() && peer.is_none() {
            continue;
        }
        let _ = writeln!(md, "### {}\n", table.title);
        if !table.note.is_empty() {
            let _ = writeln!(md, "{}\n", table.note);
        }
        let _ = writeln!(md, "| | ours (Rust) | peer (Socket.IO) | ours / peer |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        for r in table.rows {
            let a = ours.and_then(|v| v.get(r.key));
            let b = peer.and_then(|v| v.get(r.key));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                r.label,
                show(a),
                show(b),
                ratio(a, b, r.better)
            );
        }
        for (who, v) in [("ours", ours), ("peer", peer)] {
            if let Some(steps) = v.and_then(|v| v.get("steps")).and_then(Value::as_str) {
                let _ = writeln!(md, "\nSteps, {who}: `{steps}`");
            }
            if let Some(by) = v
                .and_then(|v| v.get("cpu_by_process"))
                .and_then(Value::as_str)
            {
                let _ = writeln!(md, "\nCPU seconds by process, {who}: `{by}`");
            }
            if let Some(codes) = v
                .and_then(|v| v.get("error_codes"))
                .and_then(Value::as_str)
                .filter(|c| *c != "-")
            {
                let _ = writeln!(md, "\nErrors, {who}: `{codes}`");
            }
            if let Some(by) = v
                .and_then(|v| v.get("rss_by_process_kb"))
                .and_then(Value::as_str)
            {
                let _ = writeln!(md, "\nRSS by process (KiB, before->after), {who}: `{by}`");
            }
        }
        md.push('\n');
    }
    floor_table(&results, &mut md);
    active_table(&results, &mut md);
    broker_tables(&results, &mut md);
    Ok(md)
}

/// The rows of the fanout with presence and typing active, beside the quiet fanout.
const ACTIVE_ROWS: &[(&str, &str, &str, Better)] = &[
    (
        "deliveries received (receivers, timed)",
        "",
        "received",
        Higher,
    ),
    (
        "… and by the typists and churners (untimed)",
        "",
        "ambient_deliveries",
        Neither,
    ),
    ("loss (%)", "", "loss_pct", Lower),
    ("latency p50 (ms)", "", "p50_ms", Lower),
    ("latency p99 (ms)", "", "p99_ms", Lower),
    (
        "system CPU per delivery (µs)",
        "",
        "cpu_us_per_delivery",
        Lower,
    ),
    (
        "… of which in the kernel (%)",
        "",
        "cpu_kernel_pct",
        Neither,
    ),
    (
        "broker CPU per message (µs)",
        "",
        "broker_cpu_us_per_msg",
        Lower,
    ),
    (
        "`typing` frames sent by the typists",
        "",
        "typing_sent",
        Neither,
    ),
    (
        "presence and typing frames received per second",
        "",
        "ambient_frames_per_s",
        Neither,
    ),
    ("churners' leaves and joins again", "", "rejoins", Neither),
    ("other programs' CPU (s, noise)", "", "other_cpu_s", Neither),
    (
        "capacity (messages/s)",
        "-capacity",
        "capacity_rate",
        Higher,
    ),
    (
        "p99 at capacity (ms)",
        "-capacity",
        "capacity_p99_ms",
        Lower,
    ),
    (
        "system CPU per delivery at capacity (µs)",
        "-capacity",
        "capacity_cpu_us_per_delivery",
        Lower,
    ),
];

/// Our fanout with typists and churners in the room (`--typists`, `--churners`) beside the
/// same fanout quiet, with active / quiet.
fn active_table(results: &BTreeMap<String, Value>, md: &mut String) {
    if !results.contains_key("chat-fanout-active") {
        return;
    }
    let active = results.get("chat-fanout-active");
    let typists = active.and_then(|v| v.get("typists"));
    let churners = active.and_then(|v| v.get("churners"));
    let _ = writeln!(
        md,
        "### Fanout with presence and typing active (ours only)\n\n\
         The fanout scenario again, with {} typists (each: `typing` start, start again after \
         3 s, stop 1.5 s later, 1.5 s rest, as the page does) and {} churners (each stays 8 s, \
         leaves, stays away 8 s, joins again) among the room's 500 members, on both gateways. \
         The messages they get count as deliveries (CPU per delivery is over all of them; \
         latency only over the receivers'); their frames and the presence and typing frames \
         every member gets do not. Same machine, same run as the quiet fanout.\n",
        show(typists),
        show(churners)
    );
    let _ = writeln!(
        md,
        "| | quiet | presence and typing active | active / quiet |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (label, suffix, key, better) in ACTIVE_ROWS {
        let quiet = results
            .get(&format!("chat-fanout{suffix}"))
            .and_then(|v| v.get(*key));
        let busy = results
            .get(&format!("chat-fanout{suffix}-active"))
            .and_then(|v| v.get(*key));
        let r = match (busy.and_then(Value::as_f64), quiet.and_then(Value::as_f64)) {
            (Some(a), Some(b)) if b != 0.0 && !matches!(better, Neither) => format!("{:.2}", a / b),
            _ => "–".to_owned(),
        };
        let _ = writeln!(md, "| {label} | {} | {} | {r} |", show(quiet), show(busy));
    }
    md.push('\n');
}

/// The floor rows: where the CPU goes and what latency costs, for ours, the two floors and
/// the peer.
const FLOOR_ROWS: &[Row] = &[
    row("run", "scenario", Neither),
    row("deliveries received", "received", Higher),
    row("system CPU per delivery (µs)", "cpu_us_per_delivery", Lower),
    row("… of which in the kernel (%)", "cpu_kernel_pct", Neither),
    row("latency p50 (ms)", "p50_ms", Lower),
    row("latency p99 (ms)", "p99_ms", Lower),
    row("bench tool CPU (s)", "bench_cpu_s", Neither),
    row("other programs' CPU (s, noise)", "other_cpu_s", Neither),
];

/// The fanout scenario against the floor (`chat-bench floor`): ours beside the least work
/// that delivers the same frames, one write per delivery and one write per burst, and the
/// peer, with ours / each.
fn floor_table(results: &BTreeMap<String, Value>, md: &mut String) {
    let delivery = results.get("floor-fanout");
    let burst = results.get("floor-burst-fanout");
    if delivery.is_none() && burst.is_none() {
        return;
    }
    let ours = results.get("chat-fanout");
    let peer = results.get("socketio-fanout");
    let _ = writeln!(
        md,
        "### The floor: fanout, 500 receivers in one room, 4 senders, 100 messages/s\n"
    );
    let _ = writeln!(
        md,
        "The floor is `chat-bench floor`: one process on the gateways' two ports that speaks \
         just enough of the protocol, keeps no history, uses no broker and writes one \
         pre-encoded frame, shared by all members, to each receiver: with its own `send` per \
         delivery from the task that fans out, or queued and written by the connection's \
         task in one `writev` per burst (after the write delay in the run's name). Ours counts \
         both gateways, the logger and the archiver; the floor its one process.\n"
    );
    let _ = writeln!(
        md,
        "| | ours (Rust) | floor, a write per delivery | floor, a write per burst | peer (Socket.IO) | ours / floor per delivery | ours / floor per burst | ours / peer |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in FLOOR_ROWS {
        let [o, d, b, p] = [ours, delivery, burst, peer].map(|v| v.and_then(|v| v.get(r.key)));
        let plain = |x: Option<&Value>, y: Option<&Value>| match (
            x.and_then(Value::as_f64),
            y.and_then(Value::as_f64),
        ) {
            (Some(x), Some(y)) if y != 0.0 && !matches!(r.better, Neither) => {
                format!("{:.2}", x / y)
            }
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            show(o),
            show(d),
            show(b),
            show(p),
            plain(o, d),
            plain(o, b),
            ratio(o, p, r.better)
        );
    }
    md.push('\n');
}

fn broker_tables(results: &BTreeMap<String, Value>, md: &mut String) {
    let base = results.get("broker-baseline");
    let cap = results.get("broker-capacity");
    if base.is_some() || cap.is_some() {
        let _ = writeln!(
            md,
            "### Broker alone (lapin, persistent, confirms, the system's queues as chat-core declares them: 2 quorum + the event log stream + 2 exclusive)\n"
        );
        let _ = writeln!(md, "| | broker alone | ours | ours / broker |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        let ours = results.get("chat-ingest");
        let ours_cap = results.get("chat-ingest-capacity");
        let rows: [(&str, Option<&Value>, Option<&Value>, &str); 5] = [
            ("latency p50 at the ingest rate (ms)", base, ours, "p50_ms"),
            ("latency p99 at the ingest rate (ms)", base, ours, "p99_ms"),
            (
                "broker CPU per message at the ingest rate (µs)",
                base,
                ours,
                "broker_cpu_us_per_msg",
            ),
            ("capacity (messages/s)", cap, ours_cap, "capacity_rate"),
            ("p99 at capacity (ms)", cap, ours_cap, "capacity_p99_ms"),
        ];
        for (label, b, o, key) in rows {
            let bv = b.and_then(|v| v.get(key));
            let ov = o.and_then(|v| v.get(key));
            let r = match (ov.and_then(Value::as_f64), bv.and_then(Value::as_f64)) {
                (Some(o), Some(b)) if b != 0.0 => format!("{:.2}", o / b),
                _ => "–".to_owned(),
            };
            let _ = writeln!(md, "| {label} | {} | {} | {r} |", show(bv), show(ov));
        }
        if let Some(steps) = cap.and_then(|v| v.get("steps")).and_then(Value::as_str) {
            let _ = writeln!(md, "\nSteps, broker alone: `{steps}`");
        }
        md.push('\n');
    }
    let archives: Vec<(&String, &Value)> = results
        .iter()
        .filter(|(k, _)| k.starts_with("chat-archive"))
        .collect();
    if !archives.is_empty() {
        let _ = writeln!(
            md,
            "### Archiver ingest (ours only: the peer keeps no history)\n"
        );
        let _ = writeln!(
            md,
            "| rate offered (events/s) | sent | archived | committed (events/s) | lag after last send (ms) | deficit max | deficit mean | archiver+logger+gateways CPU per event (µs) |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut archives = archives;
        archives.sort_by(|a, b| {
            let r = |v: &Value| v["rate"].as_f64().unwrap_or_default();
            r(a.1).total_cmp(&r(b.1))
        });
        for (_, v) in archives {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                show(v.get("rate")),
                show(v.get("sent")),
                show(v.get("archived")),
                show(v.get("ingest_per_s")),
                show(v.get("lag_ms")),
                show(v.get("deficit_max")),
                show(v.get("deficit_mean")),
                show(v.get("cpu_us_per_msg")),
            );
        }
        md.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_systems_side_by_side_with_the_ratio() {
        let dir = std::env::temp_dir().join(format!("chat-bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("chat-fanout.json"),
            r#"{"cpu_us_per_delivery":2.0,"received":500,"p99_ms":3.5}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("socketio-fanout.json"),
            r#"{"cpu_us_per_delivery":4.0,"received":500,"p99_ms":7.0}"#,
        )
        .unwrap();
        let md = render(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(md.contains("| system CPU per delivery (µs) | 2.00 | 4.00 | 0.50 (ours better) |"));
        assert!(md.contains("| deliveries received | 500 | 500 | 1.00 |"));
        assert!(!md.contains("Idle"));
        assert!(!md.contains("The floor"));
    }

    #[test]
    fn the_active_fanout_stands_beside_the_quiet_one() {
        let results: BTreeMap<String, Value> = [
            ("chat-fanout", r#"{"cpu_us_per_delivery":10.0}"#),
            (
                "chat-fanout-active",
                r#"{"cpu_us_per_delivery":10.5,"typists":25,"churners":10,"typing_sent":80}"#,
            ),
            ("chat-fanout-capacity", r#"{"capacity_rate":400}"#),
            ("chat-fanout-capacity-active", r#"{"capacity_rate":320}"#),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), serde_json::from_str(v).unwrap()))
        .collect();
        let mut md = String::new();
        active_table(&results, &mut md);
        assert!(md.contains("with 25 typists"), "{md}");
        assert!(
            md.contains("| system CPU per delivery (µs) | 10.0 | 10.5 | 1.05 |"),
            "{md}"
        );
        assert!(
            md.contains("| capacity (messages/s) | 400 | 320 | 0.80 |"),
            "{md}"
        );
        assert!(
            md.contains("| `typing` frames sent by the typists | – | 80 | – |"),
            "{md}"
        );
        let targets = crate::targets::evaluate(&results);
        let met: Vec<_> = targets
            .iter()
            .filter(|o| o.target.starts_with("fanout with presence"))
            .map(|o| o.met)
            .collect();
        assert_eq!(met, [Some(true), Some(false)]);
    }

    #[test]
    fn the_floor_stands_beside_ours_and_the_peer() {
        let results: BTreeMap<String, Value> = [
            (
                "chat-fanout",
                r#"{"cpu_us_per_delivery":6.0,"scenario":"fanout"}"#,
            ),
            (
                "floor-fanout",
                r#"{"cpu_us_per_delivery":5.0,"scenario":"fanout"}"#,
            ),
            (
                "floor-burst-fanout",
                r#"{"cpu_us_per_delivery":3.0,"scenario":"fanout-burst-5ms"}"#,
            ),
            ("socketio-fanout", r#"{"cpu_us_per_delivery":12.0}"#),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), serde_json::from_str(v).unwrap()))
        .collect();
        let mut md = String::new();
        floor_table(&results, &mut md);
        assert!(md.contains(
            "| system CPU per delivery (µs) | 6.00 | 5.00 | 3.00 | 12.0 | 1.20 | 2.00 | 0.50 (ours better) |"
        ));
        assert!(md.contains("| run | fanout | fanout | fanout-burst-5ms | – | – | – | – |"));
    }
}
