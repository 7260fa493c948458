//! Applying relabel rules ([`RelabelConfig`], validated by the config) to a label set, with the
//! results of Prometheus 2.42's `relabel.Process`: rules in order, each one reading the labels
//! as the previous rule left them; a `keep`/`drop`/`keepequal`/`dropequal` that rejects the set
//! drops it (`None`).

use crate::config::{Action, RelabelConfig};
use crate::model::{Labels, LabelsBuilder};
use md5::{Digest, Md5};

/// Applies `rules` to `labels`; `None` when a rule drops the set.
pub fn process(labels: Labels, rules: &[RelabelConfig]) -> Option<Labels> {
    let mut cur = labels;
    for rule in rules {
        cur = apply(cur, rule)?;
    }
    Some(cur)
}

/// The source labels' values joined by the separator.
fn joined(labels: &Labels, rule: &RelabelConfig) -> String {
    let mut val = String::new();
    for (i, n) in rule.source_labels.iter().enumerate() {
        if i > 0 {
            val.push_str(&rule.separator);
        }
        val.push_str(labels.get(n));
    }
    val
}

/// `hashmod`: the MD5 of `val`, its last 8 bytes read as a big-endian integer, mod `modulus`.
pub fn hash_mod(val: &str, modulus: u64) -> u64 {
    let sum = Md5::digest(val.as_bytes());
    let mut last = [0u8; 8];
    last.copy_from_slice(&sum[8..16]);
    u64::from_be_bytes(last) % modulus.max(1)
}

/// Appends `template` to `dst` with `$1`, `${1}`, `$name`, `${name}` replaced by the groups of
/// `caps`, exactly as Go's `regexp.Expand`: a name is the longest run of Unicode letters, digits
/// and `_`; all digits without a leading zero is a group number, anything else a group name;
/// absent or unmatched groups give nothing; `$$` is `$`; a malformed reference is kept as written.
pub fn expand(caps: &regex::Captures<'_>, template: &str, dst: &mut String) {
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        dst.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            dst.push('$');
            rest = r;
            continue;
        }
        let (braced, body) = match rest.strip_prefix('{') {
            Some(b) => (true, b),
            None => (false, rest),
        };
        let len = body
            .find(|c: char| !(c.is_alphabetic() || c.is_numeric() || c == '_'))
            .unwrap_or(body.len());
        let name = &body[..len];
        let after = &body[len..];
        let after = if braced {
            after.strip_prefix('}')
        } else {
            Some(after)
        };
        let (true, Some(after)) = (!name.is_empty(), after) else {
            dst.push('$');
            continue;
        };
        rest = after;
        let number = (name.bytes().all(|b| b.is_ascii_digit())
            && (name.len() == 1 || !name.starts_with('0'))
            && name.len() <= 8)
            .then(|| name.parse::<usize>().ok())
            .flatten();
        let group = match number {
            Some(n) => caps.get(n),
            None => caps.name(name),
        };
        if let Some(m) = group {
            dst.push_str(m.as_str());
        }
    }
    dst.push_str(rest);
}

