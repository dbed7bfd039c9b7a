//! The receiving half of a client's websocket: bytes from the socket become whole messages
//! (fragments joined, text checked to be UTF-8). An idle connection holds no read buffer at
//! all: the socket is read into a stack chunk once it is readable, and only a frame split
//! across reads is kept on the heap until its end arrives.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::net::tcp::OwnedReadHalf;

use super::frame::{self, opcode, FrameError};

/// Bytes read from the socket per system call.
const CHUNK: usize = 4096;

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary(Bytes),
    /// Answer with a pong carrying the same payload.
    Ping(Bytes),
    /// The answer to one of our pings (or an unsolicited heartbeat): proof of life.
    Pong,
    /// The client started the closing handshake (its code, if it gave one).
    Close(Option<u16>),
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("websocket read failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads messages from one client.
#[derive(Debug)]
pub struct Reader {
    socket: OwnedReadHalf,
    /// Bytes read but not yet parsed: empty (and unallocated) between messages.
    buf: BytesMut,
    /// The data frames of a fragmented message so far, and its opcode.
    fragments: Option<(u8, BytesMut)>,
    /// Longest message (and frame) read at all; longer ones end the connection with 1009.
    max_message: usize,
}

impl Reader {
    /// A reader over `socket`, starting with `pending`: bytes the HTTP layer read past the
    /// handshake.
    pub fn new(socket: OwnedReadHalf, pending: Bytes, max_message: usize) -> Self {
        Self {
            socket,
            buf: BytesMut::from(&pending[..]),
            fragments: None,
            max_message,
        }
    }

    /// The next message; `Ok(None)` when the client closed the connection without a close
    /// frame. Cancel-safe: bytes read stay buffered in `self`.
    pub async fn next(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            if let Some(message) = self.take_message()? {
                return Ok(Some(message));
            }
            self.socket.readable().await?;
            match self.fill() {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Reads what the socket has into the buffer.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; CHUNK];
        let n = self.socket.try_read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Parses buffered frames until a message is complete or more bytes are needed.
    fn take_message(&mut self) -> Result<Option<Incoming>, FrameError> {
        loop {
            let Some(frame) = frame::parse(&mut self.buf, self.max_message)? else {
                return Ok(None);
            };
            if self.buf.is_empty() {
                // Give the allocation back: an idle client keeps no buffer.
                self.buf = BytesMut::new();
            }
            if let Some(message) = self.assemble(frame)? {
                return Ok(Some(message));
            }
        }
    }

    /// Adds one frame to the message in progress; returns the message once complete.
    fn assemble(&mut self, frame: frame::Frame) -> Result<Option<Incoming>, FrameError> {
        match frame.opcode {
            opcode::PING => Ok(Some(Incoming::Ping(frame.payload))),
            opcode::PONG => Ok(Some(Incoming::Pong)),
            opcode::CLOSE => close_code(&frame.payload).map(|code| Some(Incoming::Close(code))),
            opcode::CONTINUATION => {
                let Some((_, body)) = self.fragments.as_mut() else {
                    return Err(FrameError::Protocol("continuation without a message"));
                };
                let total = body.len() + frame.payload.len();
                if total > self.max_message {
                    return Err(FrameError::TooBig(total as u64));
                }
                body.extend_from_slice(&frame.payload);
                if !frame.fin {
                    return Ok(None);
                }
                let (opcode, body) = self.fragments.take().expect("checked above");
                message(opcode, body.freeze()).map(Some)
            }
            data => {
                if self.fragments.is_some() {
                    return Err(FrameError::Protocol("new message inside a fragmented one"));
                }
                if frame.fin {
                    return message(data, frame.payload).map(Some);
                }
                self.fragments = Some((data, BytesMut::from(&frame.payload[..])));
                Ok(None)
            }
        }
    }
}

fn message(opcode: u8, body: Bytes) -> Result<Incoming, FrameError> {
    if opcode == opcode::BINARY {
        return Ok(Incoming::Binary(body));
    }
    String::from_utf8(Vec::from(body))
        .map(Incoming::Text)
        .map_err(|_| FrameError::BadUtf8)
}

/// The status code of a close frame: none, or two bytes and a UTF-8 reason. Codes that
/// may not be sent (RFC 6455 section 7.4: below 1000, the reserved 1004-1006 and 1015, the
/// unassigned 1016-2999) are a protocol error.
fn close_code(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(FrameError::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| FrameError::BadUtf8)?;
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::tests::client_frame;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A reader on one end of a real TCP connection and the client's end.
    async fn pair(max: usize) -> (Reader, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, _write) = server.into_split();
        (Reader::new(read, Bytes::new(), max), client)
    }

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[tokio::test]
    async fn fragments_become_one_message_and_control_frames_may_come_between_them() {
        let (mut reader, mut client) = pair(1024).await;
        let mut wire = client_frame(false, opcode::TEXT, "héllo, ".as_bytes(), MASK);
        wire.extend(client_frame(true, opcode::PING, b"p", MASK));
        wire.extend(client_frame(false, opcode::CONTINUATION, b"wor", MASK));
        wire.extend(client_frame(true, opcode::PONG, b"", MASK));
        wire.extend(client_frame(true, opcode::CONTINUATION, b"ld", MASK));
        // Byte by byte, so that every frame is split across reads.
        for byte in wire {
            client.write_all(&[byte]).await.unwrap();
        }
        let ping = reader.next().await.unwrap();
        assert_eq!(ping, Some(Incoming::Ping(Bytes::from_static(b"p"))));
        assert_eq!(reader.next().await.unwrap(), Some(Incoming::Pong));
        let text = reader.next().await.unwrap();
        assert_eq!(text, Some(Incoming::Text("héllo, world".into())));
    }

    #[tokio::test]
    async fn invalid_utf8_and_oversized_messages_get_their_close_codes() {
        let (mut reader, mut client) = pair(1024).await;
        let bad = client_frame(true, opcode::TEXT, &[0xff, 0xfe], MASK);
        client.write_all(&bad).await.unwrap();
        let err = reader.next().await.unwrap_err();
        assert!(
            matches!(err, ReadError::Frame(ref e) if e.close_code() == 1007),
            "{err}"
        );

        let (mut reader, mut client) = pair(1024).await;
        let mut wire = client_frame(false, opcode::TEXT, &[b'a'; 600], MASK);
        wire.extend(client_frame(true, opcode::CONTINUATION, &[b'a'; 600], MASK));
        client.write_all(&wire).await.unwrap();
        let err = reader.next().await.unwrap_err();
        assert!(
            matches!(err, ReadError::Frame(ref e) if e.close_code() == 1009),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_close_frame_and_then_the_end_of_the_stream_are_reported() {
        let (mut reader, mut client) = pair(1024).await;
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"going away");
        client
            .write_all(&client_frame(true, opcode::CLOSE, &payload, MASK))
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Incoming::Close(Some(1001)))
        );
        assert_eq!(reader.next().await.unwrap(), None);
    }

    #[test]
    fn close_codes_that_may_not_be_sent_are_a_protocol_error() {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let payload = code.to_be_bytes();
            assert!(
                matches!(close_code(&payload), Err(FrameError::Protocol(_))),
                "{code}"
            );
        }
        for code in [1000u16, 1001, 1008, 1012, 3000, 4008, 4999] {
            assert_eq!(close_code(&code.to_be_bytes()), Ok(Some(code)));
        }
    }

    #[tokio::test]
    async fn a_continuation_without_a_message_is_a_protocol_error() {
        let (mut reader, mut client) = pair(1024).await;
        let wire = client_frame(true, opcode::CONTINUATION, b"x", MASK);
        client.write_all(&wire).await.unwrap();
        let err = reader.next().await.unwrap_err();
        assert!(
            matches!(err, ReadError::Frame(ref e) if e.close_code() == 1002),
            "{err}"
        );
    }
}
