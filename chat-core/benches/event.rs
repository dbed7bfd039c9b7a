//! Micro-benchmarks of the event codec, the work every service does per delivery:
//! `cargo bench -p chat-core`. Figures are per call on the machine that runs them; the
//! system-level figures are in BENCHMARKS.md.

use chat_core::{Event, EventKind};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn message() -> Event {
    let text = "Shall we meet at the café at noon? Bring the slides, the numbers look good 👍";
    Event::new(
        EventKind::Message,
        "lobby",
        "alice",
        Some(text.to_owned()),
        "gw-1",
    )
}

fn codec(c: &mut Criterion) {
    let event = message();
    let json = event.to_json();
    let mut group = c.benchmark_group("event");
    group.throughput(Throughput::Bytes(json.len() as u64));
    group.bench_function("encode (to_json)", |b| b.iter(|| event.to_json()));
    group.bench_function("decode and validate a delivery", |b| {
        b.iter(|| Event::decode(json.as_bytes()).expect("valid"))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
