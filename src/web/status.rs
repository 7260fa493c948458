//! The status API (`/api/v1/status/*`): config, flags, runtime and build information, and the
//! store's cardinality figures, in Prometheus 2.42's JSON layout.
//!
//! `status/tsdb` is computed through the storage seam's `Querier`, one metric name at a time,
//! so the samples a `select` copies are bounded by the largest metric, not the whole store.
//! `status/storage` is a Perch extension: the store's figures against its retention budget,
//! for the web UI's Status page.

use super::api::{success, ApiError, Params};
use super::http::Response;
use super::json;
use super::time::format_rfc3339;
use super::WebState;
use crate::config::{format_duration, Flags};
use crate::model::slice::{Slicer, StepSort, SLICE};
use crate::model::{Matcher, METRIC_NAME};
use crate::storage::series_in_slices;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// A size as Go's `units.Base2Bytes` writes it: `512MiB`, `1GiB512MiB`, `0B`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 6] = [
        ("EiB", 1 << 60),
        ("PiB", 1 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    if n == 0 {
        return "0B".into();
    }
    let mut s = String::new();
    let mut rest = n;
    for (name, size) in UNITS {
        if rest >= size {
            let _ = write!(s, "{}{name}", rest / size);
            rest %= size;
        }
    }
    if rest > 0 {
        let _ = write!(s, "{rest}B");
    }
    s
}

/// The flags as `status/flags` lists them: Prometheus's names, every value a string.
pub fn flag_map(f: &Flags) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    let path = |p: &std::path::Path| p.display().to_string();
    m.insert(
        "config.file",
        f.config_file.as_deref().map(path).unwrap_or_default(),
    );
    m.insert("storage.tsdb.path", path(&f.storage_path));
    m.insert(
        "storage.tsdb.retention.time",
        format_duration(f.retention_time),
    );
    m.insert(
        "storage.tsdb.retention.size",
        format_bytes(f.retention_size),
    );
    m.insert("storage.flush-interval", format_duration(f.flush_interval));
    m.insert("web.listen-address", f.listen_address.clone());
    m.insert("web.enable-lifecycle", f.enable_lifecycle.to_string());
    m.insert("web.enable-admin-api", f.enable_admin_api.to_string());
    m.insert("web.cors.origin", f.cors_origin.clone());
    m.insert("query.lookback-delta", format_duration(f.lookback_delta));
    m.insert("query.timeout", format_duration(f.query_timeout));
    m.insert("query.max-samples", f.query_max_samples.to_string());
    m.insert("log.level", f.log_level.to_string().to_ascii_lowercase());
    // As Prometheus: the features turned on, comma-separated ("" when none).
    m.insert(
        "enable-feature",
        if f.promql_delayed_name_removal {
            "promql-delayed-name-removal"
        } else {
            ""
        }
        .to_owned(),
    );
    m.insert(
        "storage.remote.read-sample-limit",
        f.remote_read_sample_limit.to_string(),
    );
    m.insert(
        "storage.remote.read-max-bytes-in-frame",
        f.remote_read_max_bytes_in_frame.to_string(),
    );
    m
}

/// Appends `[{"name":…,"value":…},…]`, the `limit` largest by value (ties by name).
/// The `limit` largest counts (ties by name), in slices: a label of 100k values gives 100k
/// pairs to rank.
async fn top(out: &mut String, counts: HashMap<String, u64>, limit: usize, slicer: &mut Slicer) {
    let mut v: Vec<(String, u64)> = Vec::with_capacity(counts.len());
    for x in counts {
        slicer.tick().await;
        v.push(x);
    }
    let mut sort = StepSort::new(v);
    let by_count = |a: &(String, u64), b: &(String, u64)| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0));
    while !sort.run(by_count, || slicer.is_up()) {
        slicer.next_slice().await;
    }
    let mut v = sort.take();
    let rest = v.split_off(limit.min(v.len()));
    slicer.drop_all(rest).await;
    out.push('[');
    for (i, (name, value)) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        json::string(out, name);
        let _ = write!(out, ",\"value\":{value}}}");
    }
    out.push(']');
}

