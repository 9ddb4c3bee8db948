//! Policy files are operator input: parsing any bytes must end in policies or errors, never
//! a panic, a hang or an unbounded allocation (libFuzzer's -timeout and -rss_limit_mb).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = iopf_agent::policy::PolicySet::parse(std::path::Path::new("fuzz.yaml"), text);
    }
});
