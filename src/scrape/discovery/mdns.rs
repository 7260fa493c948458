//! Multicast DNS service discovery (`mdns_sd_configs`, a Perch extension): devices on the LAN
//! that announce a DNS-SD service (RFC 6763) over multicast DNS (RFC 6762), no DNS server needed.
//!
//! Input: an [`MdnsSdConfig`] (service type, domain, `refresh_interval`, optional interface).
//! Output: one [`TargetGroup`] per service instance that answered, with the target
//! `address:port` (an IPv4 address of the instance's host if it has one, else a global IPv6
//! address) and the labels
//!
//! | label | value |
//! |---|---|
//! | `__meta_mdns_instance` | the instance name (its first label, e.g. `node 1`) |
//! | `__meta_mdns_hostname` | the SRV record's target, without the trailing dot (e.g. `node1.local`) |
//! | `__meta_mdns_port` | the SRV record's port |
//! | `__meta_mdns_txt_<key>` | each TXT `key=value`: the key lowercased, characters outside `[a-z0-9_]` as `_`; a key without `=` has the value `true`; the first of a repeated key wins (RFC 6763 §6.4) |
//! | `__metrics_path__` | the TXT key `path`, if present (a leading `/` added if missing) |
//!
//! How: every `refresh_interval`, [`browse`] sends a one-shot query (RFC 6762 §5.1) for the
//! service's PTR records from an ephemeral UDP port to 224.0.0.251:5353, so responders answer
//! by unicast to that port (§6.7) and Perch needs neither port 5353 nor a group membership
//! (an Avahi on the same board keeps its port). The query is sent twice (a lost packet costs no
//! refresh); answers are collected for [`QUERY_WINDOW`]. Instances whose SRV or TXT record, or
//! hosts whose address, did not come along as additional records are asked for in up to two
//! follow-up rounds of [`FOLLOW_UP_WINDOW`] each. IPv4 only.
//!
//! Contract:
//! - An instance that does not answer one refresh keeps its target; it goes after
//!   [`MISSES_BEFORE_DROP`] refreshes in a row without it, or at once when its PTR record comes
//!   with TTL 0 (a goodbye, RFC 6762 §10.1). A refresh whose socket fails changes nothing.
//! - Bounded: packets over [`MAX_PACKET`] bytes (RFC 6762 §17) are dropped, at most
//!   [`MAX_INSTANCES`] instances per service, [`MAX_TXT_KEYS`] TXT keys per instance and
//!   [`MAX_ADDRS`] addresses per host are kept.
//! - A malformed packet is ignored and counted (`perch_sd_mdns_bad_packets_total`), never a
//!   panic (see [`crate::scrape::resolver::parse_packet`]).

use crate::config::{MdnsSdConfig, TargetGroup};
use crate::model::LabelsBuilder;
use crate::scrape::resolver::parse_packet;
use crate::telemetry::Telemetry;
use async_io::Async;
use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, TYPE};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

/// The mDNS group and port (RFC 6762 §3).
pub const MDNS_V4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 251), 5353);
/// The largest mDNS packet (RFC 6762 §17); larger ones are dropped.
pub const MAX_PACKET: usize = 9000;
/// The most instances kept per service (and host names per browse).
pub const MAX_INSTANCES: usize = 256;
/// The most TXT keys kept per instance.
pub const MAX_TXT_KEYS: usize = 32;
/// The most addresses kept per host.
pub const MAX_ADDRS: usize = 4;
/// How long answers to the PTR query are collected.
pub const QUERY_WINDOW: Duration = Duration::from_millis(1000);
/// How long answers to a follow-up query (SRV, TXT, A, AAAA) are collected.
pub const FOLLOW_UP_WINDOW: Duration = Duration::from_millis(500);
/// Refreshes in a row an instance may miss before its target goes.
pub const MISSES_BEFORE_DROP: u32 = 2;

/// Lowercase text of a name, for comparing names (DNS names are case-insensitive).
fn key(name: &Name<'_>) -> String {
    name.to_string().to_ascii_lowercase()
}

/// One instance as the answers describe it.
#[derive(Debug, Default, Clone)]
struct Instance {
    /// The first label of the instance name, as UTF-8 (lossy).
    label: String,
    /// SRV: host (lowercase key) and its text as written, port.
    srv: Option<(String, String, u16)>,
    /// TXT `key=value` pairs, raw; None: no TXT record yet.
    txt: Option<Vec<(String, Option<String>)>>,
}