fn apply(labels: Labels, rule: &RelabelConfig) -> Option<Labels> {
    let val = joined(&labels, rule);
    let mut b: LabelsBuilder;
    match rule.action {
        Action::Drop => return (!rule.regex.is_match(&val)).then_some(labels),
        Action::Keep => return rule.regex.is_match(&val).then_some(labels),
        Action::DropEqual => return (labels.get(&rule.target_label) != val).then_some(labels),
        Action::KeepEqual => return (labels.get(&rule.target_label) == val).then_some(labels),
        Action::Replace => {
            // No match: no change.
            let Some(caps) = rule.regex.captures(&val) else {
                return Some(labels);
            };
            b = labels.builder();
            let mut target = String::new();
            expand(&caps, &rule.target_label, &mut target);
            if !crate::config::relabel::is_label_name(&target) {
                b.del(&rule.target_label);
            } else {
                let mut res = String::new();
                expand(&caps, &rule.replacement, &mut res);
                if res.is_empty() {
                    b.del(&rule.target_label);
                } else {
                    b.set(&target, &res);
                }
            }
        }
        Action::Lowercase => {
            b = labels.builder();
            b.set(&rule.target_label, &val.to_lowercase());
        }
        Action::Uppercase => {
            b = labels.builder();
            b.set(&rule.target_label, &val.to_uppercase());
        }
        Action::HashMod => {
            b = labels.builder();
            b.set(
                &rule.target_label,
                &hash_mod(&val, rule.modulus).to_string(),
            );
        }
        Action::LabelMap => {
            b = labels.builder();
            for l in &labels {
                if let Some(caps) = rule.regex.captures(&l.name) {
                    let mut name = String::new();
                    expand(&caps, &rule.replacement, &mut name);
                    b.set(&name, &l.value);
                }
            }
        }
        Action::LabelDrop | Action::LabelKeep => {
            let keep_matching = rule.action == Action::LabelKeep;
            b = labels.builder();
            for l in &labels {
                if rule.regex.is_match(&l.name) != keep_matching {
                    b.del(&l.name);
                }
            }
        }
    }
    Some(b.take())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule as Prometheus's tests write them: unset fields take the defaults.
    fn rule(
        action: Action,
        src: &[&str],
        regex: Option<&str>,
        target: &str,
        repl: Option<&str>,
    ) -> RelabelConfig {
        let mut c = RelabelConfig::with_defaults(action);
        c.source_labels = src.iter().map(|s| s.to_string()).collect();
        if let Some(r) = regex {
            c.regex = crate::config::relabel::anchored(r).unwrap();
            c.regex_source = r.into();
        }
        c.target_label = target.into();
        if let Some(r) = repl {
            c.replacement = r.into();
        }
        c
    }

    fn ls(p: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(p)
    }

    use Action::*;

    #[test]
    fn replace() {
        let abc = ls(&[("a", "foo"), ("b", "bar"), ("c", "baz")]);
        let r = rule(Replace, &["a"], Some("f(.*)"), "d", Some("ch${1}-ch${1}"));
        assert_eq!(
            process(abc.clone(), &[r]).unwrap(),
            ls(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("d", "choo-choo")])
        );
        let rules = [
            rule(
                Replace,
                &["a", "b"],
                Some("f(.*);(.*)r"),
                "a",
                Some("b${1}${2}m"),
            ),
            rule(
                Replace,
                &["c", "a"],
                Some("(b).*b(.*)ba(.*)"),
                "d",
                Some("$1$2$2$3"),
            ),
        ];
        assert_eq!(
            process(abc, &rules).unwrap(),
            ls(&[("a", "boobam"), ("b", "bar"), ("c", "baz"), ("d", "boooom")])
        );
        let r = rule(Replace, &["a"], Some(".*(b).*"), "d", None);
        assert_eq!(
            process(ls(&[("a", "abc")]), &[r]).unwrap(),
            ls(&[("a", "abc"), ("d", "b")])
        );
        // No match: no replacement.
        let r = rule(Replace, &["a"], Some("f"), "b", Some("bar"));
        assert_eq!(
            process(ls(&[("a", "boo")]), &[r]).unwrap(),
            ls(&[("a", "boo")])
        );
        // Target label from the match; an empty result or an invalid target changes nothing.
        let snv = ls(&[("a", "some-name-value")]);
        let re = Some("some-([^-]+)-([^,]+)");
        let r = rule(Replace, &["a"], re, "${1}", Some("${2}"));
        assert_eq!(
            process(snv.clone(), &[r]).unwrap(),
            ls(&[("a", "some-name-value"), ("name", "value")])
        );
        let r = rule(Replace, &["a"], re, "${1}", Some("${3}"));
        assert_eq!(process(snv.clone(), &[r]).unwrap(), snv);
        let rules = [
            rule(Replace, &["a"], re, "${3}", Some("${1}")),
            rule(Replace, &["a"], re, "0${3}", Some("${1}")),
            rule(Replace, &["a"], re, "-${3}", Some("${1}")),
        ];
        assert_eq!(process(snv.clone(), &rules).unwrap(), snv);
        // A real-life case: meta tags to path, job and a label.
        let tags = "path:/secret,job:some-job,label:foo=bar";
        let rules = [
            rule(
                Replace,
                &["__meta_sd_tags"],
                Some("(?:.+,|^)path:(/[^,]+).*"),
                "__metrics_path__",
                Some("${1}"),
            ),
            rule(
                Replace,
                &["__meta_sd_tags"],
                Some("(?:.+,|^)job:([^,]+).*"),
                "job",
                Some("${1}"),
            ),
            rule(
                Replace,
                &["__meta_sd_tags"],
                Some("(?:.+,|^)label:([^=]+)=([^,]+).*"),
                "${1}",
                Some("${2}"),
            ),
        ];
        assert_eq!(
            process(ls(&[("__meta_sd_tags", tags)]), &rules).unwrap(),
            ls(&[
                ("__meta_sd_tags", tags),
                ("__metrics_path__", "/secret"),
                ("job", "some-job"),
                ("foo", "bar")
            ])
        );
        // `$1x` names a group "1x" (absent): empty, so the target is deleted.
        let r = rule(Replace, &["a"], Some("(.*)"), "a", Some("$1x"));
        assert_eq!(
            process(ls(&[("a", "v"), ("b", "w")]), &[r]).unwrap(),
            ls(&[("b", "w")])
        );
        // Named groups and `$$`.
        let r = rule(
            Replace,
            &["a"],
            Some("(?P<h>[^:]+):.*"),
            "h",
            Some("$$${h}"),
        );
        assert_eq!(
            process(ls(&[("a", "host:1")]), &[r]).unwrap(),
            ls(&[("a", "host:1"), ("h", "$host")])
        );
    }

    #[test]
    fn expand_as_go() {
        let re = regex::Regex::new(r"^(?:(?P<h>[a-z]+)-(\d+))$").unwrap();
        let caps = re.captures("ab-12").unwrap();
        for (t, want) in [
            ("$1", "ab"),
            ("${1}x", "abx"),
            ("$1x", ""),
            ("$2$h", "12ab"),
            ("${h}_${2}", "ab_12"),
            ("$01", ""),
            ("$0", "ab-12"),
            ("$$1", "$1"),
            ("$", "$"),
            ("a$-b", "a$-b"),
            ("${a-b}", "${a-b}"),
            ("${}", "${}"),
            ("${1", "${1"),
            ("$9", ""),
            ("$999999999", ""),
            ("x$h\u{e9}y", "x"),
        ] {
            let mut out = String::new();
            expand(&caps, t, &mut out);
            assert_eq!(out, want, "{t}");
        }
    }

    #[test]
    fn keep_and_drop() {
        let foo = ls(&[("a", "foo")]);
        let drop_o = rule(Drop, &["a"], Some(".*o.*"), "", None);
        let then = rule(Replace, &["a"], Some("f(.*)"), "d", Some("ch$1-ch$1"));
        assert_eq!(process(foo.clone(), &[drop_o.clone(), then]), None);
        assert_eq!(process(ls(&[("a", "foo"), ("b", "bar")]), &[drop_o]), None);
        // Anchored: "f|o" does not match "foo".
        for re in ["no-match", "f|o"] {
            let r = rule(Drop, &["a"], Some(re), "", None);
            assert_eq!(process(foo.clone(), &[r]).unwrap(), foo);
        }
        assert_eq!(
            process(
                foo.clone(),
                &[rule(Keep, &["a"], Some("no-match"), "", None)]
            ),
            None
        );
        assert_eq!(
            process(foo.clone(), &[rule(Keep, &["a"], Some("f.*"), "", None)]).unwrap(),
            foo
        );
    }

    #[test]
    fn keepequal_and_dropequal() {
        let p = ls(&[
            ("__tmp_port", "1234"),
            ("__port1", "1234"),
            ("__port2", "5678"),
        ]);
        let r = |a, t| rule(a, &["__tmp_port"], None, t, None);
        assert_eq!(process(p.clone(), &[r(KeepEqual, "__port1")]).unwrap(), p);
        assert_eq!(process(p.clone(), &[r(DropEqual, "__port1")]), None);
        assert_eq!(process(p.clone(), &[r(DropEqual, "__port2")]).unwrap(), p);
        assert_eq!(process(p.clone(), &[r(KeepEqual, "__port2")]), None);
    }

    #[test]
    fn hashmod_matches_prometheus() {
        let r = rule(HashMod, &["c"], None, "d", None);
        let r = RelabelConfig { modulus: 1000, ..r };
        assert_eq!(
            process(ls(&[("a", "foo"), ("b", "bar"), ("c", "baz")]), &[r]).unwrap(),
            ls(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("d", "976")])
        );
        let r = RelabelConfig {
            modulus: 1000,
            ..rule(HashMod, &["a"], None, "b", None)
        };
        assert_eq!(
            process(ls(&[("a", "foo\nbar")]), &[r]).unwrap(),
            ls(&[("a", "foo\nbar"), ("b", "734")])
        );
    }

    #[test]
    fn labelmap_labeldrop_labelkeep() {
        let ab = ls(&[("a", "foo"), ("b1", "bar"), ("b2", "baz")]);
        let r = rule(LabelMap, &[], Some("(b.*)"), "", Some("bar_${1}"));
        assert_eq!(
            process(ab.clone(), &[r]).unwrap(),
            ls(&[
                ("a", "foo"),
                ("b1", "bar"),
                ("b2", "baz"),
                ("bar_b1", "bar"),
                ("bar_b2", "baz")
            ])
        );
        let meta = ls(&[
            ("a", "foo"),
            ("__meta_my_bar", "aaa"),
            ("__meta_my_baz", "bbb"),
            ("__meta_other", "ccc"),
        ]);
        let r = rule(LabelMap, &[], Some("__meta_(my.*)"), "", Some("${1}"));
        let want = ls(&[
            ("a", "foo"),
            ("__meta_my_bar", "aaa"),
            ("__meta_my_baz", "bbb"),
            ("__meta_other", "ccc"),
            ("my_bar", "aaa"),
            ("my_baz", "bbb"),
        ]);
        assert_eq!(process(meta, &[r]).unwrap(), want);
        let r = rule(LabelKeep, &[], Some("(b.*)"), "", None);
        assert_eq!(
            process(ab.clone(), &[r]).unwrap(),
            ls(&[("b1", "bar"), ("b2", "baz")])
        );
        let r = rule(LabelDrop, &[], Some("(b.*)"), "", None);
        assert_eq!(process(ab, &[r]).unwrap(), ls(&[("a", "foo")]));
    }

    #[test]
    fn lowercase_uppercase() {
        let rules = [
            rule(Uppercase, &["foo"], None, "foo_uppercase", None),
            rule(Lowercase, &["foo"], None, "foo_lowercase", None),
        ];
        assert_eq!(
            process(ls(&[("foo", "bAr123Foo")]), &rules).unwrap(),
            ls(&[
                ("foo", "bAr123Foo"),
                ("foo_lowercase", "bar123foo"),
                ("foo_uppercase", "BAR123FOO")
            ])
        );
    }
}
