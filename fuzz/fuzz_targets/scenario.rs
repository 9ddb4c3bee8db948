//! Scenario files: parsing any bytes must end in a scenario or an error, never a panic, a
//! hang or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = iopf_agent::simulate::scenario::Scenario::parse("fuzz.yaml", text);
    }
});
