//! The promqltest language (`load`, `eval instant|range`, `expect …`, `clear`), parsed into
//! commands; the rules are those of `../shared/promql/FORMAT.md` §1–5.
//!
//! What Perch's store cannot hold is dropped at load time: native histogram values (`{{…}}`),
//! the extra NHCB series of `load_with_nhcb`, and start-timestamp (`@st`) lines. An expectation
//! that cannot be parsed (a histogram literal, a bad header) marks its eval `unsupported`, so
//! that it is counted as a failure, never skipped.

use perch::model::{Labels, STALE_NAN};
use regex::Regex;
use std::sync::LazyLock;

/// One command of a script.
#[derive(Debug)]
pub enum Cmd {
    Clear,
    /// `load <interval>`: the series of the block, each with its expanded values.
    Load {
        interval_ms: i64,
        series: Vec<(Labels, Vec<Option<f64>>)>,
    },
    Eval(Eval),
    /// `# perch: delayed-name-removal on|off`: a comment to other runners, to this one the
    /// engine mode of the evals that follow (Prometheus's
    /// `--enable-feature=promql-delayed-name-removal`).
    DelayedNameRemoval(bool),
}

/// One `eval` command.
#[derive(Debug)]
pub struct Eval {
    /// The 1-based line of the `eval` header in the script.
    pub line: usize,
    pub instant: bool,
    /// The evaluation time of an instant eval, or the range of a range eval (ms).
    pub start: i64,
    pub end: i64,
    pub step: i64,
    pub expr: String,
    pub expect: Expect,
    /// Why the eval cannot be run as written (a bad header, an unsupported expectation).
    pub unsupported: Option<String>,
}

/// What an eval expects.
#[derive(Debug, Default)]
pub struct Expect {
    pub fail: bool,
    pub ordered: bool,
    pub string: Option<String>,
    /// `expect range vector from <t1> to <t2> step <d>` on an instant eval: (t1, d).
    pub range_vector: Option<(i64, i64)>,
    pub scalar: Option<f64>,
    /// Expected series in file order (a repeated label set replaces the earlier line).
    pub series: Vec<(Labels, Vec<Option<f64>>)>,
    /// `expect warn` (`Some(true)`) / `expect no_warn` (`Some(false)`): presence only.
    pub warn: Option<bool>,
    /// `expect info` / `expect no_info`: presence only.
    pub info: Option<bool>,
}

static INSTANT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^eval(?:_(fail|warn|ordered|info))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$").unwrap()
});
static RANGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^eval(?:_(fail|warn|info))?\s+range\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+?)\s+(.+)$",
    )
    .unwrap()
});
static EXPECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^expect\s+(ordered|fail|warn|no_warn|info|no_info)(?:\s+(regex|msg):(.+))?$")
        .unwrap()
});

/// Parses a Prometheus duration (`1h30m`, `10s53ms`, `0`) into ms.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let mut total = 0i64;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let mult = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(mult)?)?;
    }
    Some(total)
}

/// Splits a series line into its metric part and its values part.
fn split_series(line: &str) -> (&str, &str) {
    let brace = line.find('{');
    let ws = line.find(char::is_whitespace).unwrap_or(line.len());
    match brace {
        Some(b) if b < ws => {
            let mut in_str: Option<char> = None;
            let mut esc = false;
            for (i, c) in line.char_indices().skip_while(|(i, _)| *i < b) {
                if let Some(q) = in_str {
                    if esc {
                        esc = false;
                    } else if c == '\\' {
                        esc = true;
                    } else if c == q {
                        in_str = None;
                    }
                } else if c == '"' || c == '\'' || c == '`' {
                    in_str = Some(c);
                } else if c == '}' {
                    return (&line[..=i], line[i + 1..].trim());
                }
            }
            (line, "")
        }
        _ => (&line[..ws], line[ws..].trim()),
    }
}

