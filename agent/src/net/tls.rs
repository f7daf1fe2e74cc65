//! The server name (SNI) and the JA4 fingerprint of a TLS ClientHello, from
//! the first bytes of the client direction of a TCP flow.
//!
//! Records are read with `tls-parser`; a ClientHello split over several
//! handshake records (or several TCP segments) is put back together first.
//! Only plausible host names are returned: lowercased, made of letters,
//! digits, `-`, `_` and `.`, labels of 1 to 63 bytes, 253 bytes at most, so
//! hostile input never yields control characters or other odd bytes.

use std::borrow::Cow;
use tls_parser::{parse_tls_extension_sni_content, parse_tls_handshake_client_hello, SNIType, TlsExtension};

/// Largest TLS record body allowed (2^14 plus the expansion TLS 1.2 allows).
const MAX_RECORD: usize = 16384 + 2048;
/// Largest ClientHello accepted (real ones, post-quantum key shares
/// included, stay under 4 KiB).
const MAX_HELLO: usize = 64 * 1024;

/// Why no server name could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The bytes do not start with a TLS handshake record.
    #[error("not a TLS handshake record")]
    NotTls,
    /// A TLS handshake record, but more bytes are needed to read the
    /// ClientHello (a record split across segments).
    #[error("incomplete TLS record: more bytes needed")]
    Incomplete,
    /// A TLS handshake, but its first message is not a ClientHello (e.g. the
    /// server direction).
    #[error("TLS handshake is not a ClientHello")]
    NotClientHello,
    /// A ClientHello that cannot be parsed.
    #[error("malformed TLS ClientHello")]
    Malformed,
}

/// Whether the bytes start like a TLS handshake record: `0x16 0x03 0x00..=0x04`.
pub fn is_tls_record_start(bytes: &[u8]) -> bool {
    matches!(bytes, [0x16, 0x03, 0x00..=0x04, ..])
}

/// The server name of the ClientHello at the start of `bytes`.
///
/// - `Ok(Some(name))`: a ClientHello with a plausible host name in its
///   server_name extension (lowercased, trailing dot removed);
/// - `Ok(None)`: a ClientHello without SNI, or whose SNI is not a plausible
///   host name;
/// - `Err(TlsError::NotTls)`: not a TLS handshake record;
/// - `Err(TlsError::Incomplete)`: more bytes are needed;
/// - `Err(TlsError::NotClientHello)` / `Err(TlsError::Malformed)`: a TLS
///   handshake that is not a (readable) ClientHello.
///
/// ```
/// use rigwatch_agent::net::tls::{client_hello_sni, TlsError};
/// assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), Err(TlsError::NotTls));
/// assert_eq!(client_hello_sni(&[0x16, 0x03, 0x01, 0x02]), Err(TlsError::Incomplete));
/// ```
pub fn client_hello_sni(bytes: &[u8]) -> Result<Option<String>, TlsError> {
    client_hello(bytes).map(|h| h.sni)
}

/// What a ClientHello tells of its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The server name asked for (a plausible host name), if any.
    pub sni: Option<String>,
    /// The client's JA4 fingerprint (FoxIO's JA4, TCP form): the same
    /// client software gives the same value whatever server it talks to.
    pub ja4: String,
}

/// The server name and JA4 fingerprint of the ClientHello at the start of
/// `bytes`; the errors are those of [`client_hello_sni`].
pub fn client_hello(bytes: &[u8]) -> Result<Hello, TlsError> {
    let body = handshake_message(bytes)?;
    let (_, hello) = parse_tls_handshake_client_hello(&body).map_err(|_| TlsError::Malformed)?;
    let ext = hello.ext.unwrap_or_default();
    let ciphers: Vec<u16> = hello.ciphers.iter().map(|c| c.0).collect();
    Ok(Hello {
        sni: sni_from_extensions(ext),
        ja4: ja4(hello.version.0, &ciphers, ext),
    })
}

/// GREASE values (RFC 8701: 0x0a0a, 0x1a1a, … 0xfafa), ignored by JA4.
fn grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

fn u16s(b: &[u8]) -> impl Iterator<Item = u16> + '_ {
    b.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]))
}

/// The first 12 hex digits of the SHA-256 of `s` (JA4's "truncated hash");
/// twelve zeros for an empty list.
fn ja4_hash(s: &str) -> String {
    use sha2::{Digest, Sha256};
    if s.is_empty() {
        return "000000000000".into();
    }
    hex::encode(&Sha256::digest(s.as_bytes())[..6])
}

