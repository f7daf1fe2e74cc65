//! Human output: readable tables where every string that came from a
//! process is made safe to print (control characters escaped, length capped).

use crate::scan::ScanReport;
use rigwatch_signatures::Finding;
use std::fmt::Write;

/// Makes an attacker-controlled string safe for a terminal: control
/// characters escaped, at most `max` characters.
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The scan report as a table.
pub fn render(report: &ScanReport, color: bool) -> String {
    let mut o = String::new();
    let s = &report.scanned;
    let _ = writeln!(
        o,
        "rigwatch scan of {}: {} processes, {} executables read, {:.1}s window, signatures {} ({} rules)",
        clean(&report.host, 64),
        s.processes,
        s.binaries,
        s.window_seconds,
        s.signatures_version,
        s.rules
    );
    if report.findings.is_empty() {
        let _ = writeln!(o, "\nNo miner found.");
    } else {
        let count = |sev: &str| report.findings.iter().filter(|f| f.severity.as_str() == sev).count();
        let _ = writeln!(
            o,
            "\n{} findings: {} confirmed, {} likely, {} suspicious\n",
            report.findings.len(),
            count("confirmed"),
            count("likely"),
            count("suspicious")
        );
        let _ = writeln!(
            o,
            "{:<11} {:>7}  {:<12} {:<16} {:>6} {:>5}  EXECUTABLE",
            "SEVERITY", "PID", "USER", "PROCESS", "CPU", "GPU"
        );
        for f in &report.findings {
            row(&mut o, f, color);
        }
        let _ = writeln!(o);
        for f in &report.findings {
            detail(&mut o, f);
        }
    }
    for w in &report.warnings {
        let _ = writeln!(o, "note: {}", clean(w, 300));
    }
    o
}

fn paint(sev: &str, color: bool) -> String {
    if !color {
        return format!("{sev:<11}");
    }
    let code = match sev {
        "confirmed" => "1;31",
        "likely" => "31",
        _ => "33",
    };
    format!("\x1b[{code}m{sev:<11}\x1b[0m")
}

fn row(o: &mut String, f: &Finding, color: bool) {
    let p = &f.process;
    if let Some(fl) = &f.flow {
        let _ = writeln!(
            o,
            "{} {:>7}  {:<12} {:<16} {:>6} {:>5}  {} -> {} ({})",
            paint(f.severity.as_str(), color),
            "-",
            "-",
            "(flow)",
            "-",
            "-",
            fl.client,
            fl.server,
            fl.transport
        );
        return;
    }
    let cpu = f.cpu_cores.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into());
    let gpu = f
        .gpu
        .as_ref()
        .map(|g| format!("{:.0}%", g.utilization_percent))
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        o,
        "{} {:>7}  {:<12} {:<16} {:>6} {:>5}  {}",
        paint(f.severity.as_str(), color),
        p.pid,
        clean(&p.user, 12),
        clean(&p.comm, 16),
        cpu,
        gpu,
        clean(&p.exe, 80)
    );
}

fn detail(o: &mut String, f: &Finding) {
    let p = &f.process;
    if let Some(fl) = &f.flow {
        let _ = writeln!(
            o,
            "[{}] flow {} -> {} ({}), process not found, id {}",
            f.severity, fl.client, fl.server, fl.transport, f.id
        );
    } else {
        let _ = writeln!(
            o,
            "[{}] {} pid {} ({}) id {}",
            f.severity,
            clean(&p.comm, 32),
            p.pid,
            clean(&p.user, 32),
            f.id
        );
        let _ = writeln!(o, "    cmdline  {}", clean(&p.cmdline, 160));
    }
    if !p.cgroup.is_empty() {
        let _ = writeln!(o, "    cgroup   {}", clean(&p.cgroup, 160));
    }
    if let (Some(ns), Some(pod)) = (&p.namespace, &p.pod) {
        let _ = writeln!(o, "    pod      {}/{}", clean(ns, 64), clean(pod, 253));
    }
    for e in &f.evidence {
        let rule = e.rule.as_deref().map(|r| format!(" [{r}]")).unwrap_or_default();
        let _ = writeln!(
            o,
            "    {:<10} {:<18} {}{}",
            e.weight.as_str(),
            e.kind(),
            clean(&e.summary(), 160),
            clean(&rule, 60)
        );
    }
}
