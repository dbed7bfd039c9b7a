//! The sending half of a client's websocket: encoded frames (most of them shared with every
//! other member of a room) wait in a queue of byte handles and go out together in one
//! vectored write, so a burst of events costs one system call and no copying. Between
//! bursts nothing is allocated. While the writer's task waits with nothing queued, a
//! [`Direct`] handle lets the fanout write a live event itself (see `outbox`), which saves
//! the task wake-up per delivery that otherwise costs more than the write.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use tokio::net::tcp::OwnedWriteHalf;

/// Most slices handed to one `writev`.
const MAX_SLICES: usize = 64;

/// Writes frames to one client.
#[derive(Debug)]
pub struct Writer {
    socket: Arc<OwnedWriteHalf>,
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
}

impl Writer {
    pub fn new(socket: OwnedWriteHalf) -> Self {
        Self {
            socket: Arc::new(socket),
            pending: VecDeque::new(),
            pending_bytes: 0,
        }
    }

    /// A handle that writes to the same socket. The caller makes sure that only one of
    /// them writes at a time and that nothing is pending here while the handle is used.
    pub fn direct(&self) -> Direct {
        Direct(self.socket.clone())
    }

    /// Queues an encoded frame; [`Writer::flush`] sends it.
    pub fn push(&mut self, frame: Bytes) {
        self.pending_bytes += frame.len();
        self.pending.push_back(frame);
    }

    /// Frames (or parts of frames) queued and not yet written.
    pub fn pending_frames(&self) -> usize {
        self.pending.len()
    }

    /// Bytes queued and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Writes everything queued. Cancel-safe: what was not written stays queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.pending_bytes > 0 {
            // Written straight away; readiness is awaited only when the socket is full.
            match self.write_some() {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.consume(written),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.socket.writable().await?;
                }
                Err(err) => return Err(err),
            }
        }
        if self.pending.capacity() > MAX_SLICES {
            // A burst grew the queue: give the memory back now that it is empty.
            self.pending = VecDeque::new();
        }
        Ok(())
    }

    /// One non-blocking write of the queue's head: a plain `send` for a single frame (the
    /// common case below saturation), else one `writev`.
    fn write_some(&self) -> io::Result<usize> {
        if let [only] = self.pending.as_slices().0 {
            if self.pending.len() == 1 {
                return self.socket.try_write(only);
            }
        }
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let mut count = 0;
        for (slot, frame) in slices.iter_mut().zip(&self.pending) {
            *slot = IoSlice::new(frame);
            count += 1;
        }
        self.socket.try_write_vectored(&slices[..count])
    }

    /// Drops `written` bytes off the front of the queue.
    fn consume(&mut self, mut written: usize) {
        self.pending_bytes -= written;
        while written > 0 {
            let front = self.pending.front_mut().expect("written bytes were queued");
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.pending.pop_front();
        }
    }
}

/// Writes a frame to a client's socket from outside its writer, without waiting: what the
/// socket does not take now is handed back, to go through the writer.
#[derive(Debug, Clone)]
pub struct Direct(Arc<OwnedWriteHalf>);

/// What became of a frame given to [`Direct::write`].
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// All of it is in the socket.
    All,
    /// The socket took part of it: this much, from the end of the frame, is still to go.
    Rest(Bytes),
    /// The socket is full: none of it was written.
    Nothing,
    /// The connection is broken.
    Failed,
}

impl Direct {
    /// Writes as much of `frame` as the socket takes now.
    pub fn write(&self, frame: &Bytes) -> Written {
        match self.0.try_write(frame) {
            Ok(n) if n == frame.len() => Written::All,
            Ok(0) => Written::Failed,
            Ok(n) => Written::Rest(frame.slice(n..)),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Written::Nothing,
            Err(_) => Written::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn frames_larger_than_the_socket_buffer_arrive_whole_and_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        let mut writer = Writer::new(write);
        let mut expected = Vec::new();
        // More frames than one writev takes, and more bytes than the socket buffers, so
        // that writes are partial and the reader below has to make room.
        for i in 0..200u32 {
            let frame = Bytes::from(vec![(i % 251) as u8; 1000 + i as usize * 97]);
            expected.extend_from_slice(&frame);
            writer.push(frame);
        }
        let total = expected.len();
        let read = tokio::spawn(async move {
            let mut received = vec![0; total];
            client.read_exact(&mut received).await.unwrap();
            received
        });
        writer.flush().await.unwrap();
        assert_eq!(writer.pending_bytes(), 0);
        assert_eq!(read.await.unwrap(), expected);
    }
}