/// JA4 (FoxIO, `technical_details/JA4.md`) over a ClientHello's legacy
/// version, cipher suites and raw extension block: `t`, the highest
/// version offered, `d`/`i` (server name or not), the counts of ciphers and
/// extensions, the first ALPN value's first and last characters; then the
/// truncated SHA-256 of the sorted ciphers; then that of the sorted
/// extensions (without SNI and ALPN) and the signature algorithms in their
/// order. GREASE values are ignored everywhere. A malformed extension block
/// counts as far as it can be read.
fn ja4(legacy_version: u16, ciphers: &[u16], mut ext: &[u8]) -> String {
    let mut exts = Vec::new();
    let (mut versions, mut alpn, mut sigalgs) = (Vec::new(), None, Vec::new());
    while let [t0, t1, l0, l1, rest @ ..] = ext {
        let t = u16::from_be_bytes([*t0, *t1]);
        let len = u16::from_be_bytes([*l0, *l1]) as usize;
        let Some(data) = rest.get(..len) else { break };
        ext = &rest[len..];
        if grease(t) {
            continue;
        }
        exts.push(t);
        match t {
            // supported_versions: a u8 length, then versions
            0x002b => versions = u16s(data.get(1..).unwrap_or_default()).filter(|v| !grease(*v)).collect(),
            // ALPN: a u16 length, then (u8 length, name) pairs; the first name
            0x0010 if alpn.is_none() => {
                alpn = data.get(2).and_then(|&n| data.get(3..3 + n as usize)).map(<[u8]>::to_vec);
            }
            // signature_algorithms: a u16 length, then algorithms, in order
            0x000d => sigalgs = u16s(data.get(2..).unwrap_or_default()).filter(|v| !grease(*v)).collect(),
            _ => {}
        }
    }
    let version = versions.iter().copied().max().unwrap_or(legacy_version);
    let version = match version {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0002 | 0x0200 => "s2",
        _ => "00",
    };
    let sni = if exts.contains(&0x0000) { 'd' } else { 'i' };
    let mut ciphers: Vec<u16> = ciphers.iter().copied().filter(|c| !grease(*c)).collect();
    let alpn = match alpn.as_deref() {
        None | Some([]) => "00".to_string(),
        Some(a) => {
            let (f, l) = (a[0], a[a.len() - 1]);
            if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric() {
                format!("{}{}", f as char, l as char)
            } else {
                let h = hex::encode(a);
                format!("{}{}", &h[..1], &h[h.len() - 1..])
            }
        }
    };
    let head = format!("t{version}{sni}{:02}{:02}{alpn}", ciphers.len().min(99), exts.len().min(99));
    ciphers.sort_unstable();
    let list = |v: &[u16]| v.iter().map(|x| format!("{x:04x}")).collect::<Vec<_>>().join(",");
    let mut sorted: Vec<u16> = exts.iter().copied().filter(|t| *t != 0x0000 && *t != 0x0010).collect();
    sorted.sort_unstable();
    let mut c = list(&sorted);
    if !sigalgs.is_empty() {
        c = format!("{c}_{}", list(&sigalgs));
    }
    format!("{head}_{}_{}", ja4_hash(&list(&ciphers)), ja4_hash(&c))
}

/// Reassemble the first handshake message from consecutive handshake
/// records and return the ClientHello body (after the 4-byte handshake
/// header): borrowed when it sits in one record (nearly always), copied
/// when it is fragmented over several.
fn handshake_message(bytes: &[u8]) -> Result<Cow<'_, [u8]>, TlsError> {
    let mut rest = bytes;
    let mut msg: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        let bad = if first { TlsError::NotTls } else { TlsError::Malformed };
        match rest {
            [] => return Err(TlsError::Incomplete),
            [t, ..] if *t != 0x16 => return Err(bad),
            [_, v, ..] if *v != 0x03 => return Err(bad),
            [_, _, m, ..] if *m > 0x04 => return Err(bad),
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (rest.get(3), rest.get(4)) else {
            return Err(TlsError::Incomplete);
        };
        let len = u16::from_be_bytes([hi, lo]) as usize;
        if len == 0 || len > MAX_RECORD {
            return Err(bad);
        }
        let avail = rest.get(5..).unwrap_or_default();
        // the message type is known as soon as its first byte is there
        if msg.is_empty() && avail.first().is_some_and(|&t| t != 0x01) {
            return Err(TlsError::NotClientHello);
        }
        let Some(frag) = avail.get(..len) else {
            return Err(TlsError::Incomplete);
        };
        if first {
            if let Some(body) = complete_message(frag)? {
                return frag.get(4..4 + body).map(Cow::Borrowed).ok_or(TlsError::Malformed);
            }
        }
        msg.extend_from_slice(frag);
        if let Some(body) = complete_message(&msg)? {
            msg.truncate(4 + body);
            msg.drain(..4);
            return Ok(Cow::Owned(msg));
        }
        rest = rest.get(5 + len..).unwrap_or_default();
        first = false;
    }
}

