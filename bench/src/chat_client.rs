//! The chat system's client protocol (docs/protocol.md), as far as the benchmark speaks it:
//! in token mode `auth` first and wait for `authenticated`, `join` a room and wait for
//! `joined`, `say` in it, and tell the server's frames apart cheaply (a receiver sees tens
//! of thousands per second, so only errors are parsed fully).

use serde_json::json;

/// The path of the chat websocket.
pub const PATH: &str = "/ws";

/// How long a benchmark token is valid: longer than any run.
const TOKEN_TTL_S: i64 = 6 * 3600;

/// A token for `sub` that a gateway in `AUTH_MODE=token` with `AUTH_SECRET=secret` accepts
/// (HS256, as `gateway token` mints them; the display name is the subject).
pub fn token(secret: &str, sub: &str) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let claims = json!({"sub": sub, "name": sub, "iat": now, "exp": now + TOKEN_TTL_S});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// `auth`: the first frame in token mode.
pub fn auth(token: &str) -> String {
    json!({"type": "auth", "token": token}).to_string()
}

/// `join` without `since`: the gateway answers `joined` with the room's latest history.
pub fn join(room: &str, name: &str) -> String {
    json!({"type": "join", "room": room, "name": name}).to_string()
}

/// `say` without `ref`: the ack then carries only the event id.
pub fn say(room: &str, text: &str) -> String {
    json!({"type": "say", "room": room, "text": text}).to_string()
}

/// `typing` with `state` `start` or `stop` (no ack comes back).
pub fn typing(room: &str, state: &str) -> String {
    json!({"type": "typing", "room": room, "state": state}).to_string()
}

/// A server frame, by its `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello,
    /// The answer to a valid `auth`.
    Authenticated,
    Joined,
    /// Something happened in a joined room: look for a benchmark marker in the frame.
    Event,
    Ack,
    Left,
    /// `presence`, `presence_diff` or `typing`: who is online or typing in a joined room.
    Presence,
    Error {
        code: String,
    },
    Other,
}

/// Classifies a server frame. The gateway writes `type` first, so the common frames are
/// recognised by their first bytes; anything else is parsed as JSON.
pub fn classify(frame: &str) -> Frame {
    let by_prefix = frame
        .strip_prefix(r#"{"type":""#)
        .and_then(|rest| rest.split_once('"'))
        .map(|(kind, _)| kind);
    let kind = match by_prefix {
        Some(kind) if kind != "error" => kind.to_owned(),
        _ => {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(frame) else {
                return Frame::Other;
            };
            let kind = value["type"].as_str().unwrap_or_default().to_owned();
            if kind == "error" {
                let code = value["code"].as_str().unwrap_or("unknown").to_owned();
                return Frame::Error { code };
            }
            kind
        }
    };
    match kind.as_str() {
        "hello" => Frame::Hello,
        "authenticated" => Frame::Authenticated,
        "joined" => Frame::Joined,
        "event" => Frame::Event,
        "ack" => Frame::Ack,
        "left" => Frame::Left,
        "presence" | "presence_diff" | "typing" => Frame::Presence,
        _ => Frame::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_are_told_apart() {
        assert_eq!(
            classify(r#"{"type":"hello","gateway":"gw-1","limits":{}}"#),
            Frame::Hello
        );
        assert_eq!(
            classify(r#"{"type":"joined","room":"a","history":[]}"#),
            Frame::Joined
        );
        assert_eq!(
            classify(r#"{"type":"event","event":{"type":"message"}}"#),
            Frame::Event
        );
        assert_eq!(classify(r#"{"type":"ack","id":"x"}"#), Frame::Ack);
        assert_eq!(
            classify(r#"{"type":"authenticated","user":"r1","name":"r1"}"#),
            Frame::Authenticated
        );
        assert_eq!(
            classify(r#"{"type":"error","code":"rate_limited","message":"slow down"}"#),
            Frame::Error {
                code: "rate_limited".into()
            }
        );
        assert_eq!(
            classify(r#"{"code":"unavailable","type":"error"}"#),
            Frame::Error {
                code: "unavailable".into()
            }
        );
        for ambient in [
            r#"{"type":"presence","room":"a","count":5234}"#,
            r#"{"type":"presence_diff","room":"a","joins":[],"leaves":["c"]}"#,
            r#"{"type":"typing","room":"a","users":["b"],"names":["B"],"ttl_ms":6000}"#,
        ] {
            assert_eq!(classify(ambient), Frame::Presence, "{ambient}");
        }
        assert_eq!(classify("not json"), Frame::Other);
    }

    #[test]
    fn client_frames_are_json() {
        let v: serde_json::Value = serde_json::from_str(&say("r1", "a\"b")).unwrap();
        assert_eq!(v["type"], "say");
        assert_eq!(v["text"], "a\"b");
        let v: serde_json::Value = serde_json::from_str(&join("r1", "alice")).unwrap();
        assert_eq!(v["name"], "alice");
        let v: serde_json::Value = serde_json::from_str(&typing("r1", "stop")).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["state"].as_str()),
            (Some("typing"), Some("stop"))
        );
        let v: serde_json::Value = serde_json::from_str(&auth("a.b.c")).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["token"].as_str()),
            (Some("auth"), Some("a.b.c"))
        );
    }

    #[test]
    fn a_token_is_a_signed_jwt_naming_its_subject() {
        let secret = "0123456789abcdef0123456789abcdef";
        let token = token(secret, "r7").unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "r7");
        assert_eq!(data.claims["name"], "r7");
    }
}
