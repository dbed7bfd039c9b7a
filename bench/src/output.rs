//! How results leave the tool: one line of `key=value` pairs in a fixed order for people
//! and logs, and the same record as one JSON object for scripts (`--json` prints it too,
//! `--json-out FILE` writes it), with nested details only in the JSON.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

/// An ordered list of named values.
#[derive(Debug, Clone, Default)]
pub struct Record {
    fields: Vec<(String, Value)>,
    /// Details too big for the one-line form (per-step tables, per-process figures).
    details: Vec<(String, Value)>,
}

impl Record {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a field shown on the line and in the JSON. Floats are rounded to 3 decimals.
    pub fn put(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.fields.push((key.to_owned(), round(value.into())));
        self
    }

    /// Adds a field shown only in the JSON.
    pub fn detail(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.details.push((key.to_owned(), round(value.into())));
        self
    }

    /// `key=value key=value …`; strings with spaces are quoted.
    pub fn line(&self) -> String {
        self.fields
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a record always serialises")
    }

    /// Prints the line, and the JSON too if asked; writes the JSON to `json_out` if given.
    pub fn emit(&self, json: bool, json_out: Option<&std::path::Path>) -> anyhow::Result<()> {
        println!("{}", self.line());
        if json {
            println!("{}", self.json());
        }
        if let Some(path) = json_out {
            std::fs::write(path, self.json() + "\n")?;
        }
        Ok(())
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.fields.len() + self.details.len()))?;
        for (k, v) in self.fields.iter().chain(&self.details) {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn round(value: Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => {
            // Adding 0.0 turns -0.0 into 0.0.
            let f = n.as_f64().unwrap_or_default();
            serde_json::Number::from_f64((f * 1000.0).round() / 1000.0 + 0.0)
                .map(Value::Number)
                .unwrap_or(Value::Null)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(round).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, round(v))).collect()),
        other => other,
    }
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) if s.is_empty() || s.contains(char::is_whitespace) => format!("{s:?}"),
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_and_json_in_the_same_order() {
        let mut r = Record::new();
        r.put("scenario", "fanout")
            .put("rate", 100.0)
            .put("p99_ms", 1.23456)
            .put("note", "two words")
            .detail("steps", serde_json::json!([{"rate": 1.00001}]));
        assert_eq!(
            r.line(),
            r#"scenario=fanout rate=100.0 p99_ms=1.235 note="two words""#
        );
        assert_eq!(
            r.json(),
            r#"{"scenario":"fanout","rate":100.0,"p99_ms":1.235,"note":"two words","steps":[{"rate":1.0}]}"#
        );
    }
}
