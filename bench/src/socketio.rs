//! Just enough of Socket.IO v4 over a plain websocket to measure the Node.js peer with the
//! same tool: Engine.IO packets (`0` open, `2` ping answered by `3` pong, `4` message) and
//! the Socket.IO packets inside a message (`40` connect to the main namespace, `42` event).
//! No polling transport, no binary packets, no namespaces other than `/`.

/// The path and query of a Socket.IO v4 websocket-only connection.
pub const PATH: &str = "/socket.io/?EIO=4&transport=websocket";
/// Connect to the main namespace.
pub const CONNECT: &str = "40";
/// The answer to a server ping.
pub const PONG: &str = "3";

/// One packet as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Engine.IO open, with its JSON (sid, pingInterval, …).
    Open(&'a str),
    /// Engine.IO close.
    Close,
    /// Engine.IO ping: answer with [`PONG`].
    Ping,
    /// Engine.IO pong.
    Pong,
    /// Socket.IO connect accepted (`40{"sid":…}`).
    Connected,
    /// Socket.IO disconnect (`41`).
    Disconnect,
    /// Socket.IO event (`42[…]`): its name and the whole JSON array.
    Event { name: &'a str, array: &'a str },
    /// Socket.IO connect refused (`44{…}`).
    ConnectError(&'a str),
    /// Anything else (acks, binary packets, noop, other namespaces).
    Other,
}

/// Parses one websocket text frame.
pub fn parse(frame: &str) -> Packet<'_> {
    let bytes = frame.as_bytes();
    match bytes.first() {
        Some(b'0') => Packet::Open(&frame[1..]),
        Some(b'1') => Packet::Close,
        Some(b'2') => Packet::Ping,
        Some(b'3') => Packet::Pong,
        Some(b'4') => parse_socketio(&frame[1..]),
        _ => Packet::Other,
    }
}

fn parse_socketio(packet: &str) -> Packet<'_> {
    let rest = packet.get(1..).unwrap_or_default();
    match packet.as_bytes().first() {
        Some(b'0') if rest.is_empty() || rest.starts_with('{') => Packet::Connected,
        Some(b'1') => Packet::Disconnect,
        Some(b'2') => {
            // An optional ack id (digits) comes before the array.
            let array = rest.trim_start_matches(|c: char| c.is_ascii_digit());
            match event_name(array) {
                Some(name) => Packet::Event { name, array },
                None => Packet::Other,
            }
        }
        Some(b'4') => Packet::ConnectError(rest),
        _ => Packet::Other,
    }
}

/// The first element of an event array: its name (names never need escapes here).
fn event_name(array: &str) -> Option<&str> {
    let inner = array.strip_prefix("[\"")?;
    let end = inner.find('"')?;
    Some(&inner[..end])
}

/// An event packet with one string argument: `42["<name>","<text>"]`.
pub fn event(name: &str, text: &str) -> String {
    let text = serde_json::to_string(text).expect("a string always serialises");
    format!("42[\"{name}\",{text}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_io_packets() {
        let open = r#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000}"#;
        assert_eq!(parse(open), Packet::Open(&open[1..]));
        assert_eq!(parse("2"), Packet::Ping);
        assert_eq!(parse("3"), Packet::Pong);
        assert_eq!(parse("1"), Packet::Close);
        assert_eq!(parse(""), Packet::Other);
        assert_eq!(parse("6"), Packet::Other);
    }

    #[test]
    fn socket_io_packets() {
        assert_eq!(parse(r#"40{"sid":"xyz"}"#), Packet::Connected);
        assert_eq!(parse("40"), Packet::Connected);
        assert_eq!(parse("40/admin,"), Packet::Other);
        assert_eq!(parse("41"), Packet::Disconnect);
        assert_eq!(
            parse(r#"44{"message":"nope"}"#),
            Packet::ConnectError(r#"{"message":"nope"}"#)
        );
        let frame = r#"42["message",{"text":"hi","date":"2026-01-01T00:00:00.000Z"}]"#;
        assert_eq!(
            parse(frame),
            Packet::Event {
                name: "message",
                array: &frame[2..]
            }
        );
        assert!(matches!(
            parse(r#"4212["message","x"]"#),
            Packet::Event {
                name: "message",
                ..
            }
        ));
        assert_eq!(parse("42oops"), Packet::Other);
    }

    #[test]
    fn events_are_encoded_as_json() {
        assert_eq!(event("message", "hi"), r#"42["message","hi"]"#);
        assert_eq!(event("message", "a\"b"), r#"42["message","a\"b"]"#);
        let frame = event("message", "bench:1:2:3:4:5:xx");
        assert!(matches!(
            parse(&frame),
            Packet::Event {
                name: "message",
                ..
            }
        ));
    }
}
