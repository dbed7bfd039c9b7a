//! Micro-benchmarks of the gateway's hot paths: fanning one consumed event out to the
//! members of a room (dedupe, one encoding, one queue push per member) and parsing a
//! client frame. `cargo bench -p gateway`. The cost of writing to the sockets, which
//! dominates in a real run, is not in here; BENCHMARKS.md measures the whole system.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use chat_core::{Event, EventKind};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gateway::outbox;
use gateway::rooms::{Member, Outbound, Rooms};
use gateway::ws::frame;
use tokio_util::sync::CancellationToken;

fn event(i: usize) -> Event {
    Event::new(
        EventKind::Message,
        "lobby",
        "alice",
        Some(format!(
            "message number {i}, about a hundred bytes of text to fan out to everyone"
        )),
        "gw-1",
    )
}

fn fanout(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("fanout one event");
    for members in [1usize, 100, 500] {
        group.throughput(Throughput::Elements(members as u64));
        group.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, &n| {
            let rooms = Rooms::default();
            let mut inboxes = Vec::with_capacity(n);
            for conn in 0..n as u64 {
                let (outbox, inbox) = outbox::channel::<Outbound, gateway::ws::Direct>(1 << 16);
                let kick = CancellationToken::new();
                rooms.join(
                    "lobby",
                    conn,
                    Member {
                        outbox,
                        kick,
                        user: None,
                        name: format!("u{conn}").into(),
                        admin: false,
                    },
                );
                inboxes.push(inbox);
            }
            b.iter_custom(|iters| {
                // Fresh ids (repeats are dropped), made before the clock starts.
                let events: Vec<Event> = (0..iters as usize).map(event).collect();
                let mut spent = Duration::ZERO;
                for chunk in events.chunks(256) {
                    let start = Instant::now();
                    for event in chunk {
                        black_box(rooms.deliver(event));
                    }
                    spent += start.elapsed();
                    // Empty the queues, off the clock, as the writers would.
                    runtime.block_on(async {
                        let mut batch = std::collections::VecDeque::new();
                        for inbox in &mut inboxes {
                            inbox.recv_all(&mut batch).await;
                            batch.clear();
                        }
                    });
                }
                spent
            });
        });
    }
    group.finish();
}

fn client_frame(c: &mut Criterion) {
    let payload = br#"{"type":"say","room":"lobby","text":"about a hundred bytes of text typed by someone in the browser","ref":"c-17"}"#;
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut wire = vec![0x81, 0x80 | payload.len() as u8];
    wire.extend_from_slice(&mask);
    wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut group = c.benchmark_group("websocket frame");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("parse and unmask a client frame", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            frame::parse(&mut buf, 1 << 16)
                .expect("valid")
                .expect("whole")
        })
    });
    group.bench_function("encode an event frame", |b| {
        let text = std::str::from_utf8(payload).expect("utf-8");
        b.iter(|| frame::text(black_box(text)))
    });
    group.finish();
}

criterion_group!(benches, fanout, client_frame);
criterion_main!(benches);
