//! LAN discovery: `dns_sd_configs` against a fake DNS server on loopback, and — between two
//! network namespaces joined by a veth pair, never on a real network — `mdns_sd_configs`
//! against a small mDNS responder, `dns_sd_configs` and DNS names of targets against the fake
//! server, with the real `perch` binary.

use crate::support::{get, temp_dir, wait_until, Fixture, Perch};
use perch::config::{DnsSdConfig, DnsSdType};
use perch::scrape::discovery::dns::DnsSd;
use perch::scrape::resolver::{self, ResolvConf};
use perch::telemetry::Telemetry;
use serde_json::Value;
use simple_dns::rdata::{RData, A, PTR, SRV, TXT};
use simple_dns::{Name, Packet, PacketFlag, ResourceRecord, CLASS, QTYPE, RCODE, TYPE};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake server holds for a name.
#[derive(Debug, Clone)]
enum Rr {
    A(Ipv4Addr),
    Srv(u16, &'static str),
    /// SERVFAIL.
    Fail,
    /// No answer at all (the client times out).
    Silent,
    /// Truncated over UDP; the A records over TCP.
    Big,
}

type Zone = Arc<Mutex<HashMap<String, Vec<Rr>>>>;

/// A DNS server for tests: answers from `zone` (lowercase rooted names; a name not in it is
/// NXDOMAIN), over UDP and, if given a listener, TCP; logs every question asked.
struct FakeDns {
    addr: SocketAddr,
    zone: Zone,
    asked: Arc<Mutex<Vec<String>>>,
}

impl FakeDns {
    fn start(udp: UdpSocket, tcp: Option<TcpListener>, zone: &[(&str, Vec<Rr>)]) -> FakeDns {
        let addr = udp.local_addr().unwrap();
        let zone: Zone = Arc::new(Mutex::new(
            zone.iter()
                .map(|(n, r)| (n.to_string(), r.clone()))
                .collect(),
        ));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (z, a) = (zone.clone(), asked.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                if let Some(reply) = answer(&buf[..n], &z, &a, false) {
                    let _ = udp.send_to(&reply, from);
                }
            }
        });
        if let Some(tcp) = tcp {
            let (z, a) = (zone.clone(), asked.clone());
            std::thread::spawn(move || {
                for s in tcp.incoming() {
                    let Ok(mut s) = s else { continue };
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_err() {
                        continue;
                    }
                    let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                    if s.read_exact(&mut q).is_err() {
                        continue;
                    }
                    if let Some(r) = answer(&q, &z, &a, true) {
                        let _ = s.write_all(&(r.len() as u16).to_be_bytes());
                        let _ = s.write_all(&r);
                    }
                }
            });
        }
        FakeDns { addr, zone, asked }
    }

    /// On 127.0.0.1, a random port, UDP and TCP.
    fn local(zone: &[(&str, Vec<Rr>)]) -> FakeDns {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = TcpListener::bind(udp.local_addr().unwrap()).unwrap();
        FakeDns::start(udp, Some(tcp), zone)
    }

    fn set(&self, name: &str, rrs: Vec<Rr>) {
        self.zone.lock().unwrap().insert(name.to_owned(), rrs);
    }

    fn asked(&self) -> Vec<String> {
        std::mem::take(&mut *self.asked.lock().unwrap())
    }
}

fn answer(q: &[u8], zone: &Zone, asked: &Mutex<Vec<String>>, tcp: bool) -> Option<Vec<u8>> {
    let q = Packet::parse(q).ok()?;
    let question = q.questions.first()?.clone();
    let name = format!("{}.", question.qname).to_ascii_lowercase();
    asked.lock().unwrap().push(name.clone());
    let mut r = Packet::new_reply(q.id());
    r.set_flags(PacketFlag::RECURSION_AVAILABLE);
    r.questions.push(question.clone());
    let rrs = zone.lock().unwrap().get(&name).cloned();
    let Some(rrs) = rrs else {
        *r.rcode_mut() = RCODE::NameError;
        return r.build_bytes_vec().ok();
    };
    for rr in rrs {
        let rdata = match rr {
            Rr::A(ip) => RData::A(A { address: ip.into() }),
            Rr::Srv(port, target) => RData::SRV(SRV {
                priority: 0,
                weight: 0,
                port,
                target: Name::new_unchecked(target),
            }),
            Rr::Fail => {
                *r.rcode_mut() = RCODE::ServerFailure;
                continue;
            }
            Rr::Silent => return None,
            Rr::Big if !tcp => {
                r.set_flags(PacketFlag::TRUNCATION);
                continue;
            }
            Rr::Big => {
                for i in 1..=100u32 {
                    r.answers.push(ResourceRecord::new(
                        question.qname.clone(),
                        CLASS::IN,
                        60,
                        RData::A(A {
                            address: 0x0a00_0000 + i,
                        }),
                    ));
                }
                continue;
            }
        };
        if QTYPE::TYPE(rdata.type_code()) == question.qtype {
            r.answers.push(ResourceRecord::new(
                question.qname.clone(),
                CLASS::IN,
                60,
                rdata,
            ));
        }
    }
    r.build_bytes_vec().ok()
}

