//! The websocket handshake refused the way RFC 6455 section 4.2.2 asks: for each kind of
//! request that is not upgraded, the HTTP status, the headers that tell the client what
//! would work, and the JSON error body. Raw HTTP over a real socket, against a gateway
//! linked to the real broker.

mod support;

use std::net::SocketAddr;

use chat_core::testkit::{unique_prefix, Broker};
use serde_json::Value;
use support::{start_gateway, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A valid key (the RFC's example) and the headers of a valid handshake, minus `omit`.
fn handshake(addr: SocketAddr, method: &str, replace: &[(&str, &str)]) -> String {
    let mut headers = vec![
        ("Host", addr.to_string()),
        ("Upgrade", "websocket".to_owned()),
        ("Connection", "Upgrade".to_owned()),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
        ("Sec-WebSocket-Version", "13".to_owned()),
    ];
    for (name, value) in replace {
        headers.retain(|(n, _)| n != name);
        if !value.is_empty() {
            headers.push((name, (*value).to_owned()));
        }
    }
    let mut request = format!("{method} /ws HTTP/1.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// The answer to `request`: status, lower-cased headers, and the JSON body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

async fn send(addr: SocketAddr, request: &str) -> Answer {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, socket.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        raw.extend_from_slice(&chunk[..n]);
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
    };
    let head = String::from_utf8(raw[..head_end].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .expect("a JSON body with a length");
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, socket.read(&mut chunk))
            .await
            .expect("the body in time")
            .unwrap();
        assert!(n > 0, "closed inside the body");
        body.extend_from_slice(&chunk[..n]);
    }
    Answer {
        status: status.parse().unwrap(),
        headers,
        body: serde_json::from_slice(&body).expect("a JSON body"),
    }
}

/// Runs `check` against a fresh gateway started with `args`, and cleans up after.
async fn with_gateway(name: &str, args: &[&str], check: impl AsyncFnOnce(SocketAddr)) {
    let prefix = unique_prefix(name);
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(&prefix, args).await;
    check(gateway.addr()).await;
    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_handshake_with_another_method_gets_405_with_allow_get() {
    with_gateway("hs-method", &[], async |addr| {
        let answer = send(addr, &handshake(addr, "POST", &[("Content-Length", "0")])).await;
        assert_eq!(answer.status, 405);
        assert_eq!(answer.header("allow"), Some("GET"));
        assert_eq!(answer.code(), "method_not_allowed");
    })
    .await;
}

#[tokio::test]
async fn a_plain_get_of_the_websocket_path_gets_426_naming_the_upgrade() {
    with_gateway("hs-plain", &[], async |addr| {
        let plain = format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let answer = send(addr, &plain).await;
        assert_eq!(answer.status, 426);
        assert_eq!(answer.header("upgrade"), Some("websocket"));
        assert_eq!(answer.header("sec-websocket-version"), Some("13"));
        assert_eq!(answer.code(), "not_a_websocket");

        let answer = send(
            addr,
            &handshake(addr, "GET", &[("Connection", "keep-alive")]),
        )
        .await;
        assert_eq!(answer.status, 426, "Connection without the upgrade token");
    })
    .await;
}

#[tokio::test]
async fn a_handshake_of_another_version_gets_426_with_the_supported_version() {
    with_gateway("hs-version", &[], async |addr| {
        for version in ["8", ""] {
            let answer = send(
                addr,
                &handshake(addr, "GET", &[("Sec-WebSocket-Version", version)]),
            )
            .await;
            assert_eq!(answer.status, 426, "version {version:?}");
            assert_eq!(answer.header("sec-websocket-version"), Some("13"));
            assert_eq!(answer.code(), "unsupported_websocket_version");
        }
    })
    .await;
}

#[tokio::test]
async fn a_handshake_without_a_valid_key_gets_400() {
    with_gateway("hs-key", &[], async |addr| {
        for key in [
            "",
            "not base64 at all",
            "c2hvcnQ=",
            "dGhlIHNhbXBsZSBub25jZR==",
        ] {
            let answer = send(addr, &handshake(addr, "GET", &[("Sec-WebSocket-Key", key)])).await;
            assert_eq!(answer.status, 400, "key {key:?}");
            assert_eq!(answer.code(), "bad_handshake");
        }
    })
    .await;
}

#[tokio::test]
async fn a_handshake_without_a_host_gets_400() {
    with_gateway("hs-host", &[], async |addr| {
        let answer = send(addr, &handshake(addr, "GET", &[("Host", "")])).await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.code(), "bad_handshake", "{}", answer.body);
    })
    .await;
}

#[tokio::test]
async fn a_handshake_from_a_foreign_origin_gets_403() {
    with_gateway("hs-origin", &[], async |addr| {
        let request = handshake(addr, "GET", &[("Origin", "https://evil.example")]);
        let answer = send(addr, &request).await;
        assert_eq!(answer.status, 403);
        assert_eq!(answer.code(), "forbidden_origin");
    })
    .await;
}

/// With one websocket held open under `args`, a second handshake is refused with 503,
/// `Retry-After` and `code`.
async fn the_second_websocket_is_refused(name: &str, args: &[&str], code: &str) {
    with_gateway(name, args, async |addr| {
        let held = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("the first websocket fits");
        let answer = send(addr, &handshake(addr, "GET", &[])).await;
        assert_eq!(answer.status, 503);
        assert_eq!(answer.header("retry-after"), Some("5"));
        assert_eq!(answer.code(), code);
        drop(held);
    })
    .await;
}

#[tokio::test]
async fn a_handshake_to_a_full_gateway_gets_503_with_retry_after() {
    the_second_websocket_is_refused(
        "hs-full",
        &["--max-connections", "1"],
        "too_many_connections",
    )
    .await;
}

#[tokio::test]
async fn a_handshake_over_the_per_address_cap_gets_503_with_retry_after() {
    the_second_websocket_is_refused(
        "hs-address",
        &["--max-connections-per-ip", "1"],
        "too_many_connections_from_address",
    )
    .await;
}

#[tokio::test]
async fn a_valid_handshake_is_answered_with_the_accept_key() {
    with_gateway("hs-valid", &[], async |addr| {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(handshake(addr, "GET", &[]).as_bytes())
            .await
            .unwrap();
        let mut raw = Vec::new();
        while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, socket.read(&mut chunk))
                .await
                .expect("an answer in time")
                .unwrap();
            assert!(n > 0);
            raw.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="));
    })
    .await;
}
