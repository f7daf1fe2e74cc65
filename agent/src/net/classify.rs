//! From packets to evidence: an IP packet into the flow table's packet, and
//! a flow event (stratum, TLS ClientHello, DNS) into evidence, the same for
//! live capture and for capture files.

use crate::net::flows::{Direction, FlowEvent, Packet};
use crate::net::proxy;

/// The SOCKS ports of a Tor client (tor, Tor Browser).
pub const TOR_SOCKS_PORTS: [u16; 2] = [9050, 9150];
use crate::net::shared::NetShared;
use rigwatch_signatures::{Evidence, EvidenceKind, Signatures, Weight};
use std::net::{IpAddr, SocketAddr};

/// Parses an IP packet (the network header first) into a transport packet.
pub fn parse_ip(buf: &[u8]) -> Option<Packet<'_>> {
    let s = etherparse::SlicedPacket::from_ip(buf).ok()?;
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match s.net? {
        etherparse::NetSlice::Ipv4(v4) => (v4.header().source_addr().into(), v4.header().destination_addr().into()),
        etherparse::NetSlice::Ipv6(v6) => (v6.header().source_addr().into(), v6.header().destination_addr().into()),
    };
    match s.transport? {
        etherparse::TransportSlice::Tcp(t) => Some(Packet {
            src: SocketAddr::new(src_ip, t.source_port()),
            dst: SocketAddr::new(dst_ip, t.destination_port()),
            tcp: true,
            seq: t.sequence_number(),
            syn: t.syn() && !t.ack(),
            syn_ack: t.syn() && t.ack(),
            payload: t.payload(),
        }),
        etherparse::TransportSlice::Udp(u) => Some(Packet {
            src: SocketAddr::new(src_ip, u.source_port()),
            dst: SocketAddr::new(dst_ip, u.destination_port()),
            tcp: false,
            seq: 0,
            syn: false,
            syn_ack: false,
            payload: u.payload(),
        }),
        _ => None,
    }
}

