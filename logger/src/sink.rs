//! The log file as an [`EventSink`]: lines are appended in delivery order, then flushed and
//! `fdatasync`ed before the batch is acked, so an acked event is on disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use chat_core::dedupe::RecentIds;
use chat_core::{logline, subscriber::EventSink, Event};
use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;

/// An append-only chat log.
pub struct LogFile {
    /// Where the log lives; reopened there after a rotation.
    path: PathBuf,
    /// Set (by SIGHUP) when the file must be reopened before the next write.
    reopen: Arc<AtomicBool>,
    /// The open file, in append mode so concurrent `tail -f` readers see whole lines.
    file: File,
    /// Whether lines are echoed to stdout too.
    echo: bool,
    /// Ids written recently: a redelivered or republished event is not logged twice.
    recent: RecentIds,
}

/// How many recent event ids the logger remembers.
const RECENT_IDS: usize = 65_536;

impl LogFile {
    /// Opens (creating it and its directory if needed) the log for appending.
    pub async fn open(path: &Path, echo: bool, reopen: Arc<AtomicBool>) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .with_context(|| format!("Failed to create {}", dir.display()))?;
        }
        let file = open_append(path).await?;
        Ok(Self {
            path: path.to_owned(),
            reopen,
            file,
            echo,
            recent: RecentIds::new(RECENT_IDS),
        })
    }
}

async fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}

impl EventSink for LogFile {
    async fn write(&mut self, events: &[Event]) -> anyhow::Result<()> {
        if self.reopen.swap(false, Ordering::Relaxed) {
            match open_append(&self.path).await {
                Ok(file) => self.file = file,
                Err(err) => {
                    self.reopen.store(true, Ordering::Relaxed);
                    return Err(err).with_context(|| {
                        format!("Failed to reopen the chat log {}", self.path.display())
                    });
                }
            }
        }
        let mut buf = String::with_capacity(events.len() * 80);
        let mut fresh = Vec::with_capacity(events.len());
        for event in events {
            if self.recent.first_time(&event.id) {
                buf.push_str(&logline::format(event));
                buf.push('\n');
                fresh.push(event.id.as_str());
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        let written = async {
            self.file.write_all(buf.as_bytes()).await?;
            self.file.flush().await?;
            self.file.sync_data().await
        }
        .await;
        if let Err(err) = written {
            // The batch will be retried: its events must not count as logged.
            self.recent.forget(&fresh);
            return Err(err).context("Failed to append to the chat log");
        }
        metrics::counter!("chat_events_logged_total").increment(fresh.len() as u64);
        if self.echo {
            let mut stdout = tokio::io::stdout();
            // The file is the record; stdout is a convenience, so its errors are ignored.
            let _ = stdout.write_all(buf.as_bytes()).await;
            let _ = stdout.flush().await;
        }
        Ok(())
    }
}