/// Length of the ClientHello body when the message in `msg` is complete.
fn complete_message(msg: &[u8]) -> Result<Option<usize>, TlsError> {
    let [t, a, b, c, ..] = msg else {
        return Ok(None);
    };
    if *t != 0x01 {
        return Err(TlsError::NotClientHello);
    }
    let body = u32::from_be_bytes([0, *a, *b, *c]) as usize;
    if body > MAX_HELLO {
        return Err(TlsError::Malformed);
    }
    Ok(if msg.len() >= 4 + body { Some(body) } else { None })
}

/// The first plausible host name in the server_name extension.
fn sni_from_extensions(mut ext: &[u8]) -> Option<String> {
    // Walk the extension framing by hand (type u16, length u16, data) so an
    // extension the parser does not know cannot hide the server name.
    while let [t0, t1, l0, l1, rest @ ..] = ext {
        let len = u16::from_be_bytes([*l0, *l1]) as usize;
        let data = rest.get(..len)?;
        if [*t0, *t1] == [0, 0] {
            let Ok((_, TlsExtension::SNI(names))) = parse_tls_extension_sni_content(data) else {
                return None;
            };
            return names
                .iter()
                .find(|(t, _)| *t == SNIType::HostName)
                .and_then(|(_, n)| plausible_host(n));
        }
        ext = rest.get(len..)?;
    }
    None
}

/// The name, lowercased and without a trailing dot, if it is a plausible host name.
fn plausible_host(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    if raw.is_empty() || raw.len() > 253 {
        return None;
    }
    for label in raw.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        if !label.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return None;
        }
    }
    // only ASCII is left, so this cannot fail
    String::from_utf8(raw.to_ascii_lowercase()).ok()
}

/// Minimal ClientHellos for tests (here and in the flow table's).
#[cfg(test)]
pub(crate) mod tests_support {
    pub fn sni_ext(name: &[u8]) -> Vec<u8> {
        let n = name.len() as u16;
        let mut e = vec![0x00, 0x00];
        e.extend_from_slice(&(n + 5).to_be_bytes());
        e.extend_from_slice(&(n + 3).to_be_bytes());
        e.push(0x00);
        e.extend_from_slice(&n.to_be_bytes());
        e.extend_from_slice(name);
        e
    }

    /// Handshake message (type 1) with a minimal TLS 1.2 ClientHello body.
    pub fn hello_msg(exts: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x42; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        if let Some(e) = exts {
            body.extend_from_slice(&(e.len() as u16).to_be_bytes());
            body.extend_from_slice(e);
        }
        let mut m = vec![0x01];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        m.extend_from_slice(&body);
        m
    }

    pub fn record(payload: &[u8]) -> Vec<u8> {
        let mut r = vec![0x16, 0x03, 0x01];
        r.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        r.extend_from_slice(payload);
        r
    }

