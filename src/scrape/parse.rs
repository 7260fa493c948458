//! Pull parser for the Prometheus text exposition format, version 0.0.4.
//!
//! # Role
//!
//! The scrape loop fetches a target's `/metrics` body into one buffer and walks it with a
//! [`TextParser`]. Each call to [`TextParser::next_entry`] yields the next `# HELP` line, `# TYPE`
//! line or sample; other comments and blank lines are skipped. The first error ends the walk: a
//! scrape is accepted or failed as a whole, as in Prometheus.
//!
//! What is accepted follows Prometheus 2.42's `model/textparse/promparse.go` (and its lexer
//! `promlex.l`), with the few deliberate differences listed below.
//!
//! # Input and output
//!
//! * Input: the whole scrape body as `&[u8]`. It does not need to be UTF-8 as a whole (comments
//!   are not checked), and the last line needs no trailing newline.
//! * Output: [`Entry`] values that borrow from the body (zero-copy). [`Sample::series`] is the
//!   raw `name{labels}` text and serves as the scrape-cache key: identical bytes mean an
//!   identical series, so a caller that has seen them before can skip
//!   [`Sample::parse_labels`] entirely.
//!
//! # Invariants
//!
//! * **Zero-copy, no allocation on the common path.** Names, label values and help texts are
//!   borrowed from the body; an owned string is made only when a label value or help text contains
//!   a backslash escape, and for error messages.
//! * **No panics on any input.** All byte access goes through `get`, nothing is unwrapped, and
//!   arithmetic stays within the body's length. No `unsafe`.
//! * **What is validated where.** `next_entry` validates the whole line structure: the metric
//!   name, the extent of the label block (quoted values with escapes, unterminated values and
//!   blocks), the value, the timestamp, nothing trailing, the `TYPE` keyword and the UTF-8 of
//!   `HELP` texts. It does *not* look inside the label block. [`Sample::parse_labels`] does the
//!   label syntax, label-name rules, UTF-8 of label values, unescaping and duplicate label names.
//!   A caller must call it (or know the `series` bytes from an earlier successful call) before
//!   trusting a sample.
//! * Line numbers in errors are 1-based and count every `\n` in the body, including raw newlines
//!   inside label values.
//! * `NaN` values are returned with Prometheus's canonical bit pattern (`0x7ff8000000000001`),
//!   so a scraped value can never collide with the staleness marker.
//!
//! # Grammar accepted (as promparse does)
//!
//! * Blank lines; leading spaces and tabs before any line.
//! * `#` lines: `# HELP name text` and `# TYPE name type` (one or more spaces/tabs after `#`,
//!   after the keyword, and exactly the first blank after the name is a separator, so
//!   `# HELP x  text` has the help text `" text"`). Anything else starting with `#` is a comment.
//!   `TYPE` must be exactly one of `counter`, `gauge`, `histogram`, `summary`, `untyped`.
//!   `HELP` text is unescaped for `\\` and `\n` only; other backslash pairs stay as written.
//! * Samples: `name[ ]{labels} value [timestamp]` with spaces/tabs as separators and trailing
//!   blanks allowed. Metric names are `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names
//!   `[a-zA-Z_][a-zA-Z0-9_]*`. In the label block, blanks may surround names, `=`, values and
//!   commas; commas between pairs are optional and one trailing comma is allowed (both as in
//!   promparse). Label values are `"…"` with `\\`, `\"` and `\n` unescaped and other backslash
//!   pairs kept verbatim; a raw newline inside a value is accepted (promparse's lexer does so),
//!   a backslash directly before a newline is not.
//! * Values as Go's `strconv.ParseFloat` parses them, minus the `p`/`P`/`_` forms that
//!   promparse rejects (so no hex floats): decimal and exponent forms, `Inf`/`Infinity` with an
//!   optional sign and `NaN` without sign, case-insensitively. Values that overflow `f64` are
//!   rejected (Go reports a range error), values that underflow become 0.
//! * Timestamps: integer milliseconds.
//! * `\r\n` line endings are rejected on sample and blank lines, as in promparse (the `\r`
//!   becomes part of the value); comments tolerate them and a `HELP` text keeps the `\r`.
//!
//! # Deliberate differences from promparse 2.42
//!
//! * Negative timestamps (`-123`) are accepted; promparse's lexer only takes digits.
//! * A metric name must be followed by a blank, `{` or the end of the line. promparse lets a
//!   value start right after the name (`foo-1 2` is `foo` = -1 at ts 2); that is rejected here.
//!   The same goes for the name in `HELP`/`TYPE` lines. A value directly after `}` is accepted,
//!   as in promparse.
//! * A NUL byte where promparse would end the input silently (at the start of a line) is an
//!   error. NUL bytes inside comments, help texts and label values are accepted.
//! * Duplicate label names are reported by [`Sample::parse_labels`] (Prometheus reports them
//!   later, in the scrape loop).
//!
//! # Not supported (yet)
//!
//! * OpenMetrics (`application/openmetrics-text`): `# UNIT`, `# EOF`, exemplars, created
//!   timestamps, quoted UTF-8 metric and label names. An OpenMetrics parser is meant to sit beside
//!   this one as another pull parser yielding the same [`Entry`], [`Sample`], [`MetricType`] and
//!   [`ParseError`] types (adding variants where it needs them), so the scrape loop can pick a
//!   parser by content type and otherwise not care.
//! * The protobuf exposition format and native histograms.
#![deny(unsafe_code)]

use std::borrow::Cow;
use std::fmt;

/// Prometheus's canonical NaN (`value.NormalNaN`), distinct from the staleness marker.
const NORMAL_NAN_BITS: u64 = 0x7ff8_0000_0000_0001;

/// The longest excerpt of the input quoted in an error message, in bytes.
const MAX_SNIPPET: usize = 64;

/// A pull parser over one scrape body in the Prometheus text format 0.0.4.
pub struct TextParser<'a> {
    body: &'a [u8],
    /// Offset of the next unread byte.
    pos: usize,
    /// 1-based line number of `pos`.
    line: usize,
    /// Set at the end of input or after an error.
    done: bool,
}

/// The type announced by a `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// One meaningful line of a scrape body.
#[derive(Debug)]
pub enum Entry<'a> {
    /// `# HELP metric text`; the text is unescaped (`\\` and `\n`).
    Help { metric: &'a str, text: Cow<'a, str> },
    /// `# TYPE metric kind`.
    Type { metric: &'a str, kind: MetricType },
    /// A sample line.
    Sample(Sample<'a>),
}

/// One sample line. Its labels are parsed on demand with [`Sample::parse_labels`].
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    /// The raw bytes of `name{labels}` exactly as they appear in the body (name plus the label
    /// block including braces, or just the name if no braces), used as a scrape-cache key:
    /// identical bytes mean identical series. Never includes the blanks before the value (blanks
    /// between the name and `{`, which promparse allows, are included).
    pub series: &'a [u8],
    /// The metric name.
    pub name: &'a str,
    /// The sample value (NaN in its canonical Prometheus bit pattern).
    pub value: f64,
    /// Milliseconds, if the line had a timestamp.
    pub timestamp: Option<i64>,
    /// The label block including its braces, or empty if the line had none.
    labels: &'a [u8],
    /// The 1-based line the sample starts on.
    line: usize,
}