/// The labels of a series description (`name{a="b"}`), parsed with the PromQL parser.
fn parse_metric(s: &str) -> Option<Labels> {
    if s.trim() == "{}" {
        return Some(Labels::empty());
    }
    let e = promql_parser::parser::parse(s).ok()?;
    let promql_parser::parser::Expr::VectorSelector(vs) = e else {
        return None;
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(n) = vs.name {
        pairs.push(("__name__".into(), n));
    }
    for m in vs.matchers.matchers {
        pairs.push((m.name, m.value));
    }
    Some(Labels::from_pairs(&pairs))
}

/// A number as in a series value: decimal, exponent, `Inf`/`NaN` in any case, `_` separators.
pub fn parse_num(s: &str) -> Option<f64> {
    let t = s.replace('_', "");
    let l = t.to_ascii_lowercase();
    match l.trim_start_matches(['+', '-']) {
        "inf" => {
            return Some(if l.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            })
        }
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    t.parse().ok()
}

/// A scalar expectation line: Go's `ParseInt(s, 0, 64)` first (so `0x1f` counts), then a float.
fn parse_scalar_line(s: &str) -> Option<f64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let lower = body.to_ascii_lowercase();
    let int = if let Some(h) = lower.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(o) = lower.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if let Some(b) = lower.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()
    } else if lower.len() > 1 && lower.starts_with('0') && lower.bytes().all(|c| c.is_ascii_digit())
    {
        i64::from_str_radix(&lower[1..], 8).ok()
    } else {
        None
    };
    match int {
        Some(i) => Some(if neg { -(i as f64) } else { i as f64 }),
        None => parse_num(s),
    }
}

/// Expands a value sequence; `None` is an omitted position. `None` overall: not supported
/// (a native histogram) or malformed.
pub fn expand_values(s: &str) -> Option<Vec<Option<f64>>> {
    let mut out = Vec::new();
    for item in s.split_whitespace() {
        if item == "_" {
            out.push(None);
            continue;
        }
        if let Some(n) = item.strip_prefix("_x") {
            let n: usize = n.parse().ok()?;
            out.extend(std::iter::repeat_n(None, n));
            continue;
        }
        if item == "stale" {
            out.push(Some(f64::from_bits(STALE_NAN)));
            continue;
        }
        if item.contains("{{") {
            return None;
        }
        match item.rfind('x') {
            Some(xi) if !item[..xi].is_empty() && item[xi + 1..].parse::<usize>().is_ok() => {
                let n: usize = item[xi + 1..].parse().ok()?;
                let body = &item[..xi];
                // The operator between start and step: not a leading sign, not an exponent's.
                let bytes = body.as_bytes();
                let mut op_at = None;
                for i in 1..bytes.len() {
                    if (bytes[i] == b'+' || bytes[i] == b'-')
                        && !matches!(bytes[i - 1], b'e' | b'E')
                    {
                        op_at = Some(i);
                    }
                }
                let (start, step) = match op_at {
                    Some(i) => {
                        let st = parse_num(&body[..i])?;
                        let d = parse_num(&body[i + 1..])?;
                        (st, if bytes[i] == b'-' { -d } else { d })
                    }
                    None => (parse_num(body)?, 0.0),
                };
                // Repeated addition, as the reference does.
                let mut v = start;
                out.push(Some(v));
                for _ in 0..n {
                    v += step;
                    out.push(Some(v));
                }
            }
            _ => out.push(Some(parse_num(item)?)),
        }
    }
    Some(out)
}

