//! rigwatch-agent: sensors observe processes (and later traffic and GPUs),
//! the detector joins and scores what they saw, sinks carry findings out.
//!
//! Data flows one way: `sensors` → `detector` → output (`scan`, and the
//! daemon's sinks).

pub mod daemon;
pub mod detector;
pub mod kube;
pub mod net;
pub mod output;
pub mod pcap;
pub mod scan;
pub mod sensors;
