//! DNS service discovery (`dns_sd_configs`), as Prometheus 2.42's `discovery/dns`.
//!
//! Input: a [`DnsSdConfig`] (names, record type, port, `refresh_interval`) and the resolver's
//! settings ([`ResolvConf`], read from `/etc/resolv.conf` at every refresh unless given).
//! Output: one [`TargetGroup`] per record found, in the order of the names and of the answer:
//!
//! | record | `__address__` | labels |
//! |---|---|---|
//! | SRV | its target (trailing dot removed) and port | `__meta_dns_srv_record_target` (as the answer writes it, with the trailing dot), `__meta_dns_srv_record_port` |
//! | A, AAAA | the address and the config's `port` | — |
//! | MX | its exchange (trailing dot removed) and the config's `port` | `__meta_dns_mx_record_target` |
//!
//! and on each `__meta_dns_name`: the name as the config writes it.
//!
//! Contract, as 2.42:
//! - A name whose lookup fails (no server gave a usable answer for some name of the search
//!   list, see [`crate::scrape::resolver`]) keeps the targets it had; a name that does not
//!   exist (`NXDOMAIN` for every name of the search list) has none.
//! - Lookups and failures are counted (`prometheus_sd_dns_lookups_total`,
//!   `prometheus_sd_dns_lookup_failures_total` in Perch's `/metrics`).
//!
//! Bounds: at most [`MAX_RECORDS_PER_NAME`] records of one name are kept (an answer is at most
//! 64 KiB anyway).

use crate::config::{DnsSdConfig, DnsSdType, TargetGroup};
use crate::model::LabelsBuilder;
use crate::scrape::resolver::{self, Record, RecordType, ResolvConf};
use crate::telemetry::Telemetry;
use std::time::Duration;

/// The most targets one name gives.
pub const MAX_RECORDS_PER_NAME: usize = 1024;

/// The state of one `dns_sd_configs` entry: the groups of each name (None: never resolved).
#[derive(Debug)]
pub struct DnsSd {
    config: DnsSdConfig,
    /// Fixed resolver settings (tests); None: `/etc/resolv.conf` at every refresh.
    resolv: Option<ResolvConf>,
    groups: Vec<Option<Vec<TargetGroup>>>,
}

impl DnsSd {
    pub fn new(config: DnsSdConfig) -> Self {
        let groups = vec![None; config.names.len()];
        DnsSd {
            config,
            resolv: None,
            groups,
        }
    }

    /// Uses `conf` instead of `/etc/resolv.conf` (e.g. a fake server on a test port).
    pub fn with_resolv_conf(mut self, conf: ResolvConf) -> Self {
        self.resolv = Some(conf);
        self
    }

    pub fn refresh_interval(&self) -> Duration {
        self.config.refresh_interval
    }

    /// Looks every name up again; returns whether the groups changed.
    pub async fn refresh(&mut self, telemetry: &Telemetry) -> bool {
        let conf = match &self.resolv {
            Some(c) => c.clone(),
            None => match ResolvConf::system() {
                Ok(c) => c,
                Err(e) => {
                    // Every name fails: each keeps what it had.
                    log::error!("dns_sd: {e}");
                    let n = self.config.names.len() as u64;
                    telemetry
                        .sd_dns_lookups
                        .set(telemetry.sd_dns_lookups.get() + n);
                    telemetry
                        .sd_dns_lookup_failures
                        .set(telemetry.sd_dns_lookup_failures.get() + n);
                    return false;
                }
            },
        };
        let rtype = match self.config.kind {
            DnsSdType::Srv => RecordType::Srv,
            DnsSdType::A => RecordType::A,
            DnsSdType::Aaaa => RecordType::Aaaa,
            DnsSdType::Mx => RecordType::Mx,
        };
        let mut changed = false;
        for i in 0..self.config.names.len() {
            let name = self.config.names[i].clone();
            telemetry
                .sd_dns_lookups
                .set(telemetry.sd_dns_lookups.get() + 1);
            match resolver::lookup(&conf, &name, rtype).await {
                Ok(records) => {
                    let groups = groups_of(&name, self.config.port, &records);
                    changed |= self.groups[i].as_ref() != Some(&groups);
                    self.groups[i] = Some(groups);
                }
                Err(e) => {
                    telemetry
                        .sd_dns_lookup_failures
                        .set(telemetry.sd_dns_lookup_failures.get() + 1);
                    log::error!("dns_sd: error refreshing DNS targets: {e}");
                }
            }
        }
        changed
    }

    /// Every name's groups, names in config order.
    pub fn groups(&self) -> impl Iterator<Item = &TargetGroup> {
        self.groups.iter().flatten().flatten()
    }
}

/// `host:port`, brackets around an IPv6 host (Go's `net.JoinHostPort`).
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The groups (one target each) for the records that `name` resolved to.
pub fn groups_of(name: &str, port: u16, records: &[Record]) -> Vec<TargetGroup> {
    records
        .iter()
        .take(MAX_RECORDS_PER_NAME)
        .map(|r| {
            let mut b = LabelsBuilder::new();
            b.set("__meta_dns_name", name);
            let address = match r {
                Record::Srv { target, port } => {
                    b.set("__meta_dns_srv_record_target", target);
                    b.set("__meta_dns_srv_record_port", &port.to_string());
                    join_host_port(target.trim_end_matches('.'), *port)
                }
                Record::Mx { exchange } => {
                    b.set("__meta_dns_mx_record_target", exchange);
                    join_host_port(exchange.trim_end_matches('.'), port)
                }
                Record::A(ip) => join_host_port(&ip.to_string(), port),
                Record::Aaaa(ip) => join_host_port(&ip.to_string(), port),
            };
            TargetGroup {
                targets: vec![address],
                labels: b.build(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_as_2_42() {
        let g = groups_of(
            "_node._tcp.lan",
            0,
            &[Record::Srv {
                target: "n1.lan.".into(),
                port: 9100,
            }],
        );
        assert_eq!(g[0].targets, vec!["n1.lan:9100"]);
        assert_eq!(
            g[0].labels.to_string(),
            r#"{__meta_dns_name="_node._tcp.lan", __meta_dns_srv_record_port="9100", __meta_dns_srv_record_target="n1.lan."}"#
        );
        let g = groups_of(
            "h.lan",
            80,
            &[
                Record::A("10.0.0.1".parse().unwrap()),
                Record::Aaaa("fd00::1".parse().unwrap()),
                Record::Mx {
                    exchange: "mx.lan.".into(),
                },
            ],
        );
        assert_eq!(g[0].targets, vec!["10.0.0.1:80"]);
        assert_eq!(g[0].labels.to_string(), r#"{__meta_dns_name="h.lan"}"#);
        assert_eq!(g[1].targets, vec!["[fd00::1]:80"]);
        assert_eq!(g[2].targets, vec!["mx.lan:80"]);
        assert_eq!(g[2].labels.get("__meta_dns_mx_record_target"), "mx.lan.");
    }
}