/// A Go string literal (`"…"` with escapes, or raw `` `…` ``).
fn go_unquote(s: &str) -> Option<String> {
    if let Some(raw) = s.strip_prefix('`').and_then(|r| r.strip_suffix('`')) {
        return Some(raw.to_string());
    }
    let body = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            '\\' => out.push('\\'),
            '"' => out.push('"'),
            '\'' => out.push('\''),
            'a' => out.push('\x07'),
            'b' => out.push('\x08'),
            'f' => out.push('\x0c'),
            'v' => out.push('\x0b'),
            'x' => {
                let h: String = chars.by_ref().take(2).collect();
                out.push(char::from(u8::from_str_radix(&h, 16).ok()?));
            }
            'u' => {
                let h: String = chars.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&h, 16).ok()?)?);
            }
            'U' => {
                let h: String = chars.by_ref().take(8).collect();
                out.push(char::from_u32(u32::from_str_radix(&h, 16).ok()?)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Parses a whole script into commands.
pub fn parse(text: &str) -> Vec<Cmd> {
    let lines: Vec<&str> = text.split('\n').map(str::trim).collect();
    let blank = |l: &str| l.is_empty() || l.starts_with('#');
    let mut cmds = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if blank(l) {
            if let Some(on) = directive(l) {
                cmds.push(Cmd::DelayedNameRemoval(on));
            }
            i += 1;
            continue;
        }
        let word = l
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let header_line = i + 1;
        i += 1;
        if word == "clear" {
            cmds.push(Cmd::Clear);
            continue;
        }
        let mut body = Vec::new();
        while i < lines.len() && !blank(lines[i]) {
            body.push(lines[i]);
            i += 1;
        }
        if word.starts_with("load") {
            cmds.push(parse_load(l, &body));
        } else if word.starts_with("eval") {
            cmds.push(Cmd::Eval(parse_eval(l, &body, header_line)));
        }
    }
    cmds
}

/// A Perch directive in a comment line (`# perch: delayed-name-removal on`): the mode it sets.
/// Like every comment it also ends a block. An unknown `# perch:` directive is a mistake in the
/// script, not something to skip.
fn directive(line: &str) -> Option<bool> {
    let d = line
        .strip_prefix('#')?
        .trim()
        .strip_prefix("perch:")?
        .trim();
    let words: Vec<&str> = d.split_whitespace().collect();
    match words[..] {
        ["delayed-name-removal", "on"] => Some(true),
        ["delayed-name-removal", "off"] => Some(false),
        _ => panic!("unknown directive {line:?}: use `# perch: delayed-name-removal on|off`"),
    }
}

fn parse_load(header: &str, body: &[&str]) -> Cmd {
    let interval_ms = header
        .split_whitespace()
        .nth(1)
        .and_then(parse_duration)
        .unwrap_or(0);
    let mut series: Vec<(Labels, Vec<Option<f64>>)> = Vec::new();
    for b in body {
        let (m, v) = split_series(b);
        if m.ends_with("@st") {
            continue;
        }
        if let (Some(l), Some(v)) = (parse_metric(m), expand_values(v)) {
            // Within one block, a later line with the same labels replaces an earlier one.
            series.retain(|(x, _)| *x != l);
            series.push((l, v));
        }
    }
    Cmd::Load {
        interval_ms,
        series,
    }
}

fn parse_eval(header: &str, body: &[&str], line: usize) -> Eval {
    let mut ev = Eval {
        line,
        instant: true,
        start: 0,
        end: 0,
        step: 1,
        expr: String::new(),
        expect: Expect::default(),
        unsupported: None,
    };
    let prefix = if let Some(c) = INSTANT.captures(header) {
        ev.expr = c[3].trim().to_string();
        match c.get(2).and_then(|t| parse_duration(t.as_str())) {
            Some(t) => (ev.start, ev.end) = (t, t),
            None => ev.unsupported = Some("bad eval time".into()),
        }
        c.get(1).map(|m| m.as_str().to_string())
    } else if let Some(c) = RANGE.captures(header) {
        ev.instant = false;
        ev.expr = c[5].trim().to_string();
        match (
            parse_duration(&c[2]),
            parse_duration(&c[3]),
            parse_duration(&c[4]),
        ) {
            (Some(a), Some(b), Some(s)) if b >= a => (ev.start, ev.end, ev.step) = (a, b, s),
            _ => ev.unsupported = Some("bad range header".into()),
        }
        c.get(1).map(|m| m.as_str().to_string())
    } else {
        ev.unsupported = Some("bad eval header".into());
        None
    };
    match prefix.as_deref() {
        Some("fail") => ev.expect.fail = true,
        Some("ordered") => ev.expect.ordered = true,
        Some("warn") => ev.expect.warn = Some(true),
        Some("info") => ev.expect.info = Some(true),
        _ => {}
    }
    let e = &mut ev.expect;
    let mut seen_end = false;
    for b in body {
        if seen_end {
            // `expected_fail_*` and a scalar line end the block.
            break;
        }
        let words: Vec<&str> = b.split_whitespace().collect();
        if words.first() == Some(&"expect") {
            if let Some(c) = EXPECT.captures(b) {
                match &c[1] {
                    "fail" => e.fail = true,
                    "warn" => e.warn = Some(true),
                    "no_warn" => e.warn = Some(false),
                    "info" => e.info = Some(true),
                    "no_info" => e.info = Some(false),
                    _ => e.ordered = true,
                }
            } else if words.get(1) == Some(&"string") {
                let s = b["expect".len()..].trim_start()["string".len()..].trim();
                match go_unquote(s) {
                    Some(s) => e.string = Some(s),
                    None => ev.unsupported = Some(format!("bad string expectation: {b}")),
                }
            } else if words.get(1..3) == Some(&["range", "vector"][..]) {
                // expect range vector from <t1> to <t2> step <d>
                let shape = words.len() == 9
                    && words[3] == "from"
                    && words[5] == "to"
                    && words[7] == "step";
                let (t1, d) = match shape {
                    true => (parse_duration(words[4]), parse_duration(words[8])),
                    false => (None, None),
                };
                match (t1, d) {
                    (Some(a), Some(s)) => e.range_vector = Some((a, s)),
                    _ => ev.unsupported = Some(format!("bad range vector expectation: {b}")),
                }
            } else {
                ev.unsupported = Some(format!("unknown expectation: {b}"));
            }
            continue;
        }
        if b.starts_with("expected_fail") {
            e.fail = true;
            seen_end = true;
            continue;
        }
        if let Some(v) = parse_scalar_line(b) {
            e.scalar = Some(v);
            seen_end = true;
            continue;
        }
        let (m, v) = split_series(b);
        match (parse_metric(m), expand_values(v)) {
            (Some(l), Some(v)) => {
                // A repeated label set replaces the earlier line.
                e.series.retain(|(x, _)| *x != l);
                e.series.push((l, v));
            }
            _ => ev.unsupported = Some(format!("unsupported expectation: {b}")),
        }
    }
    ev
}

#[test]
fn values_durations_and_headers() {
    assert_eq!(
        expand_values("1 _ -2+4x2 1-2x1 _x2").unwrap(),
        vec![
            Some(1.0),
            None,
            Some(-2.0),
            Some(2.0),
            Some(6.0),
            Some(1.0),
            Some(-1.0),
            None,
            None
        ]
    );
    assert_eq!(expand_values("{{schema:0 sum:1}}"), None);
    assert_eq!(parse_duration("1h30m"), Some(5_400_000));
    assert_eq!(parse_duration("10s53ms"), Some(10_053));
    assert_eq!(parse_duration("1x"), None);
    assert_eq!(parse_scalar_line("0x1f"), Some(31.0));
    assert_eq!(parse_scalar_line("-Inf"), Some(f64::NEG_INFINITY));
    assert_eq!(
        go_unquote(r#"" a\"b\x41\u00e9""#).as_deref(),
        Some(" a\"bAé")
    );
    let cmds = parse(
        "load 1m\n  m{a=\"1\"} 1 2\n\neval range from 0 to 2m step 1m m\n  expect no_warn\n  m{a=\"1\"} 1 2 2\n\neval_fail instant at 1m m\n",
    );
    assert_eq!(cmds.len(), 3);
    let Cmd::Eval(r) = &cmds[1] else { panic!() };
    assert!(!r.instant && r.end == 120_000 && r.step == 60_000 && r.expr == "m");
    assert_eq!(r.expect.warn, Some(false));
    let Cmd::Eval(f) = &cmds[2] else { panic!() };
    assert!(f.instant && f.start == 60_000 && f.expect.fail);
}