fn dns_sd(names: &[&str], kind: DnsSdType, port: u16, conf: &ResolvConf) -> DnsSd {
    DnsSd::new(DnsSdConfig {
        names: names.iter().map(|n| n.to_string()).collect(),
        refresh_interval: Duration::from_secs(30),
        kind,
        port,
    })
    .with_resolv_conf(conf.clone())
}

fn targets(sd: &DnsSd) -> Vec<String> {
    sd.groups().flat_map(|g| g.targets.clone()).collect()
}

#[test]
fn dns_sd_against_a_fake_server() {
    let dns = FakeDns::local(&[
        (
            "_node._tcp.lan.",
            vec![Rr::Srv(9100, "n1.lan"), Rr::Srv(9101, "n2.lan")],
        ),
        ("gw.lan.", vec![Rr::A(Ipv4Addr::new(10, 0, 0, 1))]),
        ("big.lan.", vec![Rr::Big]),
    ]);
    let conf = ResolvConf {
        search: vec!["lan".into()],
        timeout: Duration::from_millis(300),
        attempts: 1,
        ..ResolvConf::with_server(dns.addr)
    };
    let tel = Telemetry::new(0.0);

    // SRV along the search list: two labels are more than ndots, so the name as is comes
    // first; a name that exists nowhere has no targets and is no error.
    let mut sd = dns_sd(&["_node._tcp", "gone"], DnsSdType::Srv, 0, &conf);
    assert!(async_io::block_on(sd.refresh(&tel)));
    assert_eq!(
        dns.asked(),
        vec!["_node._tcp.", "_node._tcp.lan.", "gone.lan.", "gone."]
    );
    assert_eq!(targets(&sd), vec!["n1.lan:9100", "n2.lan:9101"]);
    let g = sd.groups().next().unwrap();
    assert_eq!(
        g.labels.to_string(),
        r#"{__meta_dns_name="_node._tcp", __meta_dns_srv_record_port="9100", __meta_dns_srv_record_target="n1.lan."}"#
    );
    assert!(!async_io::block_on(sd.refresh(&tel)), "unchanged");

    // A failing server (SERVFAIL, then silence): the name keeps its targets, the failure is
    // counted.
    dns.set("_node._tcp.lan.", vec![Rr::Fail]);
    assert!(!async_io::block_on(sd.refresh(&tel)));
    assert_eq!(targets(&sd), vec!["n1.lan:9100", "n2.lan:9101"]);
    dns.set("_node._tcp.lan.", vec![Rr::Silent]);
    assert!(!async_io::block_on(sd.refresh(&tel)));
    assert_eq!(targets(&sd), vec!["n1.lan:9100", "n2.lan:9101"]);
    assert_eq!(tel.sd_dns_lookups.get(), 8);
    assert_eq!(tel.sd_dns_lookup_failures.get(), 2);
    // Back, with one target fewer.
    dns.set("_node._tcp.lan.", vec![Rr::Srv(9101, "n2.lan")]);
    assert!(async_io::block_on(sd.refresh(&tel)));
    assert_eq!(targets(&sd), vec!["n2.lan:9101"]);

    // A records with the config's port; a truncated answer is asked again over TCP.
    let mut sd = dns_sd(&["gw", "big.lan"], DnsSdType::A, 9100, &conf);
    assert!(async_io::block_on(sd.refresh(&tel)));
    let t = targets(&sd);
    assert_eq!(t.len(), 101);
    assert_eq!(t[0], "10.0.0.1:9100");
    assert_eq!(t[100], "10.0.0.100:9100");

    // The scrape client's lookup of a host name: A first.
    let ip = async_io::block_on(resolver::lookup_host(&conf, "gw")).unwrap();
    assert_eq!(ip, Some(Ipv4Addr::new(10, 0, 0, 1).into()));
    let ip = async_io::block_on(resolver::lookup_host(&conf, "none")).unwrap();
    assert_eq!(ip, None);
}

