//! An async DNS client on the executor: A, AAAA, SRV and MX lookups over UDP (TCP when the
//! answer is truncated), with the nameservers, search list and options of `/etc/resolv.conf`.
//!
//! Input: a name and a record type ([`RecordType`]), and a [`ResolvConf`] (read from
//! `/etc/resolv.conf` by [`ResolvConf::system`], or given, e.g. a test's fake server on a port
//! other than 53). Output: the records of that type in the answer ([`Record`]), or a
//! [`DnsError`].
//!
//! Contract:
//! - Nothing blocks and no thread is used: each query is one `Async<UdpSocket>` (or, after a
//!   truncated answer, one `Async<TcpStream>`), raced against a timer. No `getaddrinfo`.
//! - The search list is walked as Prometheus 2.42 does it (miekg/dns's `NameList` and
//!   `discovery/dns`'s `lookupWithSearchPath`): a name with a trailing dot is asked as is; a
//!   name with more labels than `ndots` is asked first as is, then with each search domain; a
//!   shorter one with each search domain first. The first answer with `NOERROR` wins; if every
//!   name got `NXDOMAIN`, the answer is empty; if some name got no usable answer from any
//!   server, the lookup fails (a discovery then keeps what it had).
//! - Each server is asked in turn; a try waits `options timeout:n` seconds (default 2 s, as the
//!   `dns.Client` that 2.42 uses), and the list is walked `options attempts:n` times (default 2).
//! - Answers are checked: the ID, the question and the sender must match the query (anything
//!   else is ignored, as a forged or late packet); at most [`MAX_UDP_ANSWER`] bytes over UDP and
//!   64 KiB over TCP are read. Decoding never panics (see [`parse_packet`]).
//!
//! The packet codec is the `simple-dns` crate (one dependency, `bitflags`). Measured on the
//! stripped x86_64 release binary with the same probe (encode a query, decode A, AAAA, SRV, PTR,
//! MX and TXT answers): `simple-dns` adds 58 KB, `hickory-proto` without default features
//! 299 KB. All of DNS and mDNS discovery, codec included, adds 172 KB (3,947,256 → 4,123,256
//! bytes). Queries are encoded without name compression, which would cost 20 KB more.

use async_io::Async;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, RCODE, TYPE};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// Where the system's resolver settings are read, as 2.42 reads them on every lookup.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The largest UDP answer read (and the EDNS0 buffer size announced, as 2.42's 4096).
pub const MAX_UDP_ANSWER: usize = 4096;

/// The record types Perch asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    A,
    Aaaa,
    Srv,
    Mx,
}

impl RecordType {
    fn to_type(self) -> TYPE {
        match self {
            RecordType::A => TYPE::A,
            RecordType::Aaaa => TYPE::AAAA,
            RecordType::Srv => TYPE::SRV,
            RecordType::Mx => TYPE::MX,
        }
    }
}

/// One answer record of the type asked for. Names are as the server wrote them, with the
/// trailing dot of a rooted name (as 2.42's labels show them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv { target: String, port: u16 },
    Mx { exchange: String },
}

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// `/etc/resolv.conf` could not be read, or names no server.
    Config(String),
    /// No server gave a usable answer (the last reason is kept).
    NoAnswer { name: String, reason: String },
    /// Every name of the search list was tried; at least one got no usable answer.
    Unresolved(String),
    /// The name is not a valid DNS name.
    BadName(String),
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::Config(m) => write!(f, "could not load resolv.conf: {m}"),
            DnsError::NoAnswer { name, reason } => write!(
                f,
                "could not resolve {name}: no servers returned a viable answer ({reason})"
            ),
            DnsError::Unresolved(name) => write!(
                f,
                "could not resolve {name:?}: all servers responded with errors to at least one search domain"
            ),
            DnsError::BadName(name) => write!(f, "{name:?} is not a valid DNS name"),
        }
    }
}

impl std::error::Error for DnsError {}

/// What a lookup needs from `/etc/resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines, port 53 (a test may give another port).
    pub servers: Vec<SocketAddr>,
    /// `search` (or `domain`) domains, without trailing dots.
    pub search: Vec<String>,
    /// `options ndots:n` (default 1, at most 15).
    pub ndots: usize,
    /// `options timeout:n`: how long one try waits (default 2 s).
    pub timeout: Duration,
    /// `options attempts:n`: how many times the server list is walked (default 2, at most 5).
    pub attempts: usize,
}

impl Default for ResolvConf {
    fn default() -> Self {
        ResolvConf {
            servers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(2),
            attempts: 2,
        }
    }
}

impl ResolvConf {
    /// One server, the defaults otherwise (for tests and fixed setups).
    pub fn with_server(server: SocketAddr) -> Self {
        ResolvConf {
            servers: vec![server],
            ..ResolvConf::default()
        }
    }

