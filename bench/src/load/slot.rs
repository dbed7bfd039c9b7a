//! One client's life in a pool: connect, run its role (receiver or sender) until the
//! connection drops, reconnect, until shutdown. Both roles read the same server frames and
//! handle pings, errors and closes alike ([`Slot::common`]); a receiver counts and times
//! deliveries, a sender sends on the plan's schedule and counts acks.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::counters::Shared;
use super::layout::{Layout, Plan};
use crate::client::{Client, Incoming};
use crate::marker::Marker;
use crate::stats::{now_us, WindowStats};

/// One client's place in the pool.
pub(super) struct Slot {
    pub layout: Arc<Layout>,
    /// Receivers first, then senders.
    pub index: usize,
    pub plan: watch::Receiver<Plan>,
    pub shared: Arc<Shared>,
    pub shutdown: CancellationToken,
    /// Limits the handshakes in flight.
    pub gate: Arc<Semaphore>,
}

/// How a connection's run ended.
enum End {
    Shutdown(Client),
    Lost(String),
}

/// A sender's place in the current window, kept across reconnects.
#[derive(Default)]
struct Progress {
    window: u32,
    seq: u64,
    done: bool,
}

impl Slot {
    fn sender(&self) -> Option<usize> {
        self.index.checked_sub(self.layout.receivers)
    }

    fn room(&self) -> usize {
        match self.sender() {
            Some(s) => self.layout.room_of_sender(s),
            None => self.layout.room_of_receiver(self.index),
        }
    }

