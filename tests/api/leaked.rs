//! Revoking a leaked token by its value: no credential but the secret,
//! an answer that says no more than validating would, the lockout rule
//! waived, every revocation audited with the caller's address, and a rate
//! limit per address.

use serde_json::{Value, json};
use sts::{
    proto::{RevokeLeakedRequest, RevokeResult},
    service::AUDIT,
    token::Secret,
};

use crate::support::ReadAnswer;
use crate::support::Rest;
use crate::{
    cli::Terminal,
    support::process::{ServerProcess, bootstrap},
    support::{TestRouter, channel, spawn_app, spawn_router},
};

const PATH: &str = "/api/security/tokens/revoke";

impl TestRouter {
    async fn revoke(&self, tokens: &[&str]) -> crate::support::TestResponse {
        let body = json!({ "tokens": tokens }).to_string();
        self.call(
            "POST",
            PATH,
            &[("content-type", b"application/json")],
            &body,
        )
        .await
    }

    async fn valid(&self, secret: &str) -> bool {
        self.call(
            "GET",
            "/api/server/status",
            &[("x-api-key", secret.as_bytes())],
            "",
        )
        .await
        .status
            == 200
    }
}

/// A token with its last character changed: its checksum no longer holds.
fn mangled(secret: &str) -> String {
    let mut mangled = secret.to_owned();
    let last = if mangled.ends_with('a') { "b" } else { "a" };
    mangled.replace_range(mangled.len() - 1.., last);
    mangled
}

#[tokio::test]
async fn a_leaked_token_is_revoked_by_its_value_alone() {
    let app = spawn_router().await;
    let (leaked, _) = app.create("ci", &["builder"]).await;
    let (other, _) = app.create("cd", &["builder"]).await;
    let unknown = Secret::generate().expose_secret().to_owned();
    let bad = mangled(&leaked);
    let answer = app
        .revoke(&[&leaked, &unknown, &bad, "svctok-nope", &leaked])
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.json(),
        json!({"results": ["revoked", "not_found", "malformed", "malformed", "not_found"]})
    );
    // Never the secret in the answer.
    assert!(!answer.text().contains(&leaked[7..]));
    assert!(!app.valid(&leaked).await, "revoked at once");
    assert!(app.valid(&other).await, "only the leaked one");
}

#[tokio::test]
async fn the_last_admin_token_is_revoked_too_and_a_previous_secret_revokes_its_token() {
    let app = spawn_router().await;
    // The only admin token: the lockout rule would keep it from a delete.
    let answer = app.revoke(&[&app.admin_token]).await;
    assert_eq!(answer.json()["results"], json!(["revoked"]));
    assert!(!app.valid(&app.admin_token).await);

    let app = spawn_router().await;
    let (old, id) = app.create("ci", &["builder"]).await;
    let rotated = app
        .admin(
            "POST",
            &format!("/api/security/tokens/{id}/rotate"),
            r#"{"gracePeriodSeconds": 3600}"#,
        )
        .await
        .json();
    let new = rotated["token"].as_str().unwrap().to_owned();
    assert!(app.valid(&old).await && app.valid(&new).await);
    assert_eq!(
        app.revoke(&[&old]).await.json()["results"],
        json!(["revoked"])
    );
    assert!(
        !app.valid(&new).await,
        "the token is gone, not just one secret"
    );
}

#[tokio::test]
async fn requests_that_are_not_a_list_of_1_to_100_tokens_are_refused_without_quoting_them() {
    let app = spawn_router().await;
    let (secret, _) = app.create("ci", &["builder"]).await;
    let many: Vec<String> = (0..101)
        .map(|_| Secret::generate().expose_secret().to_owned())
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for body in [
        json!({ "tokens": [] }).to_string(),
        json!({ "tokens": many }).to_string(),
        json!({ "tokens": secret }).to_string(),
        json!({ "token": [secret] }).to_string(),
        "not json".to_string(),
    ] {
        let answer = app
            .call(
                "POST",
                PATH,
                &[("content-type", b"application/json")],
                &body,
            )
            .await;
        assert_eq!(answer.status, 400, "{body}");
        assert!(!answer.text().contains(&secret[7..]), "{}", answer.text());
    }
    assert!(app.valid(&secret).await, "refused requests revoke nothing");
}

#[tokio::test]
async fn calls_are_rate_limited_per_address() {
    let app = spawn_router().await;
    let unknown = Secret::generate().expose_secret().to_owned();
    for _ in 0..sts::service::REVOKE_CALLS_PER_MINUTE {
        assert_eq!(app.revoke(&[&unknown]).await.status, 200);
    }
    let limited = app.revoke(&[&unknown]).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["error"], "RESOURCE_EXHAUSTED");
    assert!(
        limited.json()["message"]
            .as_str()
            .unwrap()
            .contains("try again in")
    );
}