    /// Reads [`RESOLV_CONF`]. It is a small local file, read between `.await` points.
    pub fn system() -> Result<Self, DnsError> {
        let text =
            std::fs::read_to_string(RESOLV_CONF).map_err(|e| DnsError::Config(e.to_string()))?;
        let conf = ResolvConf::parse(&text);
        if conf.servers.is_empty() {
            return Err(DnsError::Config(format!(
                "{RESOLV_CONF} names no nameserver"
            )));
        }
        Ok(conf)
    }

    /// Parses resolv.conf text, as miekg/dns does: unknown lines and options are ignored;
    /// `domain` and `search` replace each other (the last wins).
    pub fn parse(text: &str) -> Self {
        let mut c = ResolvConf::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // An IPv6 address may carry a zone (`fe80::1%eth0`): it is dropped.
                    let Some(ip) = words
                        .next()
                        .and_then(|w| w.split('%').next().and_then(|a| a.parse::<IpAddr>().ok()))
                    else {
                        continue;
                    };
                    c.servers.push(SocketAddr::new(ip, 53));
                }
                Some("domain") => {
                    c.search = words
                        .next()
                        .map(|d| vec![d.trim_end_matches('.').to_owned()])
                        .unwrap_or_default();
                }
                Some("search") => {
                    c.search = words.map(|d| d.trim_end_matches('.').to_owned()).collect();
                }
                Some("options") => {
                    for o in words {
                        let n = |p: &str| o.strip_prefix(p).and_then(|v| v.parse::<usize>().ok());
                        if let Some(v) = n("ndots:") {
                            c.ndots = v.min(15);
                        } else if let Some(v) = n("timeout:") {
                            c.timeout = Duration::from_secs(v.clamp(1, 30) as u64);
                        } else if let Some(v) = n("attempts:") {
                            c.attempts = v.clamp(1, 5);
                        }
                    }
                }
                _ => {}
            }
        }
        c
    }

    /// The names to ask for `name`, in order (miekg/dns's `NameList`), each with a trailing dot.
    pub fn name_list(&self, name: &str) -> Vec<String> {
        if name.ends_with('.') {
            return vec![name.to_owned()];
        }
        let labels = name.split('.').filter(|l| !l.is_empty()).count();
        let as_is = format!("{name}.");
        let mut out = Vec::with_capacity(self.search.len() + 1);
        if labels > self.ndots {
            out.push(as_is.clone());
        }
        for s in &self.search {
            out.push(format!("{name}.{s}."));
        }
        if labels <= self.ndots {
            out.push(as_is);
        }
        out
    }
}

/// A decoded answer: its response code and the records of the type asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: u16,
    pub records: Vec<Record>,
}

/// `NOERROR` and `NXDOMAIN`, the two response codes that answer the question.
const NOERROR: u16 = 0;
const NXDOMAIN: u16 = 3;

/// Parses a DNS message without trusting its header: a packet whose section counts cannot fit
/// in its length is refused before decoding (the codec reserves room for every counted record
/// first, so a 12-byte packet claiming 65535 records would otherwise cost megabytes).
pub fn parse_packet(data: &[u8]) -> Option<Packet<'_>> {
    if data.len() < 12 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([data[i], data[i + 1]]) as usize;
    // A question takes at least 5 bytes (root name, type, class), a record at least 11.
    let least = count(4) * 5 + (count(6) + count(8) + count(10)) * 11;
    if least > data.len() - 12 {
        return None;
    }
    Packet::parse(data).ok()
}

/// The text of a name with its trailing dot, as a rooted name is written.
pub fn rooted(name: &Name<'_>) -> String {
    let mut s = name.to_string();
    s.push('.');
    s
}

/// A fresh query ID: the random keys std seeds every `RandomState` with, hashed with a count.
pub fn query_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    thread_local!(static N: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
    let n = N.with(|n| {
        n.set(n.get().wrapping_add(1));
        n.get()
    });
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish() as u16
}

