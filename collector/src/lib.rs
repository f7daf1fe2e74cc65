//! rigwatch-collector: the central service agents report to.
//!
//! Agents `POST /api/v1/reports` with a bearer token; each event is stored
//! once (delivery is at-least-once). Fleet state lives in SQLite (embedded,
//! the default) or PostgreSQL (several replicas), behind one seam
//! ([`db::Backend`]) so both run the same SQL and the same tests. From that
//! state the collector alerts (Alertmanager v2, a JSON webhook), sends
//! findings to SIEMs (OCSF or ECS: a webhook, and a cursor export), groups
//! findings into campaigns, exports `/metrics`, answers the query API and
//! serves the analysts' web page.
#![deny(missing_docs)]

pub mod alert;
pub mod app;
pub mod config;
pub mod db;
pub mod fleet;
pub mod format;
pub mod hostconfig;
pub mod keys;
pub mod metrics;
pub mod server;
pub mod siem;
pub mod store;
pub mod web;

pub use app::App;
pub use server::{router, serve, serve_listener};
pub use store::Store;
