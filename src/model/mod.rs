//! The shared vocabulary: labels, samples and matchers.
//!
//! Every layer speaks these types: the scraper builds [`Labels`], the store keeps them, the PromQL
//! engine selects with [`Matcher`]s and returns [`Labels`] with [`Sample`]s.
//!
//! Invariants:
//! - [`Labels`] are sorted by name, names are unique, and no value is empty (a label with an
//!   empty value is the same as no label, as in Prometheus). [`LabelsBuilder`] keeps that true.
//! - Timestamps are milliseconds since the Unix epoch (`i64`), values `f64`; a staleness marker
//!   is the NaN with the bit pattern [`STALE_NAN`], and is told apart from other NaNs by bits.

use std::fmt;

pub mod hash;
pub mod slice;

pub use hash::FastMap;

/// The bit pattern of Prometheus's staleness marker (a signalling NaN).
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// The name of the label that holds the metric name.
pub const METRIC_NAME: &str = "__name__";

/// True if `v` is a staleness marker (not any NaN: the exact bit pattern).
pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN
}

/// One sample: a millisecond timestamp and a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t: i64,
    pub v: f64,
}

/// One label pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    pub name: String,
    pub value: String,
}

/// A set of labels, sorted by name, names unique, values non-empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// The empty label set.
    pub fn empty() -> Self {
        Labels(Vec::new())
    }

    /// Builds labels from pairs in any order; later duplicates win; empty values are dropped.
    pub fn from_pairs<N: AsRef<str>, V: AsRef<str>>(pairs: &[(N, V)]) -> Self {
        let mut b = LabelsBuilder::new();
        for (n, v) in pairs {
            b.set(n.as_ref(), v.as_ref());
        }
        b.take()
    }

    /// Builds labels from pairs that are usually already a valid set (as a stored series'
    /// are): they are taken as they come, with one allocation per string, when names ascend
    /// strictly and no value is empty, and go through [`Labels::from_pairs`] otherwise.
    pub fn from_sorted_pairs<'a>(pairs: &[(&'a str, &'a str)]) -> Self {
        let valid =
            pairs.windows(2).all(|w| w[0].0 < w[1].0) && pairs.iter().all(|(_, v)| !v.is_empty());
        if !valid {
            return Labels::from_pairs(pairs);
        }
        Labels(
            pairs
                .iter()
                .map(|(n, v)| Label {
                    name: (*n).to_owned(),
                    value: (*v).to_owned(),
                })
                .collect(),
        )
    }

    /// The value of label `name`, or "" when absent (as Prometheus treats absent labels).
    pub fn get(&self, name: &str) -> &str {
        match self.0.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) => &self.0[i].value,
            Err(_) => "",
        }
    }

    /// True if a label `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .is_ok()
    }

    /// The metric name, or "" when there is none.
    pub fn metric_name(&self) -> &str {
        self.get(METRIC_NAME)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A builder that starts from these labels.
    pub fn builder(&self) -> LabelsBuilder {
        LabelsBuilder {
            labels: self.0.clone(),
        }
    }

    /// These labels without the metric name.
    pub fn without_metric_name(&self) -> Labels {
        if !self.has(METRIC_NAME) {
            return self.clone();
        }
        Labels(
            self.0
                .iter()
                .filter(|l| l.name != METRIC_NAME)
                .cloned()
                .collect(),
        )
    }

    /// Only the labels whose names are in `names` (`include`) or not in `names` (`!include`).
    pub fn filter_names(&self, names: &[String], include: bool) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|l| names.contains(&l.name) == include)
                .cloned()
                .collect(),
        )
    }

    /// Approximate heap bytes held, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<Label>()
            + self
                .0
                .iter()
                .map(|l| l.name.capacity() + l.value.capacity())
                .sum::<usize>()
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Writes `{a="1", b="2"}` with Prometheus's escaping; the metric name is written in front of the
/// braces (`up{job="x"}`), as in the text format.
impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.metric_name();
        f.write_str(name)?;
        let mut first = true;
        let rest = self.0.iter().filter(|l| l.name != METRIC_NAME);
        for l in rest {
            f.write_str(if first { "{" } else { ", " })?;
            first = false;
            write!(f, "{}=\"", l.name)?;
            write_escaped(f, &l.value)?;
            f.write_str("\"")?;
        }
        if !first {
            f.write_str("}")?;
        } else if name.is_empty() {
            f.write_str("{}")?;
        }
        Ok(())
    }
}

/// Writes a label value escaped as the text format wants it (`\\`, `\"`, `\n`).
pub fn write_escaped(w: &mut dyn fmt::Write, s: &str) -> fmt::Result {
    for c in s.chars() {
        match c {
            '\\' => w.write_str("\\\\")?,
            '"' => w.write_str("\\\"")?,
            '\n' => w.write_str("\\n")?,
            c => w.write_char(c)?,
        }
    }
    Ok(())
}

/// Builds a [`Labels`] by setting and deleting names; keeps the invariants.
#[derive(Debug, Clone, Default)]
pub struct LabelsBuilder {
    labels: Vec<Label>,
}

