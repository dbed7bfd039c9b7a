//! Full-text search queries: what a user types, made safe for SQLite FTS5 (the index is
//! `events_fts`, see `migrations/sqlite/`) and for PostgreSQL's `websearch_to_tsquery` (the
//! `words` column, see `migrations/postgres/`). Users type words, not query syntax, so every
//! word becomes a quoted string of either language: `"`, `*`, `-`, `:`, `NEAR(`, `OR` or
//! `or` are searched for as text (the tokenizers drop punctuation) and no input can be a
//! syntax error. A message matches when it contains every word, in any order, ignoring case
//! and accents; a word that the tokenizer splits (`key:value`) matches its parts in order.

/// Most events one search returns.
pub const MAX_RESULTS: u32 = 200;

/// Events a search returns when no limit is given.
pub const DEFAULT_RESULTS: u32 = 50;

/// Most words in one query: each is one more posting list for SQLite to intersect.
pub const MAX_WORDS: usize = 32;

/// Why a query was refused; the message is shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidQuery {
    #[error("the search needs at least one word")]
    Empty,
    #[error("a search has at most {MAX_WORDS} words")]
    TooManyWords,
}

/// A validated search: one or more words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    words: Vec<String>,
}

impl Query {
    /// Splits `input` into words at white space and control characters. Control characters
    /// are never part of a word: a NUL would end the FTS5 expression early and break it.
    pub fn parse(input: &str) -> Result<Self, InvalidQuery> {
        let words: Vec<String> = input
            .split(|c: char| c.is_whitespace() || c.is_control())
            .filter(|word| !word.is_empty())
            .map(str::to_owned)
            .collect();
        match words.len() {
            0 => Err(InvalidQuery::Empty),
            n if n > MAX_WORDS => Err(InvalidQuery::TooManyWords),
            _ => Ok(Self { words }),
        }
    }

    /// The words separated by single spaces: what is searched for.
    pub fn text(&self) -> String {
        self.words.join(" ")
    }

    /// The FTS5 expression: each word as an FTS5 string (double quotes, inner quotes
    /// doubled), which FTS5 ANDs. A word of punctuation only has no tokens and FTS5 ignores
    /// it, so `hello -` finds what `hello` finds.
    pub fn to_fts(&self) -> String {
        let mut fts = String::new();
        for word in &self.words {
            if !fts.is_empty() {
                fts.push(' ');
            }
            fts.push('"');
            fts.push_str(&word.replace('"', "\"\""));
            fts.push('"');
        }
        fts
    }

    /// The `websearch_to_tsquery` text: each word as a quoted phrase, which it ANDs. Inside
    /// quotes `-`, `or` and parentheses are plain text; a `"` would end the phrase, and is
    /// punctuation to the tokenizer anyway, so it becomes a space. A word of punctuation
    /// only has no lexemes and is dropped, as in FTS5.
    pub fn to_websearch(&self) -> String {
        let mut query = String::new();
        for word in &self.words {
            if !query.is_empty() {
                query.push(' ');
            }
            query.push('"');
            query.push_str(&word.replace('"', " "));
            query.push('"');
        }
        query
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_becomes_a_quoted_fts_string() {
        let query = Query::parse("  hello\tNEAR(x  say\"hi\" -a:b * ").unwrap();
        assert_eq!(query.text(), "hello NEAR(x say\"hi\" -a:b *");
        assert_eq!(query.to_fts(), r#""hello" "NEAR(x" "say""hi""" "-a:b" "*""#);
    }

    #[test]
    fn every_word_becomes_a_quoted_websearch_phrase() {
        let query = Query::parse(r#"hello -key or say"hi" NEAR(x "#).unwrap();
        assert_eq!(
            query.to_websearch(),
            r#""hello" "-key" "or" "say hi " "NEAR(x""#
        );
    }

    #[test]
    fn control_characters_separate_words() {
        let query = Query::parse("a\0b\u{7}c").unwrap();
        assert_eq!(query.to_fts(), r#""a" "b" "c""#);
    }

    #[test]
    fn a_query_without_words_or_with_too_many_is_refused() {
        assert_eq!(Query::parse(""), Err(InvalidQuery::Empty));
        assert_eq!(Query::parse(" \n\0 "), Err(InvalidQuery::Empty));
        let many = vec!["w"; MAX_WORDS + 1].join(" ");
        assert_eq!(Query::parse(&many), Err(InvalidQuery::TooManyWords));
        assert!(Query::parse(&many[2..]).is_ok());
    }
}
