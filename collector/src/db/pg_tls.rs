//! TLS to PostgreSQL: libpq's `sslmode` and `sslrootcert` on top of
//! tokio-postgres (whose own parser knows only disable/prefer/require and
//! refuses parameters it does not know), with rustls (ring) through
//! `tokio-postgres-rustls`.
//!
//! | sslmode       | encrypted              | certificate checked              |
//! |---------------|------------------------|----------------------------------|
//! | `disable`     | never                  | -                                |
//! | `prefer`      | if the server offers   | no (chain only if a CA is named) |
//! | `require`     | always                 | no (chain only if a CA is named) |
//! | `verify-ca`   | always                 | chain to the CA                  |
//! | `verify-full` | always                 | chain to the CA and host name    |
//!
//! As in libpq, a CA named for `prefer`/`require` makes them check the
//! chain (verify-ca). Unlike libpq, a URL that names a CA
//! (`sslrootcert=` or the collector's `database_ca_file`) but no
//! `sslmode` means `verify-full`: naming a CA is asking for it to be
//! checked. A URL that names neither keeps `prefer`; a plaintext
//! connection to a host that is not loopback is logged as a warning.
//! Unix-domain sockets never use TLS (PostgreSQL does not offer it there).

use super::DbError;
use postgres::config::{Host, SslMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The system's CA bundle, for `sslrootcert=system` (Debian's path).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// A CA file larger than this is not a CA file.
const MAX_CA_FILE: u64 = 16 << 20;

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(v: &str) -> Result<Mode, DbError> {
        Ok(match v {
            "disable" => Mode::Disable,
            "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => {
                return Err(DbError::Other(format!(
                    "database URL: sslmode={other:?} is not supported (disable, prefer, require, verify-ca or verify-full)"
                )))
            }
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }
}

/// Where the CA comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Roots {
    None,
    File(PathBuf),
    System,
}

impl std::fmt::Display for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Roots::None => f.write_str("no sslrootcert"),
            Roots::File(p) => write!(f, "sslrootcert={}", p.display()),
            Roots::System => write!(f, "sslrootcert=system ({SYSTEM_CA_BUNDLE})"),
        }
    }
}

/// A database URL made ready to connect: tokio-postgres's config, the TLS
/// settings it does not know, and the TLS connector they make.
pub(crate) struct Target {
    config: postgres::Config,
    mode: Mode,
    roots: Roots,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

/// Splits libpq's `sslmode` and `sslrootcert` out of a URL's query: the
/// URL tokio-postgres can parse, and the two values (percent-decoded).
fn split_url(url: &str) -> Result<(String, Option<String>, Option<String>), DbError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None, None));
    };
    let (mut mode, mut root, mut kept) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| decode(s).map_err(|_| DbError::Other(format!("database URL: parameter {k}: invalid percent-encoding")));
        match decode(k)?.as_str() {
            "sslmode" => mode = Some(decode(v)?),
            "sslrootcert" => root = Some(decode(v)?),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, mode, root))
}

