//! `rigwatch`: find crypto miners on this host.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use rigwatch_agent::daemon::config::{Config, ScanConfig};
use rigwatch_agent::{output, scan};
use rigwatch_signatures::{load, Severity, Signatures};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_SIGNATURE_DIR: &str = rigwatch_agent::paths::SIGNATURE_DIR;

/// rigwatch finds cryptocurrency miners: by name, command line, binary
/// content and hash, miner config files, odd executable origins, disguises
/// and sustained CPU use, fused into one finding per process.
#[derive(Parser)]
#[command(name = "rigwatch", version, propagate_version = true)]
#[command(
    after_help = "Examples:\n  rigwatch scan                 scan this host (5 s CPU window), table output\n  rigwatch scan --json | jq .   the same as JSON for scripts\n  rigwatch signatures check my-rules.toml\n  rigwatch signatures list\n\nExit status of scan: 0 nothing found, 1 findings, 2 error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Scan this host once and report miners.
    ///
    /// Samples every process twice, a window apart, to measure CPU as cores
    /// used over the window; reads each executable once (hash and content
    /// signatures) and miner config files while it waits.
    Scan(ScanArgs),
    /// Check files against the hash and content signatures (an analyst's
    /// look at a suspicious binary). Exit status 1 when any file matches.
    Inspect {
        /// Files to read.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print JSON lines, one per file.
        #[arg(long)]
        json: bool,
        /// Most bytes read of each file.
        #[arg(long, default_value_t = 64 * 1024 * 1024, value_name = "BYTES")]
        max_bytes: u64,
        #[command(flatten)]
        sig: SigDirs,
    },
    /// Run the agent: continuous detection, /metrics for Prometheus, findings
    /// shipped to the collector. Works with no config file.
    ///
    /// Defaults: a pass every 10 s plus one 250 ms after each exec, /metrics
    /// on 127.0.0.1:9861, no collector (set --collector and --token), no
    /// response. `--print-config` shows every setting with its default.
    Run(RunArgs),
    /// Classify the flows of pcap/pcapng captures taken elsewhere: stratum
    /// dialects, TLS SNI and DNS for pool domains. Same JSON shape as scan,
    /// with each finding's `flow` instead of a pid. Exit 1 when found.
    Pcap {
        /// Capture files (pcap or pcapng).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        sig: SigDirs,
    },
    /// Watch the network live: print each stratum session, pool-domain DNS
    /// query and TLS SNI as it is seen, with the process that owns it (needs
    /// CAP_NET_RAW). Stops after --seconds, or on Ctrl-C.
    Sniff {
        /// How long to watch (0: until interrupted).
        #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
        seconds: f64,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        sig: SigDirs,
    },
    /// Watch the floating-point rounding mode processes leave at context
    /// switches (eBPF; root or CAP_BPF + CAP_PERFMON, x86_64): RandomX
    /// hashing changes it constantly, ordinary programs never. Prints, per
    /// process caught away from round-to-nearest, the switches, their rate
    /// and the modes, and which are RandomX-like. Exit 1 when one is.
    Rounding {
        /// How long to watch.
        #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
        seconds: f64,
        /// Print JSON lines, one per process.
        #[arg(long)]
        json: bool,
    },
    /// Check, list or import signatures.
    #[command(subcommand)]
    Signatures(SigCommand),
}

#[derive(Args, Clone)]
struct SigDirs {
    /// Extra signature directory (repeatable); its rules add to or override
    /// the bundled set. /etc/rigwatch/signatures.d is read when it exists.
    #[arg(long = "signatures", value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Do not read /etc/rigwatch/signatures.d.
    #[arg(long)]
    no_default_signatures: bool,
}

