//! One benchmark websocket client, whichever system it talks to: it connects (loopback
//! only), does the dialect's handshake (chat: `hello`, `join`, `joined`; Socket.IO: open,
//! `40`, `40`), and turns each received frame into what the benchmark cares about.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::chat_client::{self, Frame};
use crate::marker::Marker;
use crate::socketio::{self, Packet};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which protocol the system under test speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// This repository's gateways (`/ws`, docs/protocol.md).
    Chat,
    /// Socket.IO v4 over a plain websocket (the Node.js peer).
    Socketio,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Chat => "chat",
            Dialect::Socketio => "socketio",
        }
    }
}

/// What a received frame means to the benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A benchmark message was delivered.
    Delivery(Marker),
    /// A Socket.IO ping: answer with a pong now.
    Ping,
    /// The chat gateway confirmed a `say`.
    Ack,
    /// The server reported an error (its code).
    Error(String),
    /// The server ends the session.
    Closing,
    /// Presence or typing in a joined room (`presence`, `presence_diff`, `typing`).
    Ambient,
    /// Nothing to count (hello, joined, other events, pongs).
    Other,
}

/// Refuses any target but this machine: the benchmark only ever loads loopback servers.
pub fn check_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .with_context(|| format!("{url}: only ws:// (or http://) URLs are supported"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("{url}: the benchmark only targets this machine (127.0.0.0/8, localhost, ::1)");
    }
    Ok(())
}

/// The websocket URL for `base`: as given if it has a path, else with the dialect's path.
pub fn endpoint(dialect: Dialect, base: &str) -> String {
    let after_scheme = base.split_once("://").map(|x| x.1).unwrap_or(base);
    let has_path = after_scheme
        .find('/')
        .is_some_and(|i| after_scheme.len() > i + 1);
    if has_path {
        return base.to_owned();
    }
    let base = base.trim_end_matches('/');
    match dialect {
        Dialect::Chat => format!("{base}{}", chat_client::PATH),
        Dialect::Socketio => format!("{base}{}", socketio::PATH),
    }
}

/// A connected, handshaken client.
pub struct Client {
    pub dialect: Dialect,
    pub sink: SplitSink<Ws, Message>,
    pub stream: SplitStream<Ws>,
    /// The chat room this client joined (chat dialect; Socket.IO has no rooms).
    pub room: String,
}

impl Client {
    /// Connects to `url` and completes the handshake within `timeout`. `room` and `name`
    /// are what a chat client joins as, after signing in with `token` if given (a gateway
    /// in token mode); Socket.IO ignores them.
    pub async fn connect(
        dialect: Dialect,
        url: &str,
        room: &str,
        name: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        tokio::time::timeout(timeout, Self::connect_now(dialect, url, room, name, token))
            .await
            .map_err(|_| anyhow::anyhow!("handshake timed out"))?
    }

    async fn connect_now(
        dialect: Dialect,
        url: &str,
        room: &str,
        name: &str,
        token: Option<&str>,
    ) -> anyhow::Result<Self> {
        // Small buffers: the default 128 KiB read buffer per socket would make 10 000 idle
        // clients cost this tool over a gigabyte.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        let (sink, stream) = ws.split();
        let mut client = Self {
            dialect,
            sink,
            stream,
            room: room.to_owned(),
        };
        match dialect {
            Dialect::Chat => client.chat_handshake(name, token).await?,
            Dialect::Socketio => client.socketio_handshake().await?,
        }
        Ok(client)
    }

