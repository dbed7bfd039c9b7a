//! `logger tail`: the chat log, read back for people. Lines are shown as
//! `15:03:15 #lobby alice: hello` (colours on a terminal, escaped newlines shown as
//! indented lines), optionally only one room's, and with `--follow` new lines are printed
//! as they are written, across rotations: when the file at the path is replaced (logrotate's
//! rename + SIGHUP) the rest of the old file is read, then the new one from its start; when
//! it is truncated in place (`copytruncate`), reading restarts at its start.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// How often a followed file is checked for new lines and rotation.
const POLL: Duration = Duration::from_millis(200);

/// Prints the log; with `follow`, keeps going until the output is closed or Ctrl-C.
pub async fn run(
    path: &Path,
    room: Option<&str>,
    lines: Option<usize>,
    follow: bool,
) -> anyhow::Result<()> {
    let (path, room) = (path.to_owned(), room.map(str::to_owned));
    tokio::task::spawn_blocking(move || tail(&path, room.as_deref(), lines, follow))
        .await
        .context("tail stopped unexpectedly")?
}

fn tail(path: &Path, room: Option<&str>, lines: Option<usize>, follow: bool) -> anyhow::Result<()> {
    let style = Style {
        colour: std::io::stdout().is_terminal(),
    };
    let mut out = std::io::stdout().lock();
    let mut reader = Reader::open(path)
        .with_context(|| format!("Cannot read the chat log {}", path.display()))?;
    // The existing lines, or the last `lines` of them.
    let mut backlog = VecDeque::new();
    while let Some(line) = reader.next_line()? {
        if matches_room(&line, room) {
            backlog.push_back(line);
            if lines.is_some_and(|n| backlog.len() > n) {
                backlog.pop_front();
            }
        }
    }
    for line in backlog {
        if !print(&mut out, &style, &line) {
            return Ok(());
        }
    }
    if !follow {
        return Ok(());
    }
    loop {
        while let Some(line) = reader.next_line()? {
            if matches_room(&line, room) && !print(&mut out, &style, &line) {
                return Ok(());
            }
        }
        std::thread::sleep(POLL);
        match reader.check()? {
            Change::None => {}
            Change::Truncated => reader.restart()?,
            Change::Replaced => {
                // Lines written to the old file after it was renamed (before the writer
                // reopened) come first.
                while let Some(line) = reader.next_line()? {
                    if matches_room(&line, room) && !print(&mut out, &style, &line) {
                        return Ok(());
                    }
                }
                reader = Reader::open(path)?;
            }
        }
    }
}

/// What happened to the file at the path since it was opened.
enum Change {
    None,
    /// Truncated in place (`copytruncate`): read again from the start.
    Truncated,
    /// Another file is at the path now (rename and create): switch to it.
    Replaced,
}

/// Reads whole lines from the file at a path, following it when it is replaced.
struct Reader {
    path: PathBuf,
    file: BufReader<File>,
    inode: u64,
    /// The start of a line whose end is not written yet.
    partial: String,
}

impl Reader {
    fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let inode = file.metadata()?.ino();
        Ok(Self {
            path: path.to_owned(),
            file: BufReader::new(file),
            inode,
            partial: String::new(),
        })
    }

    /// The next complete line, if one has been written.
    fn next_line(&mut self) -> std::io::Result<Option<String>> {
        let mut chunk = String::new();
        if self.file.read_line(&mut chunk)? == 0 {
            return Ok(None);
        }
        self.partial.push_str(&chunk);
        if !self.partial.ends_with('\n') {
            return Ok(None);
        }
        let mut line = std::mem::take(&mut self.partial);
        line.pop();
        Ok(Some(line))
    }

    /// Compares the file at the path with the one being read. Call after reading the
    /// current file to its end.
    fn check(&mut self) -> std::io::Result<Change> {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return Ok(Change::None); // between the rename and the new file's creation
        };
        Ok(if meta.ino() != self.inode {
            Change::Replaced
        } else if meta.len() < self.file.stream_position()? {
            Change::Truncated
        } else {
            Change::None
        })
    }

    fn restart(&mut self) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.partial.clear();
        Ok(())
    }
}

fn matches_room(line: &str, room: Option<&str>) -> bool {
    match room {
        None => true,
        Some(room) => line
            .split(' ')
            .nth(1)
            .is_some_and(|r| r.strip_prefix('#') == Some(room)),
    }
}

struct Style {
    colour: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// Writes one formatted line; false once the output is gone (e.g. `| head`).
fn print(out: &mut impl Write, style: &Style, line: &str) -> bool {
    writeln!(out, "{}", format_line(style, line)).is_ok() && out.flush().is_ok()
}

/// `2026-11-28T15:03:15.123Z #lobby <alice> hi` → `15:03:15 #lobby alice: hi`. Lines that
/// are not in the log format are shown as they are.
fn format_line(style: &Style, line: &str) -> String {
    let mut parts = line.splitn(3, ' ');
    let (Some(at), Some(room), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return line.to_owned();
    };
    let time = at.get(11..19).unwrap_or(at);
    let head = format!("{} {}", style.paint("2", time), style.paint("36", room));
    if let Some(notice) = rest.strip_prefix("* ") {
        return format!("{head} {}", style.paint("33", &format!("* {notice}")));
    }
    let Some((user, text)) = rest.strip_prefix('<').and_then(|r| r.split_once("> ")) else {
        return line.to_owned();
    };
    let colour = ["31", "32", "34", "35", "36", "91", "92", "94", "95"]
        [user.bytes().map(usize::from).sum::<usize>() % 9];
    let user = style.paint(&format!("1;{colour}"), user);
    format!("{head} {user}: {}", unescape(text))
}

/// Shows `\n` as a new indented line and `\\` as `\`; other escapes stay as written.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push_str("\n    "),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Style = Style { colour: false };

    #[test]
    fn log_lines_are_shown_for_people() {
        assert_eq!(
            format_line(
                &PLAIN,
                r"2026-11-28T15:03:15.123Z #lobby <alice> two\nlines \\n"
            ),
            "15:03:15 #lobby alice: two\n    lines \\n"
        );
        assert_eq!(
            format_line(&PLAIN, "2026-11-28T15:03:15.123Z #lobby * bob joined"),
            "15:03:15 #lobby * bob joined"
        );
        assert_eq!(format_line(&PLAIN, "not a log line"), "not a log line");
    }

    #[test]
    fn the_room_filter_matches_the_room_field_only() {
        let line = "2026-11-28T15:03:15.123Z #lobby <alice> see #kitchen";
        assert!(matches_room(line, Some("lobby")));
        assert!(!matches_room(line, Some("kitchen")));
        assert!(!matches_room(line, Some("lob")));
        assert!(matches_room(line, None));
    }

    #[test]
    fn colours_are_ansi_sequences_only_when_asked() {
        let painted = format_line(
            &Style { colour: true },
            "2026-11-28T15:03:15.123Z #lobby <a> b",
        );
        assert!(painted.contains("\x1b[36m#lobby\x1b[0m"));
    }
}
