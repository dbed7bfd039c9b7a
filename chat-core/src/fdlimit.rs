//! Open-file limits. Every socket is a file descriptor, and the common default soft limit
//! (1 024) is far below what a gateway holds: each service raises its soft `RLIMIT_NOFILE`
//! to the hard limit at start, as Go's runtime and nginx's `worker_rlimit_nofile` do, and
//! logs what it got, so an operator sees the real ceiling instead of meeting it as
//! `Too many open files`.

/// Descriptors kept aside for everything that is not a client: the listener, broker
/// connections, log and database files, the runtime's own (epoll, eventfd), and sockets in
/// their HTTP handshake beyond the websocket count.
pub const RESERVED: u64 = 128;

/// The process's open-file limit after trying to raise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit in force now: what the process can really open.
    pub soft: u64,
    /// The hard limit: the most the soft limit could be raised to.
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard one (where the platform allows) and returns
/// the limit in force, logging it. A failure to raise is logged and the old limit kept.
pub fn raise() -> FileLimit {
    let (soft, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the open-file limit");
            return FileLimit {
                soft: u64::MAX,
                hard: u64::MAX,
            };
        }
    };
    let limit = match rlimit::increase_nofile_limit(hard) {
        Ok(raised) => FileLimit { soft: raised, hard },
        Err(err) => {
            tracing::warn!(error = %err, soft, hard, "cannot raise the open-file limit");
            FileLimit { soft, hard }
        }
    };
    tracing::info!(
        soft = limit.soft,
        hard = limit.hard,
        was = soft,
        "open-file limit"
    );
    limit
}

impl FileLimit {
    /// How many client connections fit beside [`RESERVED`] descriptors and `handshakes`
    /// connections still in their HTTP phase.
    pub fn connections(&self, handshakes: usize) -> u64 {
        self.soft
            .saturating_sub(RESERVED)
            .saturating_sub(handshakes as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_room_for_handshakes_and_the_reserve() {
        let limit = FileLimit {
            soft: 1024,
            hard: 4096,
        };
        assert_eq!(limit.connections(256), 1024 - RESERVED - 256);
        assert_eq!(limit.connections(4096), 0);
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let (before, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        let limit = raise();
        assert!(limit.soft >= before);
        assert!(limit.soft <= limit.hard);
    }
}