#[tokio::test]
async fn grpc_revokes_and_answers_in_order() {
    use sts::proto::token_service_client::TokenServiceClient;
    let app = spawn_app().await;
    let (leaked, _) = app.create("ci", &["builder"]).await;
    let mut client = TokenServiceClient::new(channel(app.addr).await);
    let results = client
        .revoke_leaked(RevokeLeakedRequest {
            tokens: vec![leaked.clone(), "nope".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        results,
        [RevokeResult::Revoked as i32, RevokeResult::Malformed as i32]
    );
    assert!(!app.validate(&leaked).await.valid);
    // The request's secrets never show in its Debug form.
    let debug = format!(
        "{:?}",
        RevokeLeakedRequest {
            tokens: vec![leaked.clone()]
        }
    );
    assert!(!debug.contains(&leaked[7..]), "{debug}");
}

#[tokio::test]
async fn the_cli_revokes_every_token_in_a_file_by_line() {
    let app = spawn_app().await;
    let terminal = Terminal::new();
    terminal.log_in(&app).await;
    let (leaked, _) = app.create("ci", &["builder"]).await;
    let (kept, _) = app.create("cd", &["builder"]).await;
    let file = terminal.home().join("leaked.txt");
    std::fs::write(&file, format!("{leaked}\n\nsvctok-nope\n")).unwrap();
    let run = terminal
        .sts(&[
            "service-token",
            "revoke",
            "--token-file",
            file.to_str().unwrap(),
        ])
        .await
        .ok();
    assert!(run.stdout.contains("line 1: revoked"), "{}", run.stdout);
    assert!(run.stdout.contains("line 3: malformed"), "{}", run.stdout);
    assert!(
        run.stdout.contains("Revoked 1 of 2 service tokens."),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(&leaked[7..]));
    assert!(!app.validate(&leaked).await.valid);
    assert!(app.validate(&kept).await.valid);
}

#[tokio::test]
async fn every_revocation_is_audited_with_the_callers_address() {
    let dir = tempfile::tempdir().unwrap();
    let admin = bootstrap(dir.path());
    let server = ServerProcess::start_with(dir.path(), &[("STS_LOG_FORMAT", "json")]).await;
    let answer: Value = reqwest::Client::new()
        .post(server.rest().url(PATH))
        .json(&json!({ "tokens": [admin] }))
        .json_body()
        .await;
    assert_eq!(answer["results"], json!(["revoked"]));
    let (exit, log) = server.terminate().await;
    assert!(exit.success());
    let events: Vec<Value> = log
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["target"] == AUDIT && event["fields"]["rpc"] == "RevokeLeaked")
        .collect();
    assert_eq!(
        events.len(),
        2,
        "the revocation and the admin warning: {events:#?}"
    );
    let fields = &events[0]["fields"];
    assert_eq!(fields["message"], "leaked service token revoked");
    assert_eq!(fields["token.name"], "bootstrap-admin");
    assert_eq!(fields["source"], "127.0.0.1");
    assert_eq!(events[0]["level"], "WARN");
    assert!(
        events[1]["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("sts-server bootstrap")
    );
    assert!(!log.join("\n").contains(&admin[7..]));
}

#[test]
fn the_shipped_gitleaks_rule_finds_real_tokens_and_not_mangled_ones() {
    #[derive(serde::Deserialize)]
    struct Config {
        rules: Vec<Rule>,
    }
    #[derive(serde::Deserialize)]
    struct Rule {
        regex: String,
        keywords: Vec<String>,
        #[serde(rename = "secretGroup")]
        secret_group: usize,
    }
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gitleaks.toml"),
    )
    .unwrap();
    let config: Config = toml::from_str(&text).unwrap();
    let rule = &config.rules[0];
    let regex = regex::Regex::new(&rule.regex).unwrap();
    for _ in 0..200 {
        let token = Secret::generate().expose_secret().to_owned();
        // As it shows up: in an env file, a header, JSON, a URL.
        for leak in [
            format!("STS_TOKEN={token}\n"),
            format!("X-API-Key: {token}"),
            format!(r#"{{"token":"{token}"}}"#),
            format!("https://ci.example/?key={token}&x=1"),
        ] {
            let found = regex
                .captures(&leak)
                .unwrap_or_else(|| panic!("missed in {leak:?}"));
            assert_eq!(&found[rule.secret_group], token);
            assert!(rule.keywords.iter().any(|k| leak.contains(k.as_str())));
        }
        // Truncated, extended, mis-prefixed: not a token.
        for mangled in [
            token[..token.len() - 1].to_owned(),
            format!("{token}x"),
            token.replacen("svctok-", "svctok_", 1),
            token.replacen("svctok-", "xsvctok-", 1),
        ] {
            assert!(!regex.is_match(&mangled), "{mangled}");
        }
    }
}

#[test]
fn the_security_page_publishes_the_regex_and_a_checksum_that_holds_for_real_tokens() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("docs/security.md")).unwrap();
    let rule = std::fs::read_to_string(root.join("examples/gitleaks.toml")).unwrap();
    let regex = r"\b(svctok-[0-9A-Za-z]{49})\b";
    assert!(
        readme.contains(&format!("`{regex}`")),
        "docs/security.md's regex"
    );
    assert!(
        rule.contains(&format!("'''{regex}'''")),
        "the gitleaks rule's regex"
    );
    // The checksum as docs/security.md describes it, written here from that text.
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for _ in 0..100 {
        let token = Secret::generate().expose_secret().to_owned();
        let (payload, checksum) = token.split_at(50);
        let mut crc = crc32fast::hash(payload.as_bytes()) as u64;
        let mut digits = [b'0'; 6];
        for digit in digits.iter_mut().rev() {
            *digit = ALPHABET[(crc % 62) as usize];
            crc /= 62;
        }
        assert_eq!(checksum.as_bytes(), digits, "{token}");
    }
}

