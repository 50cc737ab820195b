//! Authorization by identity against real processes: a whole local mesh on mutual
//! TLS (the launcher, its own CA), and for every row of the rules table
//! (`rankmesh_common::authz::RULES`) and every role, one call with a certificate of
//! that role: a role the row names gets past authorization (whatever the service
//! then answers an empty request), any other gets PERMISSION_DENIED.

use std::collections::BTreeMap;
use std::time::Duration;

use rankmesh_common::authz::{self, RULES};
use rankmesh_tests::catalog::models_dir;
use rankmesh_tests::process::binary;
use rankmesh_tls::client::ClientTls;

/// Every role a certificate can name here.
const ROLES: &[&str] = &[
    authz::STOREFRONT,
    authz::OPERATOR,
    authz::ADMIN,
    authz::RANKING,
    authz::EMBEDDING,
    authz::FEATURE,
    authz::REGISTRY,
    "intruder",
];

/// The service a method belongs to: `/rankmesh.<service>.v1.X/Method`.
fn service_of(method: &str) -> &str {
    method.split('.').nth(1).expect("package")
}

/// Calls `method` with an empty message (unary, or one message each way for the
/// streaming ones); its status, or OK.
async fn call(channel: tonic::transport::Channel, method: &'static str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return tonic::Status::unavailable(e.to_string());
    }
    let path = http::uri::PathAndQuery::from_static(method);
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let streaming_in = method.ends_with("/ImportCatalog") || method.ends_with("/PublishModel");
    let streaming_out = method.ends_with("/ScanItems") || method.ends_with("/FetchModel");
    let result = if streaming_in {
        let req = tonic::Request::new(futures::stream::iter(vec![()]));
        grpc.client_streaming(req, path, codec).await.map(drop)
    } else if streaming_out {
        grpc.server_streaming(tonic::Request::new(()), path, codec)
            .await
            .map(drop)
    } else {
        grpc.unary(tonic::Request::new(()), path, codec)
            .await
            .map(drop)
    };
    result.err().unwrap_or_else(|| tonic::Status::ok(""))
}

#[tokio::test]
async fn every_rule_admits_its_roles_and_refuses_the_others() {
    let state = tempfile::tempdir().expect("state dir");
    let base = rankmesh_tests::free_port_block(16);
    let models = models_dir();
    let opts = rankmesh_launcher::UpOptions {
        state_dir: state.path().to_owned(),
        ranking_replicas: 1,
        etcd_port: base,
        base_port: base + 2,
        bin_dir: binary("meshctl").parent().expect("bin dir").to_owned(),
        follow_ranker: false,
        quantizer: None,
        insecure: false,
        ranking_env: Vec::new(),
        embedding_env: Vec::new(),
        traces: None,
        etcd_members: 1,
        redis_port: None,
        instance_env: BTreeMap::new(),
    };
    let serve = rankmesh_provision::Serve {
        models,
        ranker: None,
        catalog: None,
    };
    let mesh = rankmesh_provision::up(&opts, &serve)
        .await
        .expect("mesh up")
        .mesh;

    let mut refused = Vec::new();
    let mut wrong = Vec::new();
    for role in ROLES {
        let files = rankmesh_launcher::identity::issue(state.path(), role, "authz-test")
            .expect("certificate");
        let tls = ClientTls::new(&files).expect("client tls");
        for rule in RULES {
            let service = service_of(rule.method);
            let addr = mesh.grpc_of(service).expect("service address");
            let connected = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("uri")
                .timeout(Duration::from_secs(5))
                .connect_with_connector(tls.connector(service).expect("connector"))
                .await;
            let channel = match connected {
                Ok(c) => c,
                Err(e) => {
                    wrong.push(format!("{role} -> {service}: no TLS connection: {e}"));
                    continue;
                }
            };
            let status = call(channel, rule.method).await;
            let denied = status.code() == tonic::Code::PermissionDenied
                && status.message().contains("may not call");
            if denied {
                refused.push((role.to_string(), rule.method));
            }
            if denied == rule.roles.contains(role) {
                wrong.push(format!("{role} -> {}: {status:?}", rule.method));
            }
        }
    }
    rankmesh_launcher::stop(&mesh, Duration::from_secs(5)).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every role but admin is refused somewhere; the intruder everywhere.
    assert_eq!(
        refused.iter().filter(|(r, _)| r == "intruder").count(),
        RULES.len()
    );
    assert!(!refused.iter().any(|(r, _)| r == "admin"));
    // Every refusal is in the refusing service's log, with the caller's identity.
    let logs: String = std::fs::read_dir(state.path().join("logs"))
        .expect("logs dir")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    let unlogged: Vec<String> = refused
        .iter()
        .filter(|(role, method)| {
            let caller = format!("spiffe://rankmesh/{role}/authz-test");
            !logs
                .lines()
                .any(|l| l.contains("call refused") && l.contains(*method) && l.contains(&caller))
        })
        .map(|(role, method)| format!("{role} -> {method}"))
        .collect();
    assert!(unlogged.is_empty(), "refused but not logged: {unlogged:?}");
}
