//! String literals with byte escapes, read as Go reads them, before `promql-parser` sees them.
//!
//! In Go (and so in Prometheus) `\xNN` and the octal `\NNN` in a quoted string are raw bytes:
//! `"\xc3\xa9"` is `é`, and `"\xff"` is a string that is not valid UTF-8, which Prometheus then
//! rejects as a label name (`label_replace(v, "\xff", …)` fails). `promql-parser` 0.11 reads
//! `\xNN` as the character U+00NN instead, so `"\xc3\xa9"` would be `Ã©` and `"\xff"` `ÿ`.
//!
//! [`rewrite`] finds every quoted literal (`"…"`, `'…'`; backquoted ones have no escapes) with a
//! byte escape of 0x80 or more, decodes it as Go's `strconv.Unquote` does and writes it back as
//! a double-quoted literal of the characters those bytes are. A byte that is not part of valid
//! UTF-8 cannot be in a Rust string: it becomes the character U+10FF00 + byte, the last 128
//! code points of a private-use plane, which stand for "invalid UTF-8" ([`is_valid`]) wherever
//! the string goes — also through `promql-parser`'s printing and parsing again (the conformance
//! runner's `@` re-runs). The engine rejects such a string where Prometheus rejects invalid
//! UTF-8 (label names, regular expressions) and shows U+FFFD for those characters in a string
//! result, as Go's JSON encoder does. Any literal that does not decode is left alone for the
//! parser to report.

/// The first of the characters that stand for the bytes 0x80..=0xff of invalid UTF-8.
const INVALID_BASE: u32 = 0x10_FF00;

/// Whether `s` is valid UTF-8 in the query as Prometheus reads it: it has none of the
/// characters [`rewrite`] puts in place of invalid bytes.
pub(crate) fn is_valid(s: &str) -> bool {
    !s.chars().any(is_invalid_byte)
}

fn is_invalid_byte(c: char) -> bool {
    (INVALID_BASE + 0x80..=INVALID_BASE + 0xff).contains(&(c as u32))
}

/// `s` as Prometheus's JSON would show it: U+FFFD for each invalid byte.
pub(crate) fn display(s: String) -> String {
    if is_valid(&s) {
        return s;
    }
    s.chars()
        .map(|c| if is_invalid_byte(c) { '\u{fffd}' } else { c })
        .collect()
}

/// `q` with its byte-escaped literals decoded (see the module doc).
pub(crate) fn rewrite(q: &str) -> String {
    let b = q.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'`' => i = q[i + 1..].find('`').map_or(b.len(), |p| i + p + 2),
            quote @ (b'"' | b'\'') => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != quote && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                if i >= b.len() || b[i] != quote {
                    continue; // unterminated: the parser says so
                }
                i += 1;
                let body = &q[start + 1..i - 1];
                if !has_high_byte_escape(body) {
                    continue;
                }
                let Some(bytes) = unquote(body, quote) else {
                    continue;
                };
                let mut text = String::with_capacity(bytes.len());
                for chunk in bytes.utf8_chunks() {
                    text.push_str(chunk.valid());
                    text.extend(
                        chunk
                            .invalid()
                            .iter()
                            .filter_map(|&b| char::from_u32(INVALID_BASE + u32::from(b))),
                    );
                }
                out.push_str(&q[copied..start]);
                push_quoted(&mut out, &text);
                copied = i;
            }
            _ => i += 1,
        }
    }
    if copied == 0 {
        return q.to_owned();
    }
    out.push_str(&q[copied..]);
    out
}

/// Whether `body` has a `\xNN` or `\NNN` escape of a byte ≥ 0x80 (an escaped backslash does
/// not start one).
fn has_high_byte_escape(body: &str) -> bool {
    let b = body.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        match b[i + 1] {
            b'x' if b.len() > i + 2
                && matches!(b[i + 2], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F') =>
            {
                return true
            }
            b'2'..=b'7' => return true,
            _ => i += 2,
        }
    }
    false
}

/// Go's `strconv.Unquote` of a literal's inside: the bytes, or `None` on a bad escape.
fn unquote(body: &str, quote: u8) -> Option<Vec<u8>> {
    let b = body.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |s: &[u8]| -> Option<u32> {
        std::str::from_utf8(s)
            .ok()
            .and_then(|s| u32::from_str_radix(s, 16).ok())
    };
    while i < b.len() {
        let c = b[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *b.get(i + 1)?;
        i += 2;
        let simple = match e {
            b'a' => Some(7),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(11),
            b'\\' => Some(b'\\'),
            b'\'' | b'"' if e == quote => Some(e),
            _ => None,
        };
        if let Some(s) = simple {
            out.push(s);
            continue;
        }
        match e {
            b'x' => {
                let v = hex(b.get(i..i + 2)?)?;
                out.push(v as u8);
                i += 2;
            }
            b'0'..=b'7' => {
                let d = b.get(i - 1..i + 2)?;
                if !d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                    return None;
                }
                let v = d.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).ok()?);
                i += 2;
            }
            b'u' | b'U' => {
                let n = if e == b'u' { 4 } else { 8 };
                let ch = char::from_u32(hex(b.get(i..i + n)?)?)?;
                let mut tmp = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                i += n;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// `s` as a double-quoted literal the parser reads back as `s`.
fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::{display, is_valid, rewrite};

    #[test]
    fn byte_escapes_are_utf8_bytes() {
        let q = rewrite(r#"label_replace(v, "d\xc3\xa9", "\303\251", "src", "(.*)")"#);
        assert_eq!(q, r#"label_replace(v, "dé", "é", "src", "(.*)")"#);
        assert!(is_valid(&q));
        let q = rewrite(r#"label_replace(v, 'a\xff\xc3', "", "src", "(.*)")"#);
        assert_eq!(
            q,
            "label_replace(v, \"a\u{10ffff}\u{10ffc3}\", \"\", \"src\", \"(.*)\")"
        );
        assert!(!is_valid(&q));
        assert_eq!(
            display(q),
            "label_replace(v, \"a\u{fffd}\u{fffd}\", \"\", \"src\", \"(.*)\")"
        );
    }

    #[test]
    fn other_text_is_left_alone() {
        for q in [
            r#"up{a="\x41\u00e9\\xff", b=~"\\d+"}"#,
            r#"x{a=`\xff`} # "\xff""#,
            r#"f("\xff"#,
            r#"f("\xzz\xff")"#,
            "",
        ] {
            assert_eq!(rewrite(q), q, "{q}");
        }
        // Escapes around a byte escape survive the rewrite.
        let q = rewrite(r#"f("a\"\n\t\\\xc3\xa9")"#);
        assert_eq!(q, "f(\"a\\\"\\n\\x09\\\\é\")");
    }
}
