//! The access projection's rebuild (issue 9): how long a gateway in `AUTH_MODE=token`
//! takes from its start until its projection is rebuilt from the archive's membership log.
//! The tool first publishes the membership events (private rooms of `--room-size`: a
//! `room_created` and `member_added` for the rest), waits until the archiver has stored
//! them, then starts the gateway binary `--runs` times against the system and times each
//! start until the gateway's `/metrics` shows its first replay
//! (`chat_access_replay_seconds`), with the gateway's and the archiver's CPU meanwhile.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chat_core::broker::event_properties;
use chat_core::topology::Topology;
use chat_core::{Event, EventKind, Visibility};
use lapin::options::BasicPublishOptions;

use crate::archive::http_get;
use crate::cli::AccessArgs;
use crate::procfs;

/// Confirms awaited at once while seeding.
const IN_FLIGHT: usize = 2000;
/// How often the gateway's metrics are read while it rebuilds.
const POLL: Duration = Duration::from_millis(10);
/// The longest a rebuild may take before the run is given up.
const LIMIT: Duration = Duration::from_secs(300);

/// One timed gateway start.
#[derive(Debug, Clone)]
pub struct Rebuild {
    /// From spawning the gateway until its metrics showed the first replay done.
    pub start_to_rebuilt: Duration,
    /// The replay itself, as the gateway measured it (`chat_access_replay_seconds_sum`).
    pub replay_s: f64,
    /// How many membership events the gateway says it folded (from its log).
    pub events: Option<u64>,
    /// The gateway's CPU (user + system) from its start until rebuilt.
    pub gateway_cpu_s: f64,
    /// The archiver's CPU meanwhile, if its pid was given.
    pub archiver_cpu_s: Option<f64>,
}

/// The membership events of private room `n`: its creation and `size - 1` members added.
fn room_events(n: u64, size: u64) -> Vec<Event> {
    let room = format!("acc-{n}");
    let owner = format!("owner-{n}");
    let mut created =
        Event::new(EventKind::RoomCreated, &room, &owner, None, "chat-bench").verified(&owner);
    created.visibility = Some(Visibility::Private);
    let mut events = vec![created];
    for m in 1..size.max(1) {
        let mut added =
            Event::new(EventKind::MemberAdded, &room, &owner, None, "chat-bench").verified(&owner);
        added.member = Some(format!("user-{}", (n * 7919 + m) % 100_000));
        events.push(added);
    }
    events
}

/// Publishes `count` membership events, persistent and confirmed, to the system's exchange.
async fn seed(args: &AccessArgs, topology: &Topology) -> anyhow::Result<u64> {
    let connection = chat_core::broker::connect(&args.amqp.amqp_url, "chat-bench-access")
        .await
        .context("cannot connect to the broker")?;
    let channel = connection.create_channel().await?;
    crate::amqp::confirming(&channel).await?;
    let exchange = topology.events_exchange();
    let mut confirms = Vec::with_capacity(IN_FLIGHT);
    let mut sent = 0;
    let mut room = 0;
    'rooms: loop {
        for event in room_events(room, args.room_size) {
            if sent == args.events {
                break 'rooms;
            }
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    event.to_json().as_bytes(),
                    event_properties(&event),
                )
                .await?;
            confirms.push(confirm);
            sent += 1;
            if confirms.len() == IN_FLIGHT {
                for confirm in confirms.drain(..) {
                    if !confirm.await?.is_ack() {
                        bail!("the broker refused a membership event");
                    }
                }
            }
        }
        room += 1;
    }
    for confirm in confirms {
        if !confirm.await?.is_ack() {
            bail!("the broker refused a membership event");
        }
    }
    let _ = connection.close(200, "seeded".into()).await;
    Ok(sent)
}

