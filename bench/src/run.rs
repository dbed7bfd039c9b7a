//! What each subcommand does: build the pieces (client pool, broker baseline, ingest run),
//! measure, and turn the outcome into one result record with the same field names
//! everywhere, so that results of both systems line up in the report.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::archive;
use crate::baseline::{self, Baseline, BaselineWindow};
use crate::capacity::{self, Ladder, Search};
use crate::cli::{
    AccessArgs, ArchiveArgs, BaselineArgs, CapacityArgs, CleanupArgs, CostArgs, IdleArgs,
    LadderArgs, LoadArgs, ScenarioArgs, TargetArgs,
};
use crate::client::{self, Dialect};
use crate::load::{Ambient, ConnectReport, Layout, Pool, Window};
use crate::output::Record;
use crate::procfs::{self, CpuUsed, Watched};
use crate::routing;
use crate::stats::{ms, per};

fn watched(cost: &CostArgs) -> Watched {
    Watched {
        system: cost.pids.clone(),
        broker: cost.broker_pid.clone(),
    }
}

fn layout(s: &ScenarioArgs) -> anyhow::Result<Layout> {
    if s.rooms == 0 || s.rate <= 0.0 || s.senders == 0 {
        bail!("--rooms, --rate and --senders must be positive");
    }
    let urls = urls(&s.target)?;
    Ok(Layout {
        dialect: s.target.dialect,
        urls,
        receivers: s.receivers,
        senders: s.senders,
        rooms: s.rooms,
        payload: s.payload,
        room_prefix: s
            .room_prefix
            .clone()
            .unwrap_or_else(baseline::random_prefix),
        auth_secret: s.target.auth_secret.clone(),
        spread: s.spread,
    })
}

fn urls(target: &TargetArgs) -> anyhow::Result<Vec<String>> {
    if target.auth_secret.is_some() && matches!(target.dialect, Dialect::Socketio) {
        bail!("--auth-secret signs chat clients in; the Socket.IO peer has no tokens");
    }
    target
        .urls
        .iter()
        .map(|u| {
            client::check_loopback(u)?;
            Ok(client::endpoint(target.dialect, u))
        })
        .collect()
}

fn scenario_fields(r: &mut Record, label: &str, s: &ScenarioArgs) {
    r.put("scenario", label)
        .put("dialect", s.target.dialect.name())
        .put("auth", auth_name(&s.target))
        .put("gateways", s.target.urls.len())
        .put("receivers", s.receivers)
        .put("senders", s.senders)
        .put("rooms", s.rooms)
        .put("payload", s.payload)
        .put("typists", s.ambient.typists)
        .put("churners", s.ambient.churners);
}

fn ambient(s: &ScenarioArgs) -> Ambient {
    Ambient {
        typists: s.ambient.typists,
        typing_every: s.ambient.typing_every,
        churners: s.ambient.churners,
        churn_every: s.ambient.churn_every,
        churn_elsewhere: s.ambient.churn_elsewhere,
    }
}

/// How the clients signed in: `token`, or `open` (self-chosen names).
fn auth_name(target: &TargetArgs) -> &'static str {
    match target.auth_secret {
        Some(_) => "token",
        None => "open",
    }
}

fn connect_fields(r: &mut Record, c: &ConnectReport) {
    r.put("clients", c.clients)
        .put("connected", c.connected)
        .put("connect_s", c.seconds)
        .put("connect_per_s", per(c.connected as f64, c.seconds))
        .put("handshake_p50_ms", ms(c.handshake.percentile(0.5)))
        .put("handshake_p99_ms", ms(c.handshake.percentile(0.99)))
        .put("connect_errors", c.errors)
        .put("connect_error_codes", codes(&c.error_codes));
}

