//! The least of RFC 6455 a server needs to talk to the benchmark's clients: the upgrade
//! (read the request, answer 101 with the accept key), decoding the clients' masked
//! frames, and encoding unmasked server frames. No extensions, no fragmented messages
//! (the benchmark's clients send neither).

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest upgrade request accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// Largest client frame accepted (the benchmark's `say` frames are a few hundred bytes).
pub const MAX_PAYLOAD: u64 = 64 * 1024;

pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Reads the upgrade request and answers it. Returns any bytes the client sent after the
/// request (the start of its first frame), which the caller must parse first.
pub async fn accept(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() >= MAX_REQUEST {
            return Err(invalid("upgrade request too large"));
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let request =
        std::str::from_utf8(&buf[..end]).map_err(|_| invalid("upgrade request not UTF-8"))?;
    let key = websocket_key(request).ok_or_else(|| invalid("no Sec-WebSocket-Key"))?;
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(reply.as_bytes()).await?;
    Ok(buf.split_off(end))
}

/// The `Sec-WebSocket-Key` of a GET upgrade request.
fn websocket_key(request: &str) -> Option<&str> {
    let mut lines = request.split("\r\n");
    if !lines.next()?.starts_with("GET ") {
        return None;
    }
    lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim())
    })
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

/// One decoded client frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Decodes the first frame of `buf`: `Ok(None)` if it is not complete yet, else the frame
/// and how many bytes it took. Client frames must be masked, final and not too large.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, &'static str> {
    let [first, second, rest @ ..] = buf else {
        return Ok(None);
    };
    if first & 0x80 == 0 || first & 0x70 != 0 {
        return Err("fragmented frames and extensions are not spoken here");
    }
    if second & 0x80 == 0 {
        return Err("client frames must be masked");
    }
    let (len, header) = match second & 0x7F {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 4),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(bytes) => (
                u64::from_be_bytes(bytes.try_into().expect("eight bytes")),
                10,
            ),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > MAX_PAYLOAD {
        return Err("frame too large");
    }
    let start = header + 4;
    let total = start + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let mask = &buf[header..start];
    let payload = buf[start..total]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Ok(Some((
        Frame {
            opcode: first & 0x0F,
            payload,
        },
        total,
    )))
}

/// An unmasked, final server frame.
pub fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => frame.push(n as u8),
        n @ 126..=0xFFFF => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut frame = encode(opcode, payload);
        let header = frame.len() - payload.len();
        frame[1] |= 0x80;
        let body: Vec<u8> = payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        frame.truncate(header);
        frame.extend_from_slice(&mask);
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn masked_frames_of_every_length_form_decode_whole_and_only_when_complete() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let opcode = if len % 2 == 0 { OP_TEXT } else { OP_PING };
            let mut wire = masked(opcode, &payload);
            if len as u64 > MAX_PAYLOAD {
                assert_eq!(decode(&wire), Err("frame too large"));
                continue;
            }
            assert_eq!(decode(&wire[..wire.len() - 1]), Ok(None));
            wire.extend_from_slice(b"next");
            let (frame, used) = decode(&wire).unwrap().unwrap();
            assert_eq!(used, wire.len() - 4);
            assert_eq!(frame, Frame { opcode, payload });
        }
    }

    #[test]
    fn unmasked_or_fragmented_client_frames_are_refused() {
        assert!(decode(&encode(OP_TEXT, b"hi")).is_err());
        let mut fragment = masked(OP_TEXT, b"hi");
        fragment[0] &= 0x7F;
        assert!(decode(&fragment).is_err());
    }

    #[test]
    fn the_key_is_found_whatever_the_header_case() {
        let request =
            "GET /ws HTTP/1.1\r\nHost: x\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(websocket_key(request), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(websocket_key("POST / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
