//! The node config parser on arbitrary text: an error or a config, never a
//! panic (relative paths resolve against a directory that does not exist).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = cleanroom_node::NodeConfig::parse(text, std::path::Path::new("/nonexistent"));
});