    async fn next_text(&mut self) -> anyhow::Result<String> {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
                Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Err(err.into()),
                None => bail!("connection closed during the handshake"),
            }
        }
    }

    async fn chat_handshake(&mut self, name: &str, token: Option<&str>) -> anyhow::Result<()> {
        let hello = self.next_text().await?;
        if chat_client::classify(&hello) != Frame::Hello {
            bail!("expected hello, got {hello:.80}");
        }
        if let Some(token) = token {
            self.send(chat_client::auth(token)).await?;
            loop {
                let frame = self.next_text().await?;
                match chat_client::classify(&frame) {
                    Frame::Authenticated => break,
                    Frame::Error { code } => bail!("auth refused: {code}"),
                    _ => {}
                }
            }
        }
        let join = chat_client::join(&self.room, name);
        self.send(join).await?;
        loop {
            let frame = self.next_text().await?;
            match chat_client::classify(&frame) {
                Frame::Joined => return Ok(()),
                // `unavailable`, or `history_unavailable` before a `joined` without its
                // history: either way the join did not get what it promises.
                Frame::Error { code } => bail!("join refused: {code}"),
                _ => {}
            }
        }
    }

    async fn socketio_handshake(&mut self) -> anyhow::Result<()> {
        let open = self.next_text().await?;
        if !matches!(socketio::parse(&open), Packet::Open(_)) {
            bail!("expected an Engine.IO open packet, got {open:.80}");
        }
        self.send(socketio::CONNECT.to_owned()).await?;
        loop {
            let frame = self.next_text().await?;
            match socketio::parse(&frame) {
                Packet::Connected => return Ok(()),
                Packet::Ping => self.send(socketio::PONG.to_owned()).await?,
                Packet::ConnectError(why) => bail!("connect refused: {why:.80}"),
                _ => {}
            }
        }
    }

    pub async fn send(&mut self, text: String) -> anyhow::Result<()> {
        self.sink.send(Message::text(text)).await?;
        Ok(())
    }

    /// The frame that sends `text` as a chat message in this client's room.
    pub fn say_frame(&self, text: &str) -> String {
        match self.dialect {
            Dialect::Chat => chat_client::say(&self.room, text),
            Dialect::Socketio => socketio::event("message", text),
        }
    }

    /// What a received text frame means.
    pub fn classify(&self, frame: &str) -> Incoming {
        match self.dialect {
            Dialect::Chat => match chat_client::classify(frame) {
                Frame::Event => Marker::find(frame).map_or(Incoming::Other, Incoming::Delivery),
                Frame::Ack => Incoming::Ack,
                Frame::Presence => Incoming::Ambient,
                Frame::Error { code } => Incoming::Error(code),
                _ => Incoming::Other,
            },
            Dialect::Socketio => match socketio::parse(frame) {
                Packet::Event {
                    name: "message",
                    array,
                } => Marker::find(array).map_or(Incoming::Other, Incoming::Delivery),
                Packet::Ping => Incoming::Ping,
                Packet::ConnectError(_) => Incoming::Error("connect_error".to_owned()),
                Packet::Close | Packet::Disconnect => Incoming::Closing,
                _ => Incoming::Other,
            },
        }
    }

    /// Closes politely, without waiting long for a server that is busy.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.close()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        for ok in [
            "ws://127.0.0.1:3001/ws",
            "ws://localhost:3001",
            "ws://127.0.0.2:80",
            "ws://[::1]:3001/ws",
            "http://127.0.0.1:3100",
        ] {
            assert!(check_loopback(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ws://10.0.0.1:3001",
            "ws://example.com/ws",
            "wss://127.0.0.1",
            "ws://127.0.0.1.evil.com/ws",
        ] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_dialect_path_is_added_when_missing() {
        assert_eq!(
            endpoint(Dialect::Chat, "ws://127.0.0.1:3001"),
            "ws://127.0.0.1:3001/ws"
        );
        assert_eq!(
            endpoint(Dialect::Chat, "ws://127.0.0.1:3001/ws"),
            "ws://127.0.0.1:3001/ws"
        );
        assert_eq!(
            endpoint(Dialect::Socketio, "ws://127.0.0.1:3001/"),
            "ws://127.0.0.1:3001/socket.io/?EIO=4&transport=websocket"
        );
    }
}
