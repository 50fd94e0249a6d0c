//! Statuses the proxy produces itself: UNIMPLEMENTED for unmatched methods,
//! UNAVAILABLE for unresolvable destinations; and the default route of a
//! Service without GRPCRoutes.

use anyhow::Result;
use strait_demo::pb::echo_v1::echo_client::EchoClient;
use strait_demo::pb::order_v1::order_service_client::OrderServiceClient;
use strait_demo::pb::user_v1::user_service_client::UserServiceClient;
use strait_e2e::{Mesh, NS, Tally, authority, probe, services_yaml};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_without_matching_rule_is_unimplemented() -> Result<()> {
    let mesh = Mesh::seeded().await?;
    let proxy = mesh.start_proxy(NS, &[]).await?;

    // user-service-route only matches user.v1.UserService methods.
    let mut client = OrderServiceClient::new(proxy.channel(&authority("user-service", NS)).await?);
    let status = client.get_order(probe("stray")).await.expect_err("no rule matches");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // Same for an Echo method on the order-service parent.
    let mut client = EchoClient::new(proxy.channel(&authority("order-service", NS)).await?);
    let status = client.unary(probe("stray")).await.expect_err("no rule matches");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // The refusal does not break the connection: a routed call still works.
    let mut client = UserServiceClient::new(proxy.channel(&authority("user-service", NS)).await?);
    assert_eq!(client.get_user(probe("ok")).await?.into_inner().backend, "user-service-reader");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_backend_service_fails_only_its_weight_share() -> Result<()> {
    const CALLS: usize = 200;
    let mut mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["split-service", "real-backend"]))?;
    mesh.spawn(NS, "real-backend", "real-backend").await?;
    mesh.write_endpoints()?;
    mesh.write(
        "route.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: half-missing
  namespace: app
spec:
  parentRefs:
    - {group: "", kind: Service, name: split-service, port: 50051}
  rules:
    - backendRefs:
        - {name: real-backend, port: 50051, weight: 50}
        - {name: ghost-service, port: 50051, weight: 50}
"#,
    )?;
    let proxy = mesh.start_proxy(NS, &[]).await?;
    let mut client = EchoClient::new(proxy.channel(&authority("split-service", NS)).await?);
    let mut tally = Tally::default();
    for i in 0..CALLS {
        tally.record(client.unary(probe(&format!("{i}"))).await.map(|r| r.into_inner()));
    }
    let ok = tally.answered_by("real-backend");
    let unavailable = tally.errors_of(Code::Unavailable);
    println!("50/50 with a missing backend over {CALLS} calls: {tally}");
    assert_eq!(ok + unavailable, CALLS, "only OK or UNAVAILABLE expected: {tally}");
    // Binomial(200, 0.5): sd = sqrt(200 * 0.25) ≈ 7.1; accept mean ± 4 sd,
    // 100 ± 28 calls.
    assert!((72..=128).contains(&ok), "OK share {ok}/{CALLS} not ~50%: {tally}");

    // The route is accepted but reports the unresolved reference.
    let routes = proxy.admin_json("/routes").await?;
    let status = routes["routing"]["routeStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["route"]["name"] == "half-missing"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(status["parents"][0]["accepted"]["status"], true, "{status}");
    assert_eq!(status["parents"][0]["resolvedRefs"]["status"], false, "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_or_no_endpoints_is_unavailable() -> Result<()> {
    let mut mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["known-service", "empty-service"]))?;
    mesh.spawn(NS, "known-service", "known-1").await?;
    mesh.write_endpoints()?;
    let proxy = mesh.start_proxy(NS, &[]).await?;

    for auth in [authority("no-such-service", NS), authority("known-service", "other-ns")] {
        let mut client = EchoClient::new(proxy.channel(&auth).await?);
        let status = client.unary(probe("x")).await.expect_err("unknown Service");
        assert_eq!(status.code(), Code::Unavailable, "{auth}: {status:?}");
    }

    // A Service without any endpoints.
    let mut client = EchoClient::new(proxy.channel(&authority("empty-service", NS)).await?);
    let status = client.unary(probe("x")).await.expect_err("no endpoints");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // A port the Service does not have.
    let mut client = EchoClient::new(proxy.channel("known-service.app.svc.cluster.local:9999").await?);
    let status = client.unary(probe("x")).await.expect_err("unknown port");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_without_routes_goes_to_its_own_endpoints() -> Result<()> {
    let mut mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["plain-service"]))?;
    mesh.spawn(NS, "plain-service", "plain-1").await?;
    mesh.spawn(NS, "plain-service", "plain-2").await?;
    mesh.write_endpoints()?;
    let proxy = mesh.start_proxy(NS, &[]).await?;

    let mut echo = EchoClient::new(proxy.channel(&authority("plain-service", NS)).await?);
    let mut users = UserServiceClient::new(proxy.channel(&authority("plain-service", NS)).await?);
    let mut tally = Tally::default();
    for i in 0..40 {
        tally.record(echo.unary(probe(&format!("{i}"))).await.map(|r| r.into_inner()));
        tally.record(users.delete_user(probe(&format!("{i}"))).await.map(|r| r.into_inner()));
    }
    assert!(tally.errors.is_empty(), "{tally}");
    assert_eq!(tally.answered_by("plain-1") + tally.answered_by("plain-2"), 80, "{tally}");
    // Both endpoints get traffic (each with probability 1 - 2^-79 under any
    // fair balancer).
    assert!(tally.answered_by("plain-1") > 0 && tally.answered_by("plain-2") > 0, "{tally}");

    let q = proxy
        .admin_json(&format!(
            "/routes/query?authority={}&path=/user.v1.UserService/DeleteUser",
            authority("plain-service", NS)
        ))
        .await?;
    assert_eq!(q["decision"]["result"], "ROUTED", "{q}");
    assert_eq!(q["decision"]["rule"], "default", "{q}");
    Ok(())
}
