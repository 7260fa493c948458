//! Prometheus durations (`1h30m`, `15s`, `100ms`) and sizes (`512MB`, powers of 1024).

use std::time::Duration;

/// Parses a Prometheus duration: one or more `<number><unit>` with units y, w, d, h, m, s, ms,
/// in that order, each at most once (as Prometheus's `model.ParseDuration`). `0` alone is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 24 * 3600 * 1000),
        ("w", 7 * 24 * 3600 * 1000),
        ("d", 24 * 3600 * 1000),
        ("h", 3600 * 1000),
        ("m", 60 * 1000),
        ("s", 1000),
        ("ms", 1),
    ];
    let bad = || format!("not a valid duration string: {s:?}");
    if s.is_empty() {
        return Err(bad());
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: u64 = 0;
    let mut next_unit = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let n: u64 = s[start..i].parse().map_err(|_| bad())?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[ustart..i];
        let pos = UNITS[next_unit..]
            .iter()
            .position(|(u, _)| *u == unit)
            .ok_or_else(bad)?;
        let mult = UNITS[next_unit + pos].1;
        next_unit += pos + 1;
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .filter(|v| *v <= i64::MAX as u64)
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_millis(total))
}

/// Formats a duration as Prometheus does (`1h30m`, `15s`, `0s`, `15d`, `2w`): years and weeks
/// only when they divide the duration exactly, as `model.Duration.String` writes them.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (u, m) in [
        ("y", 365 * 24 * 3600 * 1000u64),
        ("w", 7 * 24 * 3600 * 1000),
        ("d", 24 * 3600 * 1000),
        ("h", 3600 * 1000),
        ("m", 60 * 1000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if (u == "y" || u == "w") && ms % m != 0 {
            continue;
        }
        if ms >= m {
            out.push_str(&format!("{}{}", ms / m, u));
            ms %= m;
        }
    }
    out
}

/// Parses a size with Prometheus's units: B, KB, MB, GB, TB, PB, EB (powers of 1024); a plain
/// number is bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("not a valid size: {s:?} (use e.g. 512MB, 2GB)");
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "K" | "KIB" => 1 << 10,
        "MB" | "M" | "MIB" => 1 << 20,
        "GB" | "G" | "GIB" => 1 << 30,
        "TB" | "T" | "TIB" => 1 << 40,
        "PB" | "P" | "PIB" => 1 << 50,
        "EB" | "E" | "EIB" => 1 << 60,
        _ => return Err(bad()),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v as u64)
}

/// Parses a byte size as 2.42's `body_size_limit` reads it (`units.ParseBase2Bytes`): `0`, or
/// one or more `<number>[.<fraction>]<unit>` with the case-sensitive units B, KB, MB, GB, TB,
/// PB, EB or KiB … EiB, all powers of 1024 (`10MB`, `1.5KB`, `1MB512KB`).
pub fn parse_base2_bytes(s: &str) -> Result<u64, String> {
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err("units: invalid ".into());
    }
    // A sign is read as Go's `units.ParseUnit` reads it; a negative size is then refused.
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let n: f64 = num.parse().map_err(|_| format!("units: invalid {s}"))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let shift = match unit {
            "B" => 0,
            "KB" | "KiB" => 10,
            "MB" | "MiB" => 20,
            "GB" | "GiB" => 30,
            "TB" | "TiB" => 40,
            "PB" | "PiB" => 50,
            "EB" | "EiB" => 60,
            _ => return Err(format!("units: unknown unit {unit} in {s}")),
        };
        total += n * (1u64 << shift) as f64;
        rest = after;
    }
    if negative || !total.is_finite() || total > i64::MAX as f64 {
        return Err(format!("units: invalid {s}"));
    }
    Ok(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(
            parse_duration("1m100ms").unwrap(),
            Duration::from_millis(60_100)
        );
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("100y").unwrap().as_secs(), 100 * 365 * 86400);
        for bad in ["", "15", "s", "1.5s", "10x", "1s1m", "1s1s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(15)), "15s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(15 * 86400)), "15d");
        assert_eq!(format_duration(Duration::from_secs(14 * 86400)), "2w");
        assert_eq!(
            format_duration(Duration::from_secs(365 * 86400 + 3600)),
            "365d1h"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1KB").unwrap(), 1024);
        assert_eq!(parse_size("512MB").unwrap(), 512 << 20);
        assert_eq!(parse_size("300KB").unwrap(), 300 << 10);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("MB").is_err());
    }

    #[test]
    fn base2_bytes_as_2_42_reads_body_size_limit() {
        // Accepted and refused as `promtool check config` of 2.42 does.
        for (s, want) in [
            ("0", 0),
            ("100B", 100),
            ("1KB", 1024),
            ("1KiB", 1024),
            ("10MB", 10 << 20),
            ("1.5KB", 1536),
            ("1MB512KB", (1 << 20) + (512 << 10)),
        ] {
            assert_eq!(parse_base2_bytes(s).unwrap(), want, "{s}");
        }
        for (s, err) in [
            ("100", "units: unknown unit  in 100"),
            ("1kb", "units: unknown unit kb in 1kb"),
            ("1K", "units: unknown unit K in 1K"),
            ("-1", "units: unknown unit  in -1"),
            ("-1B", "units: invalid -1B"),
            ("", "units: invalid "),
        ] {
            assert_eq!(parse_base2_bytes(s).unwrap_err(), err, "{s}");
        }
    }
}
