//! iptables rule generation from annotations: whatever a pod's annotations say, the
//! injector's decision and strait-init's rule text are produced without panicking,
//! and every value that reaches a rule line parsed as a port or a CIDR.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    skip_in: String,
    skip_out: String,
    cidrs: String,
    extra: Vec<(String, String)>,
}

fuzz_target!(|input: Input| {
    let mut annotations = serde_json::Map::new();
    annotations.insert("strait.io/skip-inbound-ports".into(), input.skip_in.clone().into());
    annotations.insert("strait.io/skip-outbound-ports".into(), input.skip_out.clone().into());
    annotations.insert("strait.io/skip-outbound-cidrs".into(), input.cidrs.clone().into());
    for (k, v) in &input.extra {
        annotations.insert(k.clone(), v.clone().into());
    }
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": annotations},
        "spec": {"containers": [{"name": "a", "image": "x"}]}});
    if let Ok(pod) = serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(pod) {
        let _ = strait_inject::mutate(&pod, "app", &strait_inject::InjectConfig::default());
    }
    let (Ok(skip_in), Ok(skip_out), Ok(cidrs)) = (
        strait_iptables::parse_ports(&input.skip_in),
        strait_iptables::parse_ports(&input.skip_out),
        strait_iptables::parse_cidrs(&input.cidrs),
    ) else {
        return;
    };
    let r = strait_iptables::Redirect {
        proxy_uid: 1337,
        inbound_port: 15006,
        outbound_port: 15001,
        skip_inbound_ports: skip_in,
        skip_outbound_ports: skip_out,
        skip_outbound_cidrs: cidrs,
    };
    for family in [strait_iptables::Family::V4, strait_iptables::Family::V6] {
        let text = strait_iptables::install(&r, family, &Default::default());
        // Rule lines carry only validated tokens: no newline injection from input.
        assert!(text.lines().all(|l| l.starts_with('*') || l.starts_with(':') || l.starts_with("-A ") || l == "COMMIT"));
    }
});
