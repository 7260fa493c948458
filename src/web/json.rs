//! JSON writing in exactly Prometheus's layout: no whitespace, sample values as strings in Go's
//! shortest fixed-point form (`"1"`, `"0.1"`, `"0.00001"`, `"+Inf"`, `"NaN"`), timestamps as
//! numbers of seconds with up to three decimals.
//!
//! Everything is appended to the caller's `String`: a query answer with thousands of points
//! allocates nothing per point.

use crate::model::Labels;
use std::fmt::Write;

/// Appends `s` as a JSON string (quoted and escaped as `serde_json` escapes: `\"`, `\\`,
/// `\n`, `\r`, `\t`, `\b`, `\f`, other control characters as `\u00xx`, the rest as is).
pub fn string(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0; // s[plain..i] is waiting to be copied
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, so both slices end on character boundaries.
        out.push_str(s.get(plain..i).unwrap_or(""));
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(esc);
        }
        plain = i + 1;
    }
    out.push_str(s.get(plain..).unwrap_or(""));
    out.push('"');
}

/// A sample value as Prometheus writes it: Go's `strconv.FormatFloat(v, 'f', -1, 64)`, which
/// Rust's `Display` for `f64` matches digit for digit, with `+Inf`, `-Inf` and `NaN` spelled as
/// Go spells them.
pub fn value(out: &mut String, v: f64) {
    out.push('"');
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        float(out, v);
    }
    out.push('"');
}

/// Below this magnitude every integer is a float and every float step is at most 1.
const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0; // 2^53