impl WebState {
    /// `/api/v1/status/config`: the YAML text as loaded.
    pub fn api_status_config(&self) -> Result<Response, ApiError> {
        let mut s = String::from("{\"yaml\":");
        json::string(&mut s, &self.config().file.source);
        s.push('}');
        Ok(success(&s, &[]))
    }

    /// `/api/v1/status/flags`
    pub fn api_status_flags(&self) -> Result<Response, ApiError> {
        let mut s = String::from("{");
        for (i, (k, v)) in flag_map(&self.config().flags).iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            json::string(&mut s, k);
            s.push(':');
            json::string(&mut s, v);
        }
        s.push('}');
        Ok(success(&s, &[]))
    }

    /// `/api/v1/status/runtimeinfo`, with Go's fields answered for Perch: one executor thread
    /// (`GOMAXPROCS` 1) and the number of tasks as the "goroutines".
    pub fn api_status_runtimeinfo(&self) -> Result<Response, ApiError> {
        let start_ms = (self.telemetry.start_time.get() * 1000.0).round() as i64;
        let cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|e| format!("<error retrieving current working directory: {e}>"));
        let flags = &self.config().flags;
        let retention = format!(
            "{} or {}",
            format_duration(flags.retention_time),
            format_bytes(flags.retention_size)
        );
        // The accept loop, housekeeping, one task per target and one per connection.
        let tasks = 2 + self.targets.borrow().len() + self.connections.get();
        let mut s = String::from("{\"startTime\":");
        json::string(&mut s, &format_rfc3339(start_ms));
        s.push_str(",\"CWD\":");
        json::string(&mut s, &cwd);
        let _ = write!(
            s,
            ",\"reloadConfigSuccess\":{},\"lastConfigTime\":",
            self.reload_success.get()
        );
        json::string(
            &mut s,
            &format_rfc3339(self.last_config_ms.get() / 1000 * 1000),
        );
        let _ = write!(
            s,
            ",\"corruptionCount\":0,\"goroutineCount\":{tasks},\"GOMAXPROCS\":1,\"GOGC\":\"\",\"GODEBUG\":\"\",\"storageRetention\":"
        );
        json::string(&mut s, &retention);
        s.push('}');
        Ok(success(&s, &[]))
    }

    /// `/api/v1/status/tsdb`: head statistics and the top cardinalities (`limit`, default 10).
    /// Counted a metric at a time with a slicer ticking per series, so a store of 100k series
    /// (a few hundred ms of counting) does not hold up scrapes.
    pub async fn api_status_tsdb(&self, p: &Params) -> Result<Response, ApiError> {
        let mut slicer = Slicer::new(Some(SLICE), 256);
        let limit = match p.get("limit") {
            None | Some("") => 10,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=10_000).contains(&n) => n,
                _ => {
                    return Err(ApiError::BadData(
                        "limit must be a positive number less than or equal to 10000".into(),
                    ))
                }
            },
        };
        let stats = self.storage.stats();
        let q = self.storage.querier();
        let storage_err = |e: crate::storage::StorageError| ApiError::Internal(e.to_string());
        let (mint, maxt) = (i64::MIN, i64::MAX);
        let mut by_metric: HashMap<String, u64> = HashMap::new();
        let mut by_pair: HashMap<String, u64> = HashMap::new();
        let mut values_by_name: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        let mut num_series = 0u64;
        for name in q
            .label_values(METRIC_NAME, &[], mint, maxt)
            .map_err(storage_err)?
        {
            slicer.pause().await;
            // One metric at a time keeps what a store without an index answer copies bounded.
            let series = series_in_slices(&*q, &[Matcher::equal(METRIC_NAME, &name)], mint, maxt)
                .await
                .map_err(storage_err)?;
            by_metric.insert(name, series.len() as u64);
            for labels in series {
                slicer.tick().await;
                num_series += 1;
                for l in &labels {
                    *by_pair
                        .entry(format!("{}={}", l.name, l.value))
                        .or_default() += 1;
                    let vals = values_by_name.entry(l.name.to_string()).or_default();
                    if !vals.contains(l.value.as_str()) {
                        vals.insert(l.value.to_string());
                    }
                }
            }
        }
        let num_pairs: usize = values_by_name.values().map(|v| v.len()).sum();
        let value_counts: HashMap<String, u64> = values_by_name
            .iter()
            .map(|(k, v)| (k.clone(), v.len() as u64))
            .collect();
        let mut memory: HashMap<String, u64> = HashMap::new();
        for (k, v) in values_by_name {
            let mut bytes = 0;
            for x in v {
                slicer.tick().await;
                bytes += x.len() as u64;
            }
            memory.insert(k, bytes);
        }
        let mut s = String::new();
        let _ = write!(
            s,
            "{{\"headStats\":{{\"numSeries\":{num_series},\"numLabelPairs\":{num_pairs},\"chunkCount\":{},\"minTime\":{},\"maxTime\":{}}}",
            // Perch's store has no head chunks; this is the number of 120-sample chunks its
            // samples would fill.
            stats.samples_in_memory.div_ceil(120),
            stats.min_time.unwrap_or(i64::MAX),
            stats.max_time.unwrap_or(i64::MIN),
        );
        s.push_str(",\"seriesCountByMetricName\":");
        top(&mut s, by_metric, limit, &mut slicer).await;
        s.push_str(",\"labelValueCountByLabelName\":");
        top(&mut s, value_counts, limit, &mut slicer).await;
        s.push_str(",\"memoryInBytesByLabelName\":");
        top(&mut s, memory, limit, &mut slicer).await;
        s.push_str(",\"seriesCountByLabelValuePair\":");
        top(&mut s, by_pair, limit, &mut slicer).await;
        s.push('}');
        Ok(success(&s, &[]))
    }
}

