//! `GET /federate?match[]=…`: the newest sample of every matching series, as Prometheus 2.42
//! serves it, so a central Prometheus scrapes Perch with `honor_labels: true` and `metrics_path:
//! /federate`.
//!
//! - The newest sample within the lookback delta (`--query.lookback-delta`) before now; a series
//!   whose newest sample is a staleness marker is left out (the formats cannot carry one).
//! - Series of several `match[]` are merged (each once); no `match[]` gives an empty answer.
//! - Families are ordered by metric name, each `# TYPE <name> untyped`, with the sample's own
//!   timestamp in milliseconds.
//! - The external labels are added to every series that lacks them, and `instance=""` too when
//!   there is no external `instance` label (as Prometheus does, so that `honor_labels` keeps an
//!   empty instance instead of the federating target's).
//! - Text format 0.0.4 unless the client asks for delimited protobuf (`application/
//!   vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited`, what a
//!   Prometheus with native histograms enabled asks for). The protobuf *text* encodings are
//!   answered with the text format.

use super::api::parse_selector;
use super::expfmt;
use super::http::{Request, Response};
use super::WebState;
use crate::model::slice::{Slicer, StepSort, SLICE};
use crate::model::{is_stale, Labels, Matcher};
use crate::storage::select_in_slices;
use std::collections::BTreeMap;

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const PROTO_DELIM: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// The client model's messages (`io.prometheus.client`), as much as federation writes.
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricFamily {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(int32, optional, tag = "3")]
        pub r#type: Option<i32>,
        #[prost(message, repeated, tag = "4")]
        pub metric: Vec<Metric>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metric {
        #[prost(message, repeated, tag = "1")]
        pub label: Vec<LabelPair>,
        #[prost(message, optional, tag = "5")]
        pub untyped: Option<Untyped>,
        #[prost(int64, optional, tag = "6")]
        pub timestamp_ms: Option<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub value: Option<String>,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Untyped {
        #[prost(double, optional, tag = "1")]
        pub value: Option<f64>,
    }

    /// `MetricType.UNTYPED`.
    pub const UNTYPED: i32 = 3;
}

/// Whether the `Accept` header asks for delimited protobuf before the text format, read as
/// `expfmt.Negotiate` reads it (entries by falling quality, first match wins).
pub fn wants_protobuf(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let mut entries: Vec<(f32, usize, &str)> = accept
        .split(',')
        .enumerate()
        .map(|(i, e)| {
            let q = e
                .split(';')
                .skip(1)
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (q, i, e)
        })
        .collect();
    entries.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, _, e) in entries {
        let mut parts = e.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let params: Vec<(String, &str)> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"')))
            .collect();
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        if media == "application/vnd.google.protobuf"
            && param("proto") == Some("io.prometheus.client.MetricFamily")
        {
            match param("encoding") {
                Some("delimited") => return true,
                Some("text") | Some("compact-text") => return false,
                _ => {}
            }
        }
        if media == "text/plain" && matches!(param("version"), None | Some("0.0.4")) {
            return false;
        }
    }
    false
}

impl WebState {
    /// `/federate`: see the module doc. It selects in slices, and ticks a slicer per series
    /// while it gathers and encodes them, so federating every series of a big store does not
    /// hold up scrapes.
    pub(super) async fn federate(&self, req: &Request, now_ms: i64) -> Response {
        let mut slicer = Slicer::new(Some(SLICE), 256);
        let params = req.params();
        let mut sets: Vec<Vec<Matcher>> = Vec::new();
        for (k, v) in &params {
            if k == "match[]" {
                match parse_selector(v) {
                    Ok(m) => sets.push(m),
                    Err(e) => return Response::text(400, format!("{e}\n")),
                }
            }
        }
        let config = self.config();
        let lookback = config.flags.lookback_delta.as_millis() as i64;
        let (mint, maxt) = (now_ms - lookback, now_ms);
        // Newest sample per series, each series once however many selectors match it.
        let mut newest: BTreeMap<Labels, (i64, f64)> = BTreeMap::new();
        let querier = self.storage.querier();
        for set in &sets {
            let series = match select_in_slices(&*querier, set, mint, maxt).await {
                Ok(s) => s,
                Err(e) => return Response::text(500, format!("{e}\n")),
            };
            for s in series {
                slicer.tick().await;
                if newest.contains_key(&s.labels) {
                    continue;
                }
                if let Some(last) = s.samples.last() {
                    if !is_stale(last.v) {
                        newest.insert(s.labels, (last.t, last.v));
                    }
                }
            }
        }
        let mut samples: Vec<(Labels, (i64, f64))> = Vec::with_capacity(newest.len());
        for (l, v) in newest {
            slicer.tick().await;
            if !l.metric_name().is_empty() {
                samples.push((l, v));
            }
        }
        // By metric name; the label order within a name is kept (the map's, sorted).
        let mut sort = StepSort::new(samples);
        // (`StepSort` is not stable: the labels break ties, which gives the map's order.)
        let by_name = |a: &(Labels, _), b: &(Labels, _)| {
            (a.0.metric_name().cmp(b.0.metric_name())).then_with(|| a.0.cmp(&b.0))
        };
        while !sort.run(by_name, || slicer.is_up()) {
            slicer.next_slice().await;
        }
        let samples = sort.take();

        let mut external: Vec<(&str, &str)> = config
            .file
            .global
            .external_labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        if !external.iter().any(|(n, _)| *n == "instance") {
            external.push(("instance", ""));
            external.sort();
        }
        let proto = wants_protobuf(req.header("accept"));
        let body = if proto {
            encode_protobuf(&samples, &external, &mut slicer).await
        } else {
            encode_text(&samples, &external, &mut slicer).await
        };
        slicer.drop_all(samples).await;
        let mut resp = Response::new(200, if proto { PROTO_DELIM } else { TEXT }, body);
        if req.accepts_gzip() {
            resp.gzip();
        }
        resp
    }
}

