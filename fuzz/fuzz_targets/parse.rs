//! Fuzz target `parse`: the exposition parser must never panic, whatever the body.
//!
//! Each input is parsed as 0.0.4 text and as OpenMetrics; every entry is walked, every sample's
//! labels are parsed and every error is formatted, so all of the parser's public paths run.
//! Run: `cargo fuzz run parse --sanitizer none` (stable Rust).
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch::scrape::parse::{Entry, Format, TextParser};

fuzz_target!(|body: &[u8]| {
    let mut labels = Vec::new();
    for format in [Format::Text004, Format::OpenMetrics] {
        let mut parser = TextParser::with_format(body, format);
        while let Some(entry) = parser.next_entry() {
            match entry {
                Ok(Entry::Sample(sample)) => {
                    labels.clear();
                    if let Err(e) = sample.parse_labels(&mut labels) {
                        std::hint::black_box(e.to_string());
                    }
                    std::hint::black_box((sample.name, sample.value, sample.timestamp));
                }
                Ok(entry) => {
                    std::hint::black_box(&entry);
                }
                Err(e) => {
                    std::hint::black_box(e.to_string());
                }
            }
        }
    }
});
