//! Service discovery: target groups for a scrape pool, each mechanism polled on the executor.
//!
//! - this module: files (`file_sd_configs`), below;
//! - [`dns`]: DNS lookups (`dns_sd_configs`: SRV, A, AAAA, MX), through the async resolver
//!   [`crate::scrape::resolver`];
//! - [`mdns`]: multicast DNS / DNS-SD on the LAN (`mdns_sd_configs`, a Perch extension).
//!
//! Each keeps its groups between refreshes and says whether they changed; the
//! [`crate::scrape::ScrapeManager`] then syncs the job's pool.
//!
//! # Files
//!
//! File-based service discovery (`file_sd_configs`), as Prometheus 2.42's `discovery/file`.
//!
//! Input: a [`FileSdConfig`] (file patterns, `refresh_interval`). Output: target groups
//! ([`TargetGroup`]) read from the files that match, each group's labels carrying
//! `__meta_filepath` (the path as the config resolved it). A file holds a list of groups, in
//! JSON (`.json`) or YAML (`.yml`, `.yaml`): `[{targets: [host:port, …], labels: {…}}]`;
//! unknown fields are errors, as 2.42 reads them strictly.
//!
//! Contract, as 2.42:
//! - A file that cannot be read or parsed keeps the groups it had (the error is logged); a file
//!   that no longer matches (deleted, renamed) loses its groups.
//! - Every file is read again every `refresh_interval`.
//!
//! Where Perch differs: 2.42 learns of changes through inotify; that needs a thread or a second
//! reactor source per directory, so Perch polls instead — [`FileSd::changed`] lists the
//! patterns and compares each file's size, modification time and inode with the last read, a
//! few directory reads and `stat`s, every [`POLL_INTERVAL`] on the executor.
//!
//! Patterns: `*` and `?` in the file name only (the config refuses others); matching names are
//! taken in byte order, hidden files included, as Go's `filepath.Glob`. Each file is bounded by
//! [`MAX_FILE_BYTES`]; a larger one is an error like a parse error.

pub mod dns;
pub mod mdns;

use crate::config::{FileSdConfig, TargetGroup};
use crate::model::LabelsBuilder;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How often the files' metadata is compared with the last read (or `refresh_interval`, if
/// shorter).
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The largest file SD file read.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// What a file looked like when it was read: a change in any of these means it is read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        inode,
    })
}

/// One file's last read: its stamp (None: never read successfully) and its groups.
#[derive(Debug, Default)]
struct FileState {
    stamp: Option<Stamp>,
    groups: Vec<TargetGroup>,
}

/// The state of one `file_sd_configs` entry.
#[derive(Debug)]
pub struct FileSd {
    config: FileSdConfig,
    /// By path, in byte order.
    files: BTreeMap<PathBuf, FileState>,
}

impl FileSd {
    pub fn new(config: FileSdConfig) -> Self {
        FileSd {
            config,
            files: BTreeMap::new(),
        }
    }

    /// How often every file is read again.
    pub fn refresh_interval(&self) -> Duration {
        self.config.refresh_interval
    }

