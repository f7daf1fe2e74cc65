//! rigwatch-signatures: what a miner looks like and what a finding says.
//!
//! This crate does no OS I/O beyond reading rule files it is pointed at. It
//! owns the rule format (see `RULES.md`), the compiled matchers, and the
//! vocabulary shared by agent and collector: [`Evidence`], [`Severity`],
//! [`Finding`].
#![deny(missing_docs)]

pub mod compiled;
pub mod import;
pub mod load;
pub mod model;
pub mod oneliner;
pub mod redact;
pub mod report;
pub mod rules;
pub mod siem;
pub mod yara;

pub use compiled::{ContentScanner, Signatures};
pub use load::{load, load_with, Loaded};
pub use model::{
    finding_id, score, score_host, Evidence, EvidenceKind, Finding, FlowInfo, HostSubject, Origin, ProcessInfo, Severity, SubjectKind,
    Weight, YaraMatch,
};
pub use rules::{Rule, RuleError, RuleKind};