// ---------------------------------------------------------------------------------------------
// Between network namespaces.

/// Two network namespaces joined by a veth pair; everything is removed on drop, panics
/// included.
struct Lan {
    /// The responder's side (mDNS responder, fake DNS server, fixture target).
    a: String,
    /// Perch's side.
    b: String,
    veth_b: String,
}

const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (iproute2): {e}; this test needs iproute2"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}; this test needs root and network namespaces",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Lan {
    fn new() -> Lan {
        let id = std::process::id() % 100_000;
        let lan = Lan {
            a: format!("perch-mdns-a-{id}"),
            b: format!("perch-mdns-b-{id}"),
            veth_b: format!("pmb{id}"),
        };
        let veth_a = format!("pma{id}");
        ip(&["netns", "add", &lan.a]);
        ip(&["netns", "add", &lan.b]);
        ip(&[
            "link",
            "add",
            &veth_a,
            "type",
            "veth",
            "peer",
            "name",
            &lan.veth_b,
        ]);
        ip(&["link", "set", &veth_a, "netns", &lan.a]);
        ip(&["link", "set", &lan.veth_b, "netns", &lan.b]);
        for (ns, dev, addr) in [(&lan.a, &veth_a, ADDR_A), (&lan.b, &lan.veth_b, ADDR_B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        // Perch's side resolves through the fake server (`ip netns exec` mounts this file
        // over /etc/resolv.conf).
        let etc = format!("/etc/netns/{}", lan.b);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            format!("{etc}/resolv.conf"),
            format!("nameserver {ADDR_A}\nsearch lan\noptions timeout:1\n"),
        )
        .unwrap();
        lan
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.b));
        // Only if empty: another namespace's files stay.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// Runs `f` on a thread inside network namespace `ns` (sockets made there stay there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsFd;
        let fd = std::fs::File::open(&path).unwrap();
        rustix::thread::move_into_link_name_space(
            fd.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns into the test's network namespace");
        f()
    })
    .join()
    .unwrap()
}

/// A small mDNS responder on `sock` (port 5353, in the group): it announces one instance of
/// `_prometheus-http._tcp.local` and answers each question with that record only, so Perch has
/// to follow PTR → SRV + TXT → A itself. Queries from a port other than 5353 get unicast
/// answers with the query's ID and question (RFC 6762 §6.7).
fn mdns_responder(sock: UdpSocket, port: u16) {
    let svc = "_prometheus-http._tcp.local";
    let inst = "fixture 1._prometheus-http._tcp.local";
    let host = "fixture.local";
    std::thread::spawn(move || {
        let mut buf = [0u8; 9000];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let Ok(q) = Packet::parse(&buf[..n]) else {
                continue;
            };
            if q.has_flags(PacketFlag::RESPONSE) || from.port() == 5353 {
                continue;
            }
            let mut r = Packet::new_reply(q.id());
            r.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
            for question in &q.questions {
                let name = question.qname.to_string().to_ascii_lowercase();
                let rdata = match question.qtype {
                    QTYPE::TYPE(TYPE::PTR) if name == svc.to_ascii_lowercase() => {
                        RData::PTR(PTR(Name::new_unchecked(inst)))
                    }
                    QTYPE::TYPE(TYPE::SRV) if name == inst => RData::SRV(SRV {
                        priority: 0,
                        weight: 0,
                        port,
                        target: Name::new_unchecked(host),
                    }),
                    QTYPE::TYPE(TYPE::TXT) if name == inst => RData::TXT(
                        TXT::new()
                            .with_string("path=/custom/metrics")
                            .unwrap()
                            .with_string("Board=rpi4")
                            .unwrap(),
                    ),
                    QTYPE::TYPE(TYPE::A) if name == host => RData::A(A {
                        address: ADDR_A.into(),
                    }),
                    _ => continue,
                };
                r.questions.push(question.clone());
                r.answers.push(ResourceRecord::new(
                    question.qname.clone(),
                    CLASS::IN,
                    10,
                    rdata,
                ));
            }
            if !r.answers.is_empty() {
                let _ = sock.send_to(&r.build_bytes_vec().unwrap(), from);
            }
        }
    });
}

