//! Writing the exposition formats Perch serves: the text format 0.0.4 (federation) and
//! OpenMetrics 1.0 (export), both in the exact spelling Prometheus's `expfmt` uses for floats,
//! label escaping and timestamps, so a consumer sees what it would see from Prometheus.
//!
//! Nothing here allocates per sample beyond the output buffer it appends to.

use crate::model::Labels;
use std::fmt::Write;

/// Appends `v` as Go's `strconv.FormatFloat(v, 'g', -1, 64)` writes it, which is what
/// `expfmt` uses: shortest round-trip digits, exponent form (`1e-05`, `1.5e+06`) when the
/// decimal exponent is below -4 or at least 6; `+Inf`, `-Inf`, `NaN` spelled as Go spells
/// them.
pub fn go_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    if v == 0.0 {
        out.push_str(if v.is_sign_negative() { "-0" } else { "0" });
        return;
    }
    // Rust's `{:e}` gives the same shortest digits, as `d.ddde<exp>`.
    let e = format!("{v:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        out.push_str(mantissa);
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let _ = write!(out, "{:02}", exp.unsigned_abs());
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Appends a label value escaped as both formats want it (`\\`, `\"`, `\n`).
pub fn escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends `name{labels…,extra…}` — the series' labels without `__name__`, in their order, then
/// `extra` (already ordered) — with no braces when there are no labels at all.
pub fn series_name(out: &mut String, labels: &Labels, extra: &[(&str, &str)]) {
    out.push_str(labels.metric_name());
    let mut first = true;
    let own = labels
        .iter()
        .filter(|l| l.name != "__name__")
        .map(|l| (l.name.as_str(), l.value.as_str()));
    for (n, v) in own.chain(extra.iter().copied()) {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(n);
        out.push_str("=\"");
        escaped(out, v);
        out.push('"');
    }
    if !first {
        out.push('}');
    }
}

/// Appends a millisecond timestamp as OpenMetrics wants it: seconds, with the milliseconds
/// as a decimal fraction when there are any (`1700000000`, `1700000000.25`).
pub fn om_timestamp(out: &mut String, t_ms: i64) {
    let secs = t_ms.div_euclid(1000);
    let ms = t_ms.rem_euclid(1000);
    if ms == 0 {
        let _ = write!(out, "{secs}");
    } else if t_ms >= 0 {
        let frac = format!("{ms:03}");
        let _ = write!(out, "{secs}.{}", frac.trim_end_matches('0'));
    } else {
        // Before 1970: the shortest float form is exact for milliseconds.
        let _ = write!(out, "{}", t_ms as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(v: f64) -> String {
        let mut s = String::new();
        go_float(&mut s, v);
        s
    }

    #[test]
    fn floats_as_go_formats_them() {
        // Expected strings are Go's `strconv.FormatFloat(v, 'g', -1, 64)`.
        for (v, want) in [
            (1.0, "1"),
            (0.0, "0"),
            (-1.0, "-1"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123456.0, "123456"),
            (1234567.0, "1.234567e+06"),
            (1e6, "1e+06"),
            (1e21, "1e+21"),
            (-2.5e-7, "-2.5e-07"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (1700000000.0, "1.7e+09"),
            (99999.5, "99999.5"),
        ] {
            assert_eq!(g(v), want, "{v:e}");
        }
    }

    #[test]
    fn series_lines() {
        let l = Labels::from_pairs(&[("__name__", "up"), ("job", "a\"b\\c\nd")]);
        let mut s = String::new();
        series_name(&mut s, &l, &[("site", "x")]);
        assert_eq!(s, r#"up{job="a\"b\\c\nd",site="x"}"#);
        let mut s = String::new();
        series_name(&mut s, &Labels::from_pairs(&[("__name__", "up")]), &[]);
        assert_eq!(s, "up");
    }

    #[test]
    fn openmetrics_timestamps() {
        for (t, want) in [
            (1_700_000_000_000, "1700000000"),
            (1_700_000_000_250, "1700000000.25"),
            (1_700_000_000_001, "1700000000.001"),
            (-1500, "-1.5"),
        ] {
            let mut s = String::new();
            om_timestamp(&mut s, t);
            assert_eq!(s, want);
        }
    }
}
