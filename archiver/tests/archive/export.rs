//! `archiver export`: a room as JSON lines and as CSV that a CSV reader parses back to the
//! same events.

use chat_core::event::format_time;
use chat_core::{Event, EventKind};

use crate::helpers::{message, Archived};

on_both_backends! {
    async fn export_writes_a_room_as_json_lines_and_as_csv_that_round_trips(backend) {
        let lobby = [
            message("lobby", "a, \"quoted\" text\nwith a newline"),
            Event::new(EventKind::Join, "lobby", "bob", None, "gw-2"),
            message("lobby", "plain"),
            message("lobby", "\"\"\n\n,"),
            Event::new(EventKind::Leave, "lobby", "bob", None, "gw-2"),
        ];
        let mut events = lobby.to_vec();
        events.insert(2, message("kitchen", "not exported"));
        let archive = Archived::new(backend, "export", &events).await.stop().await;

        let jsonl = archive.stdout(&["export", "lobby", "--format", "jsonl"]);
        let exported: Vec<Event> = jsonl
            .lines()
            .map(|line| Event::decode(line.as_bytes()).unwrap())
            .collect();
        assert_eq!(exported, lobby);
        assert_eq!(jsonl.lines().count(), lobby.len(), "one event per line");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lobby.csv");
        let stdout = archive.stdout(&[
            "export",
            "lobby",
            "--format",
            "csv",
            "--output",
            file.to_str().unwrap(),
        ]);
        assert_eq!(stdout, "", "the export went to the file");
        let csv = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no .part file is left"
        );
        assert_eq!(
            archive.stdout(&["export", "lobby", "--format", "csv"]),
            csv,
            "stdout and file exports are the same"
        );
        assert!(csv.ends_with("\r\n"));
        let records = parse_csv(&csv);
        assert_eq!(
            records[0],
            ["id", "type", "room", "user", "text", "at", "gateway"]
        );
        let want: Vec<Vec<String>> = lobby
            .iter()
            .map(|e| {
                vec![
                    e.id.clone(),
                    e.kind.as_str().to_owned(),
                    e.room.clone(),
                    e.user.clone(),
                    e.text.clone().unwrap_or_default(),
                    format_time(&e.at),
                    e.gateway.clone(),
                ]
            })
            .collect();
        assert_eq!(records[1..], want);

        let empty = archive.stdout(&["export", "nobody", "--format", "csv"]);
        assert_eq!(empty, "id,type,room,user,text,at,gateway\r\n");
        assert_eq!(
            archive.stdout(&["export", "nobody", "--format", "jsonl"]),
            ""
        );
        let refused = archive.command(&["export", "no room", "--format", "csv"]);
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains("room must be"));
    }
}

/// An RFC 4180 reader: quoted fields may hold commas, doubled quotes and line breaks;
/// records end with CRLF (or LF).
fn parse_csv(input: &str) -> Vec<Vec<String>> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut quoted = false;
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        !quoted && field.is_empty() && record.is_empty(),
        "the CSV ends with a whole record"
    );
    records
}
