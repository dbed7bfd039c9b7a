//! `archiver export`: a room's whole history as JSON lines or CSV. Rows go from the database
//! to the output one at a time, so exporting a room of any size takes constant memory.

use std::pin::pin;

use anyhow::Context;
use chat_core::event::{format_time, Event};
use futures_util::TryStreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::store::Store;

/// The formats of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One event JSON per line, exactly as the event travels on the exchange.
    Jsonl,
    /// RFC 4180 CSV with a header line; `text` is empty for joins and leaves.
    Csv,
}

/// The CSV header: the Event fields but `v`, in order.
pub const CSV_HEADER: &str = "id,type,room,user,text,at,gateway\r\n";

/// Writes every event of `room`, oldest first, to `out` and flushes it; returns how many.
pub async fn export<W: AsyncWrite + Unpin>(
    store: &Store,
    room: &str,
    format: Format,
    out: &mut W,
) -> anyhow::Result<u64> {
    let write_failed = "Failed to write the export";
    if format == Format::Csv {
        out.write_all(CSV_HEADER.as_bytes())
            .await
            .context(write_failed)?;
    }
    let mut events = pin!(store.room_events(room));
    let mut line = String::new();
    let mut count = 0;
    while let Some(event) = events
        .try_next()
        .await
        .context("Failed to read the archive")?
    {
        line.clear();
        match format {
            Format::Jsonl => {
                line.push_str(&event.to_json());
                line.push('\n');
            }
            Format::Csv => csv_record(&mut line, &event),
        }
        out.write_all(line.as_bytes()).await.context(write_failed)?;
        count += 1;
    }
    out.flush().await.context(write_failed)?;
    Ok(count)
}

/// Appends one event as a CSV record, CRLF-terminated as RFC 4180 says.
fn csv_record(out: &mut String, event: &Event) {
    let at = format_time(&event.at);
    let fields = [
        event.id.as_str(),
        event.kind.as_str(),
        &event.room,
        &event.user,
        event.text.as_deref().unwrap_or_default(),
        &at,
        &event.gateway,
    ];
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, field);
    }
    out.push_str("\r\n");
}

/// A field with a comma, a quote or a line break is quoted, its quotes doubled; any other
/// field is written as is.
fn csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fields_that_need_it_are_quoted() {
        let mut out = String::new();
        for field in ["plain", "a,b", "say \"hi\"", "two\nlines", "cr\r", ""] {
            csv_field(&mut out, field);
            out.push('|');
        }
        assert_eq!(
            out,
            "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"two\nlines\"|\"cr\r\"||"
        );
    }

    #[test]
    fn a_join_has_an_empty_text_field() {
        let mut join = Event::new(chat_core::EventKind::Join, "lobby", "bob", None, "gw-1");
        join.at = "2026-11-28T15:03:15.123Z".parse().unwrap();
        let mut out = String::new();
        csv_record(&mut out, &join);
        assert_eq!(
            out,
            format!(
                "{},join,lobby,bob,,2026-11-28T15:03:15.123Z,gw-1\r\n",
                join.id
            )
        );
    }
}