impl WebState {
    /// `/api/v1/status/storage`, a Perch extension for the UI's Status page: the store's figures
    /// (`StorageStats`) against the retention flags. Times are ms since the epoch (`null` for an
    /// empty store), sizes bytes, the totals count since `startTime`.
    /// `sizeRetentionReached`: the ring is full, so the next new segment deletes the oldest
    /// (used bytes plus one segment exceed the budget). `timeRetentionReached`: the samples
    /// span the whole retention time, so retention by time is deleting old data.
    pub fn api_status_storage(&self) -> Result<Response, ApiError> {
        let st = self.storage.stats();
        let flags = &self.config().flags;
        let budget = flags.retention_size;
        let segment = crate::storage::flash::FlashOptions {
            budget_bytes: budget,
            ..Default::default()
        }
        .segment_bytes();
        let retention_ms = flags.retention_time.as_millis() as i64;
        let covered_ms = match (st.min_time, st.max_time) {
            (Some(a), Some(b)) => b.saturating_sub(a).max(0),
            _ => 0,
        };
        let time = |t: Option<i64>| t.map_or("null".to_string(), |t| t.to_string());
        let start_ms = (self.telemetry.start_time.get() * 1000.0).round() as i64;
        let fields: [(&str, String); 19] = [
            ("diskBytes", st.disk_bytes.to_string()),
            ("budgetBytes", budget.to_string()),
            ("segmentBytes", segment.to_string()),
            (
                "sizeRetentionReached",
                (st.disk_bytes > 0 && st.disk_bytes.saturating_add(segment) > budget).to_string(),
            ),
            ("retentionTimeSeconds", (retention_ms / 1000).to_string()),
            ("coveredSeconds", (covered_ms / 1000).to_string()),
            (
                "timeRetentionReached",
                (covered_ms >= retention_ms).to_string(),
            ),
            ("minTime", time(st.min_time)),
            ("maxTime", time(st.max_time)),
            ("series", st.series.to_string()),
            ("samplesInMemory", st.samples_in_memory.to_string()),
            ("memoryBytes", st.memory_bytes.to_string()),
            (
                "samplesAppendedTotal",
                st.samples_appended_total.to_string(),
            ),
            ("outOfOrderTotal", st.out_of_order_total.to_string()),
            ("duplicateTotal", st.duplicate_total.to_string()),
            ("bytesWrittenTotal", st.bytes_written_total.to_string()),
            ("writeErrorsTotal", st.write_errors_total.to_string()),
            ("corruptRecordsTotal", st.corrupt_records_total.to_string()),
            ("startTime", start_ms.to_string()),
        ];
        let mut s = String::from("{");
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            json::string(&mut s, k);
            s.push(':');
            s.push_str(v);
        }
        s.push('}');
        Ok(success(&s, &[]))
    }
}