/// What the answers of one browse said about a service.
#[derive(Debug)]
pub struct Browse {
    /// The service's name, lowercase (`_prometheus-http._tcp.local`).
    service: String,
    /// Instances by lowercase name, with the name as written.
    instances: BTreeMap<String, (String, Instance)>,
    /// Instances that said goodbye (PTR with TTL 0).
    pub goodbyes: Vec<String>,
    /// Addresses by lowercase host name.
    addrs: HashMap<String, Vec<IpAddr>>,
    /// Packets ignored as malformed or too large.
    pub bad_packets: u64,
}

impl Browse {
    pub fn new(service: &str, domain: &str) -> Self {
        Browse {
            service: format!("{service}.{domain}").to_ascii_lowercase(),
            instances: BTreeMap::new(),
            goodbyes: Vec::new(),
            addrs: HashMap::new(),
            bad_packets: 0,
        }
    }

    /// The instance key for a record's owner name, if it is an instance of the service.
    fn instance_of(&self, owner: &Name<'_>) -> Option<String> {
        let k = key(owner);
        let rest = k.strip_suffix(&self.service)?;
        // Exactly one label before the service (dots inside it are escaped as `\.`).
        let label = rest.strip_suffix('.')?;
        (!label.is_empty() && !label.replace("\\.", "").contains('.')).then_some(k)
    }

    /// Reads one received packet; false if it is malformed (or too large).
    pub fn ingest(&mut self, data: &[u8]) -> bool {
        if data.len() > MAX_PACKET {
            self.bad_packets += 1;
            return false;
        }
        let Some(p) = parse_packet(data) else {
            self.bad_packets += 1;
            return false;
        };
        if !p.has_flags(PacketFlag::RESPONSE) {
            return true; // Another querier's question: nothing to learn.
        }
        // PTR records first, so SRV/TXT records of new instances in the same packet count.
        let records = || p.answers.iter().chain(p.additional_records.iter());
        for rr in records() {
            if let RData::PTR(ptr) = &rr.rdata {
                if key(&rr.name) != self.service {
                    continue;
                }
                let Some(k) = self.instance_of(&ptr.0) else {
                    continue;
                };
                if rr.ttl == 0 {
                    self.instances.remove(&k);
                    self.goodbyes.push(k);
                    continue;
                }
                if self.instances.len() >= MAX_INSTANCES && !self.instances.contains_key(&k) {
                    log::warn!(
                        "mdns_sd: more than {MAX_INSTANCES} instances of {}; the rest are ignored",
                        self.service
                    );
                    continue;
                }
                let label = ptr.0.get_labels()[0].to_string();
                let label = label.replace("\\.", ".").replace("\\\\", "\\");
                self.instances.entry(k).or_insert_with(|| {
                    (
                        ptr.0.to_string(),
                        Instance {
                            label,
                            ..Instance::default()
                        },
                    )
                });
            }
        }
        for rr in records() {
            match &rr.rdata {
                RData::SRV(srv) => {
                    if let Some((_, inst)) = self.instances.get_mut(&key(&rr.name)) {
                        let host = srv.target.to_string();
                        inst.srv = Some((host.to_ascii_lowercase(), host, srv.port));
                    }
                }
                RData::TXT(txt) => {
                    if let Some((_, inst)) = self.instances.get_mut(&key(&rr.name)) {
                        let pairs = txt
                            .iter_raw()
                            .filter(|(k, _)| !k.is_empty())
                            .take(MAX_TXT_KEYS)
                            .map(|(k, v)| {
                                (
                                    String::from_utf8_lossy(k).into_owned(),
                                    v.map(|v| String::from_utf8_lossy(v).into_owned()),
                                )
                            })
                            .collect();
                        inst.txt = Some(pairs);
                    }
                }
                RData::A(a) => self.add_addr(&rr.name, Ipv4Addr::from(a.address).into()),
                RData::AAAA(a) => {
                    self.add_addr(&rr.name, std::net::Ipv6Addr::from(a.address).into())
                }
                _ => {}
            }
        }
        true
    }

    fn add_addr(&mut self, host: &Name<'_>, ip: IpAddr) {
        let k = key(host);
        if self.addrs.len() >= MAX_INSTANCES && !self.addrs.contains_key(&k) {
            return;
        }
        let v = self.addrs.entry(k).or_default();
        if v.len() < MAX_ADDRS && !v.contains(&ip) {
            v.push(ip);
        }
    }

