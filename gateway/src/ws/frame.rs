//! The websocket wire format (RFC 6455 section 5) as a server speaks it: frames it sends are
//! encoded here once, into bytes that any number of sockets can share, and frames clients
//! send are parsed here with every rule a server must enforce (masking, reserved bits,
//! control frame limits) checked before the payload is buffered.

use crate::close::{rfc6455, Close};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Frame opcodes.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Why a client's bytes are not a valid websocket stream; each maps to the close code the
/// server answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A rule of the protocol was broken (close code 1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A frame or message longer than the gateway reads at all (close code 1009).
    #[error("message of {0} bytes or more is too big")]
    TooBig(u64),
    /// A text message or close reason that is not UTF-8 (close code 1007).
    #[error("text is not valid UTF-8")]
    BadUtf8,
}

impl FrameError {
    /// The close code that tells the client what went wrong.
    pub fn close_code(&self) -> u16 {
        self.close().code
    }

    /// The close to answer with: the RFC's code and a short reason (close frames carry at
    /// most 123 bytes of reason).
    pub fn close(&self) -> Close {
        match self {
            FrameError::Protocol(what) => Close::new(rfc6455::PROTOCOL_ERROR, what),
            FrameError::TooBig(_) => Close::new(rfc6455::MESSAGE_TOO_BIG, "message too big"),
            FrameError::BadUtf8 => Close::new(rfc6455::INVALID_PAYLOAD, "text is not valid UTF-8"),
        }
    }
}

/// One frame a client sent, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Bytes,
}

/// Encodes a frame the server sends: final, unmasked, the payload after the header.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(len + 10);
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
    out.freeze()
}

/// A text frame.
pub fn text(text: &str) -> Bytes {
    encode(opcode::TEXT, text.as_bytes())
}

/// A close frame with `code` and `reason` (cut to the 123 bytes a close frame allows, at a
/// character boundary).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(opcode::CLOSE, &payload)
}

/// The answer to a ping: a pong with the same payload.
pub fn pong(payload: &[u8]) -> Bytes {
    encode(opcode::PONG, payload)
}

/// Takes one complete client frame off the front of `buf`, or returns `None` (consuming
/// nothing) if more bytes are needed. Frames longer than `max_payload` are refused as soon
/// as their header is read, before their payload is buffered.
pub fn parse(buf: &mut BytesMut, max_payload: usize) -> Result<Option<Frame>, FrameError> {
    let Some(&[b0, b1]) = buf.get(..2) else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let opcode = b0 & 0x0F;
    match opcode {
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {}
        opcode::CLOSE | opcode::PING | opcode::PONG => {
            if !fin {
                return Err(FrameError::Protocol("fragmented control frame"));
            }
            if b1 & 0x7F > 125 {
                return Err(FrameError::Protocol("control frame longer than 125 bytes"));
            }
        }
        _ => return Err(FrameError::Protocol("unknown opcode")),
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    let (len, header) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(FrameError::Protocol("payload length out of range"));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        len => (u64::from(len), 2),
    };
    if len > max_payload as u64 {
        return Err(FrameError::TooBig(len));
    }
    let len = len as usize;
    if buf.len() < header + 4 + len {
        // Room for the rest, once: a large frame then arrives without repeated growth.
        buf.reserve(header + 4 + len - buf.len());
        return Ok(None);
    }
    let mask: [u8; 4] = buf[header..header + 4].try_into().expect("4 bytes");
    buf.advance(header + 4);
    let mut payload = buf.split_to(len);
    unmask(&mut payload, mask);
    Ok(Some(Frame {
        fin,
        opcode,
        payload: payload.freeze(),
    }))
}

/// XORs the payload with the client's masking key (RFC 6455 section 5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes(chunk.try_into().expect("4 bytes")) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i];
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client frame as a browser would send it.
    pub(crate) fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn parse_all(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        parse(&mut BytesMut::from(bytes), 1 << 20)
    }

    #[test]
    fn server_frames_use_the_shortest_length_encoding() {
        assert_eq!(&text("hi")[..], b"\x81\x02hi");
        let medium = text(&"a".repeat(126));
        assert_eq!(&medium[..4], &[0x81, 126, 0, 126]);
        let large = text(&"a".repeat(70_000));
        assert_eq!(&large[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(large[2..10].try_into().unwrap()), 70_000);
        assert_eq!(
            &close(1012, "service restart")[..4],
            &[0x88, 17, 0x03, 0xF4]
        );
    }

    #[test]
    fn a_close_reason_is_cut_at_a_character_boundary_within_123_bytes() {
        let frame = close(1000, &"é".repeat(100));
        assert_eq!(frame[1], 2 + 122);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }

    #[test]
    fn unmasked_client_frames_are_a_protocol_error() {
        assert_eq!(
            parse_all(b"\x81\x02hi"),
            Err(FrameError::Protocol("client frames must be masked"))
        );
    }

    #[test]
    fn reserved_bits_unknown_opcodes_and_bad_control_frames_are_refused() {
        let mut rsv = client_frame(true, opcode::TEXT, b"x", [1, 2, 3, 4]);
        rsv[0] |= 0x40;
        assert!(matches!(parse_all(&rsv), Err(FrameError::Protocol(_))));
        let unknown = client_frame(true, 0x3, b"x", [1, 2, 3, 4]);
        assert!(matches!(parse_all(&unknown), Err(FrameError::Protocol(_))));
        let fragmented_ping = client_frame(false, opcode::PING, b"x", [1, 2, 3, 4]);
        assert!(matches!(
            parse_all(&fragmented_ping),
            Err(FrameError::Protocol(_))
        ));
        let long_ping = client_frame(true, opcode::PING, &[0; 126], [1, 2, 3, 4]);
        assert!(matches!(
            parse_all(&long_ping),
            Err(FrameError::Protocol(_))
        ));
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_from_its_header_alone() {
        let header = &client_frame(true, opcode::TEXT, &[0; 70_000], [0; 4])[..14];
        let mut buf = BytesMut::from(header);
        assert_eq!(parse(&mut buf, 65_536), Err(FrameError::TooBig(70_000)));
    }

    proptest! {
        #[test]
        fn a_masked_frame_parses_back_to_its_payload_whatever_the_split(
            payload in proptest::collection::vec(any::<u8>(), 0..70_000usize),
            mask in any::<[u8; 4]>(),
            cut in 0usize..80_000,
        ) {
            let wire = client_frame(true, opcode::BINARY, &payload, mask);
            let cut = cut.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            if cut < wire.len() {
                prop_assert_eq!(parse(&mut buf, 1 << 20).unwrap(), None);
                prop_assert_eq!(buf.len(), cut, "nothing consumed");
                buf.extend_from_slice(&wire[cut..]);
            }
            let frame = parse(&mut buf, 1 << 20).unwrap().unwrap();
            prop_assert_eq!(&frame.payload[..], &payload[..]);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = parse(&mut buf, 1024) {}
        }
    }
}
