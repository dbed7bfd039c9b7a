//! The floor: the least work that delivers the same frames as a chat gateway in the fanout
//! scenario, to measure how close the gateway's CPU per delivery is to what this machine
//! can do at all. One process listens on one or more addresses (so the load generator
//! spreads its clients as over two gateways), speaks just enough of docs/protocol.md for
//! the benchmark client (`hello`, `join`/`joined`, `say`/`ack`, `event`), and fans each
//! `say` out as one pre-encoded frame, shared by every member of the room, with no broker,
//! no persistence, no history, no validation beyond parsing: see [`out`] for the two ways
//! the frames are written.

mod out;
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

pub use out::Mode;
use out::Out;

/// The rooms' members: a list copied on join and leave (rare), so that a fanout only
/// clones an `Arc` under the lock and writes without it.
type Members = Arc<[Arc<Out>]>;

/// The floor server's state.
struct Floor {
    rooms: Mutex<HashMap<String, Members>>,
    mode: Mode,
    delay: Duration,
    /// Numbers the events, for their ids.
    events: AtomicU64,
}

/// Serves on every address until the process is stopped.
pub async fn serve(addresses: &[SocketAddr], mode: Mode, delay: Duration) -> anyhow::Result<()> {
    let floor = Arc::new(Floor {
        rooms: Mutex::new(HashMap::new()),
        mode,
        delay,
        events: AtomicU64::new(0),
    });
    let mut accepting = tokio::task::JoinSet::new();
    for address in addresses {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        eprintln!(
            "floor: listening on ws://{}/ws ({mode:?}, delay {delay:?})",
            listener.local_addr()?
        );
        let floor = floor.clone();
        accepting.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(floor.clone().connection(stream));
                    }
                    // Out of descriptors or similar: try again shortly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
    }
    while accepting.join_next().await.is_some() {}
    Ok(())
}

impl Floor {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Members>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn join(&self, room: &str, out: &Arc<Out>) {
        let mut rooms = self.lock();
        let members = rooms
            .entry(room.to_owned())
            .or_insert_with(|| Arc::from([]));
        if !members.iter().any(|m| Arc::ptr_eq(m, out)) {
            *members = members.iter().cloned().chain([out.clone()]).collect();
        }
    }

    fn leave(&self, room: &str, out: &Arc<Out>) {
        let mut rooms = self.lock();
        if let Some(members) = rooms.get_mut(room) {
            *members = members
                .iter()
                .filter(|m| !Arc::ptr_eq(m, out))
                .cloned()
                .collect();
            if members.is_empty() {
                rooms.remove(room);
            }
        }
    }

    /// Encodes the event once and sends the same bytes to every member.
    fn fanout(&self, room: &str, user: &str, text: &str) -> String {
        let n = self.events.fetch_add(1, Ordering::Relaxed);
        // As long as a UUIDv7 and an RFC 3339 time with milliseconds, so the frame has
        // the size of the gateway's.
        let id = format!("00000000-0000-7000-8000-{n:012x}");
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let at = format!("{:024}", ms);
        let event = json!({"type": "event", "event": {"v": 1, "id": id, "type": "message",
            "room": room, "user": user, "text": text, "at": at, "gateway": "floor"}});
        let frame = Bytes::from(ws::encode(ws::OP_TEXT, event.to_string().as_bytes()));
        let members = self.lock().get(room).cloned();
        for member in members.iter().flat_map(|m| m.iter()) {
            member.send(frame.clone());
        }
        id
    }

    /// One client: the upgrade, `hello`, then its frames until it goes.
    async fn connection(self: Arc<Self>, mut stream: TcpStream) {
        let Ok(mut buf) = ws::accept(&mut stream).await else {
            return;
        };
        let (mut read, write) = stream.into_split();
        let out = Arc::new(Out::new(write, self.mode, self.delay));
        let writer = tokio::spawn({
            let out = out.clone();
            async move { out.write_loop().await }
        });
        let text = |v: Value| Bytes::from(ws::encode(ws::OP_TEXT, v.to_string().as_bytes()));
        out.send(text(
            json!({"type": "hello", "gateway": "floor", "limits": {}}),
        ));
        let mut joined: Vec<String> = Vec::new();
        let mut name = String::new();
        'read: loop {
            loop {
                let (frame, used) = match ws::decode(&buf) {
                    Ok(Some(decoded)) => decoded,
                    Ok(None) => break,
                    Err(_) => break 'read,
                };
                buf.drain(..used);
                match frame.opcode {
                    ws::OP_TEXT => {}
                    ws::OP_PING => {
                        out.send(Bytes::from(ws::encode(ws::OP_PONG, &frame.payload)));
                        continue;
                    }
                    ws::OP_CLOSE => {
                        out.send(Bytes::from(ws::encode(ws::OP_CLOSE, &[0x03, 0xE8])));
                        break 'read;
                    }
                    _ => continue,
                }
                let Ok(command) = serde_json::from_slice::<Value>(&frame.payload) else {
                    break 'read;
                };
                let room = command["room"].as_str().unwrap_or_default();
                match command["type"].as_str() {
                    Some("join") => {
                        name = command["name"].as_str().unwrap_or("anonymous").to_owned();
                        self.join(room, &out);
                        joined.push(room.to_owned());
                        out.send(text(json!({"type": "joined", "room": room, "history": []})));
                    }
                    Some("say") => {
                        let id = self.fanout(room, &name, command["text"].as_str().unwrap_or(""));
                        out.send(text(json!({"type": "ack", "id": id})));
                    }
                    _ => {}
                }
            }
            let mut chunk = [0u8; 4096];
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        for room in &joined {
            self.leave(room, &out);
        }
        // Lets the writer send what is queued (a close answer) before it ends.
        tokio::time::sleep(Duration::from_millis(50)).await;
        out.close();
        let _ = writer.await;
    }
}