    /// The questions still open: SRV and TXT of instances without them, A and AAAA of hosts
    /// without an address.
    pub fn follow_ups(&self) -> Vec<(String, TYPE)> {
        let mut out = Vec::new();
        for (name, inst) in self.instances.values() {
            if inst.srv.is_none() {
                out.push((name.clone(), TYPE::SRV));
            }
            if inst.txt.is_none() {
                out.push((name.clone(), TYPE::TXT));
            }
            if let Some((k, host, _)) = &inst.srv {
                if !self.addrs.contains_key(k) && !out.iter().any(|(n, _)| n == host) {
                    out.push((host.clone(), TYPE::A));
                    out.push((host.clone(), TYPE::AAAA));
                }
            }
        }
        out
    }

    /// The target group of every instance with a port and an address, by instance key.
    pub fn groups(&self) -> Vec<(String, TargetGroup)> {
        let mut out = Vec::new();
        for (k, (name, inst)) in &self.instances {
            let Some((host_key, host, port)) = &inst.srv else {
                log::debug!("mdns_sd: instance {name} has no SRV record");
                continue;
            };
            let addrs = self.addrs.get(host_key).map(Vec::as_slice).unwrap_or(&[]);
            // IPv4 first; an IPv6 link-local address needs a zone, which a target cannot carry.
            let addr = addrs.iter().find(|a| a.is_ipv4()).or_else(|| {
                addrs
                    .iter()
                    .find(|a| matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) != 0xfe80))
            });
            let (Some(addr), true) = (addr, *port != 0) else {
                log::debug!("mdns_sd: instance {name}: no address for {host} or no port");
                continue;
            };
            let mut b = LabelsBuilder::new();
            b.set("__meta_mdns_instance", &inst.label);
            b.set("__meta_mdns_hostname", host);
            b.set("__meta_mdns_port", &port.to_string());
            let mut seen = Vec::new();
            for (tk, tv) in inst.txt.iter().flatten() {
                let name = format!("__meta_mdns_txt_{}", sanitize(tk));
                // RFC 6763 §6.4: the first occurrence of a key wins.
                if seen.contains(&name) {
                    continue;
                }
                seen.push(name.clone());
                b.set(&name, tv.as_deref().unwrap_or("true"));
                if tk.eq_ignore_ascii_case("path") {
                    if let Some(p) = tv.as_deref().filter(|p| !p.is_empty()) {
                        let p = if p.starts_with('/') {
                            p.to_owned()
                        } else {
                            format!("/{p}")
                        };
                        b.set("__metrics_path__", &p);
                    }
                }
            }
            let target = match addr {
                IpAddr::V4(a) => format!("{a}:{port}"),
                IpAddr::V6(a) => format!("[{a}]:{port}"),
            };
            out.push((
                k.clone(),
                TargetGroup {
                    targets: vec![target],
                    labels: b.build(),
                },
            ));
        }
        out
    }
}

/// A TXT key as a label name suffix: lowercase, `[a-z0-9_]` kept, anything else `_`.
pub fn sanitize(k: &str) -> String {
    k.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect()
}