fn codes(codes: &BTreeMap<String, u64>) -> String {
    if codes.is_empty() {
        return "-".to_owned();
    }
    codes
        .iter()
        .map(|(c, n)| format!("{c}:{n}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn cpu_fields(r: &mut Record, cpu: &CpuUsed, deliveries: u64, messages: u64) {
    let us = |seconds: f64, n: u64| per(seconds * 1e6, n as f64);
    r.put("cpu_s", cpu.system)
        .put("cpu_kernel_pct", per(cpu.system_kernel * 100.0, cpu.system))
        .put("cpu_us_per_delivery", us(cpu.system, deliveries))
        .put("cpu_us_per_msg", us(cpu.system, messages));
    match cpu.broker {
        Some(b) => r
            .put("broker_cpu_s", b)
            .put("broker_cpu_us_per_delivery", us(b, deliveries))
            .put("broker_cpu_us_per_msg", us(b, messages)),
        None => r
            .put("broker_cpu_s", Value::Null)
            .put("broker_cpu_us_per_delivery", Value::Null)
            .put("broker_cpu_us_per_msg", Value::Null),
    };
    let by_process = cpu
        .by_process
        .iter()
        .map(|(label, s)| format!("{label}:{s:.2}"))
        .collect::<Vec<_>>()
        .join(",");
    r.put("bench_cpu_s", cpu.bench)
        .put("other_cpu_s", cpu.other())
        .put("machine_busy_pct", cpu.machine_busy_pct())
        .put(
            "cpu_by_process",
            if by_process.is_empty() {
                "-".to_owned()
            } else {
                by_process
            },
        );
}

/// The figures of one window, as fields.
fn window_fields(r: &mut Record, w: &Window) {
    let seconds = w.duration.as_secs_f64();
    r.put("rate", w.rate)
        .put("duration_s", seconds)
        .put("window_s", w.elapsed.as_secs_f64())
        .put("offered", w.offered)
        .put("sent", w.sent)
        .put("expected", w.expected)
        .put("received", w.received)
        .put("lost", w.lost())
        .put("loss_pct", per(w.lost() as f64 * 100.0, w.expected as f64))
        .put("duplicates", w.duplicates)
        .put("stale", w.stale)
        .put("foreign", w.foreign)
        .put("msgs_per_s", per(w.sent as f64, seconds))
        .put("deliveries_per_s", per(w.received as f64, seconds))
        .put("p50_ms", ms(w.latency.percentile(0.50)))
        .put("p90_ms", ms(w.latency.percentile(0.90)))
        .put("p99_ms", ms(w.latency.percentile(0.99)))
        .put("max_ms", ms(w.latency.max()))
        .put("send_lag_p99_ms", ms(w.send_lag.percentile(0.99)))
        .put("acks", w.acks)
        .put("errors", w.errors)
        .put("disconnects", w.disconnects)
        .put("error_codes", codes(&w.error_codes))
        .put("typing_sent", w.typing_sent)
        .put("ambient_frames", w.ambient_frames)
        .put(
            "ambient_frames_per_s",
            per(w.ambient_frames as f64, seconds),
        )
        .put("rejoins", w.rejoins)
        .put("ambient_deliveries", w.ambient_deliveries);
    // The typists and churners are members too: what they got is delivered work.
    cpu_fields(r, &w.cpu, w.received + w.ambient_deliveries, w.sent);
}

fn window_json(w: &Window) -> Value {
    let mut r = Record::new();
    window_fields(&mut r, w);
    serde_json::from_str(&r.json()).unwrap_or(Value::Null)
}

/// A capacity step passes with every delivery made, p99 latency within the limit, and the
/// senders on schedule (else the nominal rate was not really offered).
pub fn passes(w: &Window, p99_ms: f64) -> bool {
    w.sent > 0
        && w.lost() == 0
        && ms(w.latency.percentile(0.99)) <= p99_ms
        && ms(w.send_lag.percentile(0.99)) <= p99_ms
}

fn ladder(start: f64, l: &LadderArgs) -> Ladder {
    Ladder {
        start,
        factor: l.factor,
        max_steps: l.max_steps,
        max_rate: l.max_rate,
        min_rate: l.min_rate,
    }
}

fn search_fields(r: &mut Record, search: &Search<Window>) {
    let best = search
        .attempts
        .iter()
        .rfind(|a| a.passed && Some(a.rate) == search.capacity);
    r.put(
        "capacity_rate",
        search.capacity.map_or(Value::Null, |c| json!(c)),
    );
    match best {
        Some(a) => {
            let w = &a.outcome;
            let seconds = w.duration.as_secs_f64();
            r.put("capacity_deliveries_per_s", per(w.received as f64, seconds))
                .put("capacity_p99_ms", ms(w.latency.percentile(0.99)))
                .put(
                    "capacity_cpu_us_per_delivery",
                    per(
                        w.cpu.system * 1e6,
                        (w.received + w.ambient_deliveries) as f64,
                    ),
                )
                .put(
                    "capacity_cpu_us_per_msg",
                    per(w.cpu.system * 1e6, w.sent as f64),
                );
        }
        None => {
            r.put("capacity_deliveries_per_s", Value::Null)
                .put("capacity_p99_ms", Value::Null)
                .put("capacity_cpu_us_per_delivery", Value::Null)
                .put("capacity_cpu_us_per_msg", Value::Null);
        }
    }
    let steps = search
        .attempts
        .iter()
        .map(|a| {
            let w = &a.outcome;
            format!(
                "{:.0}:{}(loss={},p99={:.1}ms)",
                a.rate,
                if a.passed { "ok" } else { "fail" },
                w.lost(),
                ms(w.latency.percentile(0.99))
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    r.put("stopped", search.stopped).put("steps", steps);
    r.detail(
        "attempts",
        Value::Array(
            search
                .attempts
                .iter()
                .map(|a| {
                    let mut v = window_json(&a.outcome);
                    v["attempt"] = json!(a.attempt);
                    v["passed"] = json!(a.passed);
                    v
                })
                .collect(),
        ),
    );
}

pub async fn load(args: LoadArgs) -> anyhow::Result<Record> {
    let s = &args.scenario;
    let layout = layout(s)?;
    let watched = watched(&args.cost);
    eprintln!(
        "[{}] connecting {} clients ({})",
        args.out.label,
        s.receivers + s.senders,
        s.target.dialect.name()
    );
    let (pool, connected) = Pool::connect(layout, s.connect_concurrency, s.connect_timeout).await;
    pool.start_ambient(&ambient(s))?;
    eprintln!(
        "[{}] {} connected in {:.1}s; sending {} msg/s for {:?}",
        args.out.label, connected.connected, connected.seconds, s.rate, s.duration
    );
    let consumed_before = if s.consumed {
        // The joins' events first, so that only the window's are counted.
        pool.quiesce(Duration::from_secs(15)).await;
        watched.wait_idle(0.15, Duration::from_secs(30)).await;
        Some(routing::consumed(&s.target.urls).await?)
    } else {
        None
    };
    let window = pool.measure(s.rate, s.duration, s.drain, &watched).await;
    let consumed: Option<Vec<u64>> = match consumed_before {
        Some(before) => {
            let after = routing::consumed(&s.target.urls).await?;
            Some(
                after
                    .iter()
                    .zip(&before)
                    .map(|(a, b)| a.saturating_sub(*b))
                    .collect(),
            )
        }
        None => None,
    };
    let served = pool.layout().served();
    pool.close(Duration::from_secs(20)).await;
    let mut r = Record::new();
    scenario_fields(&mut r, &args.out.label, s);
    r.put("spread", format!("{:?}", s.spread));
    connect_fields(&mut r, &connected);
    window_fields(&mut r, &window);
    if let Some(consumed) = consumed {
        routing::fields(&mut r, &window, &served, &consumed);
    }
    Ok(r)
}

pub async fn capacity(args: CapacityArgs) -> anyhow::Result<Record> {
    let s = &args.scenario;
    let layout = layout(s)?;
    let watched = watched(&args.cost);
    let label = &args.out.label;
    let clients = s.receivers + s.senders;
    eprintln!(
        "[{label}] connecting {clients} clients ({})",
        s.target.dialect.name()
    );
    let (pool, connected) = Pool::connect(layout, s.connect_concurrency, s.connect_timeout).await;
    pool.start_ambient(&ambient(s))?;
    let p99 = args.ladder.p99_ms;
    let search = capacity::search(
        ladder(s.rate, &args.ladder),
        |rate| {
            let (pool, watched) = (&pool, &watched);
            async move {
                let live = pool.wait_connected(Duration::from_secs(30)).await;
                if live < clients as u64 {
                    eprintln!("[{label}] only {live} of {clients} clients connected");
                }
                let w = pool.measure(rate, s.duration, s.drain, watched).await;
                eprintln!(
                    "[{label}] {rate:.0} msg/s: {} lost of {}, p99 {:.1} ms, send lag p99 {:.1} ms -> {}",
                    w.lost(),
                    w.expected,
                    ms(w.latency.percentile(0.99)),
                    ms(w.send_lag.percentile(0.99)),
                    if passes(&w, p99) { "ok" } else { "fail" }
                );
                w
            }
        },
        |w| passes(w, p99),
    )
    .await;
    pool.close(Duration::from_secs(20)).await;
    let mut r = Record::new();
    scenario_fields(&mut r, label, s);
    r.put("start_rate", s.rate)
        .put("factor", args.ladder.factor)
        .put("p99_limit_ms", p99)
        .put("step_s", s.duration.as_secs_f64());
    connect_fields(&mut r, &connected);
    search_fields(&mut r, &search);
    Ok(r)
}

pub async fn idle(args: IdleArgs) -> anyhow::Result<Record> {
    let target = &args.target;
    let rooms = match target.dialect {
        Dialect::Chat => args.rooms.max(1),
        Dialect::Socketio => 1,
    };
    let layout = Layout {
        dialect: target.dialect,
        urls: urls(target)?,
        receivers: args.connections,
        senders: 0,
        rooms,
        payload: 0,
        room_prefix: baseline::random_prefix(),
        auth_secret: target.auth_secret.clone(),
        spread: crate::load::Spread::RoundRobin,
    };
    let watched = watched(&args.cost);
    let label = &args.out.label;
    let before = watched.memory("VmRSS");
    let data_before = watched.memory("VmData");
    let bench_before = procfs::rss_kb(std::process::id()).unwrap_or(0);
    eprintln!(
        "[{label}] connecting {} idle clients ({})",
        args.connections,
        args.target.dialect.name()
    );
    let (pool, connected) =
        Pool::connect(layout, args.connect_concurrency, args.connect_timeout).await;
    eprintln!(
        "[{label}] {} connected in {:.1}s; settling",
        connected.connected, connected.seconds
    );
    pool.quiesce(Duration::from_secs(60)).await;
    tokio::time::sleep(args.settle).await;
    let after = watched.memory("VmRSS");
    let data_after = watched.memory("VmData");
    let bench_after = procfs::rss_kb(std::process::id()).unwrap_or(0);
    let still = pool.wait_connected(Duration::ZERO).await;
    let disconnects = pool.totals().disconnects;
    pool.close(Duration::from_secs(60)).await;

    let total_before: u64 = before.values().sum();
    let total_after: u64 = after.values().sum();
    let growth = total_after.saturating_sub(total_before);
    let data_growth = data_after
        .values()
        .sum::<u64>()
        .saturating_sub(data_before.values().sum());
    let mut r = Record::new();
    r.put("scenario", label.as_str())
        .put("dialect", args.target.dialect.name())
        .put("auth", auth_name(target))
        .put("gateways", target.urls.len())
        .put("connections", args.connections)
        .put("rooms", rooms);
    connect_fields(&mut r, &connected);
    r.put("still_connected", still)
        .put("disconnects", disconnects)
        .put("rss_before_kb", total_before)
        .put("rss_after_kb", total_after)
        .put("rss_growth_kb", growth)
        .put(
            "rss_kb_per_conn",
            per(growth as f64, connected.connected as f64),
        )
        .put(
            "vmdata_kb_per_conn",
            per(data_growth as f64, connected.connected as f64),
        )
        .put(
            "rss_by_process_kb",
            after
                .iter()
                .map(|(label, kb)| format!("{label}:{}->{kb}", before.get(label).unwrap_or(&0)))
                .collect::<Vec<_>>()
                .join(","),
        )
        .put(
            "bench_rss_kb_per_conn",
            per(
                bench_after.saturating_sub(bench_before) as f64,
                connected.connected as f64,
            ),
        );
    Ok(r)
}

fn baseline_fields(r: &mut Record, b: &BaselineWindow) {
    window_fields(r, &b.window);
    r.put("confirmed", b.confirmed)
        .put("durable_expected", b.durable_expected)
        .put("durable_received", b.durable_received);
}

pub async fn baseline(args: BaselineArgs) -> anyhow::Result<Record> {
    let watched = watched(&args.cost);
    let label = &args.out.label;
    let mut base = Baseline::start(
        &args.amqp.amqp_url,
        args.gateways,
        args.publishers,
        args.payload,
    )
    .await
    .context("cannot set up the broker baseline")?;
    eprintln!("[{label}] broker baseline under prefix {}", base.prefix());
    let mut r = Record::new();
    r.put("scenario", label.as_str())
        .put("dialect", "broker")
        .put("gateways", args.gateways)
        .put("publishers", args.publishers)
        .put("payload", args.payload);
    let outcome = if args.capacity {
        let p99 = args.ladder.p99_ms;
        let cell = tokio::sync::Mutex::new(&mut base);
        let durable_ok = std::sync::Mutex::new(Vec::new());
        let search = capacity::search(
            ladder(args.rate, &args.ladder),
            |rate| {
                let (cell, watched, durable_ok) = (&cell, &watched, &durable_ok);
                async move {
                    let mut base = cell.lock().await;
                    base.settle(Duration::from_secs(30)).await;
                    let b = base.measure(rate, args.duration, args.drain, watched).await;
                    let w = b.window;
                    let durable = b.durable_received >= b.durable_expected;
                    durable_ok
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(durable);
                    eprintln!(
                        "[{label}] {rate:.0} msg/s: {} lost of {}, durable {}/{}, p99 {:.1} ms -> {}",
                        w.lost(),
                        w.expected,
                        b.durable_received,
                        b.durable_expected,
                        ms(w.latency.percentile(0.99)),
                        if passes(&w, p99) && durable { "ok" } else { "fail" }
                    );
                    (w, durable)
                }
            },
            |(w, durable)| *durable && passes(w, p99),
        )
        .await;
        let search = Search {
            capacity: search.capacity,
            stopped: search.stopped,
            attempts: search
                .attempts
                .into_iter()
                .map(|a| capacity::Attempt {
                    rate: a.rate,
                    attempt: a.attempt,
                    passed: a.passed,
                    outcome: a.outcome.0,
                })
                .collect(),
        };
        r.put("start_rate", args.rate)
            .put("factor", args.ladder.factor)
            .put("p99_limit_ms", p99)
            .put("step_s", args.duration.as_secs_f64());
        search_fields(&mut r, &search);
        Ok(())
    } else {
        let b = base
            .measure(args.rate, args.duration, args.drain, &watched)
            .await;
        baseline_fields(&mut r, &b);
        Ok(())
    };
    base.stop().await;
    outcome.map(|()| r)
}

pub async fn archive(args: ArchiveArgs) -> anyhow::Result<Record> {
    let watched = watched(&args.cost);
    let label = &args.out.label;
    eprintln!(
        "[{label}] publishing {} events/s for {:?} to {}.events",
        args.rate, args.duration, args.prefix
    );
    let i = archive::run(&args, &watched).await?;
    let total = i.total.as_secs_f64();
    let mut r = Record::new();
    r.put("scenario", label.as_str())
        .put("dialect", "chat")
        .put("rate", args.rate)
        .put("duration_s", args.duration.as_secs_f64())
        .put("payload", args.payload)
        .put("sent", i.sent)
        .put("confirmed", i.confirmed)
        .put("archived", i.archived)
        .put("complete", i.archived >= i.sent)
        .put("ingest_per_s", per(i.archived as f64, total))
        .put(
            "lag_ms",
            i.lag.map_or(Value::Null, |l| json!(l.as_secs_f64() * 1e3)),
        )
        .put("deficit_max", i.deficit_max)
        .put("deficit_mean", i.deficit_mean)
        .put("deficit_at_last_send", i.deficit_at_last_send)
        .put("room", i.room.as_str());
    cpu_fields(&mut r, &i.cpu, i.archived, i.sent);
    Ok(r)
}

pub async fn access(args: AccessArgs) -> anyhow::Result<Record> {
    let (seeded, archived_after, runs) = crate::access::run(&args).await?;
    let mut walls: Vec<f64> = runs
        .iter()
        .map(|r| r.start_to_rebuilt.as_secs_f64())
        .collect();
    walls.sort_by(f64::total_cmp);
    let median = walls.get(walls.len() / 2).copied();
    let mut r = Record::new();
    r.put("scenario", args.out.label.as_str())
        .put("dialect", "chat")
        .put("auth", "token")
        .put("seeded", seeded)
        .put("room_size", args.room_size)
        .put("archived_after_s", archived_after.as_secs_f64())
        .put("runs", runs.len())
        .put(
            "start_to_rebuilt_median_s",
            median.map_or(Value::Null, |m| json!(m)),
        )
        .put(
            "start_to_rebuilt_min_s",
            walls.first().map_or(Value::Null, |m| json!(m)),
        )
        .put(
            "replay_s",
            runs.iter().map(|r| json!(r.replay_s)).collect::<Vec<_>>(),
        )
        .put(
            "events_replayed",
            runs.iter().map(|r| json!(r.events)).collect::<Vec<_>>(),
        )
        .put(
            "gateway_cpu_s",
            runs.iter()
                .map(|r| json!(r.gateway_cpu_s))
                .collect::<Vec<_>>(),
        )
        .put(
            "archiver_cpu_s",
            runs.iter()
                .map(|r| json!(r.archiver_cpu_s))
                .collect::<Vec<_>>(),
        )
        .put(
            "start_to_rebuilt_s",
            runs.iter()
                .map(|r| json!(r.start_to_rebuilt.as_secs_f64()))
                .collect::<Vec<_>>(),
        );
    Ok(r)
}

pub async fn cleanup(args: CleanupArgs) -> anyhow::Result<Record> {
    if args.prefix == "chat" {
        bail!("refusing to delete the default prefix `chat`");
    }
    let connection = chat_core::broker::connect(&args.amqp.amqp_url, "chat-bench-cleanup").await?;
    let deleted = baseline::delete_prefix(&connection, &args.prefix).await?;
    let _ = connection.close(200, "done".into()).await;
    let mut r = Record::new();
    r.put("prefix", args.prefix.as_str())
        .put("deleted", deleted.join(","));
    Ok(r)
}
