//! Duration expressions (`x[5m+1m]`, `x[1h:step()*2]`, `x offset min_of(step(), 1s)`), on by
//! default in current Prometheus but unknown to `promql-parser` 0.11: they are computed here and
//! written back into the query text as plain millisecond durations before parsing.
//!
//! Inside brackets a whole arithmetic expression is allowed (`+ - * / % ^`, parentheses,
//! numbers in seconds, duration literals, `step()`, `range()`, `min_of(a, b)`, `max_of(a, b)`);
//! after `offset` one signed term is (so `x offset step()*2` multiplies the vector, as in
//! Prometheus). Text that is not a duration expression is left alone for the parser to judge.

/// Rewrites the duration expressions of `q`; `step_ms`/`range_ms` are what `step()` and
/// `range()` stand for (0 for an instant query).
pub(crate) fn rewrite(q: &str, step_ms: i64, range_ms: i64) -> String {
    let ctx = Ctx {
        step: step_ms as f64 / 1000.0,
        range: range_ms as f64 / 1000.0,
    };
    let b = q.as_bytes();
    let mut out = String::with_capacity(q.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i = skip_string(b, i);
            }
            b'#' => {
                // A comment runs to the end of the line.
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'[' => {
                let Some(close) = q[i + 1..].find(']').map(|p| p + i + 1) else {
                    break;
                };
                let inner = &q[i + 1..close];
                if let Some(new) = rewrite_brackets(inner, &ctx) {
                    out.push_str(&q[copied..=i]);
                    out.push_str(&new);
                    copied = close;
                }
                i = close + 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &q[start..i];
                let boundary = start == 0 || !is_ident_byte(b[start - 1]);
                if boundary && word.eq_ignore_ascii_case("offset") {
                    let mut j = i;
                    while j < b.len() && b[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    let mut p = Parser {
                        s: b,
                        pos: j,
                        ctx: &ctx,
                    };
                    if let Some(v) = p.signed_term() {
                        if !is_plain(&q[j..p.pos]) {
                            out.push_str(&q[copied..j]);
                            out.push_str(&format!("{}ms", to_ms(v)));
                            copied = p.pos;
                            i = p.pos;
                        }
                    }
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&q[copied..]);
    out
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

fn skip_string(b: &[u8], start: usize) -> usize {
    let q = b[start];
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == b'\\' && q != b'`' {
            i += 2;
            continue;
        }
        if b[i] == q {
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

fn to_ms(secs: f64) -> i64 {
    (secs * 1000.0).round() as i64
}

/// True for text the parser reads by itself: a duration literal or number, maybe signed.
fn is_plain(s: &str) -> bool {
    let s = s.trim();
    let s = s.strip_prefix(['-', '+']).unwrap_or(s).trim_start();
    !s.is_empty()
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.')
        && s.as_bytes()[0].is_ascii_digit()
}

/// The new text between brackets, if any part of it is a duration expression.
fn rewrite_brackets(inner: &str, ctx: &Ctx) -> Option<String> {
    let parts: Vec<&str> = split_top_colon(inner);
    if parts.len() > 2 || parts.iter().all(|p| p.trim().is_empty() || is_plain(p)) {
        return None;
    }
    let mut out = Vec::new();
    for p in parts {
        if p.trim().is_empty() || is_plain(p) {
            out.push(p.to_string());
            continue;
        }
        let mut ps = Parser {
            s: p.as_bytes(),
            pos: 0,
            ctx,
        };
        let v = ps.expr()?;
        ps.skip_ws();
        if ps.pos != p.len() {
            return None;
        }
        out.push(format!("{}ms", to_ms(v)));
    }
    Some(out.join(":"))
}

fn split_top_colon(s: &str) -> Vec<&str> {
    let mut depth = 0i32;
    let mut parts = Vec::new();
    let mut last = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ':' if depth == 0 => {
                parts.push(&s[last..i]);
                last = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[last..]);
    parts
}

struct Ctx {
    step: f64,
    range: f64,
}

/// A recursive-descent parser over a duration expression; values are seconds.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    ctx: &'a Ctx,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Option<f64> {
        let mut v = self.term()?;
        loop {
            if self.eat(b'+') {
                v += self.term()?;
            } else if self.eat(b'-') {
                v -= self.term()?;
            } else {
                return Some(v);
            }
        }
    }

    fn term(&mut self) -> Option<f64> {
        let mut v = self.unary()?;
        loop {
            if self.eat(b'*') {
                v *= self.unary()?;
            } else if self.eat(b'/') {
                v /= self.unary()?;
            } else if self.eat(b'%') {
                v %= self.unary()?;
            } else {
                return Some(v);
            }
        }
    }

    fn unary(&mut self) -> Option<f64> {
        if self.eat(b'-') {
            return Some(-self.unary()?);
        }
        if self.eat(b'+') {
            return self.unary();
        }
        let base = self.primary()?;
        if self.eat(b'^') {
            let e = self.unary()?;
            return Some(base.powf(e));
        }
        Some(base)
    }

    /// What may follow `offset`: an optional sign and one primary.
    fn signed_term(&mut self) -> Option<f64> {
        if self.eat(b'-') {
            return Some(-self.primary()?);
        }
        if self.eat(b'+') {
            return self.primary();
        }
        self.primary()
    }

    fn primary(&mut self) -> Option<f64> {
        self.skip_ws();
        let c = *self.s.get(self.pos)?;
        if c == b'(' {
            self.pos += 1;
            let v = self.expr()?;
            return self.eat(b')').then_some(v);
        }
        if c.is_ascii_digit() || c == b'.' {
            return self.number_or_duration();
        }
        if c.is_ascii_alphabetic() {
            let start = self.pos;
            while self.pos < self.s.len()
                && (self.s[self.pos].is_ascii_alphanumeric() || self.s[self.pos] == b'_')
            {
                self.pos += 1;
            }
            let name = std::str::from_utf8(&self.s[start..self.pos])
                .ok()?
                .to_ascii_lowercase();
            if !self.eat(b'(') {
                return None;
            }
            return match name.as_str() {
                "step" => self.eat(b')').then_some(self.ctx.step),
                "range" => self.eat(b')').then_some(self.ctx.range),
                "min_of" | "max_of" => {
                    let a = self.expr()?;
                    if !self.eat(b',') {
                        return None;
                    }
                    let b = self.expr()?;
                    if !self.eat(b')') {
                        return None;
                    }
                    Some(if name == "min_of" { a.min(b) } else { a.max(b) })
                }
                _ => None,
            };
        }
        None
    }

    /// `1.5` (seconds) or `1h30m` (a duration literal).
    fn number_or_duration(&mut self) -> Option<f64> {
        let start = self.pos;
        while self.pos < self.s.len()
            && (self.s[self.pos].is_ascii_digit() || self.s[self.pos] == b'.')
        {
            self.pos += 1;
        }
        let num: f64 = std::str::from_utf8(&self.s[start..self.pos])
            .ok()?
            .parse()
            .ok()?;
        if !self
            .s
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_alphabetic())
        {
            return Some(num);
        }
        // A duration literal: number-unit pairs.
        let mut total = 0.0;
        let mut n = num;
        loop {
            let us = self.pos;
            while self.pos < self.s.len() && self.s[self.pos].is_ascii_alphabetic() {
                self.pos += 1;
            }
            let unit = match &self.s[us..self.pos] {
                b"ms" => 0.001,
                b"s" => 1.0,
                b"m" => 60.0,
                b"h" => 3600.0,
                b"d" => 86_400.0,
                b"w" => 604_800.0,
                b"y" => 31_536_000.0,
                _ => return None,
            };
            total += n * unit;
            if !self.s.get(self.pos).is_some_and(|c| c.is_ascii_digit()) {
                return Some(total);
            }
            let ds = self.pos;
            while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
                self.pos += 1;
            }
            n = std::str::from_utf8(&self.s[ds..self.pos])
                .ok()?
                .parse()
                .ok()?;
        }
    }
}

#[cfg(test)]
mod unit {
    use super::rewrite;

    #[test]
    fn rewrites_only_duration_expressions() {
        assert_eq!(rewrite("rate(x[5m])", 0, 0), "rate(x[5m])");
        assert_eq!(rewrite("x[26m+4m]", 0, 0), "x[1800000ms]");
        assert_eq!(rewrite("x[1h30m % 1h]", 0, 0), "x[1800000ms]");
        assert_eq!(rewrite("x[29s+1s:5s+5s]", 0, 0), "x[30000ms:10000ms]");
        assert_eq!(rewrite("x[step()+1ms]", 10_000, 0), "x[10001ms]");
        assert_eq!(rewrite("x offset 5m", 0, 0), "x offset 5m");
        assert_eq!(rewrite("x offset -step()*2", 5000, 0), "x offset -5000ms*2");
        assert_eq!(
            rewrite("x offset -(min_of(step(), 2s)-5)+8000", 5000, 0),
            "x offset 3000ms+8000"
        );
        assert_eq!(rewrite(r#"x{a="[1+1]"}"#, 0, 0), r#"x{a="[1+1]"}"#);
        assert_eq!(rewrite("my_offset + 1", 0, 0), "my_offset + 1");
    }
}