    pub async fn run(mut self) {
        let url = self.layout.url_of(self.index).to_owned();
        let room = self.layout.room_name(self.room());
        let name = match self.sender() {
            Some(s) => format!("s{s}"),
            None => format!("r{}", self.index),
        };
        let token = match &self.layout.auth_secret {
            Some(secret) => match crate::chat_client::token(secret, &name) {
                Ok(token) => Some(token),
                Err(err) => {
                    self.shared.error(&format!("token:{err}"));
                    return;
                }
            },
            None => None,
        };
        let mut progress = Progress::default();
        loop {
            let attempt = {
                let Ok(_permit) = self.gate.acquire().await else {
                    return;
                };
                let began = Instant::now();
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    c = Client::connect(self.layout.dialect, &url, &room, &name, token.as_deref(), Duration::from_secs(60)) => c,
                }
                .inspect(|_| {
                    let took = began.elapsed().as_micros() as u64;
                    self.shared.handshake.record(took);
                })
            };
            match attempt {
                Ok(client) => {
                    self.shared.live.fetch_add(1, Ordering::Relaxed);
                    let end = match self.sender() {
                        Some(s) => self.send_loop(client, s, &mut progress).await,
                        None => self.receive_loop(client).await,
                    };
                    self.shared.live.fetch_sub(1, Ordering::Relaxed);
                    match end {
                        End::Shutdown(client) => return client.close().await,
                        End::Lost(why) => {
                            self.shared.disconnects.fetch_add(1, Ordering::Relaxed);
                            self.shared.error(&format!("disconnected:{why}"));
                            let plan = self.plan.borrow().stats.clone();
                            plan.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(err) => {
                    self.shared.connect_errors.fetch_add(1, Ordering::Relaxed);
                    let why = format!("{err:#}");
                    self.shared.error(&format!("connect:{}", short(&why)));
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Reads a frame: `Ok(None)` for a frame that is not text, `Err` when the connection is
    /// gone.
    async fn read(client: &mut Client) -> Result<Option<Utf8Bytes>, String> {
        match client.stream.next().await {
            Some(Ok(Message::Text(text))) => Ok(Some(text)),
            Some(Ok(Message::Close(frame))) => Err(frame.map_or("close".to_owned(), |f| {
                format!("close{}", u16::from(f.code))
            })),
            Some(Ok(_)) => Ok(None),
            Some(Err(err)) => Err(short(&err.to_string())),
            None => Err("eof".to_owned()),
        }
    }

    /// Counts a text frame and does what every role does with it: answers a ping, counts
    /// an error, ends on the server's close. Returns what is left for the role (a delivery,
    /// an ack, or nothing), or why the connection is over.
    async fn common(
        &self,
        client: &mut Client,
        frame: &str,
        stats: &WindowStats,
    ) -> Result<Incoming, String> {
        let incoming = client.classify(frame);
        // Presence and typing never stop in an active room: counted apart, so that waiting
        // for quiet before a window waits for the messages and joins only.
        let counter = match incoming {
            Incoming::Ambient => &self.shared.ambient_frames,
            _ => &self.shared.frames,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match incoming {
            Incoming::Ping => {
                client
                    .send(crate::socketio::PONG.to_owned())
                    .await
                    .map_err(|err| short(&err.to_string()))?;
                Ok(Incoming::Other)
            }
            Incoming::Error(code) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                self.shared.error(&code);
                Ok(Incoming::Other)
            }
            Incoming::Closing => Err("server_close".to_owned()),
            rest => Ok(rest),
        }
    }

    async fn receive_loop(&mut self, mut client: Client) -> End {
        let my_room = self.room() as u32;
        let mut plan = self.plan.borrow_and_update().clone();
        // The last sequence number seen from each sender in the current window.
        let mut last_seq: Vec<Option<u64>> = vec![None; self.layout.senders];
        let mut seen_window = plan.window;
        loop {
            let frame = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return End::Shutdown(client),
                frame = Self::read(&mut client) => frame,
            };
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => continue,
                Err(why) => return End::Lost(why),
            };
            if self.plan.has_changed().unwrap_or(false) {
                plan = self.plan.borrow_and_update().clone();
            }
            let m = match self.common(&mut client, &frame, &plan.stats).await {
                Ok(Incoming::Delivery(m)) => m,
                Ok(_) => continue,
                Err(why) => return End::Lost(why),
            };
            let now = now_us();
            if m.window != plan.window {
                self.shared.stale.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if seen_window != plan.window {
                last_seq.iter_mut().for_each(|s| *s = None);
                seen_window = plan.window;
            }
            let sender = m.sender as usize;
            if m.room != my_room || sender >= last_seq.len() {
                plan.stats.foreign.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if last_seq[sender].is_some_and(|last| m.seq <= last) {
                plan.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            last_seq[sender] = Some(m.seq);
            plan.stats.received.fetch_add(1, Ordering::Relaxed);
            plan.stats.latency.record(now.saturating_sub(m.sent_us));
        }
    }

    async fn send_loop(
        &mut self,
        mut client: Client,
        sender: usize,
        progress: &mut Progress,
    ) -> End {
        let senders = self.layout.senders;
        let room = self.room() as u32;
        let mut plan = self.plan.borrow_and_update().clone();
        loop {
            if progress.window != plan.window {
                *progress = Progress {
                    window: plan.window,
                    ..Progress::default()
                };
            }
            let due = plan.due(sender, senders, progress.seq);
            if due.is_none() && plan.window != 0 && !progress.done {
                progress.done = true;
                plan.stats.senders_done.fetch_add(1, Ordering::Relaxed);
            }
            let wait = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return End::Shutdown(client),
                changed = self.plan.changed() => {
                    if changed.is_err() {
                        return End::Shutdown(client);
                    }
                    plan = self.plan.borrow_and_update().clone();
                }
                frame = Self::read(&mut client) => {
                    let frame = match frame {
                        Ok(Some(frame)) => frame,
                        Ok(None) => continue,
                        Err(why) => return End::Lost(why),
                    };
                    match self.common(&mut client, &frame, &plan.stats).await {
                        Ok(Incoming::Ack) => {
                            plan.stats.acks.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(why) => return End::Lost(why),
                    }
                }
                _ = wait => {
                    let scheduled = due.expect("only waited on a due time");
                    let lag = Instant::now().saturating_duration_since(scheduled);
                    plan.stats.send_lag.record(lag.as_micros() as u64);
                    let text = Marker {
                        window: plan.window,
                        sender: sender as u32,
                        seq: progress.seq,
                        sent_us: now_us(),
                        room,
                    }
                    .encode(self.layout.payload);
                    let frame = client.say_frame(&text);
                    if let Err(err) = client.send(frame).await {
                        return End::Lost(short(&err.to_string()));
                    }
                    plan.stats.sent[sender].fetch_add(1, Ordering::Relaxed);
                    progress.seq += 1;
                }
            }
        }
    }
}

/// The first words of an error, without spaces, for error-code counts.
pub(super) fn short(text: &str) -> String {
    text.split_whitespace()
        .take(4)
        .collect::<Vec<_>>()
        .join("_")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(48)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_words_become_a_code() {
        assert_eq!(
            short("IO error: Connection reset by peer"),
            "IO_error_Connection_reset"
        );
    }
}
