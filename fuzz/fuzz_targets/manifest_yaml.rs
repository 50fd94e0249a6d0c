//! Manifest parsing in file mode: any text gives resources or a clear error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = strait_api::parse_manifests(text, "default");
    }
});
