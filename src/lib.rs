//! clickstream: raw, messy clickstream JSON → per-customer session aggregates.
//!
//! ```text
//! source ──Lines | Barrier──▶ processor (one thread, no I/O) ──▶ checkpoint coordinator
//! (replay files)              decode → extract → dedup →          1. sink: rows + dead letters
//!                             sessionize → aggregate              2. state: one RocksDB batch
//! ```
//!
//! # Layout
//! - [`source`]: lines in, with positions; barriers in band.
//! - [`decode`]: framing checks (blank, size, UTF-8, depth).
//! - [`extract`]: schema-driven extraction of ids, event time and kind.
//! - [`session`]: event-time sessions, watermark, lateness, dedup.
//! - [`state`]: durable state, one atomic batch per checkpoint.
//! - [`aggregate`]: closed sessions → output rows.
//! - [`sink`]: durable output under deterministic names.
//! - [`checkpoint`]: the ordering that makes output effectively exactly-once.
//! - [`processor`]: the stages above, run over lines.
//! - [`parallel`]: decode and extract of a chunk's lines on several threads, in input order.
//! - [`registry`]: versioned schemas (directory or S3), compatibility checks, hot reload.
//! - [`admin`]: the HTTP admin API (schemas, health, metrics).
//! - [`runtime`]: `clickstream run`: splits of a partitioned source (Kafka partitions), each
//!   with its own pipeline, and the fenced commit protocol to S3.

pub mod aggregate;
pub mod checkpoint;
pub mod decode;
pub mod extract;
pub mod session;
pub mod sink;
pub mod source;
pub mod state;

pub mod admin;
pub mod app;
pub mod config;
pub mod event;
pub mod explain;
pub mod hash;
pub mod parallel;
pub mod processor;
pub mod produce;
pub mod record;
pub mod registry;
pub mod runtime;
pub mod s3;
pub mod schema_tools;
pub mod shutdown;
pub mod telemetry;
