//! The event log on the broker, `<prefix>.log`: a RabbitMQ stream bound to the events
//! exchange that keeps every event, in the order the broker appended it, for a bounded age
//! and size. This module says how long it keeps them ([`LogRetention`], the archiver's
//! settings, since the archiver declares it) and where a reader starts ([`StartAt`]);
//! reading it is [`crate::replay`].
//!
//! AMQP 0.9.1 keeps no offset on the server for a stream's reader: a reader that wants to
//! resume stores the offset of the last event it handled, with what it made of it, and
//! starts again at [`StartAt::after`] that offset.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use lapin::types::{AMQPValue, FieldTable};

/// How long the stream keeps events by default: a week, for readers that were down over a
/// weekend and for rebuilding an archive lost within it.
pub const DEFAULT_MAX_AGE: &str = "7D";
/// How many bytes the stream keeps by default, on each node: 5 GB, about 12 million events
/// of the usual size (~400 bytes each with their AMQP properties), so the age is the limit
/// that applies under ordinary traffic.
pub const DEFAULT_MAX_BYTES: u64 = 5_000_000_000;
/// The default size of one segment file: 100 MB. Retention removes whole segments, so the
/// stream keeps up to one segment more than its limits.
pub const DEFAULT_SEGMENT_BYTES: u64 = 100_000_000;
/// RabbitMQ refuses larger segments.
pub const MAX_SEGMENT_BYTES: u64 = 3_000_000_000;

/// How much earlier than a requested time a reader attaches to the stream: RabbitMQ finds a
/// time by the broker's clock, at the granularity of a chunk and in whole seconds, while an
/// event's `at` is the publishing gateway's clock. The events in between are read and
/// skipped ([`crate::replay`] keeps those stamped at or after the time).
pub const TIME_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// The stream's retention: its arguments when the archiver declares it. An existing stream
/// keeps the arguments it was created with (declaring it with others fails); its retention
/// is changed with a RabbitMQ policy, which takes precedence over the arguments.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LogRetention {
    /// How long the event log stream `<prefix>.log` keeps events: a number and a unit, one
    /// of Y, M, D, h, m, s (RabbitMQ's `x-max-age`), e.g. 7D or 36h. A segment is removed
    /// once all of its events are older.
    #[arg(
        long = "log-stream-max-age",
        env = "LOG_STREAM_MAX_AGE",
        default_value = DEFAULT_MAX_AGE,
        value_parser = parse_max_age
    )]
    pub max_age: String,
    /// Most bytes the event log stream keeps on each node (`x-max-length-bytes`); the
    /// oldest segments go first.
    #[arg(
        long = "log-stream-max-bytes",
        env = "LOG_STREAM_MAX_BYTES",
        default_value_t = DEFAULT_MAX_BYTES
    )]
    pub max_bytes: u64,
    /// Size of one segment file of the event log stream
    /// (`x-stream-max-segment-size-bytes`): retention removes whole segments.
    #[arg(
        long = "log-stream-segment-bytes",
        env = "LOG_STREAM_SEGMENT_BYTES",
        default_value_t = DEFAULT_SEGMENT_BYTES
    )]
    pub segment_bytes: u64,
}

impl Default for LogRetention {
    fn default() -> Self {
        Self {
            max_age: DEFAULT_MAX_AGE.to_owned(),
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// Retention settings the broker would refuse or that could not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidRetention {
    /// Not `<number><unit>`.
    #[error("LOG_STREAM_MAX_AGE must be a positive number and a unit (Y, M, D, h, m or s), e.g. 7D, got {0:?}")]
    MaxAge(String),
    /// A segment of no size or larger than RabbitMQ allows.
    #[error("LOG_STREAM_SEGMENT_BYTES must be 1 to {MAX_SEGMENT_BYTES}, got {0}")]
    Segment(u64),
    /// A size limit below one segment, which retention could never honour.
    #[error("LOG_STREAM_MAX_BYTES ({max_bytes}) must be at least LOG_STREAM_SEGMENT_BYTES ({segment_bytes}): retention removes whole segments")]
    MaxBytes {
        /// The limit.
        max_bytes: u64,
        /// The segment size.
        segment_bytes: u64,
    },
}

/// Checks an `x-max-age` value as RabbitMQ reads it: digits, then one unit letter.
pub fn parse_max_age(raw: &str) -> Result<String, InvalidRetention> {
    let invalid = || InvalidRetention::MaxAge(raw.to_owned());
    let Some((split, _)) = raw.char_indices().last() else {
        return Err(invalid());
    };
    let (number, unit) = raw.split_at(split);
    let positive = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
        && number.parse::<u64>().is_ok_and(|n| n > 0);
    if positive && matches!(unit, "Y" | "M" | "D" | "h" | "m" | "s") {
        Ok(raw.to_owned())
    } else {
        Err(invalid())
    }
}

impl LogRetention {
    /// Refuses settings the broker would refuse, or that retention could not honour.
    pub fn validate(&self) -> Result<(), InvalidRetention> {
        parse_max_age(&self.max_age)?;
        if self.segment_bytes == 0 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return Err(InvalidRetention::Segment(self.segment_bytes));
        }
        if self.max_bytes < self.segment_bytes {
            return Err(InvalidRetention::MaxBytes {
                max_bytes: self.max_bytes,
                segment_bytes: self.segment_bytes,
            });
        }
        Ok(())
    }

    /// The stream's declaration arguments, all four exactly.
    pub fn arguments(&self) -> FieldTable {
        let bytes = |n: u64| AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX));
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        args.insert(
            "x-max-age".into(),
            AMQPValue::LongString(self.max_age.as_str().into()),
        );
        args.insert("x-max-length-bytes".into(), bytes(self.max_bytes));
        args.insert(
            "x-stream-max-segment-size-bytes".into(),
            bytes(self.segment_bytes),
        );
        args
    }
}

