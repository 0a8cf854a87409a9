//! The `cloister` server: one binary that serves the HTTPS API (accounts today; courses, the delivery service and
//! the SFU as they arrive), on an embedded SQLite database by default or PostgreSQL when configured.
//!
//! This crate is the async shell: sockets, TLS, HTTP routing, configuration, logging, metrics and background jobs.
//! Domain decisions live in the domain crates (`cloister-accounts`, ...), storage in `cloister-store`, wire types in
//! `cloister-wire`. [`api::router`] builds the whole HTTP surface from an [`api::AppState`], so tests can call it
//! without a socket.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod cli;
pub mod config;
pub mod courses_api;
pub mod keyfile;
pub mod live;
pub mod media;
pub mod metrics;
pub mod pepper;
pub mod retention;
pub mod serve;
pub mod tls;
