//! `logger tail` and log rotation, through the real binary: the formatted output, the room
//! filter, following across a logrotate-style rename, and SIGHUP reopening the file.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const LOGGER: &str = env!("CARGO_BIN_EXE_logger");

fn append(path: &std::path::Path, lines: &[&str]) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

#[test]
fn tail_prints_the_log_formatted_and_filtered_by_room() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("chat.log");
    append(
        &log,
        &[
            r"2026-11-28T15:03:15.123Z #lobby <alice> hi\nthere",
            "2026-11-28T15:03:16.000Z #kitchen <bob> tea?",
            "2026-11-28T15:03:17.000Z #lobby * bob joined",
        ],
    );
    let output = Command::new(LOGGER)
        .args([
            "tail",
            "--room",
            "lobby",
            "--log-file",
            log.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "15:03:15 #lobby alice: hi\n    there\n15:03:17 #lobby * bob joined\n"
    );
    let output = Command::new(LOGGER)
        .args(["tail", "-n", "1", "--log-file", log.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "15:03:17 #lobby * bob joined\n"
    );
    let missing = Command::new(LOGGER)
        .args([
            "tail",
            "--log-file",
            dir.path().join("nope.log").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("Cannot read the chat log"));
}

#[test]
fn tail_follows_the_log_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("chat.log");
    append(&log, &["2026-11-28T15:00:00.000Z #lobby <a> before"]);
    let mut child = Command::new(LOGGER)
        .args(["tail", "--follow", "--log-file", log.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("a line in time")
    };
    assert_eq!(next(), "15:00:00 #lobby a: before");
    append(&log, &["2026-11-28T15:00:01.000Z #lobby <a> appended"]);
    assert_eq!(next(), "15:00:01 #lobby a: appended");
    // logrotate: rename, then a new file at the same path.
    std::fs::rename(&log, dir.path().join("chat.log.1")).unwrap();
    append(
        &dir.path().join("chat.log.1"),
        &["2026-11-28T15:00:02.000Z #lobby <a> late in the old file"],
    );
    append(
        &log,
        &["2026-11-28T15:00:03.000Z #lobby <a> in the new file"],
    );
    assert_eq!(next(), "15:00:02 #lobby a: late in the old file");
    assert_eq!(next(), "15:00:03 #lobby a: in the new file");
    child.kill().unwrap();
    child.wait().unwrap();
}