impl WebState {
    /// `GET /api/v1/status/remote` (a Perch extension): the remote-write senders' progress and
    /// the store positions an export cursor can take.
    pub fn api_status_remote(&self) -> Result<Response, ApiError> {
        let time = |t: Option<i64>| t.map_or("null".to_string(), |t| t.to_string());
        let mut s = String::from("{\"remoteWrite\":[");
        if let Some(r) = &*self.remote.borrow() {
            for (i, w) in r.writers.iter().enumerate() {
                let st = w.stats();
                let c = w.config();
                if i > 0 {
                    s.push(',');
                }
                s.push_str("{\"name\":");
                json::string(&mut s, &c.name);
                s.push_str(",\"url\":");
                json::string(&mut s, &c.url);
                s.push_str(&format!(
                    ",\"queuedSamples\":{},\"pendingBytes\":{},\"oldestUnsentTime\":{},\"samplesSentLive\":{},\"samplesSentBackfill\":{},\"deferredSamples\":{},\"lostRanges\":{},\"lastSuccessTime\":{},\"failures\":{{",
                    st.queued,
                    st.pending_bytes,
                    time(st.oldest_unsent_ms),
                    st.sent_live,
                    st.sent_backfill,
                    st.deferred,
                    st.lost_ranges,
                    time((st.last_success_ms > 0).then_some(st.last_success_ms)),
                ));
                for (k, (reason, n)) in st.failures.iter().enumerate() {
                    if k > 0 {
                        s.push(',');
                    }
                    json::string(&mut s, reason);
                    s.push_str(&format!(":{n}"));
                }
                s.push_str("},\"lastError\":");
                json::string(&mut s, &st.last_error);
                s.push('}');
            }
        }
        s.push_str("],\"export\":{\"oldestCursor\":");
        json::string(&mut s, &self.storage.oldest_cursor().to_string());
        s.push_str(",\"endCursor\":");
        json::string(&mut s, &self.storage.end_cursor().to_string());
        s.push_str("}}");
        Ok(success(&s, &[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_as_go_writes_them() {
        assert_eq!(format_bytes(0), "0B");
        assert_eq!(format_bytes(512 << 20), "512MiB");
        assert_eq!(format_bytes(300 << 10), "300KiB");
        assert_eq!(format_bytes((1 << 30) + (512 << 20)), "1GiB512MiB");
        assert_eq!(format_bytes(1000), "1000B");
    }

    #[test]
    fn flags_use_prometheus_names() {
        let m = flag_map(&Flags::default());
        assert_eq!(m["storage.tsdb.retention.time"], "15d");
        assert_eq!(m["query.timeout"], "2m");
        assert_eq!(m["web.enable-lifecycle"], "false");
        assert_eq!(m["web.cors.origin"], ".*");
        assert_eq!(m["log.level"], "info");
    }
}