#[test]
#[ignore = "needs root and ip netns (iproute2)"]
fn mdns_and_dns_discovery_between_network_namespaces() {
    let lan = Lan::new();
    // The responder's side: the target, the mDNS responder, the DNS server.
    let (listener, mdns, dns_udp) = in_netns(&lan.a, || {
        let mdns = UdpSocket::bind("0.0.0.0:5353").unwrap();
        mdns.join_multicast_v4(&Ipv4Addr::new(224, 0, 0, 251), &ADDR_A)
            .unwrap();
        (
            TcpListener::bind((ADDR_A, 9100)).unwrap(),
            mdns,
            UdpSocket::bind((ADDR_A, 53)).unwrap(),
        )
    });
    let fixture = Fixture::handle_on(listener, "text/plain; version=0.0.4", false, |_, _| {
        (200, b"fixture_up 1\n".to_vec())
    });
    mdns_responder(mdns, 9100);
    let dns = FakeDns::start(
        dns_udp,
        None,
        &[
            ("_metrics._tcp.lan.", vec![Rr::Srv(9100, "fixture.lan")]),
            ("fixture.lan.", vec![Rr::A(ADDR_A)]),
        ],
    );

    // Perch's side.
    let dir = temp_dir("mdns-netns");
    let config = format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
         scrape_configs:\n\
         \x20 - job_name: lan\n\
         \x20   mdns_sd_configs: [{{interface: {}, refresh_interval: 2s}}]\n\
         \x20 - job_name: dns\n\
         \x20   dns_sd_configs: [{{names: [_metrics._tcp], refresh_interval: 2s}}]\n",
        lan.veth_b
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = 9090;
    let child = Command::new("ip")
        .args(["netns", "exec", &lan.b, env!("CARGO_BIN_EXE_perch")])
        .arg("--config.file")
        .arg(dir.join("prometheus.yml"))
        .arg("--storage.tsdb.path")
        .arg(dir.join("data"))
        .args(["--web.listen-address", &format!("127.0.0.1:{port}")])
        .args(["--log.level", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ip netns exec perch");
    let _perch = Perch { child, port, dir };
    let ns = lan.b.clone();
    let targets = move || -> Option<Vec<Value>> {
        let (status, body) = in_netns(&ns, move || get(port, "/api/v1/targets")).ok()?;
        (status == 200).then_some(())?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["activeTargets"].as_array().cloned()
    };
    let mut last = Vec::new();
    let both_up = |t: &[Value]| {
        ["lan", "dns"].iter().all(|job| {
            t.iter()
                .any(|t| t["scrapePool"] == *job && t["health"] == "up")
        })
    };
    wait_until(Duration::from_secs(30), || {
        last = targets().unwrap_or_default();
        both_up(&last)
    });
    let by_job = |job: &str| {
        last.iter()
            .find(|t| t["scrapePool"] == job)
            .unwrap()
            .clone()
    };

    let t = by_job("lan");
    let d = &t["discoveredLabels"];
    assert_eq!(d["__address__"], format!("{ADDR_A}:9100"), "{t}");
    assert_eq!(d["__meta_mdns_instance"], "fixture 1", "{t}");
    assert_eq!(d["__meta_mdns_hostname"], "fixture.local", "{t}");
    assert_eq!(d["__meta_mdns_port"], "9100", "{t}");
    assert_eq!(d["__meta_mdns_txt_board"], "rpi4", "{t}");
    assert_eq!(d["__meta_mdns_txt_path"], "/custom/metrics", "{t}");
    assert_eq!(
        t["scrapeUrl"],
        format!("http://{ADDR_A}:9100/custom/metrics"),
        "{t}"
    );
    assert_eq!(t["labels"]["instance"], format!("{ADDR_A}:9100"), "{t}");

    // DNS: SRV along the search list, then the target's name resolved by DNS for each scrape.
    let t = by_job("dns");
    let d = &t["discoveredLabels"];
    assert_eq!(d["__address__"], "fixture.lan:9100", "{t}");
    assert_eq!(d["__meta_dns_name"], "_metrics._tcp", "{t}");
    assert_eq!(d["__meta_dns_srv_record_target"], "fixture.lan.", "{t}");
    assert_eq!(d["__meta_dns_srv_record_port"], "9100", "{t}");
    assert!(dns.asked().iter().any(|n| n == "fixture.lan."));
    assert!(fixture.hits() >= 2);
}
