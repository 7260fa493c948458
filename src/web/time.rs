//! Times and durations in API parameters, as Prometheus's API reads and writes them.
//!
//! Parameters: a float number of Unix seconds or an RFC 3339 time (`time`, `start`, `end`); a
//! float number of seconds or a Prometheus duration (`step`, `timeout`). Output: RFC 3339 in UTC
//! with the fraction Go's `RFC3339Nano` gives.

use crate::config::parse_duration;

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + if m <= 2 { 1 } else { 0 }, m, d)
}

/// Parses an RFC 3339 time (`2006-01-02T15:04:05.999999999Z07:00`) to ms since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i];
        let mut digits: String = frac.chars().take(3).collect();
        while digits.len() < 3 {
            digits.push('0');
        }
        ms = digits.parse().ok()?;
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let sign = if *c == b'+' { 1 } else { -1 };
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// Formats ms since the epoch as RFC 3339 in UTC, with the fraction trimmed as Go's
/// `RFC3339Nano` does (`2026-11-25T14:21:15.123Z`, `2026-11-25T14:21:15Z`).
pub fn format_rfc3339(t_ms: i64) -> String {
    let secs = t_ms.div_euclid(1000);
    let ms = t_ms.rem_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut s = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if ms != 0 {
        let f = format!("{ms:03}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Prometheus's `MinTime` and `MaxTime` as its clients format them (years beyond RFC 3339's
/// four digits), and the millisecond timestamps Prometheus reads them as.
const MIN_TIME_FORMATTED: &str = "-292273086-05-16T16:47:06Z";
const MAX_TIME_FORMATTED: &str = "292277025-08-18T07:12:54.999999999Z";
pub const MIN_TIME_MS: i64 = -9_223_309_901_257_974_000;
pub const MAX_TIME_MS: i64 = 9_223_309_901_257_974_999;

/// Parses a time parameter as Prometheus does: float seconds (rounded to ms) or RFC 3339.
/// A time beyond what milliseconds in an `i64` hold is an error, never an overflow.
pub fn parse_time(s: &str) -> Result<i64, String> {
    match s {
        MIN_TIME_FORMATTED => return Ok(MIN_TIME_MS),
        MAX_TIME_FORMATTED => return Ok(MAX_TIME_MS),
        _ => {}
    }
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() {
            let ms = (f * 1000.0).round();
            if ms.abs() < 9.2e18 {
                return Ok(ms as i64);
            }
        }
    }
    if let Some(t) = parse_rfc3339(s) {
        return Ok(t);
    }
    Err(format!("cannot parse {s:?} to a valid timestamp"))
}

/// Parses a duration parameter as Prometheus does: float seconds or a duration string; in ms.
pub fn parse_duration_param(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        let ms = f * 1000.0;
        if !ms.is_finite() || ms.abs() >= 9.2e18 {
            return Err(format!(
                "cannot parse {s:?} to a valid duration. It overflows int64"
            ));
        }
        return Ok(ms.round() as i64);
    }
    parse_duration(s)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| format!("cannot parse {s:?} to a valid duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = parse_rfc3339("2023-11-14T22:13:20.123Z").unwrap();
        assert_eq!(t, 1_700_000_000_123);
        assert_eq!(format_rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_rfc3339(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20+01:00").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert!(parse_rfc3339("2023-13-14T22:13:20Z").is_none());
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn params() {
        assert_eq!(parse_time("1700000000.123").unwrap(), 1_700_000_000_123);
        assert_eq!(parse_time("1.5").unwrap(), 1500);
        assert!(parse_time("abc").unwrap_err().contains("\"abc\""));
        // Milliseconds by mistake are still a time (far in the future); absurd ones an error.
        assert_eq!(parse_time("1759998200123").unwrap(), 1_759_998_200_123_000);
        assert!(parse_time("1e30").is_err());
        assert!(parse_time("-1e30").is_err());
        assert!(parse_time("NaN").is_err());
        assert_eq!(
            parse_time("-292273086-05-16T16:47:06Z").unwrap(),
            MIN_TIME_MS
        );
        assert_eq!(
            parse_time("292277025-08-18T07:12:54.999999999Z").unwrap(),
            MAX_TIME_MS
        );
        assert_eq!(parse_duration_param("15").unwrap(), 15_000);
        assert_eq!(parse_duration_param("0.5").unwrap(), 500);
        assert_eq!(parse_duration_param("1m").unwrap(), 60_000);
        assert!(parse_duration_param("").is_err());
    }
}
