//! The analysis parser on arbitrary text: an error or an analysis, never a
//! panic; a parsed analysis hashes and lays out without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(a) = cleanroom::Analysis::parse(text) {
        let _ = a.hash();
        let _ = a.privacy_cost();
        let _ = cleanroom::protocol::Layout::new(&a);
        let _ = a.dp_dummy_rows();
    }
});
