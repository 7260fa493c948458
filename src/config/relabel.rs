//! `relabel_configs` / `metric_relabel_configs` entries: read from YAML and validated as
//! Prometheus 2.42 does (`model/relabel`). Applying them is [`crate::scrape::relabel`]'s job.

use regex::Regex;
use serde::Deserialize;
use std::sync::OnceLock;

/// What a relabel rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Replace,
    Keep,
    Drop,
    KeepEqual,
    DropEqual,
    HashMod,
    LabelMap,
    LabelDrop,
    LabelKeep,
    Lowercase,
    Uppercase,
}

impl Action {
    /// The action named `s`, case-insensitively, as Prometheus reads it.
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s.to_lowercase().as_str() {
            "replace" => Action::Replace,
            "keep" => Action::Keep,
            "drop" => Action::Drop,
            "keepequal" => Action::KeepEqual,
            "dropequal" => Action::DropEqual,
            "hashmod" => Action::HashMod,
            "labelmap" => Action::LabelMap,
            "labeldrop" => Action::LabelDrop,
            "labelkeep" => Action::LabelKeep,
            "lowercase" => Action::Lowercase,
            "uppercase" => Action::Uppercase,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Replace => "replace",
            Action::Keep => "keep",
            Action::Drop => "drop",
            Action::KeepEqual => "keepequal",
            Action::DropEqual => "dropequal",
            Action::HashMod => "hashmod",
            Action::LabelMap => "labelmap",
            Action::LabelDrop => "labeldrop",
            Action::LabelKeep => "labelkeep",
            Action::Lowercase => "lowercase",
            Action::Uppercase => "uppercase",
        }
    }
}

/// One validated relabel rule. The regex is compiled fully anchored (`^(?:…)$`).
#[derive(Debug, Clone)]
pub struct RelabelConfig {
    pub source_labels: Vec<String>,
    pub separator: String,
    /// The regex as written (without the anchors).
    pub regex_source: String,
    pub regex: Regex,
    pub modulus: u64,
    pub target_label: String,
    pub replacement: String,
    pub action: Action,
}

impl PartialEq for RelabelConfig {
    fn eq(&self, o: &Self) -> bool {
        self.source_labels == o.source_labels
            && self.separator == o.separator
            && self.regex_source == o.regex_source
            && self.modulus == o.modulus
            && self.target_label == o.target_label
            && self.replacement == o.replacement
            && self.action == o.action
    }
}

/// A rule as written in the YAML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelabelConfig {
    source_labels: Option<Vec<String>>,
    separator: Option<String>,
    regex: Option<String>,
    modulus: Option<u64>,
    target_label: Option<String>,
    replacement: Option<String>,
    action: Option<String>,
}

const DEFAULT_REGEX: &str = "(.*)";
const DEFAULT_SEPARATOR: &str = ";";
const DEFAULT_REPLACEMENT: &str = "$1";

/// A label name as Prometheus accepts it: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(n: &str) -> bool {
    super::check_label_name(n)
}

/// A `target_label` (or labelmap `replacement`) that may contain `$1`, `${name}` references.
fn is_relabel_target(s: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| anchored(r"(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+").expect("static regex"))
        .is_match(s)
}

/// Compiles `s` fully anchored, as Prometheus's `relabel.NewRegexp`. Go's `\d`, `\w`, `\s`
/// and `\b` are ASCII-only where Rust's are Unicode: they are rewritten to Go's meaning.
pub fn anchored(s: &str) -> Result<Regex, regex::Error> {
    let mut p = String::with_capacity(s.len() + 8);
    p.push_str("^(?:");
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            p.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => p.push_str("[0-9]"),
            Some('D') => p.push_str("[^0-9]"),
            Some('w') => p.push_str("[0-9A-Za-z_]"),
            Some('W') => p.push_str("[^0-9A-Za-z_]"),
            Some('s') => p.push_str(r"[\t\n\f\r ]"),
            Some('S') => p.push_str(r"[^\t\n\f\r ]"),
            Some('b') => p.push_str(r"(?-u:\b)"),
            Some('B') => p.push_str(r"(?-u:\B)"),
            Some(o) => {
                p.push('\\');
                p.push(o);
            }
            None => p.push('\\'),
        }
    }
    p.push_str(")$");
    Regex::new(&p)
}