/// A finite float in shortest fixed-point form. An integer below 2^53 is its own shortest
/// form (no shorter digit string lies within half a step of it), so it is written as an
/// integer, which is much cheaper than the general shortest-digits search.
fn float(out: &mut String, v: f64) {
    if v == 0.0 {
        out.push_str(if v.is_sign_negative() { "-0" } else { "0" });
    } else if v.abs() < EXACT_INTEGERS && v.trunc() == v {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A finite number as Go's `encoding/json` writes a `float64` (timings in seconds): shortest
/// round-trip digits, fixed-point unless below 1e-6 or from 1e21 on, then `1e-7`, `1.5e+21`.
/// Not finite (which Go refuses to encode): `0`.
pub fn number(out: &mut String, v: f64) {
    if !v.is_finite() {
        out.push('0');
    } else if v != 0.0 && (v.abs() < 1e-6 || v.abs() >= 1e21) {
        let e = format!("{v:e}");
        match e.split_once('e') {
            Some((m, x)) if !x.starts_with('-') => {
                let _ = write!(out, "{m}e+{x}");
            }
            _ => out.push_str(&e),
        }
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A millisecond timestamp as seconds (`1700000000.123`, `1700000000`).
pub fn timestamp(out: &mut String, t_ms: i64) {
    if t_ms < 0 {
        // Rare (before 1970); the float's shortest form is what Go writes too.
        let _ = write!(out, "{}", t_ms as f64 / 1000.0);
        return;
    }
    let _ = write!(out, "{}", t_ms / 1000);
    let ms = t_ms % 1000;
    if ms != 0 {
        // Three digits without the trailing zeros: .123, .12, .1
        let digits = [ms / 100, ms / 10 % 10, ms % 10];
        let len = if ms % 100 == 0 {
            1
        } else if ms % 10 == 0 {
            2
        } else {
            3
        };
        out.push('.');
        for d in &digits[..len] {
            out.push(char::from(b'0' + *d as u8));
        }
    }
}

/// `[ts,"value"]`
pub fn point(out: &mut String, t_ms: i64, v: f64) {
    out.push('[');
    timestamp(out, t_ms);
    out.push(',');
    value(out, v);
    out.push(']');
}

/// A label set as a JSON object, in label order.
pub fn labels(out: &mut String, l: &Labels) {
    out.push('{');
    for (i, lab) in l.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(out, &lab.name);
        out.push(':');
        string(out, &lab.value);
    }
    out.push('}');
}

/// A list of strings as a JSON array.
pub fn string_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(out, s);
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: f64) -> String {
        let mut s = String::new();
        value(&mut s, x);
        s
    }

    fn ts(t: i64) -> String {
        let mut s = String::new();
        timestamp(&mut s, t);
        s
    }

    #[test]
    fn values_as_go_formats_them() {
        // Each pair checked against Prometheus 2.42's /api/v1/query answers.
        assert_eq!(v(1.0), "\"1\"");
        assert_eq!(v(0.1), "\"0.1\"");
        assert_eq!(v(0.00001), "\"0.00001\"");
        assert_eq!(v(1e21), "\"1000000000000000000000\"");
        assert_eq!(v(2f64.powi(70)), "\"1180591620717411300000\"");
        assert_eq!(v(1.0 / 3.0), "\"0.3333333333333333\"");
        assert_eq!(v(-0.0), "\"-0\"");
        assert_eq!(v(f64::NAN), "\"NaN\"");
        assert_eq!(v(f64::INFINITY), "\"+Inf\"");
        assert_eq!(v(f64::NEG_INFINITY), "\"-Inf\"");
    }

    #[test]
    fn numbers_as_go_json_writes_them() {
        let n = |x: f64| {
            let mut s = String::new();
            number(&mut s, x);
            s
        };
        // 2.42's stats timings: `"resultSortTime":0`, `"execQueueTime":0.000009297`.
        assert_eq!(n(0.0), "0");
        assert_eq!(n(0.000009297), "0.000009297");
        assert_eq!(n(0.000001), "0.000001");
        assert_eq!(n(1.5), "1.5");
        // Go's exponent form: `e-7`, `e+21`.
        assert_eq!(n(1e-7), "1e-7");
        assert_eq!(n(2.5e-10), "2.5e-10");
        assert_eq!(n(1e21), "1e+21");
        assert_eq!(n(-1.25e22), "-1.25e+22");
        assert_eq!(n(f64::NAN), "0");
    }

    #[test]
    fn timestamps_in_seconds() {
        assert_eq!(ts(1_700_000_000_123), "1700000000.123");
        assert_eq!(ts(1_700_000_000_000), "1700000000");
        assert_eq!(ts(1_700_000_000_100), "1700000000.1");
        assert_eq!(ts(1_500), "1.5");
        assert_eq!(ts(-1_500), "-1.5");
        assert_eq!(ts(-500), "-0.5");
        assert_eq!(ts(0), "0");
        assert_eq!(ts(1_700_000_000_020), "1700000000.02");
        assert_eq!(ts(1_700_000_000_003), "1700000000.003");
        assert_eq!(ts(1_700_000_000_120), "1700000000.12");
    }

    #[test]
    fn integers_and_fractions_as_display_writes_them() {
        // The integer shortcut must agree with the general shortest-digits path.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut cases = vec![
            1.0,
            -1.0,
            1e15,
            1e16,
            EXACT_INTEGERS - 1.0,
            EXACT_INTEGERS,
            -EXACT_INTEGERS + 1.0,
            0.5,
            123.25,
            f64::MAX,
            f64::MIN_POSITIVE,
        ];
        for _ in 0..20_000 {
            let r = next();
            cases.push((r >> 11) as f64); // integers up to 2^53
            cases.push((r >> (11 + r % 50)) as f64 * if r & 1 == 0 { 1.0 } else { -1.0 });
            cases.push(f64::from_bits(r)); // anything, NaN and infinities included
            cases.push((r >> 20) as f64 / 1000.0);
        }
        for c in cases {
            let want = if c.is_nan() {
                "\"NaN\"".to_owned()
            } else if c.is_infinite() {
                format!("\"{}Inf\"", if c > 0.0 { "+" } else { "-" })
            } else {
                format!("\"{c}\"")
            };
            assert_eq!(v(c), want, "{c:?}");
        }
    }

    #[test]
    fn strings_escape_as_serde_json_does() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é\u{7f}\u{2028}😀\"\\end");
        for s in [all.as_str(), "", "plain", "\n", "a\u{1}b", "\"\"", "ü\t"] {
            let mut out = String::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        labels(&mut s, &Labels::from_pairs(&[("a", "x\"y\n")]));
        assert_eq!(s, r#"{"a":"x\"y\n"}"#);
    }
}
