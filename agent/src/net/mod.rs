//! Pure, I/O-free parsers for what the network sensor sees on the wire:
//! mining protocols (`stratum`), TLS ClientHello server names (`tls`) and
//! DNS messages (`dns`), proxy preambles (`proxy`). Every parser takes bytes, returns owned values and
//! never panics, whatever the input (each has a fuzz target under `fuzz/`).

pub mod classify;
pub mod dns;
pub mod flows;
pub mod proxy;
pub mod shared;
pub mod stratum;
pub mod tls;
pub mod tls_session;
