//! Real reverse proxies (nginx's `auth_request`, Caddy's `forward_auth`) in
//! front of a real server, running the configuration files we ship
//! (`examples/`): what a request through them gets, and what the service
//! behind them sees.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::support::Rest;
use crate::support::TestApp;

/// Set (by `.ci/run`) to make a missing proxy program a failure, not a skip.
const REQUIRE_VAR: &str = "STS_TEST_REQUIRE_PROXIES";

/// The program `name` on the PATH or in /usr/sbin; `None` (saying so)
/// where it is missing and not required.
fn program(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os(REQUIRE_VAR).is_none(),
            "{name} is missing and {REQUIRE_VAR} is set"
        );
        eprintln!("skipping: {name} is not installed (Debian package {name})");
    }
    found
}

/// A service behind the proxy: answers every request 200 with the request
/// head it received as the body, so a test can see what the proxy sent.
async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    head.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.write_all(&head).await;
            });
        }
    });
    addr
}

/// A free port on 127.0.0.1 for a program that binds its own.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A proxy running one of `examples/` (addresses changed to this test's)
/// in a directory of its own; stopped when dropped.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `examples/<name>` with each of `changes` made (each must be there).
fn example_with(name: &str, changes: &[(&str, String)]) -> String {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .unwrap();
    changes.iter().fold(example, |text, (from, to)| {
        assert!(text.contains(from), "examples/{name} no longer has {from}");
        text.replace(from, to)
    })
}

impl Proxy {
    async fn nginx(nginx: &Path, sts: SocketAddr, backend: SocketAddr) -> Proxy {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let site = example_with(
            "nginx.conf",
            &[
                ("server 127.0.0.1:7070;", format!("server {sts};")),
                ("server 127.0.0.1:8080;", format!("server {backend};")),
                ("listen 127.0.0.1:8000;", format!("listen {addr};")),
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(path("site.conf"), site).unwrap();
        // The least a main configuration needs to run unprivileged files in
        // a directory of its own, with the example included as shipped.
        let user = if rustix::process::geteuid().is_root() {
            "user root root;"
        } else {
            ""
        };
        let main = format!(
            "{user}
daemon off;
master_process off;
pid {pid};
error_log {error} info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {site};
}}
",
            pid = path("nginx.pid"),
            error = path("error.log"),
            temp = dir.path().display(),
            site = path("site.conf"),
        );
        std::fs::write(path("nginx.conf"), main).unwrap();
        let mut command = Command::new(nginx);
        command.args([
            "-p",
            &dir.path().display().to_string(),
            "-c",
            &path("nginx.conf"),
        ]);
        let log = path("error.log");
        Proxy::run("nginx", command, addr, dir, log).await
    }

