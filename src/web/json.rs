//! JSON writing in exactly Prometheus's layout: no whitespace, sample values as strings in Go's
//! shortest fixed-point form (`"1"`, `"0.1"`, `"0.00001"`, `"+Inf"`, `"NaN"`), timestamps as
//! numbers of seconds with up to three decimals.

use crate::model::Labels;

/// Appends `s` as a JSON string (quoted and escaped).
pub fn string(out: &mut String, s: &str) {
    // serde_json's escaping is the standard one; writing into a String cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
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
        out.push_str(&v.to_string());
    }
    out.push('"');
}

/// A finite number as Go's `encoding/json` writes a `float64` (timings in seconds): shortest
/// round-trip digits, fixed-point unless below 1e-6 or from 1e21 on, then `1e-7`, `1.5e+21`.
/// Not finite (which Go refuses to encode): `0`.
pub fn number(out: &mut String, v: f64) {
    use std::fmt::Write;
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
    let secs = t_ms.div_euclid(1000);
    let ms = t_ms.rem_euclid(1000);
    if t_ms < 0 {
        // Rare (before 1970); the float's shortest form is what Go writes too.
        out.push_str(&(t_ms as f64 / 1000.0).to_string());
    } else if ms == 0 {
        out.push_str(&secs.to_string());
    } else {
        let frac = format!("{ms:03}");
        out.push_str(&format!("{secs}.{}", frac.trim_end_matches('0')));
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
    }

    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        labels(&mut s, &Labels::from_pairs(&[("a", "x\"y\n")]));
        assert_eq!(s, r#"{"a":"x\"y\n"}"#);
    }
}