#[derive(Args)]
struct ScanArgs {
    /// CPU sampling window in seconds.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    window: f64,
    /// Print JSON: {"host": ..., "findings": [...], "scanned": {...}, "warnings": [...]}.
    #[arg(long)]
    json: bool,
    /// The proc filesystem to read (a fixture tree in tests).
    #[arg(long, default_value = rigwatch_agent::paths::PROC, value_name = "DIR")]
    proc_root: PathBuf,
    /// Report only findings at or above this severity.
    #[arg(long, value_enum, default_value_t = MinSeverity::Suspicious)]
    min_severity: MinSeverity,
    /// Cores a process must use over the window to count as busy.
    #[arg(long, default_value_t = ScanConfig::default().cpu_threshold_cores, value_name = "CORES")]
    cpu_threshold: f64,
    /// Long CPU window: a process whose average over at least this long
    /// reaches 0.15 cores also counts as busy (throttled miners). A scan
    /// sees it when --window is at least this long.
    #[arg(long, default_value_t = ScanConfig::default().long_window_seconds, value_name = "SECONDS")]
    long_window: f64,
    /// Cores over the long window that count as busy.
    #[arg(long, default_value_t = ScanConfig::default().long_window_cores_threshold, value_name = "CORES")]
    long_window_threshold: f64,
    /// The host's root directory: /etc/ld.so.preload, crontabs, systemd
    /// units and rc scripts are read under it (a fixture tree in tests).
    #[arg(long, default_value = "/", value_name = "DIR")]
    host_root: PathBuf,
    /// Most bytes read of each executable.
    #[arg(long, default_value_t = ScanConfig::default().max_binary_bytes, value_name = "BYTES")]
    max_binary_bytes: u64,
    /// Do not capture packets during the window (stratum, TLS SNI, DNS).
    #[arg(long)]
    no_capture: bool,
    /// Do not look at sockets (connections to pool addresses and ports).
    #[arg(long)]
    no_sockets: bool,
    /// Do not look at GPUs (NVML, DRM fdinfo). NVML is loaded from
    /// $RIGWATCH_NVML_LIBRARY when set, else libnvidia-ml.so.1.
    #[arg(long)]
    no_gpu: bool,
    #[command(flatten)]
    sig: SigDirs,
}

#[derive(Args)]
struct RunArgs {
    /// The TOML config file (see --print-config for every setting).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address of the /metrics endpoint [default: 127.0.0.1:9861].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Collector base URL, e.g. https://collector:9860.
    #[arg(long, value_name = "URL")]
    collector: Option<String>,
    /// Bearer token for the collector. Visible in `ps` to every user: prefer
    /// --token-file or the environment.
    #[arg(long, value_name = "TOKEN", env = "RIGWATCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the collector's bearer token (first line; e.g. a
    /// systemd credential or a mounted Kubernetes Secret).
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// A file holding a fleet enrolment token (`rigwatch-collector token
    /// create NAME --enrol`, e.g. one Kubernetes Secret for every node). On
    /// start, unless the spool directory holds a token of this host's own
    /// (`collector-token`), it is exchanged for one bound to this host,
    /// saved there (mode 0600) and used.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["token", "token_file"])]
    enrol_token_file: Option<PathBuf>,
    /// Ship over plain http:// to a collector on another host (the token and
    /// every finding then cross the network readable). Without it such a URL
    /// is refused at start; http:// to 127.0.0.0/8, ::1 or localhost is always
    /// allowed. Prefer https:// with collector.ca_file.
    #[arg(long)]
    allow_insecure_http: bool,
    /// Where events wait for the collector [default: /var/lib/rigwatch/spool].
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,
    /// The proc filesystem to read.
    #[arg(long, value_name = "DIR")]
    proc_root: Option<PathBuf>,
    /// The host's root directory, where ld.so.preload, crontabs, systemd units
    /// and /var/log/pods are read (in a container: the host's / mounted read-only).
    #[arg(long, value_name = "DIR")]
    host_root: Option<PathBuf>,
    /// Seconds between periodic passes.
    #[arg(long, value_name = "SECONDS")]
    interval: Option<f64>,
    /// Extra signature directory (repeatable; watched and hot-reloaded).
    #[arg(long = "signatures", value_name = "DIR")]
    signatures: Vec<PathBuf>,
    /// Run one pass, print the /metrics exposition and exit (no network, no shipping).
    #[arg(long)]
    once: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(ValueEnum, Clone, Copy)]
