//! Formatting shared by the web page and the alerts: RFC 3339 times and
//! percent-encoded URL segments.

/// RFC 3339 UTC for unix seconds (the SIEM events' formatter).
pub use rigwatch_signatures::siem::rfc3339;

/// Percent-encodes one URL path segment.
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
