//! Our own websocket layer for client connections (RFC 6455, server side, no extensions).
//! A general-purpose library keeps a read and a write buffer per connection and encodes
//! every message for every socket; a chat gateway sends the same event to hundreds of
//! sockets and holds thousands of idle ones. Here an event is encoded into a frame once
//! (`frame::text`) and the bytes are shared by every socket that sends it, written with one
//! vectored write per burst, and an idle connection holds no buffers at all. The upgrade
//! itself is in `upgrade.rs`; the per-client protocol in `connection.rs`.

pub mod frame;
pub mod reader;
pub mod writer;

pub use reader::{Incoming, ReadError, Reader};
pub use writer::{Direct, Writer, Written};

use base64::Engine;
use sha1::{Digest, Sha1};

/// The `Sec-WebSocket-Accept` answer to a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_accept_key_is_the_one_from_rfc_6455() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
