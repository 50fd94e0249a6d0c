//! AdmissionReview handling: any body is a clear error or a response; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use strait_injector::webhook::{parse_review, respond, review_json, Webhook};

fuzz_target!(|data: &[u8]| {
    if let Ok((request, pod)) = parse_review(data) {
        let webhook = Webhook { config: strait_inject::InjectConfig::default() };
        let _ = review_json(respond(&webhook, &request, &pod));
    }
});