/// POSTs a revocation of `secret` to `addr` from 127.0.0.1 with `headers`.
async fn revoke_over_tcp(
    addr: std::net::SocketAddr,
    secret: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(Rest::at(addr).url(PATH))
        .json(&json!({ "tokens": [secret] }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit() {
    use sts::{config::ServiceConfig, source::TrustedProxies};
    let (_guard, logs) = crate::support::logs::capture_logs();
    let server = sts::config::ServerConfig {
        trusted_proxies: TrustedProxies::parse("127.0.0.1").unwrap(),
        ..crate::support::server_config()
    };
    let app = crate::support::spawn_app_with(ServiceConfig::default(), server).await;
    let unknown = Secret::generate().expose_secret().to_owned();
    // What the client put first is not believed: the proxy's own entry is.
    let first = [("x-forwarded-for", "198.51.100.7, 203.0.113.1")];
    for _ in 0..sts::service::REVOKE_CALLS_PER_MINUTE {
        let answer = revoke_over_tcp(app.addr, &unknown, &first).await;
        assert_eq!(answer.status(), 200);
    }
    let limited = revoke_over_tcp(app.addr, &unknown, &first).await;
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    // Another client behind the same proxy is not held back, nor is one
    // named by `Forwarded`, nor an IPv6 client in another /64.
    for headers in [
        [("x-forwarded-for", "203.0.113.2")],
        [("forwarded", "for=\"[2001:db8:1::5]:443\"")],
    ] {
        let answer = revoke_over_tcp(app.addr, &unknown, &headers).await;
        assert_eq!(answer.status(), 200, "{headers:?}");
    }
    // The audit names the forwarded client, not the proxy.
    let (leaked, _) = app.create("ci", &["builder"]).await;
    let headers = [("x-forwarded-for", "203.0.113.3")];
    assert_eq!(
        revoke_over_tcp(app.addr, &leaked, &headers).await.status(),
        200
    );
    let (leaked, _) = app.create("cd", &["builder"]).await;
    let headers = [("forwarded", "for=\"[2001:db8:1::5]:443\"")];
    assert_eq!(
        revoke_over_tcp(app.addr, &leaked, &headers).await.status(),
        200
    );
    let audited: Vec<_> = logs
        .target(AUDIT)
        .into_iter()
        .filter_map(|e| e["fields"]["source"].as_str().map(str::to_owned))
        .collect();
    assert!(audited.iter().any(|s| s == "203.0.113.3"), "{audited:?}");
    assert!(audited.iter().any(|s| s == "2001:db8:1::5"), "{audited:?}");
    assert!(!audited.iter().any(|s| s == "127.0.0.1"), "{audited:?}");
}

#[tokio::test]
async fn an_untrusted_peer_cannot_name_another_source() {
    use sts::{config::ServiceConfig, source::TrustedProxies};
    // Trusted proxies are configured, but the test's peer is not one.
    let server = sts::config::ServerConfig {
        trusted_proxies: TrustedProxies::parse("10.0.0.0/8").unwrap(),
        ..crate::support::server_config()
    };
    let app = crate::support::spawn_app_with(ServiceConfig::default(), server).await;
    let unknown = Secret::generate().expose_secret().to_owned();
    for n in 0..sts::service::REVOKE_CALLS_PER_MINUTE {
        let client = format!("203.0.113.{n}");
        let answer = revoke_over_tcp(app.addr, &unknown, &[("x-forwarded-for", &client)]).await;
        assert_eq!(answer.status(), 200);
    }
    let limited =
        revoke_over_tcp(app.addr, &unknown, &[("x-forwarded-for", "203.0.113.200")]).await;
    assert_eq!(limited.status(), 429, "a forged X-Forwarded-For is ignored");
}