enum MinSeverity {
    Suspicious,
    Likely,
    Confirmed,
}

#[derive(Subcommand)]
enum SigCommand {
    /// Check rule files: syntax, fields, regexes, lists and every rule's
    /// examples; YARA files (*.yar, *.yara) are compiled. Errors are printed
    /// as FILE:LINE: message. With no path, checks the bundled set and the
    /// signature directories.
    Check {
        /// Rule files, YARA files, or directories of them.
        paths: Vec<PathBuf>,
        #[command(flatten)]
        sig: SigDirs,
    },
    /// List the loaded rules (YARA rules too) and where each came from.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        sig: SigDirs,
    },
    /// Print the binary content rules as YARA rules (same strings, same
    /// N-of-M conditions), for use with other scanners.
    ExportYara {
        #[command(flatten)]
        sig: SigDirs,
    },
    /// Convert a public indicator list into a rigwatch list file (stdout).
    ///
    /// Formats: `domains` (one per line, also Adblock `||d^`), `hosts`
    /// (hosts file), `ipport` (ip or ip:port per line, maltrail style).
    Import {
        /// Input format.
        #[arg(long, value_enum)]
        format: ImportFormat,
        /// The list to read ("-" for stdin).
        file: PathBuf,
    },
}

#[derive(ValueEnum, Clone, Copy)]
enum ImportFormat {
    Domains,
    Hosts,
    Ipport,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Scan(a) => run_scan(a),
        Command::Inspect {
            files,
            json,
            max_bytes,
            sig,
        } => run_inspect(&files, json, max_bytes, &sig),
        Command::Run(a) => {
            rigwatch_agent::daemon::events::init_logging();
            run_daemon(a)
        }
        Command::Pcap { files, json, sig } => run_pcap(&files, json, &sig),
        Command::Sniff { seconds, json, sig } => run_sniff(seconds, json, &sig),
        Command::Rounding { seconds, json } => run_rounding(seconds, json),
        Command::Signatures(c) => run_signatures(c),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rigwatch: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn sig_dirs(s: &SigDirs) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if !s.no_default_signatures {
        dirs.push(PathBuf::from(DEFAULT_SIGNATURE_DIR));
    }
    dirs.extend(s.dirs.iter().cloned());
    dirs
}

/// Loads signatures; broken files are reported on stderr and skipped.
fn load_signatures(s: &SigDirs) -> anyhow::Result<(Arc<Signatures>, Vec<String>)> {
    for d in &s.dirs {
        anyhow::ensure!(d.is_dir(), "signature directory {} does not exist", d.display());
    }
    let loaded = load::load(&sig_dirs(s), true);
    let warnings: Vec<String> = loaded
        .errors
        .iter()
        .map(|e| format!("signature file skipped: {e} (the other rules stay in force)"))
        .collect();
    Ok((Arc::new(loaded.signatures), warnings))
}

/// The least time one sensor's part of a `scan` pass may take, seconds.
const SCAN_SENSOR_BUDGET_SECONDS: f64 = 60.0;