impl LabelsBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`; an empty value deletes the label.
    pub fn set(&mut self, name: &str, value: &str) -> &mut Self {
        match self.labels.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) if value.is_empty() => {
                self.labels.remove(i);
            }
            Ok(i) => value.clone_into(&mut self.labels[i].value),
            Err(_) if value.is_empty() => {}
            Err(i) => self.labels.insert(
                i,
                Label {
                    name: name.to_owned(),
                    value: value.to_owned(),
                },
            ),
        }
        self
    }

    /// Deletes `name` if present.
    pub fn del(&mut self, name: &str) -> &mut Self {
        self.set(name, "")
    }

    /// The current value of `name`, or "".
    pub fn get(&self, name: &str) -> &str {
        match self.labels.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) => &self.labels[i].value,
            Err(_) => "",
        }
    }

    pub fn build(&self) -> Labels {
        Labels(self.labels.clone())
    }

    /// Builds and empties the builder without cloning.
    pub fn take(&mut self) -> Labels {
        Labels(std::mem::take(&mut self.labels))
    }
}

/// How a [`Matcher`] compares a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

/// A label matcher, as in `{job="node", mode!~"idle|iowait"}`. Regexes are fully anchored, as in
/// Prometheus (`^(?s:…)$`), and compiled once when the matcher is made.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub kind: MatchKind,
    pub name: String,
    pub value: String,
    re: Option<regex::Regex>,
}

/// A regex in a matcher did not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRegex {
    pub pattern: String,
    pub reason: String,
}

impl fmt::Display for BadRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid regular expression {:?}: {}",
            self.pattern, self.reason
        )
    }
}

impl std::error::Error for BadRegex {}

impl Matcher {
    /// Makes a matcher, compiling the regex for the regex kinds.
    pub fn new(kind: MatchKind, name: &str, value: &str) -> Result<Matcher, BadRegex> {
        let re = match kind {
            MatchKind::Regex | MatchKind::NotRegex => Some(
                regex::Regex::new(&format!("^(?s:{value})$")).map_err(|e| BadRegex {
                    pattern: value.to_owned(),
                    reason: e.to_string(),
                })?,
            ),
            _ => None,
        };
        Ok(Matcher {
            kind,
            name: name.to_owned(),
            value: value.to_owned(),
            re,
        })
    }

    /// An equality matcher (cannot fail).
    pub fn equal(name: &str, value: &str) -> Matcher {
        Matcher {
            kind: MatchKind::Equal,
            name: name.to_owned(),
            value: value.to_owned(),
            re: None,
        }
    }

    /// True if the label value `v` ("" when the label is absent) matches.
    pub fn matches(&self, v: &str) -> bool {
        match self.kind {
            MatchKind::Equal => v == self.value,
            MatchKind::NotEqual => v != self.value,
            MatchKind::Regex => self.re.as_ref().is_some_and(|r| r.is_match(v)),
            MatchKind::NotRegex => !self.re.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }

    /// True if this matcher matches the empty string, i.e. also series without the label.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// True if all `matchers` match `labels`.
    pub fn all_match(matchers: &[Matcher], labels: &Labels) -> bool {
        matchers.iter().all(|m| m.matches(labels.get(&m.name)))
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.kind {
            MatchKind::Equal => "=",
            MatchKind::NotEqual => "!=",
            MatchKind::Regex => "=~",
            MatchKind::NotRegex => "!~",
        };
        write!(f, "{}{}{:?}", self.name, op, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_and_empty_values_dropped() {
        let l = Labels::from_pairs(&[("b", "2"), ("a", "1"), ("c", ""), ("__name__", "up")]);
        let names: Vec<_> = l.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "a", "b"]);
        assert_eq!(l.get("c"), "");
        assert_eq!(l.to_string(), r#"up{a="1", b="2"}"#);
    }

    #[test]
    fn sorted_pairs_give_the_same_labels_as_any_pairs() {
        let cases: [&[(&str, &str)]; 5] = [
            &[("__name__", "up"), ("a", "1"), ("b", "2")],
            &[("b", "2"), ("a", "1")],
            &[("a", "1"), ("a", "2")],
            &[("a", ""), ("b", "2")],
            &[],
        ];
        for pairs in cases {
            assert_eq!(
                Labels::from_sorted_pairs(pairs),
                Labels::from_pairs(pairs),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn display_escapes_values() {
        let l = Labels::from_pairs(&[("a", "x\"y\\z\nw")]);
        assert_eq!(l.to_string(), r#"{a="x\"y\\z\nw"}"#);
    }

    #[test]
    fn matchers_are_anchored() {
        let m = Matcher::new(MatchKind::Regex, "job", "no.e").unwrap();
        assert!(m.matches("node"));
        assert!(!m.matches("node2"));
        assert!(!m.matches("xnode"));
        let n = Matcher::new(MatchKind::NotRegex, "job", "a|b").unwrap();
        assert!(n.matches("c") && !n.matches("a") && n.matches_empty());
        assert!(Matcher::new(MatchKind::Regex, "x", "(").is_err());
    }

    #[test]
    fn staleness_marker_is_a_specific_nan() {
        assert!(is_stale(f64::from_bits(STALE_NAN)));
        assert!(!is_stale(f64::NAN));
    }
}