    /// The files the patterns match now, sorted and without duplicates.
    fn list(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.config.files.iter().flat_map(|p| glob(p)).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether a file appeared, went away, or changed since the last [`FileSd::refresh`].
    pub fn changed(&self) -> bool {
        let now = self.list();
        now.len() != self.files.len()
            || now
                .iter()
                .zip(self.files.iter())
                .any(|(p, (q, st))| p != q || stamp(p) != st.stamp)
    }

    /// Reads every matching file again; returns whether the groups changed.
    pub fn refresh(&mut self) -> bool {
        let mut next = BTreeMap::new();
        let mut changed = false;
        for path in self.list() {
            let old = self.files.remove(&path);
            let st = stamp(&path);
            let state = match read_groups(&path) {
                Ok(groups) => {
                    changed |= old.as_ref().is_none_or(|o| o.groups != groups);
                    FileState { stamp: st, groups }
                }
                Err(e) => {
                    log::error!("file_sd: error reading file {}: {e}", path.display());
                    // As 2.42: the file keeps the groups it had. Its stamp is kept too, so
                    // the poll reads it again only when it changes.
                    let mut o = old.unwrap_or_default();
                    o.stamp = st;
                    o
                }
            };
            next.insert(path, state);
        }
        // Files that went away lose their groups.
        changed |= self.files.values().any(|f| !f.groups.is_empty());
        self.files = next;
        changed
    }

    /// Every group of every file, files in path order.
    pub fn groups(&self) -> impl Iterator<Item = &TargetGroup> {
        self.files.values().flat_map(|f| f.groups.iter())
    }
}

/// A target group as a file writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    targets: Option<Vec<String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Reads the target groups of one file (JSON or YAML by its extension), each with
/// `__meta_filepath` set to `path`.
pub fn read_groups(path: &Path) -> Result<Vec<TargetGroup>, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_FILE_BYTES {
        return Err(format!(
            "the file has {len} bytes, more than Perch reads ({MAX_FILE_BYTES})"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let raw: Vec<Option<RawGroup>> = match ext.as_str() {
        "json" => serde_json::from_str(&text).map_err(|e| e.to_string())?,
        _ if text.trim().is_empty() => Vec::new(),
        _ => serde_norway::from_str::<Option<Vec<Option<RawGroup>>>>(&text)
            .map_err(|e| e.to_string())?
            .unwrap_or_default(),
    };
    let filepath = path.display().to_string();
    let mut out = Vec::with_capacity(raw.len());
    for g in raw {
        let g = g.ok_or("nil target group item found")?;
        let mut b = LabelsBuilder::new();
        for (k, v) in g.labels.unwrap_or_default() {
            if !crate::config::check_label_name(&k) {
                return Err(format!("{k:?} is not a valid label name"));
            }
            b.set(&k, &v);
        }
        b.set("__meta_filepath", &filepath);
        out.push(TargetGroup {
            targets: g.targets.unwrap_or_default(),
            labels: b.build(),
        });
    }
    Ok(out)
}

/// The existing files that `pattern` matches (`*` and `?` in the file name), in byte order.
pub fn glob(pattern: &Path) -> Vec<PathBuf> {
    let name = pattern
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return if pattern.exists() {
            vec![pattern.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    let dir = match pattern.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name();
            let n = n.to_str()?;
            match_name(name, n).then(|| pattern.with_file_name(n))
        })
        .collect();
    out.sort();
    out
}

/// Whether `name` matches `pattern`: `*` any run of characters, `?` one character, anything
/// else itself.
pub fn match_name(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point (the last `*`): linear in practice.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_as_go_filepath_match_does_for_star_and_question() {
        for (p, n, want) in [
            ("*.json", "a.json", true),
            ("*.json", ".hidden.json", true),
            ("*.json", "a.yml", false),
            ("t?.yml", "t1.yml", true),
            ("t?.yml", "t12.yml", false),
            ("a*b*c.json", "aXbYbc.json", true),
            ("a*b*c.json", "aXbYc.jso", false),
            ("*", "", true),
            ("x.json", "x.json", true),
        ] {
            assert_eq!(match_name(p, n), want, "{p} {n}");
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("perch-filesd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_json_and_yaml_groups_with_the_file_path() {
        let d = dir("read");
        std::fs::write(
            d.join("a.json"),
            r#"[{"targets": ["h1:9100", "h2:9100"], "labels": {"env": "lab"}}, {"targets": ["h3:1"]}]"#,
        )
        .unwrap();
        std::fs::write(d.join("b.yml"), "- targets: [h4:1]\n  labels: {rack: r1}\n").unwrap();
        std::fs::write(d.join("c.yaml"), "").unwrap();
        let g = read_groups(&d.join("a.json")).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].targets, vec!["h1:9100", "h2:9100"]);
        assert_eq!(g[0].labels.get("env"), "lab");
        assert_eq!(
            g[1].labels.get("__meta_filepath"),
            d.join("a.json").display().to_string()
        );
        assert_eq!(
            read_groups(&d.join("b.yml")).unwrap()[0].targets,
            vec!["h4:1"]
        );
        assert!(read_groups(&d.join("c.yaml")).unwrap().is_empty());
        for (text, want) in [
            ("[null]", "nil target group item found"),
            (r#"[{"targets": [], "bogus": 1}]"#, "unknown field `bogus`"),
            (
                r#"[{"labels": {"1x": "y"}}]"#,
                "\"1x\" is not a valid label name",
            ),
            ("[{", "EOF"),
        ] {
            std::fs::write(d.join("bad.json"), text).unwrap();
            let e = read_groups(&d.join("bad.json")).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refresh_keeps_a_broken_file_and_forgets_a_removed_one() {
        let d = dir("refresh");
        let mut sd = FileSd::new(FileSdConfig {
            files: vec![d.join("*.json"), d.join("one.yml")],
            refresh_interval: Duration::from_secs(300),
        });
        assert!(!sd.refresh(), "nothing yet");
        std::fs::write(d.join("a.json"), r#"[{"targets": ["a:1"]}]"#).unwrap();
        std::fs::write(d.join("one.yml"), "- targets: [o:1]\n").unwrap();
        std::fs::write(d.join("other.yml"), "- targets: [x:1]\n").unwrap();
        assert!(sd.changed());
        assert!(sd.refresh());
        assert!(!sd.changed());
        let targets =
            |sd: &FileSd| -> Vec<String> { sd.groups().flat_map(|g| g.targets.clone()).collect() };
        assert_eq!(targets(&sd), vec!["a:1", "o:1"]);
        // Broken: the old groups stay.
        std::fs::write(d.join("a.json"), "[{").unwrap();
        assert!(sd.changed());
        assert!(!sd.refresh());
        assert_eq!(targets(&sd), vec!["a:1", "o:1"]);
        assert!(
            !sd.changed(),
            "a broken file is read again only when it changes"
        );
        // Fixed, with another target; then removed.
        std::fs::write(d.join("a.json"), r#"[{"targets": ["a:2"]}]"#).unwrap();
        assert!(sd.changed() && sd.refresh());
        assert_eq!(targets(&sd), vec!["a:2", "o:1"]);
        std::fs::remove_file(d.join("a.json")).unwrap();
        assert!(sd.changed() && sd.refresh());
        assert_eq!(targets(&sd), vec!["o:1"]);
        // The same content again: no change to report.
        std::fs::write(d.join("one.yml"), "- targets: [o:1]\n").unwrap();
        assert!(!sd.refresh());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