/// Where a reader of the stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest event the stream still holds.
    First,
    /// The first event stamped (`at`) at or after this time.
    Time(DateTime<Utc>),
    /// This offset: [`StartAt::after`] the last one a reader stored.
    Offset(u64),
}

/// A start that is none of `first`, an RFC 3339 time or an offset.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a start must be `first`, an RFC 3339 time (2026-11-30T12:00:00Z) or an offset (a whole number of 0 or more), got {0:?}")]
pub struct InvalidStart(String);

impl StartAt {
    /// The offset after `offset`: where a reader that stored `offset` goes on.
    pub fn after(offset: u64) -> Self {
        Self::Offset(offset.saturating_add(1))
    }

    /// The `x-stream-offset` consumer argument that attaches to this start. A time attaches
    /// [`TIME_MARGIN`] earlier, in whole seconds; the reader skips what came before it.
    pub fn consume_argument(&self) -> AMQPValue {
        match self {
            Self::First => AMQPValue::LongString("first".into()),
            Self::Time(at) => {
                let seconds = (*at - TIME_MARGIN).timestamp().max(0);
                AMQPValue::Timestamp(u64::try_from(seconds).unwrap_or(0))
            }
            Self::Offset(offset) => {
                AMQPValue::LongLongInt(i64::try_from(*offset).unwrap_or(i64::MAX))
            }
        }
    }
}

impl FromStr for StartAt {
    type Err = InvalidStart;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidStart(raw.to_owned());
        if raw == "first" {
            Ok(Self::First)
        } else if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
            raw.parse().map(Self::Offset).map_err(|_| invalid())
        } else {
            DateTime::parse_from_rfc3339(raw)
                .map(|at| Self::Time(at.with_timezone(&Utc)))
                .map_err(|_| invalid())
        }
    }
}

impl fmt::Display for StartAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::First => f.write_str("first"),
            Self::Time(at) => write!(f, "{}", at.to_rfc3339()),
            Self::Offset(offset) => write!(f, "offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_is_first_a_time_or_an_offset_and_nothing_else() {
        assert_eq!("first".parse(), Ok(StartAt::First));
        assert_eq!("0".parse(), Ok(StartAt::Offset(0)));
        assert_eq!("1234".parse(), Ok(StartAt::Offset(1234)));
        assert_eq!(
            "2026-11-30T12:00:00+01:00".parse(),
            Ok(StartAt::Time("2026-11-30T11:00:00Z".parse().unwrap()))
        );
        for bad in [
            "",
            "First",
            "last",
            "-1",
            "1.5",
            "99999999999999999999999",
            "2026-11-30",
            "yesterday",
        ] {
            assert_eq!(
                bad.parse::<StartAt>(),
                Err(InvalidStart(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(StartAt::after(41), StartAt::Offset(42));
        assert_eq!(StartAt::after(u64::MAX), StartAt::Offset(u64::MAX));
    }

    #[test]
    fn each_start_attaches_with_the_argument_rabbitmq_reads() {
        assert_eq!(
            StartAt::First.consume_argument(),
            AMQPValue::LongString("first".into())
        );
        assert_eq!(
            StartAt::Offset(7).consume_argument(),
            AMQPValue::LongLongInt(7)
        );
        let at: DateTime<Utc> = "2026-11-30T12:00:00.900Z".parse().unwrap();
        assert_eq!(
            StartAt::Time(at).consume_argument(),
            AMQPValue::Timestamp(u64::try_from((at - TIME_MARGIN).timestamp()).unwrap()),
            "a time attaches the margin earlier, in whole seconds"
        );
    }

    #[test]
    fn retention_is_checked_as_the_broker_would_and_declared_with_four_arguments() {
        assert!(LogRetention::default().validate().is_ok());
        for good in ["7D", "36h", "1Y", "90s", "2M", "15m"] {
            assert_eq!(parse_max_age(good), Ok(good.to_owned()));
        }
        for bad in ["", "7", "D", "0D", "7d", "7 D", "-1D", "7DD", "1.5h", "7é"] {
            assert!(parse_max_age(bad).is_err(), "{bad:?}");
        }
        let small = LogRetention {
            max_bytes: 1_000,
            segment_bytes: 2_000,
            ..LogRetention::default()
        };
        assert!(matches!(
            small.validate(),
            Err(InvalidRetention::MaxBytes { .. })
        ));
        let huge = LogRetention {
            segment_bytes: MAX_SEGMENT_BYTES + 1,
            max_bytes: u64::MAX,
            ..LogRetention::default()
        };
        assert!(matches!(huge.validate(), Err(InvalidRetention::Segment(_))));

        let args = LogRetention::default().arguments();
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("stream".into()))
        );
        assert_eq!(get("x-max-age"), Some(AMQPValue::LongString("7D".into())));
        assert_eq!(
            get("x-max-length-bytes"),
            Some(AMQPValue::LongLongInt(5_000_000_000))
        );
        assert_eq!(
            get("x-stream-max-segment-size-bytes"),
            Some(AMQPValue::LongLongInt(100_000_000))
        );
        assert_eq!(args.inner().len(), 4);
    }
}
