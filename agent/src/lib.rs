//! rigwatch-agent: sensors observe processes (and later traffic and GPUs),
//! the detector joins and scores what they saw, sinks carry findings out.
//!
//! Data flows one way: `sensors` → `engine` (`detector`) → sinks (`scan`'s
//! report, the daemon's `/metrics`, spool and shipper, `pcap`, `sniff`).

pub mod daemon;
pub mod detector;
pub mod engine;
pub mod host;
pub mod kube;
pub mod net;
pub mod output;
pub mod paths;
pub mod pcap;
pub mod scan;
pub mod sensors;
