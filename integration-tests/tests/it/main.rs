//! System tests of the `clickstream` binary. One test binary (ripgrep's layout).
#![allow(clippy::unwrap_used, missing_docs)]

mod admin_limits;
mod archive;
mod broker;
mod cli;
mod conformance;
mod fenced;
mod future;
mod golden;
mod json_suite;
mod kafka;
mod kinds;
mod kinesis;
mod kinesis_proxy;
mod leases;
mod produce;
mod record;
mod recovery;
mod registry;
mod replay_inputs;
mod roundtrip;
mod schema_tools;
mod schemas;
mod snapshots;
mod state;
mod workers;