    async fn caddy(caddy: &Path, sts: SocketAddr, backend: SocketAddr) -> Proxy {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let caddyfile = example_with(
            "Caddyfile",
            &[
                ("forward_auth 127.0.0.1:7070", format!("forward_auth {sts}")),
                (
                    "reverse_proxy 127.0.0.1:8080",
                    format!("reverse_proxy {backend}"),
                ),
                ("http://127.0.0.1:8000", Rest::at(addr).url("")),
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Caddyfile");
        std::fs::write(&path, caddyfile).unwrap();
        let mut command = Command::new(caddy);
        command
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            // Caddy's own state (autosave, certificates) stays in the test's directory.
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_DATA_HOME", dir.path().join("data"));
        let log = dir.path().join("caddy.log").display().to_string();
        Proxy::run("caddy", command, addr, dir, log).await
    }

    /// Starts `command` and waits until it listens on `addr`; if it exits
    /// first, fails with what it wrote to `log`.
    async fn run(
        name: &str,
        mut command: Command,
        addr: SocketAddr,
        dir: tempfile::TempDir,
        log: String,
    ) -> Proxy {
        let output = std::fs::File::create(format!("{log}.out")).unwrap();
        let child = command
            .stdout(Stdio::null())
            .stderr(output)
            .spawn()
            .unwrap();
        let child = std::sync::Mutex::new(child);
        crate::support::eventually(&format!("{name} listens"), || async {
            if let Ok(Some(status)) = child.lock().unwrap().try_wait() {
                panic!(
                    "{name} exited ({status}): {}{}",
                    std::fs::read_to_string(&log).unwrap_or_default(),
                    std::fs::read_to_string(format!("{log}.out")).unwrap_or_default()
                );
            }
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        Proxy {
            child: child.into_inner().unwrap(),
            addr,
            _dir: dir,
        }
    }
}

/// A server that trusts what the proxy (on 127.0.0.1) says of its
/// clients, as the examples ask.
async fn behind_the_proxy() -> TestApp {
    let server = sts::config::ServerConfig {
        trusted_proxies: sts::source::TrustedProxies::parse("127.0.0.1").unwrap(),
        ..crate::support::server_config()
    };
    crate::support::spawn_app_with(Default::default(), server).await
}

/// What every proxy in front of us must do, driven through `proxy`.
/// `tells_expiration`: the proxy passes `X-Service-Token-Expiration` on to
/// the client (nginx's example does; Caddy's `forward_auth` cannot).
async fn a_proxy_checks_every_request_and_never_forwards_the_secret(
    app: &TestApp,
    proxy: &Proxy,
    tells_expiration: bool,
) {
    let http = reqwest::Client::new();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut request = http.get(format!("http://{}{path}", proxy.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };

    // A valid token, in every header form: through, with the identity
    // sts-server vouched for and without the secret.
    let (secret, created) = app.create("ci-runner", &["builder"]).await;
    let api_key = format!("ApiKey {secret}");
    let bearer = format!("Bearer {secret}");
    for credential in [
        ("x-api-key", secret.as_str()),
        ("authorization", api_key.as_str()),
        ("authorization", bearer.as_str()),
    ] {
        let answer = get(
            "/builds/42",
            &[
                credential,
                // A client trying to pass itself off as someone else.
                ("x-service-token-name", "root"),
                ("x-service-token-roles", "admin"),
                ("x-service-token-previous-secret", "true"),
            ],
        )
        .await
        .unwrap();
        assert_eq!(answer.status(), 200, "{credential:?}");
        let seen = answer.text().await.unwrap().to_ascii_lowercase();
        assert!(seen.starts_with("get /builds/42 "), "{seen}");
        assert!(
            seen.contains(&format!("x-service-token-id: {}\r\n", created.id)),
            "{seen}"
        );
        assert!(
            seen.contains("x-service-token-name: ci-runner\r\n"),
            "{seen}"
        );
        assert!(
            seen.contains("x-service-token-roles: builder\r\n"),
            "{seen}"
        );
        assert!(!seen.contains("root") && !seen.contains("admin"), "{seen}");
        assert!(!seen.contains("previous-secret"), "{seen}");
        assert!(
            !seen.contains(&secret[7..].to_ascii_lowercase()),
            "the secret reached the backend: {seen}"
        );
        assert!(
            !seen.contains("x-api-key") && !seen.contains("authorization"),
            "{seen}"
        );
    }

    // No credential, a malformed, an unknown or an expired one: refused
    // with 401 and the challenge, and the backend never sees the request.
    let unknown = sts::token::Secret::generate();
    let (expiring, _) = app.create_expiring_in("expiring", &["builder"], 60).await;
    let answer = get("/builds/42", &[("x-api-key", &expiring)])
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    if tells_expiration {
        let expected = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(
                    app.clock.now_millis() as u64 / 1000 * 1000 + 60_000,
                ),
        )
        .to_string();
        assert_eq!(
            answer
                .headers()
                .get("x-service-token-expiration")
                .map(|v| v.to_str().unwrap()),
            Some(expected.as_str())
        );
    }
    app.clock.advance(std::time::Duration::from_secs(61));
    for headers in [
        &[][..],
        &[("x-api-key", "svctok-nope")][..],
        &[("x-api-key", unknown.expose_secret())][..],
        &[("x-api-key", expiring.as_str())][..],
    ] {
        let answer = get("/anything", headers).await.unwrap();
        assert_eq!(answer.status(), 401, "{headers:?}");
        assert_eq!(
            answer
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"ApiKey"[..]),
            "{headers:?}"
        );
    }

    // The client's own query never reaches the check: a client cannot
    // add settings to it (or break it with a misspelt one).
    let answer = get(
        "/builds/42?roles=admin&role=nobody-has-this",
        &[("x-api-key", &secret)],
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 200);

    // A location that needs a role: 403 without it, 200 with it.
    let answer = get("/reports/q3", &[("x-api-key", &secret)]).await.unwrap();
    assert_eq!(answer.status(), 403);
    let (reader, _) = app.create("reader", &["reports-reader"]).await;
    let answer = get("/reports/q3", &[("x-api-key", &reader)]).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.text().await.unwrap().starts_with("GET /reports/q3 "));

    a_bound_token_is_allowed_only_where_it_is_bound(app, proxy).await;
    a_rate_limited_token_gets_429_through_the_proxy(app, proxy, tells_expiration).await;

    // Deleting the token shuts the door on the next request.
    app.client
        .clone()
        .delete(app.admin(sts::proto::DeleteRequest {
            id: created.id,
            ..Default::default()
        }))
        .await
        .unwrap();
    let answer = get("/builds/42", &[("x-api-key", &secret)]).await.unwrap();
    assert_eq!(answer.status(), 401);
}

/// A token bound to one client address (127.0.0.2: the client connects
/// to the proxy from there), the `reports` audience and `GET /reports/**`:
/// through the proxy only as bound, whatever the client adds itself.
async fn a_bound_token_is_allowed_only_where_it_is_bound(app: &TestApp, proxy: &Proxy) {
    let from = |address: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(address))
            .build()
            .unwrap()
    };
    let (bound_client, elsewhere) = (from([127, 0, 0, 2]), from([127, 0, 0, 3]));
    let (secret, _) = app
        .create_with(sts::proto::CreateRequest {
            allowed_sources: vec!["127.0.0.2".into()],
            audiences: vec!["reports".into()],
            allowed_routes: vec![sts::proto::AllowedRoute {
                methods: vec!["GET".into()],
                path: "/reports/**".into(),
            }],
            ..crate::support::create_request("bound-reader", &["reports-reader"])
        })
        .await;
    let status = |client: &reqwest::Client, method: &str, path: &str, extra: &[(&str, &str)]| {
        let mut request = client
            .request(
                method.parse().unwrap(),
                format!("http://{}{path}", proxy.addr),
            )
            .header("x-api-key", &secret);
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        status(&bound_client, "GET", "/reports/q3?x=1", &[]).await,
        200
    );
    // Another route: the method, the path, or a location whose check
    // names no audience.
    assert_eq!(status(&bound_client, "POST", "/reports/q3", &[]).await, 403);
    assert_eq!(status(&bound_client, "GET", "/builds/42", &[]).await, 403);
    // Another client, even one claiming the bound address.
    assert_eq!(status(&elsewhere, "GET", "/reports/q3", &[]).await, 403);
    let spoofing = [
        ("x-forwarded-for", "127.0.0.2"),
        ("x-real-ip", "127.0.0.2"),
        ("forwarded", "for=127.0.0.2"),
    ];
    assert_eq!(
        status(&elsewhere, "GET", "/reports/q3", &spoofing).await,
        403
    );
    // What the client writes about the request changes nothing.
    let claims = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/reports/q3"),
        ("x-original-method", "GET"),
        ("x-original-uri", "/reports/q3"),
        ("x-sts-audience", "reports"),
    ];
    assert_eq!(
        status(&bound_client, "GET", "/builds/42?audience=reports", &claims).await,
        403
    );
    assert_eq!(
        status(&bound_client, "GET", "/reports/q3?audience=other", &[]).await,
        200
    );
}