/// Why and where parsing failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number of the offending byte.
    pub line: usize,
    pub kind: ParseErrorKind,
}

/// The reason of a [`ParseError`]. Strings are excerpts of the input, cut to a few dozen bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// A sample line, `HELP` or `TYPE` line does not start with a valid metric name, or the name
    /// is not followed by a blank, `{` (samples only) or the end of the line.
    InvalidMetricName,
    /// A label name in the label block is missing or not `[a-zA-Z_][a-zA-Z0-9_]*`.
    InvalidLabelName,
    /// A label name is not followed by `=`.
    MissingEquals(String),
    /// A label's `=` is not followed by a double-quoted value.
    MissingLabelValue(String),
    /// The input ends inside a quoted label value.
    UnterminatedLabelValue,
    /// The line ends before the `}` closing the label block.
    UnterminatedLabelBlock,
    /// A backslash inside a label value is directly followed by a line break.
    InvalidEscape,
    /// The label block has the same label name twice.
    DuplicateLabel(String),
    /// A sample line has no value.
    MissingValue,
    /// The value is not a float as Prometheus parses it (or overflows `f64`).
    InvalidValue(String),
    /// The timestamp is not an integer number of milliseconds that fits in `i64`.
    InvalidTimestamp(String),
    /// Something follows the timestamp on a sample line.
    UnexpectedText(String),
    /// A label value or `HELP` text is not valid UTF-8.
    InvalidUtf8,
    /// A `TYPE` line names an unknown type.
    InvalidType(String),
    /// A carriage return where the format does not allow one (CRLF line endings).
    CarriageReturn,
    /// A NUL byte outside of comments, help texts and label values.
    NulByte,
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidMetricName => f.write_str(
                "invalid metric name (expected [a-zA-Z_:][a-zA-Z0-9_:]* followed by a blank or '{')",
            ),
            Self::InvalidLabelName => {
                f.write_str("invalid label name (expected [a-zA-Z_][a-zA-Z0-9_]* or '}')")
            }
            Self::MissingEquals(name) => write!(f, "expected '=' after label name {name:?}"),
            Self::MissingLabelValue(name) => {
                write!(f, "expected a double-quoted value for label {name:?}")
            }
            Self::UnterminatedLabelValue => f.write_str("unterminated label value"),
            Self::UnterminatedLabelBlock => f.write_str("label block not closed by '}'"),
            Self::InvalidEscape => f.write_str("backslash before a line break in label value"),
            Self::DuplicateLabel(name) => write!(f, "duplicate label name {name:?}"),
            Self::MissingValue => f.write_str("missing sample value"),
            Self::InvalidValue(v) => write!(f, "invalid value {v:?}"),
            Self::InvalidTimestamp(t) => write!(f, "invalid timestamp {t:?}"),
            Self::UnexpectedText(t) => write!(f, "unexpected text {t:?} after timestamp"),
            Self::InvalidUtf8 => f.write_str("invalid UTF-8"),
            Self::InvalidType(t) => write!(
                f,
                "invalid metric type {t:?} (expected counter, gauge, histogram, summary or untyped)"
            ),
            Self::CarriageReturn => {
                f.write_str("unexpected carriage return (CRLF line endings are not allowed)")
            }
            Self::NulByte => f.write_str("unexpected NUL byte"),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.kind)
    }
}

impl std::error::Error for ParseError {}

impl<'a> TextParser<'a> {
    /// A parser over a whole scrape body.
    pub fn new(body: &'a [u8]) -> Self {
        TextParser {
            body,
            pos: 0,
            line: 1,
            done: false,
        }
    }

    /// Next entry; None at end of input. After an Err, the parser yields None (the scrape is
    /// failed as a whole).
    pub fn next_entry(&mut self) -> Option<Result<Entry<'a>, ParseError>> {
        if self.done {
            return None;
        }
        match self.entry() {
            Ok(Some(entry)) => Some(Ok(entry)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(kind) => {
                self.done = true;
                Some(Err(ParseError {
                    line: self.line,
                    kind,
                }))
            }
        }
    }