/// An mDNS query packet asking `questions` (ID 0, as RFC 6762 §18.1 wants).
pub fn encode_query(questions: &[(String, TYPE)]) -> Option<Vec<u8>> {
    let mut p = Packet::new_query(0);
    for (n, t) in questions {
        p.questions.push(Question::new(
            Name::new(n).ok()?,
            QTYPE::TYPE(*t),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
    }
    p.build_bytes_vec().ok()
}

/// The socket a browse sends from: an ephemeral port, multicast TTL 255 (RFC 6762 §11),
/// leaving by `interface` if given.
fn socket(interface: Option<&str>) -> std::io::Result<Async<UdpSocket>> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.set_multicast_ttl_v4(255)?;
    if let Some(name) = interface {
        let index = rustix::net::netdevice::name_to_index(&sock, name)
            .map_err(|e| std::io::Error::other(format!("network interface {name:?}: {e}")))?;
        rustix::net::sockopt::set_ip_multicast_if_with_ifindex(
            &sock,
            &Ipv4Addr::UNSPECIFIED,
            &Ipv4Addr::UNSPECIFIED,
            index,
        )?;
    }
    Async::new(sock)
}

/// Receives packets into `b` until `deadline`.
async fn collect(
    sock: &Async<UdpSocket>,
    b: &mut Browse,
    deadline: Instant,
    buf: &mut [u8],
) -> std::io::Result<()> {
    loop {
        let recv = async { sock.recv_from(buf).await.map(Some) };
        let done = async {
            crate::runtime::timer::sleep_until(deadline).await;
            Ok(None)
        };
        match futures_lite::future::or(recv, done).await? {
            Some((n, from)) => {
                if !b.ingest(&buf[..n]) {
                    log::debug!("mdns_sd: ignored a malformed packet ({n} bytes) from {from}");
                }
            }
            None => return Ok(()),
        }
    }
}

/// One browse of the service: the query, the answers, up to two rounds of follow-ups.
pub async fn browse(
    config: &MdnsSdConfig,
    dest: SocketAddr,
    telemetry: &Telemetry,
) -> std::io::Result<Browse> {
    let sock = socket(config.interface.as_deref())?;
    let mut b = Browse::new(&config.service, &config.domain);
    // One more than the largest packet, so a larger one shows as too large.
    let mut buf = vec![0u8; MAX_PACKET + 1];
    let service = format!("{}.{}", config.service, config.domain);
    let query = encode_query(&[(service, TYPE::PTR)])
        .ok_or_else(|| std::io::Error::other("cannot encode the query"))?;
    let start = Instant::now();
    for resend in [Duration::ZERO, QUERY_WINDOW / 4] {
        collect(&sock, &mut b, start + resend, &mut buf).await?;
        sock.send_to(&query, dest).await?;
        telemetry
            .sd_mdns_queries
            .set(telemetry.sd_mdns_queries.get() + 1);
    }
    collect(&sock, &mut b, start + QUERY_WINDOW, &mut buf).await?;
    for _ in 0..2 {
        let open = b.follow_ups();
        if open.is_empty() {
            break;
        }
        // A few questions per packet keeps each query far below any MTU.
        for chunk in open.chunks(16) {
            if let Some(q) = encode_query(chunk) {
                sock.send_to(&q, dest).await?;
                telemetry
                    .sd_mdns_queries
                    .set(telemetry.sd_mdns_queries.get() + 1);
            }
        }
        collect(&sock, &mut b, Instant::now() + FOLLOW_UP_WINDOW, &mut buf).await?;
    }
    telemetry
        .sd_mdns_bad_packets
        .set(telemetry.sd_mdns_bad_packets.get() + b.bad_packets);
    Ok(b)
}

/// The state of one `mdns_sd_configs` entry: the instances seen, each with its group and the
/// refreshes it missed since.
#[derive(Debug)]
pub struct MdnsSd {
    config: MdnsSdConfig,
    dest: SocketAddr,
    kept: BTreeMap<String, (TargetGroup, u32)>,
}

impl MdnsSd {
    pub fn new(config: MdnsSdConfig) -> Self {
        MdnsSd {
            config,
            dest: MDNS_V4.into(),
            kept: BTreeMap::new(),
        }
    }

    pub fn refresh_interval(&self) -> Duration {
        self.config.refresh_interval
    }

    /// Browses again; returns whether the groups changed.
    pub async fn refresh(&mut self, telemetry: &Telemetry) -> bool {
        match browse(&self.config, self.dest, telemetry).await {
            Ok(b) => self.merge(&b),
            Err(e) => {
                let hint = match (e.kind(), &self.config.interface) {
                    (std::io::ErrorKind::NetworkUnreachable, None) => {
                        " (no route to 224.0.0.251: set `interface` to the LAN's interface)"
                    }
                    _ => "",
                };
                log::error!(
                    "mdns_sd: browsing {}.{} failed: {e}{hint}",
                    self.config.service,
                    self.config.domain
                );
                false
            }
        }
    }

    /// Takes a browse's answers in (see the module docs for what stays); whether the groups
    /// changed.
    pub fn merge(&mut self, b: &Browse) -> bool {
        let found = b.groups();
        let mut changed = false;
        for (_, (_, misses)) in self.kept.iter_mut() {
            *misses += 1;
        }
        for (k, g) in found {
            let room = self.kept.len() < MAX_INSTANCES;
            match self.kept.get_mut(&k) {
                Some((old, misses)) => {
                    *misses = 0;
                    if *old != g {
                        *old = g;
                        changed = true;
                    }
                }
                None if room => {
                    self.kept.insert(k, (g, 0));
                    changed = true;
                }
                None => {}
            }
        }
        let before = self.kept.len();
        self.kept
            .retain(|k, (_, misses)| *misses < MISSES_BEFORE_DROP && !b.goodbyes.contains(k));
        changed || self.kept.len() != before
    }

    /// Every instance's group, by instance name.
    pub fn groups(&self) -> impl Iterator<Item = &TargetGroup> {
        self.kept.values().map(|(g, _)| g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet of `tests/data/dns` (written by its `make.py`).
    fn data(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/dns")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn browse_of(files: &[&str]) -> Browse {
        let mut b = Browse::new("_prometheus-http._tcp", "local");
        for f in files {
            assert!(b.ingest(&data(f)), "{f}");
        }
        b
    }

    #[test]
    fn a_full_answer_gives_a_target_with_its_labels() {
        let b = browse_of(&["mdns-full-answer.bin"]);
        assert!(b.follow_ups().is_empty());
        let g = b.groups();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].0, "node 1._prometheus-http._tcp.local");
        assert_eq!(g[0].1.targets, vec!["10.0.0.2:9100"]);
        assert_eq!(
            g[0].1.labels.to_string(),
            r#"{__meta_mdns_hostname="node1.local", __meta_mdns_instance="node 1", __meta_mdns_port="9100", __meta_mdns_txt_bool="true", __meta_mdns_txt_env="lab", __meta_mdns_txt_path="probe", __meta_mdns_txt_x_y="1", __metrics_path__="/probe"}"#
        );
    }

    #[test]
    fn missing_records_are_asked_for_then_used() {
        let mut b = browse_of(&["mdns-ptr-only.bin"]);
        let inst = r"gw\.2._prometheus-http._tcp.local".to_owned();
        assert_eq!(
            b.follow_ups(),
            vec![(inst.clone(), TYPE::SRV), (inst.clone(), TYPE::TXT)]
        );
        assert!(b.groups().is_empty(), "no SRV yet");
        // The follow-up query encodes the escaped dot back into one label.
        let q = encode_query(&b.follow_ups()).unwrap();
        let p = Packet::parse(&q).unwrap();
        assert_eq!(p.questions[0].qname.get_labels()[0].to_string(), r"gw\.2");
        assert!(b.ingest(&data("mdns-srv-txt.bin")));
        assert_eq!(
            b.follow_ups(),
            vec![
                ("gw2.local".to_owned(), TYPE::A),
                ("gw2.local".to_owned(), TYPE::AAAA)
            ]
        );
        assert!(b.ingest(&data("mdns-aaaa.bin")));
        let g = b.groups();
        assert_eq!(g[0].1.targets, vec!["[fd00::2]:9200"]);
        assert_eq!(g[0].1.labels.get("__meta_mdns_instance"), "gw.2");
        assert_eq!(g[0].1.labels.get("__metrics_path__"), "");
    }

    #[test]
    fn an_instance_goes_after_two_missed_refreshes_or_a_goodbye() {
        let cfg = MdnsSdConfig {
            service: "_prometheus-http._tcp".into(),
            domain: "local".into(),
            refresh_interval: Duration::from_secs(30),
            interface: None,
        };
        let mut sd = MdnsSd::new(cfg.clone());
        let full = browse_of(&["mdns-full-answer.bin"]);
        let none = browse_of(&[]);
        assert!(sd.merge(&full));
        assert!(!sd.merge(&full), "the same");
        assert!(!sd.merge(&none), "one miss is forgiven");
        assert_eq!(sd.groups().count(), 1);
        assert!(sd.merge(&none), "two are not");
        assert_eq!(sd.groups().count(), 0);
        let mut sd = MdnsSd::new(cfg);
        sd.merge(&full);
        let bye = browse_of(&["mdns-goodbye.bin"]);
        assert_eq!(bye.goodbyes, vec!["node 1._prometheus-http._tcp.local"]);
        assert!(sd.merge(&bye));
        assert_eq!(sd.groups().count(), 0);
    }

    #[test]
    fn bad_packets_are_counted_never_a_panic() {
        let mut b = Browse::new("_prometheus-http._tcp", "local");
        for f in ["bad-counts.bin", "bad-cut.bin", "bad-loop.bin"] {
            assert!(!b.ingest(&data(f)), "{f}");
        }
        assert!(!b.ingest(&vec![0u8; MAX_PACKET + 1]));
        assert_eq!(b.bad_packets, 4);
        // Every prefix and every single-byte change of a good packet.
        let full = data("mdns-full-answer.bin");
        for n in 0..full.len() {
            b.ingest(&full[..n]);
            for v in [0x00, 0x3f, 0xc0, 0xff] {
                let mut p = full.clone();
                p[n] = v;
                b.ingest(&p);
                let _ = b.groups();
            }
        }
    }

    #[test]
    fn txt_keys_become_label_names() {
        assert_eq!(sanitize("Env"), "env");
        assert_eq!(sanitize("x-y.z"), "x_y_z");
        assert_eq!(sanitize("ünï"), "_n_");
    }
}