/// A token with a limit of two a minute: two requests through, the third
/// answered 429 with `Retry-After` and the rate-limit fields, and the
/// backend never sees it. `passes_fields_on_200`: the proxy also passes
/// the fields on an allowed request (nginx's example does; Caddy's
/// `forward_auth` copies the check's headers to the request only).
async fn a_rate_limited_token_gets_429_through_the_proxy(
    app: &TestApp,
    proxy: &Proxy,
    passes_fields_on_200: bool,
) {
    let (secret, _) = app
        .create_with(sts::proto::CreateRequest {
            rate_limits: vec![crate::support::rate_limit("minute", 2, 60)],
            ..crate::support::create_request("limited", &["builder"])
        })
        .await;
    let http = reqwest::Client::new();
    let get = || {
        http.get(format!("http://{}/builds/7", proxy.addr))
            .header("x-api-key", &secret)
            .send()
    };
    let field = |answer: &reqwest::Response, name: &str| {
        answer
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let first = get().await.unwrap();
    assert_eq!(first.status(), 200);
    if passes_fields_on_200 {
        assert_eq!(
            field(&first, "ratelimit").as_deref(),
            Some("\"minute\";r=1;t=30")
        );
        assert_eq!(
            field(&first, "ratelimit-policy").as_deref(),
            Some("\"minute\";q=2;w=60")
        );
    }
    assert_eq!(get().await.unwrap().status(), 200);
    let refused = get().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(field(&refused, "retry-after").as_deref(), Some("30"));
    assert_eq!(
        field(&refused, "ratelimit").as_deref(),
        Some("\"minute\";r=0;t=60")
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "RESOURCE_EXHAUSTED", "{body}");
    // Half a minute on (the server's clock), one request fits again.
    app.clock.advance(std::time::Duration::from_secs(30));
    assert_eq!(get().await.unwrap().status(), 200);
}

#[tokio::test]
async fn nginx_with_the_shipped_example_checks_every_request_and_never_forwards_the_secret() {
    let Some(nginx) = program("nginx") else {
        return;
    };
    let app = behind_the_proxy().await;
    let proxy = Proxy::nginx(&nginx, app.addr, echo_backend().await).await;
    a_proxy_checks_every_request_and_never_forwards_the_secret(&app, &proxy, true).await;
}

#[tokio::test]
async fn caddy_with_the_shipped_example_checks_every_request_and_never_forwards_the_secret() {
    let Some(caddy) = program("caddy") else {
        return;
    };
    let app = behind_the_proxy().await;
    let proxy = Proxy::caddy(&caddy, app.addr, echo_backend().await).await;
    a_proxy_checks_every_request_and_never_forwards_the_secret(&app, &proxy, false).await;
}

#[test]
fn the_integrations_page_shows_the_shipped_nginx_and_caddy_examples_as_they_are() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("docs/integrations.md")).unwrap();
    for (file, fence) in [("nginx.conf", "nginx"), ("Caddyfile", "caddyfile")] {
        let example = std::fs::read_to_string(root.join("examples").join(file)).unwrap();
        assert!(
            readme.contains(&format!("```{fence}\n{example}```")),
            "docs/integrations.md's {fence} block differs from examples/{file}"
        );
    }
}
