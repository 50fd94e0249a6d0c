//! The seed GRPCRoute scenarios of `deploy/examples`, driven through the proxy,
//! plus GAMMA consumer routes.

use anyhow::Result;
use strait_demo::pb::order_v1::order_service_client::OrderServiceClient;
use strait_demo::pb::payment_v1::payment_service_client::PaymentServiceClient;
use strait_demo::pb::recommendation_v1::recommendation_service_client::RecommendationServiceClient;
use strait_demo::pb::user_v1::user_service_client::UserServiceClient;
use strait_e2e::{Mesh, NS, Tally, authority, probe, services_yaml};
use tonic::Request;
use tonic::metadata::MetadataValue;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_split_sends_reads_to_reader_and_writes_to_writer() -> Result<()> {
    let mesh = Mesh::seeded().await?;
    let proxy = mesh.start_proxy(NS, &[]).await?;
    let mut client = UserServiceClient::new(proxy.channel(&authority("user-service", NS)).await?);

    let (mut get, mut create, mut update, mut list) =
        (Tally::default(), Tally::default(), Tally::default(), Tally::default());
    for i in 0..20 {
        get.record(client.get_user(probe(&format!("get-{i}"))).await.map(|r| r.into_inner()));
        create.record(client.create_user(probe(&format!("create-{i}"))).await.map(|r| r.into_inner()));
        update.record(client.update_user(probe(&format!("update-{i}"))).await.map(|r| r.into_inner()));
    }
    let mut stream = client.list_users(strait_e2e::Probe { stream_count: 5, ..probe("list") }).await?.into_inner();
    while let Some(answer) = stream.message().await? {
        assert_eq!(answer.method, "ListUsers");
        list.record(Ok(answer));
    }

    assert!(get.only_from("user-service-reader"), "GetUser: {get}");
    assert!(list.only_from("user-service-reader"), "ListUsers: {list}");
    assert_eq!(list.total(), 5, "ListUsers messages: {list}");
    assert!(create.only_from("user-service-writer"), "CreateUser: {create}");
    assert!(update.only_from("user-service-writer"), "UpdateUser: {update}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_selects_experiment_backend() -> Result<()> {
    let mesh = Mesh::seeded().await?;
    let proxy = mesh.start_proxy(NS, &[]).await?;
    let mut client = RecommendationServiceClient::new(proxy.channel(&authority("recommendation-service", NS)).await?);

    let (mut treated, mut other_group, mut plain) = (Tally::default(), Tally::default(), Tally::default());
    for i in 0..20 {
        let mut req = Request::new(probe(&format!("t-{i}")));
        req.metadata_mut().insert("x-experiment-group", MetadataValue::from_static("treatment-a"));
        let answer = treated.record(client.recommend(req).await.map(|r| r.into_inner()));
        if let Some(a) = answer {
            assert_eq!(a.headers.get("x-experiment-group").map(String::as_str), Some("treatment-a"));
        }

        let mut req = Request::new(probe(&format!("o-{i}")));
        req.metadata_mut().insert("x-experiment-group", MetadataValue::from_static("treatment-b"));
        other_group.record(client.recommend(req).await.map(|r| r.into_inner()));

        plain.record(client.recommend(probe(&format!("p-{i}"))).await.map(|r| r.into_inner()));
    }
    assert!(treated.only_from("recommendation-v2"), "with treatment-a: {treated}");
    assert!(other_group.only_from("recommendation-v1"), "with treatment-b: {other_group}");
    assert!(plain.only_from("recommendation-v1"), "without header: {plain}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_canary_splits_90_10() -> Result<()> {
    const CALLS: usize = 2000;
    const WORKERS: usize = 4;
    let mesh = Mesh::seeded().await?;
    let proxy = mesh.start_proxy(NS, &[]).await?;
    let channel = proxy.channel(&authority("order-service", NS)).await?;

    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let mut client = OrderServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            for i in 0..CALLS / WORKERS {
                tally.record(client.get_order(probe(&format!("order-{w}-{i}"))).await.map(|r| r.into_inner()));
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for t in tasks {
        let part = t.await?;
        for (k, v) in part.backends {
            *tally.backends.entry(k).or_default() += v;
        }
        for (k, v) in part.errors {
            *tally.errors.entry(k).or_default() += v;
        }
    }
    assert!(tally.errors.is_empty(), "errors: {tally}");
    assert_eq!(tally.total(), CALLS);
    let stable = tally.answered_by("order-service-stable");
    let canary = tally.answered_by("order-service-canary");
    assert_eq!(stable + canary, CALLS, "answers from outside the route: {tally}");

    // The canary count is Binomial(n = 2000, p = 0.1): mean 200, standard
    // deviation sqrt(2000 * 0.1 * 0.9) ≈ 13.4 calls ≈ 0.67 percentage points.
    // Accepting mean ± 4 sd (10% ± 2.7 points, i.e. 7.3%..12.7%) makes a false
    // failure a ~1-in-15,000 event while still catching e.g. 80/20 or 95/5.
    let share = 100.0 * canary as f64 / CALLS as f64;
    println!("canary share: {canary}/{CALLS} = {share:.2}% (stable {stable})");
    assert!((7.3..=12.7).contains(&share), "canary share {share:.2}% outside 10% ± 2.7 points: {tally}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_header_modifier_adds_priority() -> Result<()> {
    let mesh = Mesh::seeded().await?;
    let proxy = mesh.start_proxy(NS, &[]).await?;
    let mut client = PaymentServiceClient::new(proxy.channel(&authority("payment-service", NS)).await?);
    for i in 0..5 {
        let answer = client.process_payment(probe(&format!("pay-{i}"))).await?.into_inner();
        assert_eq!(answer.backend, "payment-service");
        assert_eq!(
            answer.headers.get("x-request-priority").map(String::as_str),
            Some("high"),
            "headers the backend saw: {:?}",
            answer.headers
        );
        // The backend sees the Service authority the client addressed.
        assert_eq!(
            answer.headers.get(strait_demo::AUTHORITY_KEY).map(String::as_str),
            Some(authority("payment-service", NS).as_str())
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_authority_forms_reach_the_same_service() -> Result<()> {
    let mesh = Mesh::seeded().await?;
    let proxy = mesh.start_proxy(NS, &[]).await?;
    for auth in ["user-service.app.svc.cluster.local:50051", "user-service.app:50051", "user-service:50051"] {
        let mut client = UserServiceClient::new(proxy.channel(auth).await?);
        let a = client.create_user(probe("x")).await?.into_inner();
        assert_eq!(a.backend, "user-service-writer", "authority {auth}");
    }
    Ok(())
}

/// A GRPCRoute in the client's namespace whose parent is a Service in another
/// namespace (GAMMA consumer route) applies to callers in that namespace only;
/// the producer route keeps serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_route_applies_only_to_its_namespace() -> Result<()> {
    let mut mesh = Mesh::seeded().await?;
    mesh.spawn(NS, "user-service-audit", "user-service-audit").await?;
    mesh.write_endpoints()?;
    mesh.write("audit-service.yaml", &services_yaml(NS, &["user-service-audit"]))?;
    mesh.write(
        "consumer-route.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: client-user-override
  namespace: client-ns
spec:
  parentRefs:
    - group: ""
      kind: Service
      name: user-service
      namespace: app
      port: 50051
  rules:
    - matches:
        - method:
            service: user.v1.UserService
            method: CreateUser
      backendRefs:
        - name: user-service-audit
          namespace: app
          port: 50051
"#,
    )?;
    let consumer = mesh.start_proxy("client-ns", &[]).await?;
    let producer = mesh.start_proxy(NS, &[]).await?;
    let auth = authority("user-service", NS);

    let mut from_client_ns = UserServiceClient::new(consumer.channel(&auth).await?);
    let mut from_app = UserServiceClient::new(producer.channel(&auth).await?);
    for i in 0..10 {
        let a = from_client_ns.create_user(probe(&format!("c-{i}"))).await?.into_inner();
        assert_eq!(a.backend, "user-service-audit", "client-ns proxy must use the consumer route");
        let a = from_app.create_user(probe(&format!("p-{i}"))).await?.into_inner();
        assert_eq!(a.backend, "user-service-writer", "app proxy must keep the producer route");
    }

    // The admin query agrees with what the traffic showed.
    let q = format!("/routes/query?authority={auth}&path=/user.v1.UserService/CreateUser");
    let c = consumer.admin_json(&q).await?;
    assert_eq!(c["decision"]["result"], "ROUTED", "{c}");
    assert_eq!(c["decision"]["backends"][0]["service"], "app/user-service-audit", "{c}");
    let p = producer.admin_json(&q).await?;
    assert_eq!(p["decision"]["backends"][0]["service"], "app/user-service-writer", "{p}");
    Ok(())
}