/// Turns flow events into evidence about the client side. DNS answers for
/// pool domains are remembered in `shared` (so later connections to those
/// addresses are evidence); returns (client, server, tcp, evidence).
pub fn evidence_of(sig: &Signatures, shared: Option<&NetShared>, ev: &FlowEvent) -> Vec<(SocketAddr, SocketAddr, bool, Evidence)> {
    let mut out = Vec::new();
    match ev {
        FlowEvent::Stratum { client, server, hit } => {
            let base = hit.method.split('(').next().unwrap_or(&hit.method);
            let rule = sig.stratum_method(base);
            let unsolicited = hit.direction == Direction::Unsolicited;
            let mut method = hit.method.clone();
            if unsolicited {
                method.push_str(" (unsolicited: sent toward the accepting side)");
            }
            // through a proxy, the pool is the destination asked of it
            let remote = match &hit.via {
                Some((kind, target)) => {
                    method.push_str(&format!(" (through the {} proxy {server})", kind.as_str()));
                    target.to_string()
                }
                None => server.to_string(),
            };
            let detail = EvidenceKind::Stratum {
                dialect: hit.dialect.clone(),
                method,
                agent: hit.agent.clone(),
                login: hit.login.clone(),
                worker: hit.worker.clone(),
                remote,
            };
            if unsolicited {
                // what a peer sends to a listener proves nothing about either
                out.push((*client, *server, true, Evidence::heuristic(detail, Weight::Suspicious)));
                return out;
            }
            let e = Evidence {
                detail,
                rule: rule.map(|r| r.id.clone()),
                taught_by: None,
                weight: Weight::Confirmed,
            };
            out.push((*client, *server, true, e));
            if let Some(login) = &hit.login {
                for w in sig.wallets_in(login, "stratum login") {
                    out.push((*client, *server, true, w));
                }
            }
        }
        FlowEvent::StratumV2 { client, server } => {
            let detail = EvidenceKind::Stratum {
                dialect: "stratum-v2".into(),
                method: "noise handshake (64/234 bytes)".into(),
                agent: None,
                login: None,
                worker: None,
                remote: server.to_string(),
            };
            out.push((*client, *server, true, Evidence::heuristic(detail, Weight::Likely)));
        }
        FlowEvent::Proxy {
            client,
            server,
            kind,
            target,
        } => {
            // The destination asked of a proxy is a connection to it, as far
            // as the pool lists go: a pool domain, address or port.
            let domain = sig.pool_domain(&target.host);
            let addr = target.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, target.port));
            let rule = match &domain {
                Some((_, i)) => Some(&sig.rules()[*i]),
                None => addr.and_then(|a| sig.pool_address(&a)).or_else(|| sig.pool_port(target.port)),
            };
            if let Some(r) = rule {
                let e = Evidence::from_rule(
                    EvidenceKind::PoolConnection {
                        remote: target.to_string(),
                        reason: format!("asked of the {} proxy {server}", kind.as_str()),
                        domain: domain.map(|(d, _)| d),
                    },
                    &r.id,
                    r.severity,
                );
                out.push((*client, *server, true, e));
            } else if TOR_SOCKS_PORTS.contains(&server.port()) && *kind != proxy::Kind::HttpConnect {
                // Tor hides the destination: worth a note beside a busy CPU
                // (suspicious weight: alone it makes no finding)
                let e = Evidence::heuristic(
                    EvidenceKind::Proxy {
                        protocol: format!("{} (a Tor SOCKS port)", kind.as_str()),
                        proxy: server.to_string(),
                        target: target.to_string(),
                    },
                    Weight::Suspicious,
                );
                out.push((*client, *server, true, e));
            }
        }
        FlowEvent::TlsSession {
            client,
            server,
            sni,
            ja4,
            shape,
        } => {
            // alone a heuristic (suspicious); toward a pool-like destination
            // (a pool address or port, an address a pool name resolved to,
            // a pool server name) it weighs likely
            let pool_like = sig.pool_address(server).is_some()
                || sig.pool_port(server.port()).is_some()
                || shared.is_some_and(|sh| sh.dns_learned(server.ip()).is_some())
                || sni.as_deref().is_some_and(|n| sig.pool_domain(n).is_some());
            let detail = EvidenceKind::TlsSession {
                remote: server.to_string(),
                server_name: sni.clone(),
                ja4: ja4.clone(),
                pushes: shape.pushes,
                push_bytes: shape.push_bytes,
                push_interval_seconds: shape.push_interval_ms as f64 / 1000.0,
                client_records: shape.client_records,
                seconds: shape.age_ms as f64 / 1000.0,
            };
            let w = if pool_like { Weight::Likely } else { Weight::Suspicious };
            out.push((*client, *server, true, Evidence::heuristic(detail, w)));
        }
        FlowEvent::TlsSni { client, server, name } => {
            if let Some((_, i)) = sig.pool_domain(name) {
                let r = &sig.rules()[i];
                let e = Evidence::from_rule(
                    EvidenceKind::TlsSni {
                        server_name: name.clone(),
                        remote: server.to_string(),
                    },
                    &r.id,
                    r.severity,
                );
                out.push((*client, *server, true, e));
            }
        }
        FlowEvent::Dns {
            client,
            server,
            questions,
            answers,
        } => {
            for q in questions {
                if let Some((domain, i)) = sig.pool_domain(q) {
                    let r = &sig.rules()[i];
                    let ips: Vec<String> = answers.iter().map(|(_, ip)| ip.to_string()).collect();
                    if let Some(sh) = shared {
                        for (_, ip) in answers {
                            sh.learn_dns(*ip, &domain);
                        }
                    }
                    let e = Evidence::from_rule(
                        EvidenceKind::Dns {
                            name: q.clone(),
                            answers: ips,
                        },
                        &r.id,
                        r.severity,
                    );
                    out.push((*client, *server, false, e));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::proxy::{Kind, Target};

    fn proxied(port: u16, kind: Kind, host: &str, to: u16) -> FlowEvent {
        FlowEvent::Proxy {
            client: "127.0.0.1:40000".parse().unwrap(),
            server: SocketAddr::new("127.0.0.1".parse().unwrap(), port),
            kind,
            target: Target {
                host: host.into(),
                port: to,
            },
        }
    }

    fn session(server: &str, sni: Option<&str>) -> FlowEvent {
        FlowEvent::TlsSession {
            client: "10.0.0.2:40000".parse().unwrap(),
            server: server.parse().unwrap(),
            sni: sni.map(str::to_string),
            ja4: "t13i181000_e8a523a41297_ef7df7f74e48".into(),
            shape: crate::net::tls_session::Shape {
                pushes: 4,
                push_bytes: [350, 366],
                push_interval_ms: 30_500,
                client_records: 5,
                age_ms: 95_000,
            },
        }
    }

    #[test]
    fn stratum_shaped_tls_weighs_more_toward_a_pool_like_destination() {
        let sig = rigwatch_signatures::load::load(&[], true).signatures;
        let one = |ev: &FlowEvent| match &evidence_of(&sig, None, ev)[..] {
            [(c, _, true, e)] => {
                assert_eq!(c.port(), 40000);
                e.clone()
            }
            other => panic!("{other:?}"),
        };
        let plain = one(&session("203.0.113.7:443", None));
        assert_eq!(plain.weight, Weight::Suspicious);
        assert!(plain.rule.is_none());
        match &plain.detail {
            EvidenceKind::TlsSession {
                remote,
                ja4,
                push_interval_seconds,
                pushes,
                ..
            } => {
                assert_eq!((remote.as_str(), *pushes), ("203.0.113.7:443", 4));
                assert!(ja4.starts_with("t13i") && (*push_interval_seconds - 30.5).abs() < 1e-9);
            }
            other => panic!("{other:?}"),
        }
        // a pool port, a pool server name: likely
        assert_eq!(one(&session("203.0.113.7:3333", None)).weight, Weight::Likely);
        assert_eq!(
            one(&session("203.0.113.7:443", Some("gulf.moneroocean.stream"))).weight,
            Weight::Likely
        );
        // an address a pool name resolved to
        let shared = NetShared::default();
        shared.learn_dns("203.0.113.9".parse().unwrap(), "supportxmr.com");
        match &evidence_of(&sig, Some(&shared), &session("203.0.113.9:443", None))[..] {
            [(_, _, _, e)] => assert_eq!(e.weight, Weight::Likely),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_a_proxy_was_asked_for_is_evidence() {
        let sig = rigwatch_signatures::load::load(&[], true).signatures;
        // a pool domain asked of any proxy: a pool connection, by its rule
        let ev = evidence_of(&sig, None, &proxied(1080, Kind::Socks5, "pool.supportxmr.com", 443));
        match &ev[..] {
            [(_, _, true, e)] => {
                assert!(
                    matches!(&e.detail, EvidenceKind::PoolConnection { remote, domain: Some(d), reason }
                    if remote == "pool.supportxmr.com:443" && d == "supportxmr.com" && reason.contains("socks5 proxy 127.0.0.1:1080")),
                    "{e:?}"
                );
                assert!(e.rule.is_some() && e.weight >= Weight::Likely, "{e:?}");
            }
            other => panic!("{other:?}"),
        }
        // anything through a Tor SOCKS port: a note (suspicious alone is no finding)
        let ev = evidence_of(&sig, None, &proxied(9050, Kind::Socks5, "example.org", 443));
        match &ev[..] {
            [(_, _, true, e)] => {
                assert_eq!(e.weight, Weight::Suspicious);
                assert!(
                    matches!(&e.detail, EvidenceKind::Proxy { target, .. } if target == "example.org:443"),
                    "{e:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        // an ordinary destination through an ordinary proxy: nothing
        assert!(evidence_of(&sig, None, &proxied(3128, Kind::HttpConnect, "example.org", 443)).is_empty());
    }
}