/// Percent-decoding as URLs use it (`+` stays `+`, as in tokio-postgres).
fn decode(s: &str) -> Result<String, ()> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(())?;
            let hex = std::str::from_utf8(hex).map_err(|_| ())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// An error and its causes, one after the other.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Target {
    /// Reads a `postgres://` URL; `ca_file` is the CA used when the URL
    /// names no `sslrootcert`.
    pub(crate) fn parse(url: &str, ca_file: Option<&Path>) -> Result<Target, DbError> {
        let (rest, mode, root) = split_url(url)?;
        let mut config: postgres::Config = rest
            .parse()
            .map_err(|e: postgres::Error| DbError::Other(format!("database URL: {}", chain(&e))))?;
        let roots = match root.as_deref() {
            Some("system") => Roots::System,
            Some("") => return Err(DbError::Other("database URL: sslrootcert is empty".into())),
            Some(p) => Roots::File(PathBuf::from(p)),
            None => ca_file.map(|p| Roots::File(p.to_path_buf())).unwrap_or(Roots::None),
        };
        let mode = match (mode.as_deref(), &roots) {
            (Some(m), _) => Mode::parse(m)?,
            (None, Roots::None) => Mode::Prefer,
            (None, _) => Mode::VerifyFull,
        };
        if matches!(mode, Mode::VerifyCa | Mode::VerifyFull) && roots == Roots::None {
            return Err(DbError::Other(format!(
                "database URL: sslmode={} needs the CA that signs the server's certificate: sslrootcert=PATH in the URL, or database_ca_file (--database-ca-file), or sslrootcert=system",
                mode.as_str()
            )));
        }
        let local_only = !config.get_hosts().is_empty() && config.get_hosts().iter().all(|h| !matches!(h, Host::Tcp(_)));
        config.ssl_mode(match mode {
            Mode::Disable => SslMode::Disable,
            // PostgreSQL offers no TLS on a Unix socket; libpq ignores sslmode there.
            _ if local_only => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        });
        let tls = if config.get_ssl_mode() == SslMode::Disable {
            None
        } else {
            Some(tokio_postgres_rustls::MakeRustlsConnect::new(client_config(mode, &roots)?))
        };
        Ok(Target { config, mode, roots, tls })
    }

    /// `host:port` for messages (every host, when there are several).
    pub(crate) fn hosts(&self) -> String {
        let ports = self.config.get_ports();
        let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let addrs = self.config.get_hostaddrs();
        let n = self.config.get_hosts().len().max(addrs.len());
        (0..n)
            .map(|i| match (self.config.get_hosts().get(i), addrs.get(i)) {
                (Some(Host::Tcp(h)), _) => format!("{h}:{}", port(i)),
                (Some(Host::Unix(p)), _) => format!("{}:{}", p.display(), port(i)),
                (None, Some(a)) => format!("{a}:{}", port(i)),
                (None, None) => String::new(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// True when every address connected to is loopback or a Unix socket
    /// (nothing crosses a network).
    pub(crate) fn local(&self) -> bool {
        let addrs = self.config.get_hostaddrs();
        let hosts = self.config.get_hosts();
        let n = hosts.len().max(addrs.len());
        n > 0
            && (0..n).all(|i| match (addrs.get(i), hosts.get(i)) {
                (Some(a), _) => a.is_loopback(),
                (None, Some(Host::Unix(_))) => true,
                (None, Some(Host::Tcp(h))) => {
                    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().map(|a| a.is_loopback()).unwrap_or(false)
                }
                (None, None) => false,
            })
    }

    /// Logs how a first connection is protected: a warning when it is
    /// plaintext and crosses a network.
    pub(crate) fn log_protection(&self, first: &mut postgres::Client) {
        let encrypted = match self.config.get_ssl_mode() {
            SslMode::Disable => Some(false),
            SslMode::Require => Some(true),
            // prefer: the server decided; ask it (unknown if it cannot say).
            _ => first
                .query_opt("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
                .ok()
                .flatten()
                .and_then(|r| r.try_get::<_, bool>(0).ok()),
        };
        match self.plaintext_warning(encrypted) {
            Some(w) => tracing::warn!("{w}"),
            None if encrypted == Some(true) => {
                tracing::info!(
                    "PostgreSQL at {}: TLS (sslmode={}, {})",
                    self.hosts(),
                    self.mode.as_str(),
                    self.roots
                )
            }
            None => {}
        }
    }

    /// The warning for a connection that is (or may be) plaintext across a
    /// network; None when encrypted or local.
    pub(crate) fn plaintext_warning(&self, encrypted: Option<bool>) -> Option<String> {
        if encrypted == Some(true) || self.local() {
            return None;
        }
        Some(format!(
            "PostgreSQL at {}: the connection is {} (sslmode={}): tokens' hashes and findings cross the network readable and alterable; use sslmode=verify-full with sslrootcert=CA (or database_ca_file)",
            self.hosts(),
            if encrypted == Some(false) { "plaintext" } else { "perhaps plaintext" },
            self.mode.as_str()
        ))
    }

    /// Opens one connection; errors say what went wrong with TLS in words.
    pub(crate) fn connect(&self) -> Result<postgres::Client, DbError> {
        let r = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(postgres::NoTls),
        };
        r.map_err(|e| self.explain(e))
    }

    fn explain(&self, e: postgres::Error) -> DbError {
        if e.as_db_error().is_some() {
            // The server answered (authentication, no such database): its words.
            return DbError::Postgres(e);
        }
        let at = self.hosts();
        let why = match rustls_error(&e) {
            Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => format!(
                "certificate not valid for the host name (sslmode={}; {}): {}",
                self.mode.as_str(),
                self.roots,
                rustls_error(&e).map(|r| r.to_string()).unwrap_or_default()
            ),
            Some(rustls::Error::InvalidCertificate(CertificateError::Expired))
            | Some(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })) => {
                format!("certificate expired ({})", self.roots)
            }
            Some(rustls::Error::InvalidCertificate(c)) => {
                format!("certificate not trusted ({}): {c:?}", self.roots)
            }
            Some(other) => format!("TLS handshake failed (sslmode={}): {other}", self.mode.as_str()),
            None if chain(&e).contains("server does not support TLS") => {
                format!("server does not support TLS but sslmode={}", self.mode.as_str())
            }
            None => chain(&e),
        };
        DbError::Other(format!("PostgreSQL at {at}: {why}"))
    }
}

/// The rustls error under a connect error, if the handshake failed.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// Reads every PEM certificate in a CA file (bounded).
fn load_roots(roots: &Roots) -> Result<rustls::RootCertStore, DbError> {
    let path = match roots {
        Roots::None => return Ok(rustls::RootCertStore::empty()),
        Roots::File(p) => p.as_path(),
        Roots::System => Path::new(SYSTEM_CA_BUNDLE),
    };
    let fail = |why: String| DbError::Other(format!("{roots}: {why}"));
    let f = std::fs::File::open(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let mut pem = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_CA_FILE + 1), &mut pem).map_err(|e| fail(format!("cannot read: {e}")))?;
    if pem.len() as u64 > MAX_CA_FILE {
        return Err(fail(format!("larger than {MAX_CA_FILE} bytes: not a CA file")));
    }
    let mut store = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| fail(format!("not a PEM certificate file: {e}")))?;
        store.add(c).map_err(|e| fail(format!("a certificate was refused: {e}")))?;
    }
    if store.is_empty() {
        return Err(fail("holds no PEM certificate".into()));
    }
    Ok(store)
}

