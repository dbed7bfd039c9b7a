//! The sending side of one floor connection, in the two shapes the floor measures:
//! **per delivery**, the task that fans a message out writes it to each socket itself, one
//! `send` per delivery, and a connection's writer task runs only when a socket is full;
//! **per burst**, frames are queued and the connection's writer task wakes once per burst
//! (after the optional delay) and writes everything queued in one `writev`.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

/// How frames reach the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One write per delivery, from the task that fans the message out.
    Delivery,
    /// Frames are queued; the connection's writer writes each burst in one write.
    Burst,
}

/// Most slices handed to one `writev`.
const MAX_SLICES: usize = 64;

/// One connection's sending half.
pub struct Out {
    socket: OwnedWriteHalf,
    queue: Mutex<Queue>,
    /// Wakes the writer task: something was queued, or the connection ended.
    wake: Notify,
    mode: Mode,
    /// Per burst: how long the writer waits after the first frame of a burst.
    delay: Duration,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// The socket failed or the connection ended: frames are dropped.
    closed: bool,
}

impl Out {
    pub fn new(socket: OwnedWriteHalf, mode: Mode, delay: Duration) -> Self {
        Self {
            socket,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            mode,
            delay,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `frame` (shared with every other recipient): per delivery, written now unless
    /// earlier frames still wait; per burst, queued for the writer.
    pub fn send(&self, frame: Bytes) {
        let mut queue = self.lock();
        if queue.closed {
            return;
        }
        if self.mode == Mode::Delivery && queue.frames.is_empty() {
            match self.socket.try_write(&frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => queue.frames.push_back(frame.slice(n..)),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    queue.frames.push_back(frame)
                }
                Err(_) => {
                    queue.closed = true;
                    return;
                }
            }
            drop(queue);
            self.wake.notify_one();
            return;
        }
        let first = queue.frames.is_empty();
        queue.frames.push_back(frame);
        drop(queue);
        if first {
            self.wake.notify_one();
        }
    }

    /// Ends the connection's writer.
    pub fn close(&self) {
        let dropped = {
            let mut queue = self.lock();
            queue.closed = true;
            std::mem::take(&mut queue.frames)
        };
        drop(dropped);
        self.wake.notify_one();
    }

    /// The writer task: waits to be woken, then writes what is queued until it is empty.
    pub async fn write_loop(&self) {
        loop {
            self.wake.notified().await;
            if self.mode == Mode::Burst && !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            if self.flush().await.is_err() {
                self.close();
            }
            if self.lock().closed {
                return;
            }
        }
    }

    async fn flush(&self) -> io::Result<()> {
        while !self.write_some()? {
            self.socket.writable().await?;
        }
        Ok(())
    }

    /// Writes from the head of the queue until it is empty (true) or the socket is full
    /// (false).
    fn write_some(&self) -> io::Result<bool> {
        let mut queue = self.lock();
        loop {
            if queue.closed || queue.frames.is_empty() {
                return Ok(true);
            }
            let written = if queue.frames.len() == 1 {
                self.socket.try_write(&queue.frames[0])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let count = slices.len().min(queue.frames.len());
                for (slot, frame) in slices.iter_mut().zip(&queue.frames) {
                    *slot = IoSlice::new(frame);
                }
                self.socket.try_write_vectored(&slices[..count])
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    while n > 0 {
                        let front = queue.frames.front_mut().expect("written bytes were queued");
                        if n < front.len() {
                            front.advance(n);
                            break;
                        }
                        n -= front.len();
                        queue.frames.pop_front();
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) => return Err(err),
            }
        }
    }
}