    /// Reads up to and including the next HELP, TYPE or sample line; `None` at end of input.
    /// On error, `self.line` is the line of the offending byte.
    fn entry(&mut self) -> Result<Option<Entry<'a>>, ParseErrorKind> {
        loop {
            self.skip_blanks();
            match self.peek() {
                None => return Ok(None),
                Some(b'\n') => self.consume_newline(),
                Some(b'#') => {
                    self.pos += 1;
                    if let Some(entry) = self.comment()? {
                        return Ok(Some(entry));
                    }
                }
                Some(c) if is_metric_start(c) => return self.sample().map(Some),
                Some(c) => return Err(unexpected(c, ParseErrorKind::InvalidMetricName)),
            }
        }
    }

    /// After a `#`: a HELP or TYPE entry, or `None` for a plain comment (skipped).
    fn comment(&mut self) -> Result<Option<Entry<'a>>, ParseErrorKind> {
        if self.skip_blanks() > 0 {
            let rest = self.body.get(self.pos..).unwrap_or_default();
            let help = rest.starts_with(b"HELP");
            if (help || rest.starts_with(b"TYPE")) && rest.get(4).is_some_and(|&c| is_blank(c)) {
                self.pos += 4;
                self.skip_blanks();
                return self.metadata(help).map(Some);
            }
        }
        self.skip_line();
        Ok(None)
    }

    /// The rest of a HELP (`help`) or TYPE line after the keyword and its blanks.
    fn metadata(&mut self, help: bool) -> Result<Entry<'a>, ParseErrorKind> {
        let metric = self.metric_name()?;
        // As in promparse, the text starts after exactly one blank; further blanks belong to it.
        let text = match self.peek() {
            None | Some(b'\n') => &[][..],
            Some(c) if is_blank(c) => {
                let start = self.pos + 1;
                let end = self.line_end(start);
                self.pos = end;
                self.slice(start, end)
            }
            Some(c) => return Err(unexpected(c, ParseErrorKind::InvalidMetricName)),
        };
        let entry = if help {
            let text = std::str::from_utf8(text).map_err(|_| ParseErrorKind::InvalidUtf8)?;
            Entry::Help {
                metric,
                text: unescape(text, false),
            }
        } else {
            let kind = match text {
                b"counter" => MetricType::Counter,
                b"gauge" => MetricType::Gauge,
                b"histogram" => MetricType::Histogram,
                b"summary" => MetricType::Summary,
                b"untyped" => MetricType::Untyped,
                _ if text.contains(&b'\r') => return Err(ParseErrorKind::CarriageReturn),
                _ => return Err(ParseErrorKind::InvalidType(snippet(text))),
            };
            Entry::Type { metric, kind }
        };
        self.consume_newline();
        Ok(entry)
    }

    /// A sample line, starting at the first byte of the metric name.
    fn sample(&mut self) -> Result<Entry<'a>, ParseErrorKind> {
        let line = self.line;
        let start = self.pos;
        let name = self.metric_name()?;
        let mut series_end = self.pos;
        let mut labels = &[][..];
        let blanks = self.skip_blanks();
        match self.peek() {
            Some(b'{') => {
                let block_start = self.pos;
                self.label_block()?;
                labels = self.slice(block_start, self.pos);
                series_end = self.pos;
                self.skip_blanks();
            }
            Some(c) if blanks == 0 && c != b'\n' => {
                return Err(unexpected(c, ParseErrorKind::InvalidMetricName))
            }
            _ => {}
        }
        let series = self.slice(start, series_end);

        let token = self.token();
        if token.is_empty() {
            return Err(ParseErrorKind::MissingValue);
        }
        let value = parse_value(token)?;

        self.skip_blanks();
        let mut timestamp = None;
        if !matches!(self.peek(), None | Some(b'\n')) {
            timestamp = Some(parse_timestamp(self.token())?);
            self.skip_blanks();
            if !matches!(self.peek(), None | Some(b'\n')) {
                let extra = self.token();
                return Err(bad_token(extra, ParseErrorKind::UnexpectedText));
            }
        }
        self.consume_newline();
        Ok(Entry::Sample(Sample {
            series,
            name,
            value,
            timestamp,
            labels,
            line,
        }))
    }

    /// Skips a label block from its `{` to just past its `}`, honouring quoted values.
    fn label_block(&mut self) -> Result<(), ParseErrorKind> {
        self.pos += 1;
        loop {
            match self.peek() {
                None | Some(b'\n') => return Err(ParseErrorKind::UnterminatedLabelBlock),
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'"') => {
                    self.pos += 1;
                    self.quoted()?;
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// Skips the rest of a quoted label value, up to just past its closing quote.
    fn quoted(&mut self) -> Result<(), ParseErrorKind> {
        loop {
            match self.peek() {
                None => return Err(ParseErrorKind::UnterminatedLabelValue),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => match self.body.get(self.pos + 1) {
                    None => {
                        self.pos += 1;
                        return Err(ParseErrorKind::UnterminatedLabelValue);
                    }
                    Some(b'\n') => return Err(ParseErrorKind::InvalidEscape),
                    Some(_) => self.pos += 2,
                },
                Some(b'\n') => {
                    self.pos += 1;
                    self.line += 1;
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// A metric name at `pos`, which is left just past it.
    fn metric_name(&mut self) -> Result<&'a str, ParseErrorKind> {
        let start = self.pos;
        match self.peek() {
            Some(c) if is_metric_start(c) => self.pos += 1,
            Some(c) => return Err(unexpected(c, ParseErrorKind::InvalidMetricName)),
            None => return Err(ParseErrorKind::InvalidMetricName),
        }
        while self.peek().is_some_and(is_metric_char) {
            self.pos += 1;
        }
        ascii_str(self.slice(start, self.pos))
    }

    /// The bytes from `pos` to the next blank, line break or end of input.
    fn token(&mut self) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(|c| !is_blank(c) && c != b'\n') {
            self.pos += 1;
        }
        self.slice(start, self.pos)
    }

    fn peek(&self) -> Option<u8> {
        self.body.get(self.pos).copied()
    }

    fn slice(&self, start: usize, end: usize) -> &'a [u8] {
        self.body.get(start..end).unwrap_or_default()
    }

    /// Skips spaces and tabs; returns how many.
    fn skip_blanks(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(is_blank) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// The offset of the `\n` ending the line that contains `from`, or the body's length.
    fn line_end(&self, from: usize) -> usize {
        let rest = self.body.get(from..).unwrap_or_default();
        match rest.iter().position(|&c| c == b'\n') {
            Some(i) => from + i,
            None => self.body.len(),
        }
    }

    /// Moves past the current line including its line break.
    fn skip_line(&mut self) {
        self.pos = self.line_end(self.pos);
        self.consume_newline();
    }

    /// Moves past a `\n` at `pos`, if there is one.
    fn consume_newline(&mut self) {
        if self.peek() == Some(b'\n') {
            self.pos += 1;
            self.line += 1;
        }
    }
}

impl<'a> Sample<'a> {
    /// Parses the label pairs (in the order written) into `out` (cleared first). Values are
    /// unescaped (\\, \", \n). Errors on bad syntax. Checking duplicates of a label name is done
    /// here too (error "duplicate label name"). On error, `out` is left empty.
    pub fn parse_labels(&self, out: &mut Vec<(&'a str, Cow<'a, str>)>) -> Result<(), ParseError> {
        out.clear();
        let block = self.labels;
        self.label_pairs(out).map_err(|(at, kind)| {
            out.clear();
            let before = block.get(..at).unwrap_or(block);
            ParseError {
                line: self.line + before.iter().filter(|&&c| c == b'\n').count(),
                kind,
            }
        })
    }

    /// The work of `parse_labels`; errors carry the offset into the block.
    fn label_pairs(
        &self,
        out: &mut Vec<(&'a str, Cow<'a, str>)>,
    ) -> Result<(), (usize, ParseErrorKind)> {
        let b: &'a [u8] = self.labels;
        if b.is_empty() {
            return Ok(());
        }
        let at = |i: usize| b.get(i).copied();
        let skip_blanks = |mut i: usize| {
            while at(i).is_some_and(is_blank) {
                i += 1;
            }
            i
        };
        let mut i = 1; // past '{'
        loop {
            i = skip_blanks(i);
            match at(i) {
                None => return Err((i, ParseErrorKind::UnterminatedLabelBlock)),
                Some(b'}') => {
                    return match b.get(i + 1..) {
                        Some([]) => Ok(()),
                        rest => Err((
                            i + 1,
                            ParseErrorKind::UnexpectedText(snippet(rest.unwrap_or_default())),
                        )),
                    };
                }
                Some(c) if is_label_start(c) => {}
                Some(c) => return Err((i, unexpected(c, ParseErrorKind::InvalidLabelName))),
            }
            let name_start = i;
            i += 1;
            while at(i).is_some_and(is_label_char) {
                i += 1;
            }
            let name = ascii_str(b.get(name_start..i).unwrap_or_default())
                .map_err(|kind| (name_start, kind))?;

            i = skip_blanks(i);
            if at(i) != Some(b'=') {
                return Err((i, ParseErrorKind::MissingEquals(name.to_owned())));
            }
            i = skip_blanks(i + 1);
            if at(i) != Some(b'"') {
                return Err((i, ParseErrorKind::MissingLabelValue(name.to_owned())));
            }
            i += 1;
            let value_start = i;
            let mut escaped = false;
            loop {
                match at(i) {
                    None => return Err((i, ParseErrorKind::UnterminatedLabelValue)),
                    Some(b'"') => break,
                    Some(b'\\') => match at(i + 1) {
                        None => return Err((i, ParseErrorKind::UnterminatedLabelValue)),
                        Some(b'\n') => return Err((i, ParseErrorKind::InvalidEscape)),
                        Some(_) => {
                            escaped = true;
                            i += 2;
                        }
                    },
                    Some(_) => i += 1,
                }
            }
            let raw = b.get(value_start..i).unwrap_or_default();
            let value = std::str::from_utf8(raw)
                .map_err(|e| (value_start + e.valid_up_to(), ParseErrorKind::InvalidUtf8))?;
            let value = if escaped {
                unescape(value, true)
            } else {
                Cow::Borrowed(value)
            };
            if out.iter().any(|(n, _)| *n == name) {
                return Err((name_start, ParseErrorKind::DuplicateLabel(name.to_owned())));
            }
            out.push((name, value));

            // Past the closing quote. The comma is optional, as in promparse.
            i = skip_blanks(i + 1);
            if at(i) == Some(b',') {
                i += 1;
            }
        }
    }
}

fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

fn is_metric_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_metric_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

fn is_label_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_label_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The error for an unexpected byte: CR and NUL get their own kinds, anything else `otherwise`.
fn unexpected(c: u8, otherwise: ParseErrorKind) -> ParseErrorKind {
    match c {
        b'\r' => ParseErrorKind::CarriageReturn,
        0 => ParseErrorKind::NulByte,
        _ => otherwise,
    }
}

/// The error for a bad token: `CarriageReturn` if it holds a CR, else `kind` with an excerpt.
fn bad_token(token: &[u8], kind: fn(String) -> ParseErrorKind) -> ParseErrorKind {
    if token.contains(&b'\r') {
        ParseErrorKind::CarriageReturn
    } else {
        kind(snippet(token))
    }
}

/// Up to `MAX_SNIPPET` bytes of input as a string for an error message.
fn snippet(bytes: &[u8]) -> String {
    match bytes.get(..MAX_SNIPPET) {
        Some(head) if head.len() < bytes.len() => {
            let mut s = String::from_utf8_lossy(head).into_owned();
            s.push('…');
            s
        }
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Bytes already known to be ASCII name characters as `&str`.
fn ascii_str(bytes: &[u8]) -> Result<&str, ParseErrorKind> {
    std::str::from_utf8(bytes).map_err(|_| ParseErrorKind::InvalidUtf8)
}

/// A sample value as promparse reads it: Go's `strconv.ParseFloat` without `p`/`P`/`_` forms.
fn parse_value(token: &[u8]) -> Result<f64, ParseErrorKind> {
    let invalid = || bad_token(token, ParseErrorKind::InvalidValue);
    let s = std::str::from_utf8(token).map_err(|_| invalid())?;
    // Rust's grammar is Go's decimal grammar (Rust also has no hex floats, `p` or `_`), except
    // that Rust accepts a signed NaN and saturates on overflow where Go reports an error.
    let value: f64 = s.parse().map_err(|_| invalid())?;
    let unsigned = s.strip_prefix(|c| c == '+' || c == '-').unwrap_or(s);
    if value.is_nan() {
        if unsigned.len() != s.len() {
            return Err(invalid());
        }
        return Ok(f64::from_bits(NORMAL_NAN_BITS));
    }
    if value.is_infinite()
        && !unsigned.eq_ignore_ascii_case("inf")
        && !unsigned.eq_ignore_ascii_case("infinity")
    {
        return Err(invalid());
    }
    Ok(value)
}

/// A timestamp: an optional `-` and decimal digits, fitting in `i64`.
fn parse_timestamp(token: &[u8]) -> Result<i64, ParseErrorKind> {
    let invalid = || bad_token(token, ParseErrorKind::InvalidTimestamp);
    let digits = token.strip_prefix(b"-").unwrap_or(token);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    std::str::from_utf8(token)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)
}

/// Undoes the escapes of a label value (`quote`: `\\`, `\"`, `\n`) or help text (`\\`, `\n`).
/// Other backslash pairs are kept verbatim, as Go's `strings.Replacer` in promparse does.
fn unescape(s: &str, quote: bool) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quote => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Labels<'a> = Vec<(&'a str, Cow<'a, str>)>;

    /// All entries of a body; panics (test only) on a parse error.
    fn entries(body: &str) -> Vec<Entry<'_>> {
        let mut p = TextParser::new(body.as_bytes());
        let mut out = Vec::new();
        while let Some(e) = p.next_entry() {
            match e {
                Ok(e) => out.push(e),
                Err(e) => panic!("unexpected error {e} in {body:?}"),
            }
        }
        out
    }

    /// All samples of a body; panics (test only) on a parse error.
    fn samples(body: &str) -> Vec<Sample<'_>> {
        entries(body)
            .into_iter()
            .filter_map(|e| match e {
                Entry::Sample(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    fn one_sample(body: &str) -> Sample<'_> {
        let mut s = samples(body);
        assert_eq!(s.len(), 1, "{body:?}");
        s.remove(0)
    }

    fn labels<'a>(s: &Sample<'a>) -> Vec<(&'a str, String)> {
        let mut out = Labels::new();
        s.parse_labels(&mut out)
            .unwrap_or_else(|e| panic!("labels of {:?}: {e}", s.series));
        out.into_iter().map(|(n, v)| (n, v.into_owned())).collect()
    }

    /// The first error of a body, including label errors of its samples.
    fn first_error(body: &[u8]) -> Option<ParseError> {
        let mut p = TextParser::new(body);
        let mut out = Labels::new();
        while let Some(e) = p.next_entry() {
            match e {
                Ok(Entry::Sample(s)) => {
                    if let Err(e) = s.parse_labels(&mut out) {
                        return Some(e);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    assert!(p.next_entry().is_none(), "entries after an error");
                    return Some(e);
                }
            }
        }
        None
    }

    fn error_of(body: &str) -> ParseError {
        first_error(body.as_bytes()).unwrap_or_else(|| panic!("no error in {body:?}"))
    }

    #[test]
    fn help_type_and_samples() {
        let body = "# HELP http_requests_total The total number of HTTP requests.\n\
                    # TYPE http_requests_total counter\n\
                    http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
                    http_requests_total{method=\"post\",code=\"400\"}    3 1395066363000\n\
                    \n\
                    # A normal comment.\n\
                    #\n\
                    # TYPE metric_without_timestamp_and_labels gauge\n\
                    metric_without_timestamp_and_labels 12.47\n";
        let e = entries(body);
        assert_eq!(e.len(), 6);
        match &e[0] {
            Entry::Help { metric, text } => {
                assert_eq!(*metric, "http_requests_total");
                assert_eq!(text, "The total number of HTTP requests.");
                assert!(matches!(text, Cow::Borrowed(_)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            e[1],
            Entry::Type {
                metric: "http_requests_total",
                kind: MetricType::Counter
            }
        ));
        let Entry::Sample(s) = &e[2] else {
            panic!("{:?}", e[2])
        };
        assert_eq!(
            s.series,
            b"http_requests_total{method=\"post\",code=\"200\"}"
        );
        assert_eq!(s.name, "http_requests_total");
        assert_eq!(s.value, 1027.0);
        assert_eq!(s.timestamp, Some(1395066363000));
        assert_eq!(s.line, 3);
        assert_eq!(
            labels(s),
            vec![("method", "post".into()), ("code", "200".into())]
        );
        let Entry::Sample(s) = &e[3] else {
            panic!("{:?}", e[3])
        };
        assert_eq!(s.value, 3.0);
        assert_eq!(
            s.series,
            b"http_requests_total{method=\"post\",code=\"400\"}"
        );
        assert!(matches!(
            e[4],
            Entry::Type {
                kind: MetricType::Gauge,
                ..
            }
        ));
        let Entry::Sample(last) = &e[5] else {
            panic!("{:?}", e[5])
        };
        assert_eq!(last.series, b"metric_without_timestamp_and_labels");
        assert_eq!(last.value, 12.47);
        assert_eq!(last.timestamp, None);
        assert_eq!(last.line, 9);
        assert!(labels(last).is_empty());
    }

    #[test]
    fn all_types() {
        for (word, kind) in [
            ("counter", MetricType::Counter),
            ("gauge", MetricType::Gauge),
            ("histogram", MetricType::Histogram),
            ("summary", MetricType::Summary),
            ("untyped", MetricType::Untyped),
        ] {
            let body = format!("# TYPE m {word}\n");
            match entries(&body).as_slice() {
                [Entry::Type {
                    metric: "m",
                    kind: k,
                }] => assert_eq!(*k, kind),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn comments_and_blank_lines() {
        let body = "\n\n   \n\t\n#\n# \n#HELP not_help x\n# HELPER x\n# HELP\n# TYPE\n\
                    #TYPE foo bar\n# Hrandom comment\n# comment with \\ and \\n \r\n  # indented\n\
                    x 1\n";
        let s = one_sample(body);
        assert_eq!(s.line, 15);
        assert_eq!(s.name, "x");
    }

    #[test]
    fn help_text_forms() {
        let help = |body: &'static str| match entries(body).pop() {
            Some(Entry::Help { metric, text }) => (metric, text.into_owned()),
            other => panic!("{other:?}"),
        };
        assert_eq!(help("# HELP foo\n"), ("foo", String::new()));
        assert_eq!(help("# HELP foo"), ("foo", String::new()));
        assert_eq!(help("# HELP foo \n"), ("foo", String::new()));
        assert_eq!(help("# HELP foo  two\n"), ("foo", " two".into()));
        assert_eq!(
            help("#\tHELP\t\tfoo\tbar baz \n"),
            ("foo", "bar baz ".into())
        );
        assert_eq!(
            help(r#"# HELP foo a\\b\nc\"d\t"#),
            ("foo", "a\\b\nc\\\"d\\t".into())
        );
        assert_eq!(help("# HELP foo x\0y\n"), ("foo", "x\0y".into()));
        assert_eq!(help("# HELP foo ünïcödé ✓\n"), ("foo", "ünïcödé ✓".into()));
        assert_eq!(help("# HELP a:b_c x\n"), ("a:b_c", "x".into()));
        assert_eq!(help("# HELP foo x\r\n"), ("foo", "x\r".into()));
    }

    #[test]
    fn sample_forms() {
        let s = one_sample("foo 1");
        assert_eq!((s.series, s.value, s.timestamp), (&b"foo"[..], 1.0, None));
        let s = one_sample("foo{} 1\n");
        assert_eq!(s.series, b"foo{}");
        assert!(labels(&s).is_empty());
        let s = one_sample("  \tfoo\t2\t-5  \t\n");
        assert_eq!(
            (s.series, s.value, s.timestamp),
            (&b"foo"[..], 2.0, Some(-5))
        );
        let s = one_sample("foo{a=\"b\"}3");
        assert_eq!((s.series, s.value), (&b"foo{a=\"b\"}"[..], 3.0));
        let s = one_sample("foo {a=\"b\"} 4 5");
        assert_eq!(s.series, b"foo {a=\"b\"}");
        assert_eq!((s.name, s.value, s.timestamp), ("foo", 4.0, Some(5)));
        let s = one_sample("_under:score_1{_l1=\"v\"} 0\n");
        assert_eq!(s.name, "_under:score_1");
        assert_eq!(labels(&s), vec![("_l1", "v".into())]);
        let s = one_sample("go_goroutines 33  \t123123\n");
        assert_eq!(s.timestamp, Some(123123));
        // The series key is the same for the same series whatever the value.
        let v = samples("a{x=\"1\"} 1\na{x=\"1\"} 2 3\na{x=\"2\"} 1\n");
        assert_eq!(v[0].series, v[1].series);
        assert_ne!(v[0].series, v[2].series);
    }

    #[test]
    fn label_block_forms() {
        let ab = vec![("a", "1".to_string()), ("b", "2".to_string())];
        for body in [
            "m{a=\"1\",b=\"2\"} 1",
            "m{a=\"1\",b=\"2\",} 1",
            "m{ a=\"1\", b=\"2\" } 1",
            "m{ a = \"1\" , b = \"2\" , } 1",
            "m{\ta=\t\"1\"\t,b=\"2\"\t} 1",
            "m { a= \"1\", b= \"2\", } 1",
            "m{a=\"1\" b=\"2\"} 1",
            "m{a=\"1\"b=\"2\"} 1",
        ] {
            let s = one_sample(body);
            assert_eq!(labels(&s), ab, "{body:?}");
            assert_eq!(s.value, 1.0);
        }
    }

    #[test]
    fn label_value_escapes() {
        let s = one_sample(r#"m{a="x\"y",b="c:\\dir\\",c="l1\nl2",d="\t\q",e="ü}{,=",f=""} 1"#);
        assert_eq!(
            labels(&s),
            vec![
                ("a", "x\"y".into()),
                ("b", "c:\\dir\\".into()),
                ("c", "l1\nl2".into()),
                ("d", "\\t\\q".into()),
                ("e", "ü}{,=".into()),
                ("f", "".into()),
            ]
        );
        // Borrowed unless escaped.
        let mut out = Labels::new();
        s.parse_labels(&mut out).unwrap();
        assert!(matches!(out[0].1, Cow::Owned(_)));
        assert!(matches!(out[4].1, Cow::Borrowed(_)));
        // A `}` or `"` inside a value does not end the block.
        let s = one_sample(r#"m{a="}\"} 2"} 3"#);
        assert_eq!(s.value, 3.0);
        assert_eq!(labels(&s), vec![("a", "}\"} 2".into())]);
        // NUL bytes are fine in label values.
        let s = one_sample("m{a=\"x\0y\"} 1");
        assert_eq!(labels(&s), vec![("a", "x\0y".into())]);
    }

    #[test]
    fn raw_newline_in_label_value_counts_lines() {
        let body = "m{a=\"x\ny\"} 1\nn 2\nbad\n";
        let mut p = TextParser::new(body.as_bytes());
        let Some(Ok(Entry::Sample(s))) = p.next_entry() else {
            panic!()
        };
        assert_eq!(s.line, 1);
        assert_eq!(labels(&s), vec![("a", "x\ny".into())]);
        let Some(Ok(Entry::Sample(s))) = p.next_entry() else {
            panic!()
        };
        assert_eq!((s.line, s.name), (3, "n"));
        let err = p.next_entry().unwrap().unwrap_err();
        assert_eq!((err.line, err.kind), (4, ParseErrorKind::MissingValue));
        assert!(p.next_entry().is_none());
        // Label errors after a raw newline report the line they are on.
        let s = one_sample("m{a=\"x\ny\",a=\"z\"} 1");
        let err = s.parse_labels(&mut Labels::new()).unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(err.kind, ParseErrorKind::DuplicateLabel("a".into()));
    }

    #[test]
    fn values() {
        let v = |s: &str| one_sample(&format!("m {s}\n")).value;
        for (text, want) in [
            ("1", 1.0),
            ("-0.5", -0.5),
            (".5", 0.5),
            ("5.", 5.0),
            ("+3", 3.0),
            ("1e3", 1000.0),
            ("1E+3", 1000.0),
            ("2.5e-3", 0.0025),
            ("-1.5E2", -150.0),
            ("007", 7.0),
            ("1e-400", 0.0),
            ("1.7976931348623157e308", f64::MAX),
        ] {
            assert_eq!(v(text), want, "{text}");
        }
        for text in ["+Inf", "Inf", "inf", "+inf", "INF", "infinity", "+Infinity"] {
            assert_eq!(v(text), f64::INFINITY, "{text}");
        }
        for text in ["-Inf", "-inf", "-infinity"] {
            assert_eq!(v(text), f64::NEG_INFINITY, "{text}");
        }
        for text in ["NaN", "nan", "NAN"] {
            assert_eq!(v(text).to_bits(), NORMAL_NAN_BITS, "{text}");
        }
    }

    #[test]
    fn invalid_values() {
        for text in [
            "abc", "true", "1_2", "0x1p-3", "0x1P-3", "0x10", "+nan", "-NaN", "1e999", "-1e999",
            "1e", ".", "-", "e5", "1..2", "infin", "nanx", "1,5", "1{",
        ] {
            let err = error_of(&format!("m {text}\n"));
            assert_eq!(err.line, 1);
            assert_eq!(
                err.kind,
                ParseErrorKind::InvalidValue(text.into()),
                "{text}"
            );
        }
    }

    #[test]
    fn timestamps() {
        let t = |s: &str| one_sample(&format!("m 1 {s}\n")).timestamp;
        assert_eq!(t("0"), Some(0));
        assert_eq!(t("-1"), Some(-1));
        assert_eq!(t("9223372036854775807"), Some(i64::MAX));
        assert_eq!(t("-9223372036854775808"), Some(i64::MIN));
        for text in [
            "9223372036854775808",
            "1.5",
            "+5",
            "-",
            "1e3",
            "abc",
            "12a",
            "--1",
        ] {
            let err = error_of(&format!("m 1 {text}\n"));
            assert_eq!(
                err.kind,
                ParseErrorKind::InvalidTimestamp(text.into()),
                "{text}"
            );
        }
    }

    #[test]
    fn every_error_kind_with_line() {
        use ParseErrorKind::*;
        let cases: &[(&[u8], usize, ParseErrorKind)] = &[
            (b"ok 1\n{a=\"ok\"} 1\n", 2, InvalidMetricName),
            (b"ok 1\n\n1abc 1\n", 3, InvalidMetricName),
            (b"foo-1 2\n", 1, InvalidMetricName),
            (b"foo.bar 2\n", 1, InvalidMetricName),
            (b"# HELP 1x text\n", 1, InvalidMetricName),
            (b"# HELP #\n", 1, InvalidMetricName),
            (b"# TYPE \n", 1, InvalidMetricName),
            (b"# HELP foo-bar text\n", 1, InvalidMetricName),
            (b"a 1\nb{1a=\"x\"} 1\n", 2, InvalidLabelName),
            (b"a{=\"\"} 0\n", 1, InvalidLabelName),
            (b"a{,} 0\n", 1, InvalidLabelName),
            (b"a{b=\"c\",,} 0\n", 1, InvalidLabelName),
            (b"a{\xff=\"foo\"} 1\n", 1, InvalidLabelName),
            (b"a{\"b\"=\"c\"} 1\n", 1, InvalidLabelName),
            (b"a{b} 1\n", 1, MissingEquals("b".into())),
            (b"a{b \"c\"} 1\n", 1, MissingEquals("b".into())),
            (b"a{b='c'} 1\n", 1, MissingLabelValue("b".into())),
            (b"a{b=c} 1\n", 1, MissingLabelValue("b".into())),
            (b"a{b=\0\"c\"} 1\n", 1, MissingLabelValue("b".into())),
            (b"x 1\nsomething{problem=\"", 2, UnterminatedLabelValue),
            (b"a{b=\"\0", 1, UnterminatedLabelValue),
            (b"a{b=\"c\\", 1, UnterminatedLabelValue),
            (b"a{b=\"c\"\n} 1\n", 1, UnterminatedLabelBlock),
            (b"a{b=\"c\"", 1, UnterminatedLabelBlock),
            (b"a{b=\n", 1, UnterminatedLabelBlock),
            (b"a{b=\"c\\\nd\"} 1\n", 1, InvalidEscape),
            (b"a{b=\"1\",b=\"2\"} 1\n", 1, DuplicateLabel("b".into())),
            (b"# HELP a\nx\n", 2, MissingValue),
            (b"a", 1, MissingValue),
            (b"a  \t\n", 1, MissingValue),
            (b"a{b=\"c\"}\n", 1, MissingValue),
            (b"a{b=\"c\"}  ", 1, MissingValue),
            (b"\n\na true\n", 3, InvalidValue("true".into())),
            (b"a \xff\n", 1, InvalidValue("\u{fffd}".into())),
            (b"a 1 x\n", 1, InvalidTimestamp("x".into())),
            (b"a 0 1_2\n", 1, InvalidTimestamp("1_2".into())),
            (b"a 1 2 3\n", 1, UnexpectedText("3".into())),
            (b"a 1 2 # comment\n", 1, UnexpectedText("#".into())),
            (b"a{b=\"\xff\"} 1\n", 1, InvalidUtf8),
            (b"a{b=\"ok\",c=\"\xc3\"} 1\n", 1, InvalidUtf8),
            (b"# HELP a \xff\xfe\n", 1, InvalidUtf8),
            (b"# TYPE a gauges\n", 1, InvalidType("gauges".into())),
            (b"# TYPE a  gauge\n", 1, InvalidType(" gauge".into())),
            (b"# TYPE a gauge \n", 1, InvalidType("gauge ".into())),
            (b"# TYPE a\n", 1, InvalidType("".into())),
            (b"# TYPE a Counter\n", 1, InvalidType("Counter".into())),
            (b"# TYPE a gauge\r\n", 1, CarriageReturn),
            (b"a 1\r\nb 2\r\n", 1, CarriageReturn),
            (b"a 1 2\r\n", 1, CarriageReturn),
            (b"a 1\n\r\n", 2, CarriageReturn),
            (b"a\r\n", 1, CarriageReturn),
            (b"a 1 2 \r\n", 1, CarriageReturn),
            (b"a 1\n\0", 2, NulByte),
            (b"a\0{b=\"ddd\"} 1", 1, NulByte),
            (b"a{b\0=\"hiih\"}\t1", 1, MissingEquals("b".into())),
            (b"a 0 1\0", 1, InvalidTimestamp("1\0".into())),
        ];
        for (body, line, kind) in cases {
            let (body, line) = (*body, *line);
            let err = first_error(body)
                .unwrap_or_else(|| panic!("no error in {:?}", String::from_utf8_lossy(body)));
            assert_eq!(
                (err.line, &err.kind),
                (line, kind),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn error_display() {
        let err = error_of("a 1\nb 2\nc abc\n");
        assert_eq!(err.to_string(), "line 3: invalid value \"abc\"");
        let err = error_of("a{b=\"1\",b=\"2\"} 1\n");
        assert_eq!(err.to_string(), "line 1: duplicate label name \"b\"");
        let long = format!("a {}\n", "x".repeat(1000));
        let err = error_of(&long);
        let ParseErrorKind::InvalidValue(v) = &err.kind else {
            panic!("{err:?}")
        };
        assert!(v.len() < 80 && v.ends_with('…'), "{v}");
        let boxed: Box<dyn std::error::Error> = Box::new(err);
        assert!(boxed.to_string().starts_with("line 1: invalid value"));
    }

    #[test]
    fn none_after_error_and_after_end() {
        let mut p = TextParser::new(b"a 1\nb x\nc 3\n");
        assert!(matches!(p.next_entry(), Some(Ok(Entry::Sample(_)))));
        assert!(matches!(p.next_entry(), Some(Err(_))));
        assert!(p.next_entry().is_none());
        assert!(p.next_entry().is_none());
        let mut p = TextParser::new(b"");
        assert!(p.next_entry().is_none());
        let mut p = TextParser::new(b"\n\n# only comments\n  ");
        assert!(p.next_entry().is_none());
        assert!(p.next_entry().is_none());
    }

    #[test]
    fn generated_body() {
        let mut body = String::new();
        let mut expect = 0;
        for f in 0..60 {
            body.push_str(&format!(
                "# HELP fam_{f} Family number {f}, with \\\\ and \\n.\n"
            ));
            body.push_str(&format!("# TYPE fam_{f} gauge\n"));
            for i in 0..8 {
                match i % 4 {
                    0 => body.push_str(&format!("fam_{f} {i}.5\n")),
                    1 => body.push_str(&format!(
                        "fam_{f}{{instance=\"host-{i}\",path=\"/a\\\\b\\\"c\\\"\",}} {}e-3 {}\n",
                        f * i,
                        1_700_000_000_000_i64 + i as i64
                    )),
                    2 => body.push_str(&format!("fam_{f}{{ le = \"+Inf\" , i=\"{i}\" }}\t-Inf\n")),
                    _ => body.push_str(&format!("  fam_{f}{{i=\"{i}\"}} NaN\n\n")),
                }
                expect += 1;
            }
            body.push_str("# just a comment\n");
        }
        assert!(body.lines().count() > 500);
        let mut p = TextParser::new(body.as_bytes());
        let (mut help, mut types, mut n) = (0, 0, 0);
        let mut out = Labels::new();
        while let Some(e) = p.next_entry() {
            match e.unwrap() {
                Entry::Help { text, .. } => {
                    assert!(text.contains("with \\ and \n."), "{text}");
                    help += 1;
                }
                Entry::Type { kind, .. } => {
                    assert_eq!(kind, MetricType::Gauge);
                    types += 1;
                }
                Entry::Sample(s) => {
                    s.parse_labels(&mut out).unwrap();
                    if let Some((_, path)) = out.iter().find(|(n, _)| *n == "path") {
                        assert_eq!(path, "/a\\b\"c\"");
                        assert!(s.timestamp.is_some());
                    }
                    assert!(s.name.starts_with("fam_"));
                    n += 1;
                }
            }
        }
        assert_eq!((help, types, n), (60, 60, expect));
    }

    const NODE_LIKE: &str = r#"# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0"} 2.3536e-05
go_gc_duration_seconds{quantile="0.25"} 3.0165e-05
go_gc_duration_seconds{quantile="0.5"} 3.5694e-05
go_gc_duration_seconds{quantile="0.75"} 4.9283e-05
go_gc_duration_seconds{quantile="1"} 0.000151155
go_gc_duration_seconds_sum 0.040980685
go_gc_duration_seconds_count 879
# HELP go_info Information about the Go environment.
# TYPE go_info gauge
go_info{version="go1.19.8"} 1
# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu="0",mode="idle"} 87654.32
node_cpu_seconds_total{cpu="0",mode="iowait"} 12.5
node_cpu_seconds_total{cpu="0",mode="system"} 321.09
node_cpu_seconds_total{cpu="0",mode="user"} 1234.56
node_cpu_seconds_total{cpu="1",mode="idle"} 87600.01
node_cpu_seconds_total{cpu="1",mode="user"} 1300.4
# HELP node_filesystem_avail_bytes Filesystem space available to non-root users in bytes.
# TYPE node_filesystem_avail_bytes gauge
node_filesystem_avail_bytes{device="/dev/mmcblk0p2",fstype="ext4",mountpoint="/"} 2.1474836e+10
node_filesystem_avail_bytes{device="tmpfs",fstype="tmpfs",mountpoint="/run"} 8.4e+07
# HELP node_network_info Non-numeric data from /sys/class/net/<iface>, value is always 1.
# TYPE node_network_info gauge
node_network_info{address="dc:a6:32:00:00:01",broadcast="ff:ff:ff:ff:ff:ff",device="eth0",duplex="full",ifalias="",operstate="up"} 1
# HELP node_scrape_collector_duration_seconds node_exporter: Duration of a collector scrape.
# TYPE node_scrape_collector_duration_seconds gauge
node_scrape_collector_duration_seconds{collector="cpu"} 0.000713
node_scrape_collector_success{collector="cpu"} 1
# HELP node_hwmon_temp_celsius Hardware monitor for temperature (input)
# TYPE node_hwmon_temp_celsius gauge
node_hwmon_temp_celsius{chip="thermal_thermal_zone0",sensor="temp1"} 48.686
# HELP http_request_duration_seconds A histogram of the request duration.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="0.1"} 33444
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.68201945706e+09
# HELP node_textfile_scrape_error 1 if there was an error opening or reading a file, 0 otherwise
# TYPE node_textfile_scrape_error gauge
node_textfile_scrape_error 0
"#;

    #[test]
    fn node_exporter_like_body() {
        let mut p = TextParser::new(NODE_LIKE.as_bytes());
        let (mut n, mut help, mut types) = (0, 0, 0);
        let mut out = Labels::new();
        let mut network_labels = 0;
        while let Some(e) = p.next_entry() {
            match e.unwrap() {
                Entry::Sample(s) => {
                    s.parse_labels(&mut out).unwrap();
                    if s.name == "node_network_info" {
                        network_labels = out.len();
                        assert_eq!(out[4], ("ifalias", Cow::Borrowed("")));
                    }
                    if s.series == br#"http_request_duration_seconds_bucket{le="+Inf"}"# {
                        assert_eq!(s.value, 144320.0);
                    }
                    n += 1;
                }
                Entry::Help { .. } => help += 1,
                Entry::Type { .. } => types += 1,
            }
        }
        let lines = NODE_LIKE
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .count();
        assert_eq!(n, lines);
        assert_eq!(n, 27);
        assert_eq!((help, types), (10, 10));
        assert_eq!(network_labels, 6);
    }

    /// Deterministic xorshift64 generator.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn garbage_never_panics() {
        const SPECIAL: &[u8] = b"{}\"\\=, \t\n\r\0#:_aZ9.-+eEInfNa\xff\xc3";
        let seeds: [&[u8]; 4] = [
            NODE_LIKE.as_bytes(),
            b"# HELP m a\\\\b\\n\n# TYPE m counter\nm{a=\"x\\\"y\",b=\"z\"} 1e3 -12\nm 2\n",
            b"m{a=\"x\ny\", b = \"}\" ,} NaN 5\n# comment\r\nn -Inf\n",
            b"",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut errors = 0;
        for iter in 0..4000 {
            let mut body = seeds[iter % seeds.len()].to_vec();
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(body.len() + 1);
                match rng.below(6) {
                    0 if at < body.len() => body[at] = rng.next() as u8,
                    1 if at < body.len() => {
                        body.remove(at);
                    }
                    2 => body.insert(at, SPECIAL[rng.below(SPECIAL.len())]),
                    3 => body.truncate(at),
                    4 if at < body.len() => {
                        let end = (at + rng.below(40)).min(body.len());
                        let chunk = body[at..end].to_vec();
                        let to = rng.below(body.len() + 1);
                        body.splice(to..to, chunk);
                    }
                    _ => body.insert(at, SPECIAL[rng.below(SPECIAL.len())]),
                }
            }
            let total_lines = body.iter().filter(|&&c| c == b'\n').count() + 1;
            let mut p = TextParser::new(&body);
            let mut out = Labels::new();
            let mut count = 0;
            while let Some(e) = p.next_entry() {
                count += 1;
                assert!(count <= body.len() + 1, "parser does not advance");
                match e {
                    Ok(Entry::Sample(s)) => {
                        assert!(s.series.starts_with(s.name.as_bytes()));
                        assert!(s.line >= 1 && s.line <= total_lines);
                        if let Err(err) = s.parse_labels(&mut out) {
                            assert!(out.is_empty());
                            assert!(err.line >= s.line && err.line <= total_lines);
                            let _ = err.to_string();
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        errors += 1;
                        assert!(err.line >= 1 && err.line <= total_lines, "{err:?}");
                        let _ = err.to_string();
                    }
                }
            }
            assert!(p.next_entry().is_none());
        }
        // The mutations must actually exercise the error paths.
        assert!(errors > 500, "{errors}");
    }

    /// Parses a recorded scrape from ../shared/data and checks every sample line is a sample.
    fn check_recorded(file: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data")
            .join(file);
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut p = TextParser::new(&body);
        let mut out = Labels::new();
        let mut n = 0;
        while let Some(e) = p.next_entry() {
            match e {
                Ok(Entry::Sample(s)) => {
                    s.parse_labels(&mut out)
                        .unwrap_or_else(|e| panic!("{file}: {e}"));
                    n += 1;
                }
                Ok(_) => {}
                Err(e) => panic!("{file}: {e}"),
            }
        }
        let text = String::from_utf8_lossy(&body);
        let lines = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .count();
        assert!(n > 0, "{file}");
        assert_eq!(n, lines, "{file}");
    }

    #[test]
    #[ignore = "needs ../shared"]
    fn recorded_node_exporter() {
        check_recorded("node-exporter.prom");
    }

    #[test]
    #[ignore = "needs ../shared"]
    fn recorded_prometheus_self() {
        check_recorded("prometheus-self.prom");
    }

    #[test]
    #[ignore = "needs ../shared"]
    fn recorded_victoriametrics_self() {
        check_recorded("victoriametrics-self.prom");
    }
}