impl RelabelConfig {
    /// A rule with Prometheus's defaults: replace, `(.*)`, `;`, `$1`.
    pub fn with_defaults(action: Action) -> RelabelConfig {
        RelabelConfig {
            source_labels: Vec::new(),
            separator: DEFAULT_SEPARATOR.into(),
            regex_source: DEFAULT_REGEX.into(),
            regex: anchored(DEFAULT_REGEX).expect("default regex"),
            modulus: 0,
            target_label: String::new(),
            replacement: DEFAULT_REPLACEMENT.into(),
            action,
        }
    }

    /// Validates a rule as written; the error is Prometheus's message for it.
    pub(super) fn from_raw(raw: RawRelabelConfig) -> Result<RelabelConfig, String> {
        let action = match &raw.action {
            None => Action::Replace,
            Some(a) if a.is_empty() => return Err("relabel action cannot be empty".into()),
            Some(a) => Action::parse(a).ok_or_else(|| format!("unknown relabel action {a:?}"))?,
        };
        let mut c = RelabelConfig::with_defaults(action);
        if let Some(src) = &raw.source_labels {
            for n in src {
                if !is_label_name(n) {
                    return Err(format!("{n:?} is not a valid label name"));
                }
            }
            c.source_labels = src.clone();
        }
        if let Some(s) = &raw.separator {
            c.separator = s.clone();
        }
        if let Some(r) = &raw.regex {
            c.regex = anchored(r).map_err(|e| format!("error parsing regexp: {e}"))?;
            c.regex_source = r.clone();
        }
        c.modulus = raw.modulus.unwrap_or(0);
        c.target_label = raw.target_label.clone().unwrap_or_default();
        if let Some(r) = &raw.replacement {
            c.replacement = r.clone();
        }
        let a = action.as_str();
        use Action::*;
        if c.modulus == 0 && action == HashMod {
            return Err("relabel configuration for hashmod requires non-zero modulus".into());
        }
        if matches!(
            action,
            Replace | HashMod | Lowercase | Uppercase | KeepEqual | DropEqual
        ) && c.target_label.is_empty()
        {
            return Err(format!(
                "relabel configuration for {a} action requires 'target_label' value"
            ));
        }
        if matches!(
            action,
            Replace | Lowercase | Uppercase | KeepEqual | DropEqual
        ) && !is_relabel_target(&c.target_label)
        {
            return Err(format!(
                "{:?} is invalid 'target_label' for {a} action",
                c.target_label
            ));
        }
        if matches!(action, Lowercase | Uppercase | KeepEqual | DropEqual)
            && c.replacement != DEFAULT_REPLACEMENT
        {
            return Err(format!("'replacement' can not be set for {a} action"));
        }
        if action == LabelMap && !is_relabel_target(&c.replacement) {
            return Err(format!(
                "{:?} is invalid 'replacement' for {a} action",
                c.replacement
            ));
        }
        if action == HashMod && !is_label_name(&c.target_label) {
            return Err(format!(
                "{:?} is invalid 'target_label' for {a} action",
                c.target_label
            ));
        }
        // Prometheus compares the regex by identity: any regex written counts as set.
        if matches!(action, KeepEqual | DropEqual)
            && (raw.regex.is_some()
                || c.modulus != 0
                || c.separator != DEFAULT_SEPARATOR
                || c.replacement != DEFAULT_REPLACEMENT)
        {
            return Err(format!(
                "{a} action requires only 'source_labels' and `target_label`, and no other fields"
            ));
        }
        if matches!(action, LabelDrop | LabelKeep)
            && (raw.source_labels.is_some()
                || !c.target_label.is_empty()
                || c.modulus != 0
                || c.separator != DEFAULT_SEPARATOR
                || c.replacement != DEFAULT_REPLACEMENT)
        {
            return Err(format!(
                "{a} action requires only 'regex', and no other fields"
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<RelabelConfig, String> {
        let raw: RawRelabelConfig = serde_norway::from_str(y).map_err(|e| e.to_string())?;
        RelabelConfig::from_raw(raw)
    }

    #[test]
    fn defaults() {
        let c = parse("target_label: x").unwrap();
        assert_eq!(c.action, Action::Replace);
        assert_eq!(c.separator, ";");
        assert_eq!(c.regex_source, "(.*)");
        assert_eq!(c.replacement, "$1");
        assert!(c.regex.is_match("a\u{0}b") && !c.regex.is_match("a\nb"));
        assert_eq!(parse("action: KeeP").unwrap().action, Action::Keep);
        // An empty regex matches only the empty string.
        assert!(!parse("{action: keep, regex: ''}")
            .unwrap()
            .regex
            .is_match("a"));
    }

    #[test]
    fn perl_classes_are_ascii_as_in_go() {
        let re = |s: &str| anchored(s).unwrap();
        assert!(re(r"\d+").is_match("123") && !re(r"\d").is_match("٣"));
        assert!(!re(r"\w+").is_match("é") && re(r"\W").is_match("é"));
        assert!(re(r"[\w.]+").is_match("a.b_1") && !re(r"[^\d]").is_match("1"));
        assert!(re(r"a\sb").is_match("a b") && !re(r"a\sb").is_match("a\u{a0}b"));
        assert!(re(r"\\d").is_match(r"\d"));
        assert!(re(r".*\bx").is_match("éx"));
        assert!(re(r"\p{Greek}+").is_match("αβ"));
    }

    #[test]
    fn validation_errors_as_prometheus() {
        for (y, want) in [
            ("action: replace", "relabel configuration for replace action requires 'target_label' value"),
            ("action: ''", "relabel action cannot be empty"),
            ("action: nope", "unknown relabel action \"nope\""),
            ("{action: hashmod, target_label: x}", "relabel configuration for hashmod requires non-zero modulus"),
            ("{action: hashmod, modulus: 2}", "relabel configuration for hashmod action requires 'target_label' value"),
            ("{action: hashmod, modulus: 2, target_label: '${1}'}", "\"${1}\" is invalid 'target_label' for hashmod action"),
            ("{action: lowercase}", "relabel configuration for lowercase action requires 'target_label' value"),
            ("{action: uppercase, target_label: -x}", "\"-x\" is invalid 'target_label' for uppercase action"),
            ("{action: lowercase, target_label: x, replacement: y}", "'replacement' can not be set for lowercase action"),
            ("{action: labelmap, replacement: -x}", "\"-x\" is invalid 'replacement' for labelmap action"),
            ("{target_label: 'é'}", "\"é\" is invalid 'target_label' for replace action"),
            ("{action: keepequal, target_label: x, regex: '(.*)'}", "keepequal action requires only 'source_labels' and `target_label`, and no other fields"),
            ("{action: dropequal, target_label: x, separator: ','}", "dropequal action requires only 'source_labels' and `target_label`, and no other fields"),
            ("{action: labeldrop, regex: a, source_labels: [b]}", "labeldrop action requires only 'regex', and no other fields"),
            ("{action: labelkeep, regex: a, target_label: b}", "labelkeep action requires only 'regex', and no other fields"),
            ("{source_labels: ['a-b'], target_label: x}", "\"a-b\" is not a valid label name"),
        ] {
            assert_eq!(parse(y).unwrap_err(), want, "{y}");
        }
        assert!(parse("{target_label: x, regex: '('}")
            .unwrap_err()
            .contains("error parsing regexp"));
        assert!(parse("{target_label: x, bogus: 1}")
            .unwrap_err()
            .contains("bogus"));
        // Valid ones.
        parse("{target_label: '${1}x', replacement: '$2'}").unwrap();
        parse("{action: keepequal, target_label: x, source_labels: [y], separator: ';'}").unwrap();
        parse("{action: labelmap, regex: '__meta_(.+)'}").unwrap();
        parse("{action: labeldrop, regex: 'tmp_.*'}").unwrap();
    }
}