/// The external labels a series does not already have (it keeps its own value).
fn missing<'a>(labels: &Labels, external: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    external
        .iter()
        .filter(|(n, _)| labels.get(n).is_empty())
        .copied()
        .collect()
}

async fn encode_text(
    samples: &[(Labels, (i64, f64))],
    external: &[(&str, &str)],
    slicer: &mut Slicer,
) -> Vec<u8> {
    let mut out = String::with_capacity(samples.len() * 96);
    let mut last_name = "";
    for (labels, (t, v)) in samples {
        slicer.tick().await;
        let name = labels.metric_name();
        if name != last_name {
            out.push_str("# TYPE ");
            out.push_str(name);
            out.push_str(" untyped\n");
            last_name = name;
        }
        expfmt::series_name(&mut out, labels, &missing(labels, external));
        out.push(' ');
        expfmt::go_float(&mut out, *v);
        out.push(' ');
        out.push_str(&t.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

async fn encode_protobuf(
    samples: &[(Labels, (i64, f64))],
    external: &[(&str, &str)],
    slicer: &mut Slicer,
) -> Vec<u8> {
    use prost::Message;
    let mut out = Vec::new();
    let mut family: Option<pb::MetricFamily> = None;
    for (labels, (t, v)) in samples {
        slicer.tick().await;
        let name = labels.metric_name();
        if family.as_ref().and_then(|f| f.name.as_deref()) != Some(name) {
            if let Some(f) = family.take() {
                let _ = f.encode_length_delimited(&mut out);
            }
            family = Some(pb::MetricFamily {
                name: Some(name.to_owned()),
                r#type: Some(pb::UNTYPED),
                metric: Vec::new(),
            });
        }
        let pair = |n: &str, v: &str| pb::LabelPair {
            name: Some(n.to_owned()),
            value: Some(v.to_owned()),
        };
        let mut label: Vec<pb::LabelPair> = labels
            .iter()
            .filter(|l| l.name != "__name__")
            .map(|l| pair(&l.name, &l.value))
            .collect();
        label.extend(missing(labels, external).iter().map(|(n, v)| pair(n, v)));
        if let Some(f) = family.as_mut() {
            f.metric.push(pb::Metric {
                label,
                untyped: Some(pb::Untyped { value: Some(*v) }),
                timestamp_ms: Some(*t),
            });
        }
    }
    if let Some(f) = family {
        let _ = f.encode_length_delimited(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    #[test]
    fn negotiates_like_expfmt() {
        assert!(!wants_protobuf(None));
        assert!(!wants_protobuf(Some(
            "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(wants_protobuf(Some(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3"
        )));
        assert!(!wants_protobuf(Some(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.2,text/plain;version=0.0.4;q=0.3"
        )));
        assert!(!wants_protobuf(Some("application/openmetrics-text")));
    }

    #[test]
    fn text_groups_by_name_and_adds_external_labels() {
        let s = vec![
            (
                Labels::from_pairs(&[("__name__", "a"), ("instance", "x:1"), ("job", "j")]),
                (1000, 1.5),
            ),
            (
                Labels::from_pairs(&[("__name__", "a"), ("instance", "y:1"), ("site", "own")]),
                (2000, 1e-5),
            ),
            (Labels::from_pairs(&[("__name__", "b")]), (3000, 7.0)),
        ];
        let ext = [("instance", ""), ("site", "greenhouse")];
        let text = String::from_utf8(block_on(encode_text(&s, &ext, &mut Slicer::none()))).unwrap();
        assert_eq!(
            text,
            "# TYPE a untyped\n\
             a{instance=\"x:1\",job=\"j\",site=\"greenhouse\"} 1.5 1000\n\
             a{instance=\"y:1\",site=\"own\"} 1e-05 2000\n\
             # TYPE b untyped\n\
             b{instance=\"\",site=\"greenhouse\"} 7 3000\n"
        );
    }

    #[test]
    fn protobuf_is_length_delimited_families() {
        use prost::Message;
        let s = vec![
            (
                Labels::from_pairs(&[("__name__", "a"), ("job", "j")]),
                (1000, 1.5),
            ),
            (Labels::from_pairs(&[("__name__", "b")]), (3000, 7.0)),
        ];
        let body = block_on(encode_protobuf(
            &s,
            &[("instance", "")],
            &mut Slicer::none(),
        ));
        let mut buf = &body[..];
        let a = pb::MetricFamily::decode_length_delimited(&mut buf).unwrap();
        let b = pb::MetricFamily::decode_length_delimited(&mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(a.name.as_deref(), Some("a"));
        assert_eq!(a.metric[0].label.len(), 2);
        assert_eq!(a.metric[0].timestamp_ms, Some(1000));
        assert_eq!(b.metric[0].untyped.unwrap().value, Some(7.0));
    }
}