/// The value of an unlabelled metric in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until the archiver at `base` has stored `count` events since it started.
async fn archived(base: &str, count: u64) -> anyhow::Result<Duration> {
    let began = Instant::now();
    loop {
        let (_, page) = http_get(base, "/metrics").await?;
        let stored = metric(&page, "chat_events_archived_total").unwrap_or(0.0) as u64;
        if stored >= count {
            return Ok(began.elapsed());
        }
        if began.elapsed() > LIMIT {
            bail!("the archiver stored {stored} of {count} events in {LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts the gateway, times its rebuild, stops it.
async fn rebuild(args: &AccessArgs, run: usize, log: &PathBuf) -> anyhow::Result<Rebuild> {
    let base = format!("http://{}", args.listen);
    let archiver_before = args.archiver_pid.and_then(|p| procfs::cpu_seconds(p).ok());
    let started = Instant::now();
    let mut child = Command::new(&args.gateway)
        .env("AUTH_MODE", "token")
        .env("AUTH_SECRET", &args.auth_secret)
        .env("CHAT_PREFIX", &args.prefix)
        .env("AMQP_URL", &args.amqp.amqp_url)
        .env("GATEWAY_LISTEN", args.listen.to_string())
        .env("GATEWAY_ID", format!("gw-access-{run}"))
        .env("RUST_LOG", "gateway=info,warn")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("cannot start {}", args.gateway.display()))?;
    let timed = async {
        loop {
            if let Ok((200, page)) = http_get(&base, "/metrics").await {
                if metric(&page, "chat_access_replay_seconds_count").unwrap_or(0.0) >= 1.0 {
                    let took = started.elapsed();
                    let replay_s = metric(&page, "chat_access_replay_seconds_sum").unwrap_or(0.0);
                    return Ok((took, replay_s));
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!("the gateway exited ({status}); see {}", log.display());
            }
            if started.elapsed() > LIMIT {
                bail!("no rebuild within {LIMIT:?}; see {}", log.display());
            }
            tokio::time::sleep(POLL).await;
        }
    }
    .await;
    let gateway_cpu_s = procfs::cpu_seconds(child.id()).unwrap_or(0.0);
    let archiver_cpu_s = archiver_before
        .zip(args.archiver_pid.and_then(|p| procfs::cpu_seconds(p).ok()))
        .map(|(before, after)| after - before);
    stop(&mut child).await;
    let (start_to_rebuilt, replay_s) = timed?;
    Ok(Rebuild {
        start_to_rebuilt,
        replay_s,
        events: replayed_count(log),
        gateway_cpu_s,
        archiver_cpu_s,
    })
}

/// SIGTERM, then waits for the exit.
async fn stop(child: &mut Child) {
    // SAFETY: `kill` with a pid we spawned and still own (not yet waited for).
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    for _ in 0..200 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The `events` of the gateway's "access projection rebuilt" log line (JSON logs).
fn replayed_count(log: &PathBuf) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("access projection rebuilt"))
        })?["events"]
        .as_u64()
}

/// Seeds (unless `--events 0`), waits for the archive, times `--runs` gateway starts.
pub async fn run(args: &AccessArgs) -> anyhow::Result<(u64, Duration, Vec<Rebuild>)> {
    let topology = Topology::new(&args.prefix)?;
    crate::client::check_loopback(&args.archiver)?;
    if !args.listen.ip().is_loopback() {
        bail!("{}: the gateway listens on this machine only", args.listen);
    }
    let seeded = if args.events > 0 {
        eprintln!("[access] publishing {} membership events", args.events);
        seed(args, &topology).await?
    } else {
        0
    };
    let waited = archived(&args.archiver, seeded).await?;
    eprintln!(
        "[access] archived {seeded} events ({:.1}s after the last confirm)",
        waited.as_secs_f64()
    );
    let mut runs = Vec::new();
    for run in 0..args.runs {
        let log = std::env::temp_dir().join(format!(
            "chat-bench-access-{}-{run}.log",
            std::process::id()
        ));
        let rebuilt = rebuild(args, run, &log).await?;
        eprintln!(
            "[access] run {}: rebuilt {} events {:.2}s after start (replay {:.2}s, gateway CPU {:.2}s)",
            run + 1,
            rebuilt.events.map_or("?".to_owned(), |n| n.to_string()),
            rebuilt.start_to_rebuilt.as_secs_f64(),
            rebuilt.replay_s,
            rebuilt.gateway_cpu_s
        );
        let _ = std::fs::remove_file(&log);
        runs.push(rebuilt);
    }
    Ok((seeded, waited, runs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_is_its_creation_and_its_members_and_every_event_is_valid() {
        let events = room_events(3, 100);
        assert_eq!(events.len(), 100);
        assert_eq!(events[0].kind, EventKind::RoomCreated);
        assert_eq!(events[0].visibility, Some(Visibility::Private));
        assert!(events[1..].iter().all(|e| e.kind == EventKind::MemberAdded));
        for event in &events {
            assert!(
                Event::decode(event.to_json().as_bytes()).is_ok(),
                "{event:?}"
            );
        }
        // The rules accept them all: the owner adds, nobody is a guest.
        let mut access = chat_core::access::Access::default();
        for event in &events {
            assert!(access.apply(event).is_ok());
        }
    }

    #[test]
    fn metrics_and_log_lines_are_read() {
        let page = "# TYPE x summary\nchat_access_replay_seconds_sum 1.25\nchat_access_replay_seconds_count 1\n";
        assert_eq!(metric(page, "chat_access_replay_seconds_sum"), Some(1.25));
        assert_eq!(metric(page, "chat_access_replay_seconds_count"), Some(1.0));
        assert_eq!(metric(page, "chat_access_replay_seconds"), None);
        let dir = tempdir_file(concat!(
            r#"{"level":"INFO","message":"gateway starting"}"#,
            "\n",
            r#"{"level":"INFO","events":100000,"message":"access projection rebuilt from the archive"}"#,
            "\n"
        ));
        assert_eq!(replayed_count(&dir), Some(100_000));
        let _ = std::fs::remove_file(dir);
    }

    fn tempdir_file(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("chat-bench-test-{}.log", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }
}