fn client_config(mode: Mode, roots: &Roots) -> Result<rustls::ClientConfig, DbError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // require/prefer with a CA check the chain, as libpq does.
    let check = match (mode, roots) {
        (Mode::VerifyFull, _) => Check::Full,
        (_, Roots::None) => Check::Nothing,
        _ => Check::Chain,
    };
    let inner = match check {
        Check::Nothing => None,
        _ => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(load_roots(roots)?), provider.clone())
                .build()
                .map_err(|e| DbError::Other(format!("{roots}: {e}")))?,
        ),
    };
    let verifier = Verifier {
        check,
        inner,
        provider: provider.clone(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Other(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // PostgreSQL 17 requires it for direct negotiation, and accepts it otherwise.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// `require`/`prefer` without a CA: encrypted, not authenticated (libpq's meaning).
    Nothing,
    /// `verify-ca`: the chain to the CA, any host name.
    Chain,
    /// `verify-full`: the chain and the host name.
    Full,
}

/// rustls's WebPKI verifier, less the host-name check for verify-ca and
/// less everything for require. The handshake signature is always checked
/// against the presented certificate.
#[derive(Debug)]
struct Verifier {
    check: Check,
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(inner) = &self.inner else {
            return Ok(ServerCertVerified::assertion());
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            // WebPKI checks the name last: this error means the chain is good.
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }))
                if self.check == Check::Chain =>
            {
                Ok(ServerCertVerified::assertion())
            }
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str, ca: Option<&Path>) -> String {
        match Target::parse(url, ca) {
            Ok(_) => panic!("{url} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn libpq_parameters_are_taken_out_and_the_rest_kept() {
        let (rest, mode, root) = split_url(
            "postgres://u:p%3Fw@db:5433/fleet?application_name=rw&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p%3Fw@db:5433/fleet?application_name=rw&connect_timeout=5");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca x.pem"));
        let (rest, mode, root) = split_url("postgres://db/fleet?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), mode.as_deref(), root),
            ("postgres://db/fleet", Some("require"), None)
        );
        assert!(split_url("postgres://db/x?sslrootcert=%zz").is_err());
    }

    #[test]
    fn modes_and_their_defaults() {
        let t = Target::parse("postgres://db.example.com/x", None).unwrap();
        assert_eq!(t.mode, Mode::Prefer, "no sslmode, no CA: today's prefer");
        let dir = tempfile_ca();
        let t = Target::parse("postgres://db.example.com/x", Some(&dir)).unwrap();
        assert_eq!(t.mode, Mode::VerifyFull, "a CA named without sslmode: verify-full");
        let t = Target::parse(
            &format!("postgres://db.example.com/x?sslmode=require&sslrootcert={}", dir.display()),
            None,
        )
        .unwrap();
        assert_eq!(t.mode, Mode::Require);
        assert_eq!(t.roots, Roots::File(dir.clone()));
        let t = Target::parse("postgres://db.example.com/x?sslmode=disable", None).unwrap();
        assert!(t.tls.is_none());
        // A Unix socket: never TLS (PostgreSQL offers none there), never a warning.
        let t = Target::parse("postgres://postgres@%2Frun%2Fpostgresql/x?sslmode=require", None).unwrap();
        assert_eq!(t.config.get_ssl_mode(), SslMode::Disable);
        assert!(t.local());
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn bad_settings_are_refused_in_words() {
        let e = err("postgres://db/x?sslmode=verify_full", None);
        assert!(e.contains("sslmode=\"verify_full\" is not supported"), "{e}");
        let e = err("postgres://db/x?sslmode=verify-full", None);
        assert!(
            e.contains("sslmode=verify-full needs the CA") && e.contains("database_ca_file"),
            "{e}"
        );
        let e = err("postgres://db/x?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem", None);
        assert!(e.contains("sslrootcert=/nonexistent/ca.pem: cannot read"), "{e}");
        let empty = std::env::temp_dir().join(format!("rw-empty-ca-{}", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = err("postgres://db/x?sslmode=verify-full", Some(&empty));
        assert!(e.contains("holds no PEM certificate"), "{e}");
        std::fs::remove_file(&empty).unwrap();
        let e = err("postgres://db/x?sslcert=/a.pem", None);
        assert!(e.contains("unknown option `sslcert`"), "{e}");
    }

    #[test]
    fn plaintext_across_a_network_is_warned_about() {
        let remote = Target::parse("postgres://db.example.com:5433/x?sslmode=disable", None).unwrap();
        let w = remote.plaintext_warning(Some(false)).expect("a warning");
        assert!(
            w.contains("db.example.com:5433") && w.contains("plaintext") && w.contains("sslmode=disable"),
            "{w}"
        );
        assert!(remote.plaintext_warning(Some(true)).is_none());
        let prefer = Target::parse("postgres://10.0.0.5/x", None).unwrap();
        assert!(prefer.plaintext_warning(None).unwrap().contains("perhaps plaintext"));
        for local in [
            "postgres://127.0.0.1/x?sslmode=disable",
            "postgres://localhost/x?sslmode=disable",
            "postgres://[::1]/x?sslmode=disable",
            "postgres://db.example.com/x?sslmode=disable&hostaddr=127.0.0.1",
        ] {
            let t = Target::parse(local, None).unwrap();
            assert!(t.plaintext_warning(Some(false)).is_none(), "{local}");
        }
        let t = Target::parse("postgres://localhost,db.example.com/x?sslmode=disable", None).unwrap();
        assert!(t.plaintext_warning(Some(false)).is_some(), "one remote host is enough");
    }

    /// A file holding one self-signed CA certificate (PEM).
    fn tempfile_ca() -> PathBuf {
        // A real certificate: rustls refuses anything else as a root.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let c = p.self_signed(&key).unwrap();
        let path = std::env::temp_dir().join(format!("rw-ca-{}-{:?}.pem", std::process::id(), std::thread::current().id()));
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, c.der());
        let body: Vec<&str> = b64.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).unwrap()).collect();
        std::fs::write(
            &path,
            format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", body.join("\n")),
        )
        .unwrap();
        path
    }
}