/// Encodes a query for `name` (rooted text, e.g. `example.com.`); `recursive` sets RD, `edns`
/// adds an OPT record announcing [`MAX_UDP_ANSWER`].
pub fn encode_query(
    id: u16,
    name: &str,
    qtype: TYPE,
    recursive: bool,
    edns: bool,
) -> Result<Vec<u8>, DnsError> {
    let qname =
        Name::new(name.trim_end_matches('.')).map_err(|_| DnsError::BadName(name.to_owned()))?;
    let mut p = Packet::new_query(id);
    if recursive {
        p.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    if edns {
        *p.opt_mut() = Some(simple_dns::rdata::OPT {
            opt_codes: Vec::new(),
            udp_packet_size: MAX_UDP_ANSWER as u16,
            version: 0,
        });
    }
    p.questions.push(Question::new(
        qname,
        QTYPE::TYPE(qtype),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    p.build_bytes_vec()
        .map_err(|_| DnsError::BadName(name.to_owned()))
}

/// What one server said: an answer, a truncated answer (ask again over TCP), or nothing usable.
enum Reply {
    Answer(Answer),
    Truncated,
}

/// Decodes an answer to query `id` for `name`/`qtype`; `None` if it is not one (wrong ID or
/// question, not a response, not a DNS message).
fn decode_answer(data: &[u8], id: u16, name: &str, qtype: TYPE) -> Option<Reply> {
    let p = parse_packet(data)?;
    if p.id() != id || !p.has_flags(PacketFlag::RESPONSE) {
        return None;
    }
    // The question must be echoed (RFC 5452 §9.1); names compare case-insensitively.
    let q = p.questions.first()?;
    if !rooted(&q.qname).eq_ignore_ascii_case(name) || q.qtype != QTYPE::TYPE(qtype) {
        return None;
    }
    if p.has_flags(PacketFlag::TRUNCATION) {
        return Some(Reply::Truncated);
    }
    let records = p
        .answers
        .iter()
        .filter_map(|rr| match &rr.rdata {
            RData::A(a) if qtype == TYPE::A => Some(Record::A(Ipv4Addr::from(a.address))),
            RData::AAAA(a) if qtype == TYPE::AAAA => Some(Record::Aaaa(Ipv6Addr::from(a.address))),
            RData::SRV(s) if qtype == TYPE::SRV => Some(Record::Srv {
                target: rooted(&s.target),
                port: s.port,
            }),
            RData::MX(m) if qtype == TYPE::MX => Some(Record::Mx {
                exchange: rooted(&m.exchange),
            }),
            // CNAMEs (and anything else) come along with the records asked for.
            _ => None,
        })
        .collect();
    let rcode = match p.rcode() {
        RCODE::NoError => NOERROR,
        RCODE::NameError => NXDOMAIN,
        other => other as u16,
    };
    Some(Reply::Answer(Answer { rcode, records }))
}

/// Races `f` against a timer of `t`.
async fn timeout<T>(
    t: Duration,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    futures_lite::future::or(f, async {
        crate::runtime::timer::sleep(t).await;
        Err("i/o timeout".to_owned())
    })
    .await
}

/// Asks one server over UDP, then over TCP if the answer is truncated.
pub async fn ask_server(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    t: Duration,
) -> Result<Answer, String> {
    let qtype = rtype.to_type();
    let id = query_id();
    let query = encode_query(id, name, qtype, true, true).map_err(|e| e.to_string())?;
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let udp = async {
        let sock = Async::<UdpSocket>::bind(bind).map_err(|e| e.to_string())?;
        // Connected: the kernel drops datagrams from anyone but the server.
        sock.get_ref().connect(server).map_err(|e| e.to_string())?;
        sock.send(&query).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; MAX_UDP_ANSWER];
        loop {
            let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
            if let Some(r) = decode_answer(&buf[..n], id, name, qtype) {
                return Ok(r);
            }
            log::debug!("dns: ignored a packet from {server} that does not answer {name}");
        }
    };
    match timeout(t, udp).await? {
        Reply::Answer(a) => return Ok(a),
        Reply::Truncated => {}
    }
    // Truncated: the same question over TCP, each message behind its 2-byte length.
    let tcp = async {
        let mut s = Async::<TcpStream>::connect(server)
            .await
            .map_err(|e| e.to_string())?;
        let query = encode_query(id, name, qtype, true, false).map_err(|e| e.to_string())?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        s.write_all(&framed).await.map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        match decode_answer(&buf, id, name, qtype) {
            Some(Reply::Answer(a)) => Ok(a),
            Some(Reply::Truncated) => Err("got truncated message on TCP".to_owned()),
            None => Err("the TCP answer does not answer the question".to_owned()),
        }
    };
    timeout(t, tcp).await
}

/// Asks the servers in turn until one gives a usable answer (`NOERROR` or `NXDOMAIN`).
pub async fn lookup_from_any_server(
    conf: &ResolvConf,
    name: &str,
    rtype: RecordType,
) -> Result<Answer, DnsError> {
    let mut reason = "no nameserver".to_owned();
    for _ in 0..conf.attempts.max(1) {
        for &server in &conf.servers {
            match ask_server(server, name, rtype, conf.timeout).await {
                Ok(a) if a.rcode == NOERROR || a.rcode == NXDOMAIN => return Ok(a),
                Ok(a) => reason = format!("server {server}: rcode {}", a.rcode),
                Err(e) => {
                    log::debug!("dns: resolution of {name} failed at server {server}: {e}");
                    reason = format!("server {server}: {e}");
                }
            }
        }
    }
    Err(DnsError::NoAnswer {
        name: name.to_owned(),
        reason,
    })
}

/// Looks `name` up along the search list (see the module docs): the records of the first
/// name that exists, none if no name exists, an error if that cannot be told.
pub async fn lookup(
    conf: &ResolvConf,
    name: &str,
    rtype: RecordType,
) -> Result<Vec<Record>, DnsError> {
    let mut all_valid = true;
    for n in conf.name_list(name) {
        match lookup_from_any_server(conf, &n, rtype).await {
            Ok(a) if a.rcode == NOERROR => return Ok(a.records),
            Ok(_) => {}
            Err(e) => {
                log::debug!("dns: {e}");
                all_valid = false;
            }
        }
    }
    if all_valid {
        Ok(Vec::new())
    } else {
        Err(DnsError::Unresolved(name.to_owned()))
    }
}

/// The address of a host name: its first A record, else its first AAAA record.
pub async fn lookup_host(conf: &ResolvConf, host: &str) -> Result<Option<IpAddr>, DnsError> {
    for rtype in [RecordType::A, RecordType::Aaaa] {
        for r in lookup(conf, host, rtype).await? {
            match r {
                Record::A(ip) => return Ok(Some(ip.into())),
                Record::Aaaa(ip) => return Ok(Some(ip.into())),
                _ => {}
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resolv_conf_as_miekg_does() {
        let c = ResolvConf::parse(
            "# comment\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\nnameserver bogus\n\
             domain old.lan\nsearch lan. corp.example\noptions ndots:2 timeout:3 attempts:9 rotate\n",
        );
        assert_eq!(
            c.servers,
            vec![
                "10.0.0.1:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(c.search, vec!["lan", "corp.example"]);
        assert_eq!(c.ndots, 2);
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.attempts, 5);
        assert_eq!(ResolvConf::parse("").ndots, 1);
    }

    #[test]
    fn search_list_order_follows_label_count_and_ndots() {
        let c = ResolvConf {
            search: vec!["lan".into(), "corp".into()],
            ..ResolvConf::default()
        };
        assert_eq!(c.name_list("gw"), vec!["gw.lan.", "gw.corp.", "gw."]);
        assert_eq!(
            c.name_list("gw.site"),
            vec!["gw.site.", "gw.site.lan.", "gw.site.corp."]
        );
        assert_eq!(c.name_list("gw.site."), vec!["gw.site."]);
    }

    #[test]
    fn refuses_packets_whose_counts_cannot_fit() {
        // A 12-byte header claiming 65535 answers.
        let mut p = vec![0u8; 12];
        p[6] = 0xff;
        p[7] = 0xff;
        assert!(parse_packet(&p).is_none());
        assert!(parse_packet(&p[..5]).is_none());
        p[6] = 0;
        p[7] = 0;
        assert!(parse_packet(&p).is_some());
    }

    #[test]
    fn answers_must_match_the_query() {
        let q = encode_query(7, "h.lan.", TYPE::A, true, true).unwrap();
        let mut p = Packet::parse(&q).unwrap().into_reply();
        p.answers.push(simple_dns::ResourceRecord::new(
            Name::new_unchecked("h.lan"),
            CLASS::IN,
            60,
            RData::A(simple_dns::rdata::A {
                address: 0x0a000002,
            }),
        ));
        let bytes = p.build_bytes_vec().unwrap();
        match decode_answer(&bytes, 7, "H.lan.", TYPE::A) {
            Some(Reply::Answer(a)) => {
                assert_eq!(a.rcode, NOERROR);
                assert_eq!(a.records, vec![Record::A(Ipv4Addr::new(10, 0, 0, 2))]);
            }
            _ => panic!("not an answer"),
        }
        assert!(decode_answer(&bytes, 8, "h.lan.", TYPE::A).is_none(), "ID");
        assert!(
            decode_answer(&bytes, 7, "x.lan.", TYPE::A).is_none(),
            "name"
        );
        assert!(decode_answer(&q, 7, "h.lan.", TYPE::A).is_none(), "a query");
    }

    #[test]
    fn decodes_a_compressed_srv_answer() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/dns/dns-srv-answer.bin");
        let bytes = std::fs::read(p).unwrap();
        match decode_answer(&bytes, 0x1234, "_node._tcp.lan.", TYPE::SRV) {
            Some(Reply::Answer(a)) => assert_eq!(
                a.records,
                vec![
                    Record::Srv {
                        target: "n1.lan.".into(),
                        port: 9100
                    },
                    Record::Srv {
                        target: "n2.lan.".into(),
                        port: 9101
                    }
                ]
            ),
            _ => panic!("not an answer"),
        }
        assert!(decode_answer(&bytes, 0x1234, "_node._tcp.lan.", TYPE::A).is_none());
    }
}
