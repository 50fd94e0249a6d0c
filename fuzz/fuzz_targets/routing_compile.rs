//! Route snapshot → routing tables: whatever the manifests say, compile succeeds,
//! the state serialises, and routing a request never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use strait_routing::{compile, CompileOptions, RequestView, Snapshot};

/// A seed with every kind, so mutations explore real routes quickly.
const PREFIX: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\nspec: {clusterIP: 10.96.0.1, ports: [{name: grpc, port: 80}]}\n---\n";

fuzz_target!(|data: &[u8]| {
    let Ok(tail) = std::str::from_utf8(data) else { return };
    let text = format!("{PREFIX}{tail}");
    let Ok(res) = strait_api::parse_manifests(&text, "n") else { return };
    for require in [false, true] {
        let state = compile(&Snapshot::from_resources(&res), &CompileOptions { require_reference_grants: require });
        let _ = serde_json::to_string(&state);
        let headers = http::HeaderMap::new();
        for svc in state.services.values() {
            for port in &svc.ports {
                for table in std::iter::once(port.producer()).chain(port.consumers.values()) {
                    for path in ["/a.B/C", "/", "", "/x/y/z"] {
                        if let Some(e) = table.route(&RequestView { path, headers: &headers }) {
                            let _ = e.rule.pick_backend(u64::MAX);
                            let _ = e.rule.pick_backend(0);
                        }
                    }
                }
            }
        }
    }
});
