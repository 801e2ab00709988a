//! The configuration examples we ship (`examples/`) that the suite cannot
//! run (Envoy, Istio, Envoy Gateway, Traefik, Kong, kube-apiserver and
//! Kubernetes are not here): each parses, and each names what this server
//! really serves (paths, the port, health names, context extension keys,
//! environment variables), so a change on either side fails here. nginx
//! and Caddy run for real (`proxies.rs`).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::support::spawn_router;

/// Every YAML document in `examples/<name>`.
fn documents(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

fn one(name: &str) -> Value {
    let mut all = documents(name);
    assert_eq!(all.len(), 1, "{name}");
    all.remove(0)
}

/// The port of the default listen address: what every example points at.
fn port() -> u64 {
    sts::config::DEFAULT_LISTEN
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap()
}

/// The path of an `http(s)://host:port/path` URL, and its port.
fn path_and_port(url: &str) -> (String, u64) {
    let url = url::Url::parse(url).unwrap();
    (url.path().to_owned(), url.port().map_or(0, u64::from))
}

/// The path answers something other than "no such route".
async fn served(method: &str, path: &str) {
    let app = spawn_router().await;
    let answer = app.call(method, path, &[], "").await;
    assert_ne!(answer.status, 404, "{method} {path}");
    assert_ne!(answer.status, 405, "{method} {path}");
}

#[tokio::test]
async fn envoy_calls_check_over_http2_fails_closed_and_names_roles_and_audience_as_we_read_them() {
    let envoy = one("envoy.yaml");
    let resources = &envoy["static_resources"];
    let manager = &resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filter = &manager["http_filters"][0];
    assert_eq!(filter["name"], "envoy.filters.http.ext_authz");
    let config = &filter["typed_config"];
    assert_eq!(config["transport_api_version"], "V3");
    assert_eq!(config["failure_mode_allow"], false);
    let cluster_name = &config["grpc_service"]["envoy_grpc"]["cluster_name"];
    let cluster = resources["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| &c["name"] == cluster_name)
        .unwrap();
    let options = &cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert!(options["explicit_http_config"]["http2_protocol_options"].is_object());
    let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(address["port_value"], port());
    let routes = &manager["route_config"]["virtual_hosts"][0]["routes"];
    let extensions = &routes[0]["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["check_settings"]
        ["context_extensions"];
    let roles = extensions[sts::grpc::REQUIRED_ROLES].as_str().unwrap();
    sts::model::required_roles("roles", [roles]).unwrap();
    let audience = extensions[sts::grpc::AUDIENCE].as_str().unwrap();
    sts::model::Audiences::parse("audience", &[audience]).unwrap();
}

#[test]
fn istio_and_envoy_gateway_point_at_our_port_and_fail_closed() {
    let mesh = one("istio/mesh-config.yaml");
    let provider = &mesh["spec"]["meshConfig"]["extensionProviders"][0];
    assert_eq!(provider["envoyExtAuthzGrpc"]["port"], port());
    assert_eq!(provider["envoyExtAuthzGrpc"]["failOpen"], false);
    let policy = one("istio/authorization-policy.yaml");
    assert_eq!(policy["spec"]["action"], "CUSTOM");
    assert_eq!(policy["spec"]["provider"]["name"], provider["name"]);

    let gateway = documents("envoy-gateway-security-policy.yaml");
    let auth = &gateway[0]["spec"]["extAuth"];
    assert_eq!(auth["failOpen"], false);
    assert_eq!(auth["grpc"]["backendRefs"][0]["port"], port());
    let forwarded: Vec<&str> = auth["headersToExtAuth"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    for header in sts::credential::HEADERS {
        assert!(forwarded.contains(&header), "{header} in {forwarded:?}");
    }
    assert_eq!(gateway[1]["kind"], "ReferenceGrant");
}

#[tokio::test]
async fn traefik_and_kong_call_paths_we_serve() {
    let traefik = one("traefik.yaml");
    let auth = &traefik["http"]["middlewares"]["service-token"]["forwardAuth"];
    let (path, port_used) = path_and_port(auth["address"].as_str().unwrap());
    assert_eq!(port_used, port());
    served("GET", &path).await;
    let copied: Vec<String> = auth["authResponseHeaders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_ascii_lowercase())
        .collect();
    for header in [
        "x-service-token-id",
        "x-service-token-name",
        "x-service-token-roles",
    ] {
        assert!(copied.iter().any(|h| h == header), "{header}");
    }

    let kong = one("kong.yaml");
    let plugin = &kong["services"][0]["plugins"][0];
    assert_eq!(plugin["name"], "oauth2-introspection");
    let (path, port_used) = path_and_port(plugin["config"]["introspection_url"].as_str().unwrap());
    assert_eq!(port_used, port());
    served("POST", &path).await;
    assert!(
        plugin["config"]["authorization_value"]
            .as_str()
            .unwrap()
            .starts_with("Bearer ")
    );
}

#[tokio::test]
async fn the_kube_apiserver_webhook_calls_our_token_review_with_a_bearer_token() {
    let config = one("kubernetes/webhook-kubeconfig.yaml");
    let server = config["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let (path, port_used) = path_and_port(server);
    assert_eq!(port_used, port());
    served("POST", &path).await;
    // A kubeconfig `token` is sent as `Authorization: Bearer`.
    assert!(config["users"][0]["user"]["token"].is_string());
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes/webhook-kubeconfig.yaml"),
    )
    .unwrap();
    assert!(text.contains("--authentication-token-webhook-version=v1"));
    assert!(text.contains("--authentication-token-webhook-cache-ttl=10s"));
}

#[test]
fn the_kubernetes_deployments_probe_our_health_names_and_set_variables_we_read() {
    let help = crate::support::process::sts_server()
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for file in ["kubernetes/sled.yaml", "kubernetes/postgres.yaml"] {
        let all = documents(file);
        let deployment = all.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        // The probes go to the probe port, the one --probe-listen serves.
        let probe_port = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "probes")
            .unwrap()["containerPort"]
            .clone();
        let probe_listen = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "STS_PROBE_LISTEN")
            .unwrap()["value"]
            .clone();
        assert!(
            probe_listen
                .as_str()
                .unwrap()
                .ends_with(&format!(":{probe_port}"))
        );
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(container[probe]["httpGet"]["port"], "probes", "{file}");
            assert_eq!(container[probe]["httpGet"]["path"], path, "{file}");
        }
        for variable in container["env"].as_array().unwrap() {
            let name = variable["name"].as_str().unwrap();
            assert!(
                help.contains(&format!("[env: {name}")),
                "{file}: {name} is not read"
            );
        }
        let listen = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "STS_LISTEN")
            .unwrap();
        assert!(
            listen["value"]
                .as_str()
                .unwrap()
                .ends_with(&format!(":{}", port()))
        );
        let service = all.iter().find(|d| d["kind"] == "Service").unwrap();
        assert_eq!(service["spec"]["ports"][0]["port"], port());
    }
    let sled = documents("kubernetes/sled.yaml");
    let deployment = sled.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 1, "sled is one process's");
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    assert!(sled.iter().any(|d| d["kind"] == "PersistentVolumeClaim"));
    let postgres = documents("kubernetes/postgres.yaml");
    let deployment = postgres.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() > 1);
    let store = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "STS_STORE")
        .unwrap()
        .clone();
    assert!(
        store["valueFrom"]["secretKeyRef"].is_object(),
        "the URL comes from a Secret"
    );
    let job = one("kubernetes/sled-bootstrap.yaml");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "bootstrap"
    );
}
