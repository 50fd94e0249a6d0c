//! The admin endpoint (`/routes`, `/routes/query`, `/metrics`, probes) and the
//! inbound listener's server-side metrics.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::Value;
use strait_demo::pb::echo_v1::echo_client::EchoClient;
use strait_demo::pb::recommendation_v1::recommendation_service_client::RecommendationServiceClient;
use strait_demo::pb::user_v1::user_service_client::UserServiceClient;
use strait_e2e::{Mesh, NS, Probe, authority, probe, spawn_backend};
use tonic::Code;
use tonic::transport::Endpoint;

const UNSUPPORTED_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: rewrite-route
  namespace: app
spec:
  parentRefs:
    - {group: "", kind: Service, name: payment-service, port: 50051}
  rules:
    - matches:
        - method: {service: payment.v1.PaymentService, method: Refund}
      filters:
        - type: URLRewrite
          urlRewrite:
            hostname: elsewhere
      backendRefs:
        - {name: payment-service, port: 50051}
"#;

fn route_status<'a>(routes: &'a Value, name: &str) -> Option<&'a Value> {
    routes["routing"]["routeStatuses"].as_array()?.iter().find(|s| s["route"]["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_dump_shows_services_and_route_statuses() -> Result<()> {
    let mesh = Mesh::seeded().await?;
    mesh.write("unsupported.yaml", UNSUPPORTED_ROUTE)?;
    let proxy = mesh.start_proxy(NS, &[]).await?;

    let (code, _) = proxy.admin_get("/live").await?;
    assert_eq!(code, 200);
    let routes = proxy.admin_json("/routes").await?;
    assert_eq!(routes["namespace"], NS);
    assert!(routes["version"].as_u64().is_some_and(|v| v >= 1), "{}", routes["version"]);
    assert_eq!(routes["sourceErrors"], serde_json::json!({}), "no file errors expected");

    let services = routes["routing"]["services"].as_object().context("routing.services is an object")?;
    for svc in ["user-service", "recommendation-service", "order-service", "payment-service", "order-service-canary"] {
        assert!(services.contains_key(&format!("{NS}/{svc}")), "{NS}/{svc} missing from {:?}", services.keys());
    }
    let user_port = &services["app/user-service"]["ports"][0];
    assert_eq!(user_port["port"], 50051);
    assert_eq!(user_port["producer"]["origin"]["kind"], "producer", "{user_port}");

    for name in ["user-service-route", "ab-test-route", "canary-route", "payment-mesh-route"] {
        let status = route_status(&routes, name).with_context(|| format!("status of {name}"))?;
        assert_eq!(status["parents"][0]["accepted"]["status"], true, "{name}: {status}");
        assert_eq!(status["parents"][0]["accepted"]["reason"], "Accepted", "{name}: {status}");
        assert_eq!(status["parents"][0]["resolvedRefs"]["status"], true, "{name}: {status}");
    }
    let bad = route_status(&routes, "rewrite-route").context("status of rewrite-route")?;
    assert_eq!(bad["parents"][0]["accepted"]["status"], false, "{bad}");
    assert_eq!(bad["parents"][0]["accepted"]["reason"], "UnsupportedValue", "{bad}");
    assert!(
        bad["parents"][0]["accepted"]["message"].as_str().is_some_and(|m| m.contains("URLRewrite")),
        "message should name the filter: {bad}"
    );

    // The rejected route on payment-service does not disturb the valid one.
    let mut payments = strait_demo::pb::payment_v1::payment_service_client::PaymentServiceClient::new(
        proxy.channel(&authority("payment-service", NS)).await?,
    );
    let a = payments.process_payment(probe("p")).await?.into_inner();
    assert_eq!(a.backend, "payment-service");
    assert_eq!(a.headers.get("x-request-priority").map(String::as_str), Some("high"));
    let mut users = UserServiceClient::new(proxy.channel(&authority("user-service", NS)).await?);
    assert_eq!(users.get_user(probe("u")).await?.into_inner().backend, "user-service-reader");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_query_explains_decisions() -> Result<()> {
    let mesh = Mesh::seeded().await?;
    let proxy = mesh.start_proxy(NS, &[]).await?;
    let query = |auth: &str, path: &str, header: Option<&str>| {
        let mut q = format!("/routes/query?authority={auth}&path={path}");
        if let Some(h) = header {
            q.push_str(&format!("&header={h}"));
        }
        q
    };

    let get = proxy.admin_json(&query("user-service.app:50051", "/user.v1.UserService/GetUser", None)).await?;
    assert_eq!(get["decision"]["result"], "ROUTED", "{get}");
    assert_eq!(get["decision"]["rule"], "app/user-service-route#0", "{get}");
    assert_eq!(get["decision"]["backends"][0]["service"], "app/user-service-reader", "{get}");

    let create = proxy.admin_json(&query("user-service", "/user.v1.UserService/CreateUser", None)).await?;
    assert_eq!(create["decision"]["rule"], "app/user-service-route#1", "{create}");
    assert_eq!(create["decision"]["backends"][0]["service"], "app/user-service-writer", "{create}");

    let auth = authority("recommendation-service", NS);
    let path = "/recommendation.v1.RecommendationService/Recommend";
    let treated = proxy.admin_json(&query(&auth, path, Some("x-experiment-group:treatment-a"))).await?;
    assert_eq!(treated["decision"]["rule"], "app/ab-test-route#0", "{treated}");
    assert_eq!(treated["decision"]["backends"][0]["service"], "app/recommendation-v2", "{treated}");
    let plain = proxy.admin_json(&query(&auth, path, None)).await?;
    assert_eq!(plain["decision"]["rule"], "app/ab-test-route#1", "{plain}");
    assert_eq!(plain["decision"]["backends"][0]["service"], "app/recommendation-v1", "{plain}");

    let canary =
        proxy.admin_json(&query(&authority("order-service", NS), "/order.v1.OrderService/GetOrder", None)).await?;
    let shares: BTreeMap<String, f64> = canary["decision"]["backends"]
        .as_array()
        .context("backends")?
        .iter()
        .map(|b| (b["service"].as_str().unwrap_or("").to_owned(), b["share"].as_f64().unwrap_or(-1.0)))
        .collect();
    assert_eq!(shares.get("app/order-service-stable"), Some(&0.9), "{canary}");
    assert_eq!(shares.get("app/order-service-canary"), Some(&0.1), "{canary}");

    let none = proxy.admin_json(&query("user-service.app:50051", "/order.v1.OrderService/GetOrder", None)).await?;
    assert_eq!(none["decision"]["result"], "UNIMPLEMENTED", "{none}");

    let (code, body) = proxy.admin_get("/routes/query?path=/x.Y/Z").await?;
    assert_eq!(code, 400, "authority is required: {body}");

    // The query agrees with real traffic.
    let mut client = RecommendationServiceClient::new(proxy.channel(&auth).await?);
    assert_eq!(client.recommend(probe("r")).await?.into_inner().backend, "recommendation-v1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_outbound_calls_by_service_and_code() -> Result<()> {
    let mesh = Mesh::seeded().await?;
    let proxy = mesh.start_proxy(NS, &[]).await?;
    let mut users = UserServiceClient::new(proxy.channel(&authority("user-service", NS)).await?);
    for i in 0..7 {
        users.get_user(probe(&format!("{i}"))).await?;
    }
    for _ in 0..3 {
        let status = users
            .create_user(Probe { fail_code: Code::AlreadyExists as i32, ..probe("dup") })
            .await
            .expect_err("backend fails");
        assert_eq!(status.code(), Code::AlreadyExists);
    }
    // Proxy-generated UNIMPLEMENTED is counted too.
    let mut echo = EchoClient::new(proxy.channel(&authority("user-service", NS)).await?);
    echo.unary(probe("x")).await.expect_err("no route");

    let m = proxy.metrics().await?;
    let ok = [("grpc_service", "user.v1.UserService"), ("grpc_method", "GetUser"), ("grpc_code", "OK")];
    assert_eq!(m.sum("grpc_client_handled_total", &ok), 7.0, "GetUser OK");
    assert!(m.find("grpc_client_handled_total", &ok).all(|s| s.labels.get("grpc_type").is_some_and(|t| t == "unary")));
    let dup = [("grpc_service", "user.v1.UserService"), ("grpc_method", "CreateUser"), ("grpc_code", "AlreadyExists")];
    assert_eq!(m.sum("grpc_client_handled_total", &dup), 3.0, "CreateUser AlreadyExists");
    let unimpl = [("grpc_service", "strait.test.v1.Echo"), ("grpc_code", "Unimplemented")];
    assert_eq!(m.sum("grpc_client_handled_total", &unimpl), 1.0);
    assert_eq!(m.sum("grpc_client_started_total", &[("grpc_service", "user.v1.UserService")]), 10.0);
    assert!(m.sum("grpc_client_handling_seconds_count", &[("grpc_method", "GetUser")]) >= 7.0);
    let per_route =
        [("route", "app/user-service-route"), ("backend", "app/user-service-reader:50051"), ("grpc_code", "OK")];
    assert_eq!(m.sum("strait_route_requests_total", &per_route), 7.0, "per-route counter");
    Ok(())
}

/// Calls arriving on the inbound listener are forwarded to the app and counted
/// as `grpc_server_*`; the alerting ratio
/// `sum(rate(grpc_server_handled_total{grpc_code!="OK"}[5m])) by (grpc_service)
///  / sum(rate(grpc_server_handled_total[5m])) by (grpc_service)`
/// evaluates to 0.5 after 10 OK and 10 failing calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_calls_reach_the_app_and_feed_server_metrics() -> Result<()> {
    let app = spawn_backend("the-app").await?;
    let mesh = Mesh::new()?;
    let app_addr = app.addr().to_string();
    let proxy = mesh.start_proxy(NS, &["--inbound-app-addr", &app_addr]).await?;
    let channel = Endpoint::from_shared(format!("http://{}", proxy.inbound_addr()))?.connect().await?;
    let mut client = EchoClient::new(channel.clone());

    for i in 0..10 {
        let a = client.unary(probe(&format!("ok-{i}"))).await?.into_inner();
        assert_eq!(a.backend, "the-app");
        assert_eq!(a.payload, format!("ok-{i}"));
    }
    for _ in 0..10 {
        let status = client
            .unary(Probe { fail_code: Code::Internal as i32, fail_message: "boom".into(), ..probe("") })
            .await
            .expect_err("app fails");
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "boom");
    }
    // A second service, all OK: its ratio must be 0.
    let mut users = UserServiceClient::new(channel);
    for _ in 0..4 {
        users.get_user(probe("u")).await?;
    }

    let m = proxy.metrics().await?;
    let ok = [
        ("grpc_code", "OK"),
        ("grpc_method", "Unary"),
        ("grpc_service", "strait.test.v1.Echo"),
        ("grpc_type", "unary"),
    ];
    assert_eq!(m.sum("grpc_server_handled_total", &ok), 10.0);
    assert_eq!(m.sum("grpc_server_handled_total", &[("grpc_code", "Internal"), ("grpc_method", "Unary")]), 10.0);
    assert_eq!(m.sum("grpc_server_started_total", &[("grpc_service", "strait.test.v1.Echo")]), 20.0);
    assert_eq!(m.sum("grpc_client_handled_total", &[]), 0.0, "inbound calls are not client calls");

    // The counters started at zero, so over this test's window rate() is the
    // counter value divided by the same duration; the ratio of sums is the
    // ratio of the counters.
    let errors =
        m.sum_by("grpc_server_handled_total", "grpc_service", |s| s.labels.get("grpc_code").is_some_and(|c| c != "OK"));
    let total = m.sum_by("grpc_server_handled_total", "grpc_service", |_| true);
    let ratio = |svc: &str| errors.get(svc).copied().unwrap_or(0.0) / total.get(svc).copied().unwrap_or(f64::NAN);
    println!("inbound error ratio by grpc_service: {:?}", total.keys().map(|s| (s, ratio(s))).collect::<Vec<_>>());
    assert_eq!(ratio("strait.test.v1.Echo"), 0.5);
    assert_eq!(ratio("user.v1.UserService"), 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_without_app_is_unavailable() -> Result<()> {
    let mesh = Mesh::new()?;
    // A port nothing listens on.
    let dead = strait_e2e::free_addrs(1)?[0].to_string();
    let proxy = mesh.start_proxy(NS, &["--inbound-app-addr", &dead]).await?;
    let channel = Endpoint::from_shared(format!("http://{}", proxy.inbound_addr()))?.connect().await?;
    let status = EchoClient::new(channel).unary(probe("x")).await.expect_err("no app");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let m = proxy.metrics().await?;
    assert_eq!(m.sum("grpc_server_handled_total", &[("grpc_code", "Unavailable")]), 1.0);
    Ok(())
}
