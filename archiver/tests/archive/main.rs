//! The archiver against the real broker and real SQLite files, as one test binary: storage
//! and the history API, full-text search, exports, the commands that read the archive, and
//! the OpenAPI document. Each test has its own broker prefix and database.

mod commands;
mod export;
mod helpers;
mod history;
mod migration;
mod openapi;
mod search;
