//! Life in the measured rooms besides the messages: clients that type and clients that
//! come and go, so the fanout can be measured with presence and typing active (issue 10:
//! CPU per delivery and capacity should not move by more than 10 %).
//!
//! A typist sends `typing` as the page does while its user writes: `start`, `start` again
//! after `typing_every` (the page resends every 3 s), `stop` half an interval later (the
//! message is sent), then rests half an interval. A churner stays joined for `churn_every`
//! (the first time a share of it, so that they are staggered), closes, stays away as long
//! (longer than the gateways' presence grace, so its leave is seen), and joins again. Both are members of the room like the receivers: the messages
//! they get count as deliveries (`ambient_deliveries`, beside the receivers' timed ones), so
//! that a room of typists and receivers costs per delivery what it really costs. Their own
//! frames and the presence and typing frames everyone gets are counted apart, and the CPU
//! they cost lands in the window like all the rest.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::counters::Shared;
use super::layout::Layout;
use super::slot::short;
use crate::client::{Client, Dialect, Incoming};

/// How much is going on in the rooms besides the senders' messages.
#[derive(Debug, Clone, Default)]
pub struct Ambient {
    /// Clients that keep typing, spread over the rooms and gateways in turn.
    pub typists: usize,
    /// A typist's interval between two `start`s.
    pub typing_every: Duration,
    /// Clients that leave and join again, spread like the typists.
    pub churners: usize,
    /// How long a churner stays, and stays away.
    pub churn_every: Duration,
    /// Churners use rooms of their own (`<room>-away`), not the measured ones.
    pub churn_elsewhere: bool,
}

impl Ambient {
    pub fn is_quiet(&self) -> bool {
        self.typists == 0 && self.churners == 0
    }
}

#[derive(Clone, Copy)]
enum Role {
    Typist,
    Churner,
}

/// One ambient client: its number among its kind, and where it goes.
struct Extra {
    role: Role,
    index: usize,
    of: usize,
    url: String,
    room: String,
    name: String,
    token: Option<String>,
    ambient: Ambient,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

/// The ambient clients' tasks, each until `shutdown`. Ambient clients are numbered after
/// the pool's own clients, so they take the URLs in turn from where the pool stopped.
pub(super) fn spawn(
    ambient: &Ambient,
    layout: &Layout,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> anyhow::Result<()> {
    if ambient.is_quiet() {
        return Ok(());
    }
    if layout.dialect != Dialect::Chat {
        anyhow::bail!("--typists and --churners need the chat dialect (the peer has neither)");
    }
    let base = layout.receivers + layout.senders;
    let roles = std::iter::repeat_n(Role::Typist, ambient.typists)
        .enumerate()
        .chain(std::iter::repeat_n(Role::Churner, ambient.churners).enumerate());
    for (n, (index, role)) in roles.enumerate() {
        let (of, name) = match role {
            Role::Typist => (ambient.typists, format!("t{index}")),
            Role::Churner => (ambient.churners, format!("c{index}")),
        };
        let token = match &layout.auth_secret {
            Some(secret) => Some(crate::chat_client::token(secret, &name)?),
            None => None,
        };
        let extra = Extra {
            role,
            index,
            of,
            url: layout.urls[(base + n) % layout.urls.len()].clone(),
            room: match role {
                Role::Churner if ambient.churn_elsewhere => {
                    format!("{}-away", layout.room_name(index % layout.rooms))
                }
                _ => layout.room_name(index % layout.rooms),
            },
            name,
            token,
            ambient: ambient.clone(),
            shared: shared.clone(),
            shutdown: shutdown.clone(),
        };
        tasks.spawn(extra.run());
    }
    Ok(())
}

impl Extra {
    /// Spreads the clients of one kind evenly over `period`, so their frames do not come in
    /// bursts.
    fn phase(&self, period: Duration) -> Duration {
        period.mul_f64(self.index as f64 / self.of.max(1) as f64)
    }

    async fn run(self) {
        let period = match self.role {
            Role::Typist => self.ambient.typing_every,
            Role::Churner => self.ambient.churn_every,
        };
        // Typists start one after the other; churners join at once and the first of them
        // leaves soon, so the leaves and joins again are spread from the start.
        let mut stay = period.mul_f64((self.index + 1) as f64 / self.of.max(1) as f64);
        if let Role::Typist = self.role {
            if self.sleep(self.phase(period)).await.is_err() {
                return;
            }
        }
        loop {
            let client = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                c = Client::connect(Dialect::Chat, &self.url, &self.room, &self.name, self.token.as_deref(), Duration::from_secs(60)) => c,
            };
            let mut client = match client {
                Ok(client) => client,
                Err(err) => {
                    self.shared
                        .error(&format!("ambient:connect:{}", short(&format!("{err:#}"))));
                    if self.sleep(Duration::from_secs(1)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let outcome = match self.role {
                Role::Typist => self.type_on(&mut client).await,
                Role::Churner => {
                    self.stay(&mut client, std::mem::replace(&mut stay, period))
                        .await
                }
            };
            client.close().await;
            match outcome {
                Ok(()) => {}
                Err(Stop::Shutdown) => return,
                Err(Stop::Lost(why)) => self
                    .shared
                    .error(&format!("ambient:disconnected:{}", short(&why))),
            }
            if let Role::Churner = self.role {
                self.shared.rejoins.fetch_add(1, Ordering::Relaxed);
            }
            let away = match self.role {
                Role::Typist => Duration::from_secs(1),
                Role::Churner => period,
            };
            if self.sleep(away).await.is_err() {
                return;
            }
        }
    }

    /// Waits `d`, or `Err` at shutdown.
    async fn sleep(&self, d: Duration) -> Result<(), Stop> {
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(Stop::Shutdown),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// Types until shutdown or a lost connection: the page's cycle of start, start, stop.
    async fn type_on(&self, client: &mut Client) -> Result<(), Stop> {
        let every = self.ambient.typing_every;
        let cycle = [("start", every), ("start", every / 2), ("stop", every / 2)];
        let mut next = Instant::now();
        for (state, pause) in cycle.iter().cycle() {
            self.read_until(client, next).await?;
            let frame = crate::chat_client::typing(&client.room, state);
            client
                .send(frame)
                .await
                .map_err(|err| Stop::Lost(err.to_string()))?;
            self.shared.typing_sent.fetch_add(1, Ordering::Relaxed);
            next += *pause;
        }
        unreachable!("the typing cycle never ends")
    }

    /// Stays joined for `period`, reading.
    async fn stay(&self, client: &mut Client, period: Duration) -> Result<(), Stop> {
        self.read_until(client, Instant::now() + period).await
    }

    /// Reads and counts frames until `until`.
    async fn read_until(&self, client: &mut Client, until: Instant) -> Result<(), Stop> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                _ = tokio::time::sleep_until(until) => return Ok(()),
                next = client.stream.next() => next,
            };
            match next {
                Some(Ok(Message::Text(text))) => match client.classify(&text) {
                    Incoming::Delivery(_) => {
                        self.shared
                            .ambient_deliveries
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Incoming::Error(code) => self.shared.error(&format!("ambient:{code}")),
                    Incoming::Closing => return Err(Stop::Lost("server_close".into())),
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => return Err(Stop::Lost("close".into())),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(Stop::Lost(err.to_string())),
            }
        }
    }
}

enum Stop {
    Shutdown,
    Lost(String),
}