    /// A whole TLS record holding a ClientHello for `name`.
    pub fn client_hello(name: &str) -> Vec<u8> {
        record(&hello_msg(Some(&sni_ext(name.as_bytes()))))
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;

    /// A ClientHello from OpenSSL 3.0 (Python's ssl module) for "Pool.SupportXMR.com".
    const OPENSSL_HELLO_SNI: &str = "1603010200010001fc0303b62a2c31f7115678b70e608229e81654adb9095a00c696d6afc8df329ee7f2df20481b9767f7240195117fd89430d6a3ef766b5461522c1333eb2a11f6f9b49b080024130213031301c02cc030c02bc02fcca9cca8c024c028c023c027009f009e006b006700ff0100018f000000180016000013506f6f6c2e537570706f7274584d522e636f6d000b000403000102000a00160014001d0017001e0019001801000101010201030104002300000016000000170000000d002a0028040305030603080708080809080a080b080408050806040105010601030303010302040205020602002b00050403040303002d00020101003300260024001d002074d0f756cf2c08aa583d3f5c5615f6861430c9a7de7010c11dfe0d62c4538643001500da0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";
    /// The same client with no server name.
    const OPENSSL_HELLO_NO_SNI: &str = "1603010200010001fc030387c6446d4bde39eaf2f25d964c782b6ca3698b665f67e24031424fb96863909420c3d8f5a892ddc648644c81b8898c1b82c894ec94085937df6e1485a36b5b93290024130213031301c02cc030c02bc02fcca9cca8c024c028c023c027009f009e006b006700ff0100018f000b000403000102000a00160014001d0017001e0019001801000101010201030104002300000016000000170000000d002a0028040305030603080708080809080a080b080408050806040105010601030303010302040205020602002b00050403040303002d00020101003300260024001d00207c63d7cc8a5599bc6910c3f84f2a74cef89d226210b428b18c5250d57779954c001500f6000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test hex")
    }

    #[test]
    fn openssl_client_hello_with_sni() {
        let b = unhex(OPENSSL_HELLO_SNI);
        assert_eq!(b.len(), 517);
        assert!(is_tls_record_start(&b));
        assert_eq!(client_hello_sni(&b), Ok(Some("pool.supportxmr.com".to_string())));
        // followed by more data in the same buffer
        let mut more = b.clone();
        more.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
        assert_eq!(client_hello_sni(&more), Ok(Some("pool.supportxmr.com".to_string())));
    }

    /// Chrome 143's ClientHello as browserleaks.com printed it (JA4
    /// `t13d1516h2_8daaf6152771_d8a2da3f94cd`, with its `ja4_ro`: ciphers
    /// and extensions in wire order), rebuilt here with GREASE added.
    #[test]
    fn ja4_of_a_published_chrome_hello() {
        let ciphers = [
            0x0a0a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
        ];
        let mut exts = Vec::new();
        fn put(exts: &mut Vec<u8>, t: u16, data: &[u8]) {
            exts.extend_from_slice(&t.to_be_bytes());
            exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
            exts.extend_from_slice(data);
        }
        let mut add = |t: u16, data: &[u8]| put(&mut exts, t, data);
        add(0x1a1a, &[]);
        for t in [0x002d, 0x0033] {
            add(t, &[0, 1, 1]);
        }
        add(0x0010, &[0, 12, 2, b'h', b'2', 8, b'h', b't', b't', b'p', b'/', b'1', b'.', b'1']);
        for t in [0xfe0d, 0x0017, 0x44cd] {
            add(t, &[]);
        }
        let sni = sni_ext(b"tls.browserleaks.com");
        add(0x0000, &sni[4..]);
        for t in [0x000b, 0x000a] {
            add(t, &[0, 2, 0, 29]);
        }
        add(0x002b, &[4, 0x3a, 0x3a, 0x03, 0x04]);
        for t in [0xff01, 0x0023, 0x0012, 0x0005] {
            add(t, &[]);
        }
        add(0x000d, &[0, 16, 4, 3, 8, 4, 4, 1, 5, 3, 8, 5, 5, 1, 8, 6, 6, 1]);
        add(0x001b, &[2, 0, 2]);
        add(0x2a2a, &[0]);
        assert_eq!(ja4(0x0303, &ciphers, &exts), "t13d1516h2_8daaf6152771_d8a2da3f94cd");
        // GREASE or not, the same fingerprint
        assert_eq!(ja4(0x0303, &ciphers[1..], &exts), "t13d1516h2_8daaf6152771_d8a2da3f94cd");
    }

    #[test]
    fn ja4_of_openssl_without_sni_and_hostile_blocks() {
        let h = super::client_hello(&unhex(OPENSSL_HELLO_NO_SNI)).unwrap();
        assert_eq!(h.sni, None);
        // TLS 1.3 offered, no SNI, 18 ciphers, 10 extensions, no ALPN
        assert!(h.ja4.starts_with("t13i181000_"), "{}", h.ja4);
        let with = super::client_hello(&unhex(OPENSSL_HELLO_SNI)).unwrap();
        assert!(with.ja4.starts_with("t13d181100_"), "{}", with.ja4);
        // the same client software: the same hashes whatever the server name
        assert_eq!(h.ja4[10..], with.ja4[10..]);
        // nothing at all, a truncated block, a lying length: no panic
        assert_eq!(ja4(0x0303, &[], &[]), "t12i000000_000000000000_000000000000");
        assert!(ja4(0x0301, &[0x1301], &[0x00, 0x10, 0x00, 0x09, 0x00]).starts_with("t10i0100"));
        assert!(ja4(0x0303, &[], &[0x00, 0x10, 0x00, 0x04, 0x00, 0x02, 0x05, b'x']).starts_with("t12i000100_"));
        // a non-alphanumeric ALPN: hex digits
        assert!(ja4(0x0303, &[], &[0x00, 0x10, 0x00, 0x04, 0x00, 0x02, 0x01, 0xff]).starts_with("t12i0001ff_"));
    }

    #[test]
    fn openssl_client_hello_without_sni() {
        let b = unhex(OPENSSL_HELLO_NO_SNI);
        assert_eq!(client_hello_sni(&b), Ok(None));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let b = unhex(OPENSSL_HELLO_SNI);
        for i in 0..b.len() {
            assert_eq!(client_hello_sni(&b[..i]), Err(TlsError::Incomplete), "prefix {i}");
        }
    }

    #[test]
    fn client_hello_fragmented_over_two_records() {
        let msg = hello_msg(Some(&sni_ext(b"xmr-eu1.nanopool.org")));
        let (a, b) = msg.split_at(30);
        let mut bytes = record(a);
        assert_eq!(client_hello_sni(&bytes), Err(TlsError::Incomplete));
        bytes.extend_from_slice(&record(b));
        assert_eq!(client_hello_sni(&bytes), Ok(Some("xmr-eu1.nanopool.org".to_string())));
        // the second record is not a handshake record
        let mut bad = record(a);
        bad.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5]);
        assert_eq!(client_hello_sni(&bad), Err(TlsError::Malformed));
    }

    #[test]
    fn names_are_lowercased_and_trailing_dot_removed() {
        let b = record(&hello_msg(Some(&sni_ext(b"Gulf.MoneroOcean.Stream."))));
        assert_eq!(client_hello_sni(&b), Ok(Some("gulf.moneroocean.stream".to_string())));
    }

    #[test]
    fn hostile_names_are_rejected() {
        for name in [
            &b"evil\x1b[31m.example.com"[..],
            b"a\nb.example.com",
            b"exa mple.com",
            b"x..y",
            b".",
            b"\xc3\xa9t\xc3\xa9.fr",
            &[b'a'; 64][..],
        ] {
            let b = record(&hello_msg(Some(&sni_ext(name))));
            assert_eq!(client_hello_sni(&b), Ok(None), "{name:?}");
        }
    }

    #[test]
    fn sni_after_unknown_extensions() {
        let mut exts = vec![0xfa, 0xfa, 0x00, 0x00]; // GREASE, empty
        exts.extend_from_slice(&[0x00, 0x17, 0x00, 0x00]); // extended master secret
        exts.extend_from_slice(&[0x44, 0x69, 0x00, 0x03, 0x00, 0x01, 0x68]); // unknown, 3 bytes
        exts.extend_from_slice(&sni_ext(b"stratum.example.net"));
        let b = record(&hello_msg(Some(&exts)));
        assert_eq!(client_hello_sni(&b), Ok(Some("stratum.example.net".to_string())));
    }

    #[test]
    fn hello_without_extensions() {
        let b = record(&hello_msg(None));
        assert_eq!(client_hello_sni(&b), Ok(None));
    }

    #[test]
    fn not_tls_and_not_client_hello() {
        assert_eq!(client_hello_sni(b"{\"id\":1,\"method\":\"login\"}\n"), Err(TlsError::NotTls));
        assert_eq!(client_hello_sni(&[0x16, 0x02, 0x01, 0x00, 0x10]), Err(TlsError::NotTls));
        assert_eq!(client_hello_sni(&[0x16, 0x03, 0x09, 0x00, 0x10]), Err(TlsError::NotTls));
        assert_eq!(client_hello_sni(&[0x16, 0x03, 0x01, 0x00, 0x00]), Err(TlsError::NotTls));
        assert_eq!(client_hello_sni(&[0x16, 0x03, 0x01, 0xff, 0xff]), Err(TlsError::NotTls));
        // ServerHello (type 2)
        assert_eq!(
            client_hello_sni(&[0x16, 0x03, 0x03, 0x00, 0x50, 0x02, 0x00]),
            Err(TlsError::NotClientHello)
        );
        // a ClientHello whose body is garbage
        let m = [0x01, 0x00, 0x00, 0x03, 0x03, 0x03, 0x00];
        assert_eq!(client_hello_sni(&record(&m)), Err(TlsError::Malformed));
        assert!(!is_tls_record_start(b"\x16\x03\x05"));
        assert!(!is_tls_record_start(b"\x16\x03"));
        assert!(is_tls_record_start(b"\x16\x03\x03"));
    }
}