fn run_scan(a: ScanArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.window >= 0.0 && a.window <= 3600.0, "--window must be between 0 and 3600 seconds");
    let (sig, sig_warnings) = load_signatures(&a.sig)?;
    for w in &sig_warnings {
        eprintln!("rigwatch: {w}");
    }
    // the agent's configuration with the scan's flags over it: one shape for every command
    let mut cfg = Config::default();
    cfg.scan.cpu_window_seconds = a.window;
    cfg.scan.cpu_threshold_cores = a.cpu_threshold;
    cfg.scan.long_window_seconds = a.long_window;
    cfg.scan.long_window_cores_threshold = a.long_window_threshold;
    cfg.scan.proc_root = a.proc_root.clone();
    cfg.scan.host_root = a.host_root.clone();
    cfg.scan.max_binary_bytes = a.max_binary_bytes;
    // a scan reads every executable now; the daemon spreads them over passes
    cfg.scan.binary_bytes_per_pass = u64::MAX;
    cfg.sensors.capture = !a.no_capture;
    cfg.sensors.sockets = !a.no_sockets;
    cfg.sensors.gpu = !a.no_gpu;
    // ... so a sensor that is slow but working (hashing every executable in
    // a debug build on a busy host) gets a budget in step with that; a
    // blocked one still stops holding the scan after it
    cfg.sensors.budget_seconds = cfg.sensors.budget_seconds.max(SCAN_SENSOR_BUDGET_SECONDS);
    // a scan's window is short: the rounding-mode program stays attached through it
    cfg.sensors.rounding_sample_seconds = 0.0;
    let opts = cfg.engine(false);
    let tty = std::io::stderr().is_terminal();
    let progress = |m: &str| {
        if tty && !a.json {
            eprintln!("rigwatch: {m}");
        }
    };
    let mut report = scan::scan(&opts, sig, &progress)?;
    report.warnings.extend(sig_warnings);
    let min = match a.min_severity {
        MinSeverity::Suspicious => Severity::Suspicious,
        MinSeverity::Likely => Severity::Likely,
        MinSeverity::Confirmed => Severity::Confirmed,
    };
    report.findings.retain(|f| f.severity >= min);
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", output::render(&report, std::io::stdout().is_terminal()))?;
    }
    Ok(if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run_inspect(files: &[PathBuf], json: bool, cap: u64, s: &SigDirs) -> anyhow::Result<ExitCode> {
    let (sig, warnings) = load_signatures(s)?;
    for w in &warnings {
        eprintln!("rigwatch: {w}");
    }
    let mut any = false;
    let mut errors = 0;
    let mut out = std::io::stdout().lock();
    for f in files {
        let shown = f.display().to_string();
        let res = std::fs::File::open(f).and_then(|mut r| {
            let mut total = 0;
            rigwatch_agent::sensors::binary::scan_reader(&sig, &mut r, cap, &shown, &mut total)
        });
        match res {
            Ok(v) => {
                any |= !v.evidence.is_empty();
                if json {
                    let j = serde_json::json!({"file": shown, "sha256": hex::encode(v.sha256), "truncated": v.truncated, "evidence": v.evidence});
                    writeln!(out, "{j}")?;
                } else if v.evidence.is_empty() {
                    writeln!(out, "{}  clean  {}", hex::encode(v.sha256), output::clean(&shown, 200))?;
                } else {
                    for e in &v.evidence {
                        writeln!(
                            out,
                            "{}  {}  {}  [{}]",
                            hex::encode(v.sha256),
                            e.weight.as_str(),
                            output::clean(&e.summary(), 200),
                            e.rule.as_deref().unwrap_or("")
                        )?;
                    }
                }
            }
            Err(e) => {
                errors += 1;
                eprintln!("rigwatch: {shown}: {e}");
            }
        }
    }
    Ok(if errors > 0 {
        ExitCode::from(2)
    } else if any {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn run_daemon(a: RunArgs) -> anyhow::Result<ExitCode> {
    use rigwatch_agent::daemon;
    let mut cfg = match &a.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(v) = a.listen {
        cfg.metrics.listen = v;
    }
    if let Some(v) = a.collector {
        cfg.collector.url = v;
    }
    if let Some(f) = &a.token_file {
        let t = std::fs::read_to_string(f).with_context(|| format!("--token-file {}", f.display()))?;
        cfg.collector.token = t.lines().next().unwrap_or("").trim().to_string();
        anyhow::ensure!(!cfg.collector.token.is_empty(), "--token-file {} is empty", f.display());
    }
    if let Some(v) = a.token {
        cfg.collector.token = v;
    }
    if let Some(v) = a.enrol_token_file {
        cfg.collector.enrol_token_file = Some(v);
        cfg.collector.token.clear();
    }
    if a.allow_insecure_http {
        cfg.collector.allow_insecure_http = true;
    }
    if let Some(v) = a.spool_dir {
        cfg.collector.spool_dir = v;
    }
    if let Some(v) = a.proc_root {
        cfg.scan.proc_root = v;
    }
    if let Some(v) = a.host_root {
        cfg.scan.host_root = v;
    }
    if let Some(v) = a.interval {
        anyhow::ensure!(v > 0.0, "--interval must be positive");
        cfg.scan.interval_seconds = v;
    }
    cfg.signatures.dirs.extend(a.signatures);
    if a.print_config {
        print!("{}", toml::to_string_pretty(&cfg)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !cfg.collector.url.is_empty() && cfg.collector.token.is_empty() && cfg.collector.enrol_token_file.is_none() {
        anyhow::bail!(
            "--collector needs --token-file, --token, --enrol-token-file (or RIGWATCH_TOKEN, or collector.token or collector.enrol_token_file in the config)"
        );
    }
    daemon::fleet::public_key(&cfg.collector)?;
    // before anything (a report, an enrolment) is sent to the collector
    if cfg.collector.transport()? == daemon::config::Transport::InsecureHttp {
        tracing::warn!(
            event = "insecure_collector",
            url = cfg.collector.url.as_str(),
            "shipping to the collector over plain http:// (--allow-insecure-http): the token and every finding cross the network readable and alterable; use https:// with collector.ca_file"
        );
    }
    daemon::run(cfg, a.once)?;
    Ok(ExitCode::SUCCESS)
}

fn run_pcap(files: &[PathBuf], json: bool, s: &SigDirs) -> anyhow::Result<ExitCode> {
    let (sig, warnings) = load_signatures(s)?;
    let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let r = rigwatch_agent::pcap::read_files(&paths, sig.clone(), &scan::host_name(), scan::unix_now())?;
    let mut out = std::io::stdout().lock();
    if json {
        let mut w: Vec<String> = warnings;
        if r.skipped > 0 {
            w.push(format!(
                "{} of {} packets were not TCP/UDP over IP and were skipped",
                r.skipped, r.packets
            ));
        }
        let j = serde_json::json!({"host": scan::host_name(), "findings": r.findings, "packets": r.packets, "warnings": w});
        serde_json::to_writer_pretty(&mut out, &j)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{} packets, {} findings", r.packets, r.findings.len())?;
        for f in &r.findings {
            let flow = f
                .flow
                .as_ref()
                .map(|x| format!("{} -> {} ({})", x.client, x.server, x.transport))
                .unwrap_or_default();
            writeln!(out, "\n[{}] {}", f.severity, flow)?;
            for e in &f.evidence {
                writeln!(
                    out,
                    "    {:<10} {:<12} {}",
                    e.weight.as_str(),
                    e.kind(),
                    output::clean(&e.summary(), 200)
                )?;
            }
        }
    }
    Ok(if r.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run_sniff(seconds: f64, json: bool, s: &SigDirs) -> anyhow::Result<ExitCode> {
    use rigwatch_agent::engine::{Engine, Pass};
    const NETWORK: &[&str] = &["stratum", "dns", "tls_sni", "pool_connection"];
    let (sig, _) = load_signatures(s)?;
    // the engine with the capture sensor alone; the sink prints each new piece of network evidence
    let cfg = Config {
        sensors: rigwatch_agent::daemon::config::SensorsConfig {
            capture: true,
            ..rigwatch_agent::daemon::config::SensorsConfig::none()
        },
        ..Config::default()
    };
    let mut engine = Engine::new(sig, &scan::host_name(), &cfg.engine(false));
    let first = engine.pass(Pass::Full, scan::unix_now())?;
    if let Some(r) = first.reports.iter().find(|r| r.name == "capture" && !r.up) {
        anyhow::bail!("{}", r.reason.clone().unwrap_or_default());
    }
    if !json {
        eprintln!("rigwatch: watching all interfaces for stratum, pool DNS and TLS SNI…");
    }
    let start = std::time::Instant::now();
    let mut printed: std::collections::HashSet<String> = Default::default();
    let mut out = std::io::stdout().lock();
    while seconds <= 0.0 || start.elapsed().as_secs_f64() < seconds {
        std::thread::sleep(Duration::from_millis(200));
        for f in engine.pass(Pass::Full, scan::unix_now())?.findings {
            for ev in f.evidence.iter().filter(|e| NETWORK.contains(&e.kind())) {
                let key = format!("{}\0{}", f.id, serde_json::to_string(ev)?);
                if printed.len() >= 100_000 || !printed.insert(key) {
                    continue;
                }
                let flow = f.flow.as_ref();
                if json {
                    let j = serde_json::json!({"time": scan::unix_now(), "pid": f.pid, "comm": f.pid.map(|_| &f.process.comm),
                        "flow": flow.map(|fl| serde_json::json!({"client": fl.client, "server": fl.server})), "evidence": ev});
                    writeln!(out, "{j}")?;
                } else {
                    let who = match (f.pid, flow) {
                        (Some(p), _) => format!("pid {p} ({})", output::clean(&f.process.comm, 32)),
                        (None, Some(fl)) => format!("{} -> {}", fl.client, fl.server),
                        (None, None) => String::new(),
                    };
                    writeln!(
                        out,
                        "{:<10} {:<9} {}  {}",
                        ev.weight.as_str(),
                        ev.kind(),
                        who,
                        output::clean(&ev.summary(), 200)
                    )?;
                }
                out.flush()?;
            }
        }
    }
    Ok(if printed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn run_rounding(seconds: f64, json: bool) -> anyhow::Result<ExitCode> {
    use rigwatch_agent::sensors::rounding::{judge, mode_names, RoundingSensor};
    let s = RoundingSensor::new(rigwatch_agent::sensors::rounding::Sampling::Always);
    if let Some(why) = s.unavailable() {
        anyhow::bail!("the rounding-mode sensor is unavailable: {why}");
    }
    let before = s.counts().map_err(anyhow::Error::msg)?;
    let start = std::time::Instant::now();
    if !json {
        eprintln!("rigwatch: watching rounding modes at context switches for {seconds:.0} s…");
    }
    std::thread::sleep(Duration::from_secs_f64(seconds.clamp(0.1, 86_400.0)));
    let window = start.elapsed().as_secs_f64();
    let now = s.counts().map_err(anyhow::Error::msg)?;
    let mut rows: Vec<(u32, u64, f64, Vec<String>, bool)> = now
        .iter()
        .map(|(pid, c)| {
            let b = before.get(pid).copied().unwrap_or_default();
            let n = c.odd.saturating_sub(b.odd);
            (*pid, n, n as f64 / window, mode_names(c.modes), judge(b, *c, window).is_some())
        })
        .filter(|r| r.1 > 0)
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    let comm = |pid: u32| {
        std::fs::read_to_string(std::path::Path::new(rigwatch_agent::paths::PROC).join(pid.to_string()).join("comm"))
            .map(|c| output::clean(c.trim(), 32))
            .unwrap_or_else(|_| "(exited)".into())
    };
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(
            out,
            "{:>8}  {:<16} {:>9} {:>9}  {:<22} randomx-like",
            "pid", "comm", "switches", "per s", "modes"
        )?;
    }
    for (pid, n, rate, modes, hit) in &rows {
        if json {
            let j = serde_json::json!({"pid": pid, "comm": comm(*pid), "switches": n, "rate_per_second": (rate * 10.0).round() / 10.0,
                "window_seconds": (window * 10.0).round() / 10.0, "modes": modes, "randomx_like": hit});
            writeln!(out, "{j}")?;
        } else {
            writeln!(
                out,
                "{pid:>8}  {:<16} {n:>9} {rate:>9.1}  {:<22} {}",
                comm(*pid),
                modes.join(","),
                if *hit { "yes" } else { "no" }
            )?;
        }
    }
    if !json && rows.is_empty() {
        writeln!(out, "(no process left round-to-nearest in {window:.0} s)")?;
    }
    Ok(if rows.iter().any(|r| r.4) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn run_signatures(c: SigCommand) -> anyhow::Result<ExitCode> {
    match c {
        SigCommand::ExportYara { sig } => {
            let loaded = load::load(&sig_dirs(&sig), true);
            print!("{}", rigwatch_signatures::compiled::to_yara(loaded.signatures.rules()));
            Ok(ExitCode::SUCCESS)
        }
        SigCommand::Check { paths, sig } => {
            let (count, errors) = if paths.is_empty() {
                let loaded = load::load(&sig_dirs(&sig), true);
                let mut errors = loaded.errors;
                errors.extend(loaded.signatures.check_examples());
                let yara = loaded.signatures.yara().map(|y| y.rules().len()).unwrap_or(0);
                (loaded.signatures.rules().len() + yara, errors)
            } else {
                let mut files = Vec::new();
                for p in &paths {
                    if p.is_dir() {
                        files.extend(load::rule_files(p).with_context(|| format!("reading {}", p.display()))?);
                        files.extend(load::yara_files(p).with_context(|| format!("reading {}", p.display()))?);
                    } else {
                        files.push(p.clone());
                    }
                }
                load::check_files(&files)
            };
            for e in &errors {
                println!("{e}");
            }
            if errors.is_empty() {
                eprintln!("ok: {count} rules, all examples pass");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{} errors in {count} rules", errors.len());
                Ok(ExitCode::from(1))
            }
        }
        SigCommand::List { json, sig } => {
            let loaded = load::load(&sig_dirs(&sig), true);
            let rules = loaded.signatures.rules();
            let yara = loaded.signatures.yara().map(|y| y.rules()).unwrap_or_default();
            if json {
                let mut v: Vec<_> = rules
                    .iter()
                    .map(|r| {
                        serde_json::json!({"id": r.id, "kind": r.kind.as_str(), "severity": r.severity.as_str(),
                        "entries": r.entries(), "file": r.file, "line": r.line, "description": r.description})
                    })
                    .collect();
                v.extend(yara.iter().map(|r| {
                    serde_json::json!({"id": r.id, "kind": "yara", "severity": r.weight.as_str(),
                        "entries": 1, "file": r.file, "line": r.line, "metadata": r.metadata})
                }));
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"version": loaded.signatures.version, "rules": v}))?
                );
            } else {
                println!("{:<34} {:<15} {:<11} {:>7}  FROM", "RULE", "KIND", "SEVERITY", "ENTRIES");
                for r in rules {
                    println!(
                        "{:<34} {:<15} {:<11} {:>7}  {}:{}",
                        r.id,
                        r.kind.as_str(),
                        r.severity.as_str(),
                        r.entries(),
                        r.file,
                        r.line
                    );
                }
                for r in yara {
                    println!(
                        "{:<34} {:<15} {:<11} {:>7}  {}:{}",
                        r.id,
                        "yara",
                        r.weight.as_str(),
                        1,
                        r.file,
                        r.line
                    );
                }
                println!(
                    "\n{} rules, version {}; sources:",
                    rules.len() + yara.len(),
                    loaded.signatures.version
                );
                for s in &loaded.sources {
                    println!("  {} ({} rules): {}", s.file, s.rules, output::clean(&s.meta.source, 200));
                }
            }
            for e in &loaded.errors {
                eprintln!("rigwatch: skipped: {e}");
            }
            Ok(if loaded.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        SigCommand::Import { format, file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "# imported by rigwatch signatures import from {}", file.display())?;
            match format {
                ImportFormat::Domains | ImportFormat::Hosts => {
                    let d = rigwatch_signatures::import::domains(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    for x in d {
                        writeln!(out, "{x}")?;
                    }
                }
                ImportFormat::Ipport => {
                    let a = rigwatch_signatures::import::addresses(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    for x in a {
                        match x {
                            rigwatch_signatures::import::Address::Ip(ip) => writeln!(out, "{ip}")?,
                            rigwatch_signatures::import::Address::Endpoint(e) => writeln!(out, "{e}")?,
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
