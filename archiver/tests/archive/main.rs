//! The archiver against the real broker and real databases, as one test binary: storage and
//! the history API, full-text search, exports, the commands that read the archive, the
//! OpenAPI document, the migration of classic queues, the choice of backend by URL, and several archivers sharing one
//! PostgreSQL database. Every test that can runs twice, `…::on_sqlite` and
//! `…::on_postgres`; each has its own broker prefix and its own database.

#[macro_use]
mod helpers;

mod access;
mod backends;
mod commands;
mod export;
mod history;
mod migration;
mod openapi;
mod projection;
mod queues;
mod replay;
mod search;
mod shared;
