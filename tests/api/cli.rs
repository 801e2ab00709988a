//! The real `sts` binary against a real server: the documentation's session,
//! contexts and their file, JSON output, and every exit code.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use sts::proto::InvalidReason;
use tempfile::TempDir;

use crate::support::Rest;
use crate::support::{TestApp, spawn_app};

/// A user's environment: an empty home and config dir, no `STS_CLI_*`.
pub struct Terminal {
    home: TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Terminal {
    pub fn new() -> Terminal {
        Terminal {
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// The terminal's home directory, for files a test hands `sts`.
    pub fn home(&self) -> &std::path::Path {
        self.home.path()
    }

    fn config_file(&self) -> PathBuf {
        self.home.path().join("xdg/stackstate-cli/config.yaml")
    }

    pub async fn sts(&self, args: &[&str]) -> Run {
        self.sts_with_env(args, &[]).await
    }

    async fn sts_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sts"));
        command
            .args(args)
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("xdg"))
            .env_remove("NO_COLOR");
        for name in ["STS_CLI_URL", "STS_CLI_SERVICE_TOKEN", "STS_CLI_CONTEXT"] {
            command.env_remove(name);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        // The server runs on this test's runtime: wait for the child off it.
        let Output {
            status,
            stdout,
            stderr,
        } = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        Run {
            code: status.code().unwrap(),
            stdout: String::from_utf8(stdout).unwrap(),
            stderr: String::from_utf8(stderr).unwrap(),
        }
    }

    /// `sts context save` (plus `extra` arguments).
    async fn save_context(&self, name: &str, url: &str, token: &str, extra: &[&str]) -> Run {
        let mut args = vec![
            "context",
            "save",
            "--name",
            name,
            "--url",
            url,
            "--service-token",
            token,
        ];
        args.extend_from_slice(extra);
        self.sts(&args).await
    }

    /// A terminal whose current context is `app` with its admin token.
    pub async fn logged_in(app: &TestApp) -> Terminal {
        let terminal = Terminal::new();
        terminal.log_in(app).await;
        terminal
    }

    /// Saves and selects a context for `app` with its admin token.
    pub async fn log_in(&self, app: &TestApp) {
        self.log_in_with(app, &app.admin_token).await;
    }

    /// Saves and selects a context for `app` with `token`.
    pub async fn log_in_with(&self, app: &TestApp, token: &str) {
        let url = app.rest().url("");
        let run = self.save_context("local", &url, token, &[]).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
    }

    /// The config file `sts` keeps its contexts in.
    pub fn contexts(&self) -> PathBuf {
        self.config_file()
    }
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

#[tokio::test]
async fn the_documented_session_works_verbatim() {
    let app = spawn_app().await;
    let terminal = Terminal::new();
    let url = app.rest().url("");

    // sts context --name <name> --service-token <TOKEN> --url <url>
    let saved = terminal
        .sts(&[
            "context",
            "--name",
            "my-context",
            "--service-token",
            &app.admin_token,
            "--url",
            &url,
        ])
        .await
        .ok();
    assert_eq!(saved.stdout, "Saved context: 'my-context'\n");

    let help = terminal.sts(&["service-token", "--help"]).await.ok();
    assert!(
        help.stdout.starts_with("Manage service tokens.\n"),
        "{}",
        help.stdout
    );
    // StackState's commands and their descriptions (padded to the longest
    // command name, which the lifecycle commands made longer).
    let listed: Vec<String> = help
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for line in [
        "create Create a service token",
        "delete Delete a service token",
        "list List service tokens",
    ] {
        assert!(
            listed.iter().any(|l| l == line),
            "{line} in {}",
            help.stdout
        );
    }

    let created = terminal
        .sts(&[
            "service-token",
            "create",
            "--name",
            "my-service-token",
            "--roles",
            "stackstate-k8s-troubleshooter",
        ])
        .await
        .ok();
    let token = created
        .stdout
        .strip_prefix("Service token created: ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("{:?}", created.stdout));
    let identity = app.validate(token).await.service_token.unwrap();
    assert_eq!(identity.name, "my-service-token");
    // Its id beside it, on stderr: stdout stays StackState's one line.
    assert_eq!(created.stderr.trim(), format!("Its id is {}.", identity.id));

    let listed = terminal.sts(&["service-token", "list"]).await.ok();
    let lines: Vec<&str> = listed.stdout.lines().collect();
    let id = identity.id.to_string();
    let admin_id = app
        .list_all()
        .await
        .iter()
        .find(|t| t.name == "test-admin")
        .unwrap()
        .id
        .to_string();
    let width = id.len().max(admin_id.len());
    assert_eq!(
        lines,
        [
            format!("{:width$} | NAME             | EXPIRATION | ROLES", "ID"),
            format!(
                "{id:width$} | my-service-token |            | [stackstate-k8s-troubleshooter]"
            ),
            format!("{admin_id:width$} | test-admin       |            | [stackstate-admin]"),
        ]
    );

    let deleted = terminal.sts(&["service-token", "delete", &id]).await.ok();
    assert_eq!(deleted.stdout, format!("Service token deleted: {id}\n"));
    assert_eq!(app.validate(token).await.reason(), InvalidReason::NotFound);
    let listed = terminal.sts(&["service-token", "list"]).await.ok();
    assert!(!listed.stdout.contains("my-service-token"));
}

#[tokio::test]
async fn create_takes_roles_in_both_forms_and_an_expiration_date() {
    let app = spawn_app().await;
    let terminal = Terminal::logged_in(&app).await;
    let created = terminal
        .sts(&[
            "service-token",
            "create",
            "-n",
            "ci",
            "--roles",
            "a,b",
            "--roles",
            "c",
            "--expiration",
            "2099-12-31",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let token = &created["service-token"];
    assert_eq!(token["name"], "ci");
    assert_eq!(
        token["expiration"], 4_102_358_400_000i64,
        "midnight UTC, epoch ms"
    );
    let identity = app
        .validate(token["token"].as_str().unwrap())
        .await
        .service_token
        .unwrap();
    assert_eq!(identity.roles, ["a", "b", "c"]);
    assert_eq!(identity.expiration.unwrap().seconds, 4_102_358_400);

    let listed = terminal.sts(&["service-token", "list"]).await.ok();
    let row = listed
        .stdout
        .lines()
        .find(|l| l.contains(" ci "))
        .unwrap()
        .to_owned();
    assert!(row.ends_with("| 2099-12-31 | [a b c]"), "{row}");

    // The last day the server accepts: a date, not "never expires".
    terminal
        .sts(&[
            "service-token",
            "create",
            "-n",
            "far",
            "--roles",
            "r",
            "--expiration",
            "9999-12-31",
        ])
        .await
        .ok();
    let listed = terminal.sts(&["service-token", "list"]).await.ok();
    let row = listed.stdout.lines().find(|l| l.contains(" far ")).unwrap();
    assert!(row.ends_with("| 9999-12-31 | [r]"), "{row}");

    for bad in ["2000-01-01", "31-12-2099", "soon", "10000-01-01"] {
        let run = terminal
            .sts(&[
                "service-token",
                "create",
                "-n",
                "x",
                "--roles",
                "r",
                "--expiration",
                bad,
            ])
            .await;
        assert_eq!(run.code, 3, "{bad}: {}", run.stderr);
        assert!(run.stderr.contains("expiration"), "{}", run.stderr);
    }
}

#[tokio::test]
async fn json_output_is_stable_for_scripts() {
    let app = spawn_app().await;
    let terminal = Terminal::logged_in(&app).await;
    let created = terminal
        .sts(&[
            "service-token",
            "create",
            "--name",
            "ci",
            "--roles",
            "r",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let token = &created["service-token"];
    assert!(token["token"].as_str().unwrap().starts_with("svctok-"));
    assert!(token.get("expiration").is_none());
    let id = token["id"].as_u64().unwrap();

    let listed = terminal
        .sts(&["service-token", "list", "-o", "json"])
        .await
        .ok()
        .json();
    let entry = listed["service-tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(
        entry,
        serde_json::json!({
            "id": id, "name": "ci", "roles": ["r"],
            "description": "", "labels": {}, "disabled": false,
            "createdBy": entry["createdBy"], "createdAt": entry["createdAt"],
            "updatedAt": entry["createdAt"],
            // The etag, as REST's (for If-Match): quoted hex.
            "etag": entry["etag"],
        })
    );
    assert_eq!(entry["etag"].as_str().unwrap().len(), 34);

    let deleted = terminal
        .sts(&[
            "service-token",
            "delete",
            "--id",
            &id.to_string(),
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(deleted, serde_json::json!({"deleted-service-token": id}));

    let failed = terminal
        .sts(&[
            "service-token",
            "delete",
            "-i",
            &id.to_string(),
            "-o",
            "json",
        ])
        .await;
    assert_eq!(failed.code, 8);
    assert!(failed.stdout.is_empty());
    let error: serde_json::Value = serde_json::from_str(failed.stderr.trim()).unwrap();
    assert_eq!(error["error"], true);
    assert!(
        error["error-message"]
            .as_str()
            .unwrap()
            .contains("not found")
    );
}

#[tokio::test]
async fn contexts_can_be_listed_switched_shown_and_deleted() {
    let app = spawn_app().await;
    let other = spawn_app().await;
    let terminal = Terminal::logged_in(&app).await;
    let other_url = other.rest().url("/");
    terminal
        .save_context("other", &other_url, &other.admin_token, &[])
        .await
        .ok();

    let listed = terminal.sts(&["context", "list"]).await.ok();
    let lines: Vec<&str> = listed.stdout.lines().collect();
    let rows: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows[0], ["CURRENT", "NAME", "URL"]);
    // The last saved context is current, and marked.
    let local_url = app.rest().url("");
    assert!(
        rows.contains(&vec!["", "local", local_url.as_str()]),
        "{rows:?}"
    );
    assert!(
        rows.contains(&vec!["*", "other", other_url.as_str()]),
        "{rows:?}"
    );

    // The last saved context is current: the trailing slash URL works.
    let shown = terminal
        .sts(&["context", "show", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(shown["context"]["name"], "other");
    assert!(
        !terminal
            .sts(&["context", "show"])
            .await
            .ok()
            .stdout
            .contains("svctok-")
    );
    let validated = terminal.sts(&["context", "validate"]).await.ok();
    assert!(
        validated.stdout.contains("test-admin"),
        "{}",
        validated.stdout
    );

    let refused = terminal
        .sts(&["context", "delete", "--name", "other"])
        .await;
    assert_eq!(refused.code, 3, "the current context cannot be deleted");
    terminal
        .sts(&["context", "set", "--name", "local"])
        .await
        .ok();
    assert_eq!(
        terminal
            .sts(&["context", "show", "-o", "json"])
            .await
            .ok()
            .json()["context"]["name"],
        "local"
    );
    terminal
        .sts(&["context", "delete", "--name", "other"])
        .await
        .ok();
    assert_eq!(
        terminal
            .sts(&["context", "set", "--name", "other"])
            .await
            .code,
        8
    );
    assert_eq!(
        terminal
            .sts(&["context", "delete", "--name", "nope"])
            .await
            .code,
        8
    );

    // -c picks a context for one command.
    terminal
        .save_context("other", &other_url, &other.admin_token, &[])
        .await
        .ok();
    terminal
        .sts(&["context", "set", "--name", "local"])
        .await
        .ok();
    let made = terminal
        .sts(&[
            "-c",
            "other",
            "service-token",
            "create",
            "-n",
            "on-other",
            "--roles",
            "r",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let secret = made["service-token"]["token"].as_str().unwrap();
    assert!(other.validate(secret).await.valid);
    assert!(!app.validate(secret).await.valid);
}

#[cfg(unix)]
#[tokio::test]
async fn the_config_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    let terminal = Terminal::logged_in(&app).await;
    let file = terminal.config_file();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("current-context: local"), "{text}");
    assert!(text.contains(&format!("service-token: {}", app.admin_token)));
}

#[tokio::test]
async fn saving_checks_the_token_unless_told_not_to() {
    let app = spawn_app().await;
    let terminal = Terminal::new();
    let url = app.rest().url("");
    let unknown = sts::token::Secret::generate().expose_secret().to_owned();
    let run = terminal.save_context("bad", &url, &unknown, &[]).await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stderr.contains(&url) && run.stderr.contains("not valid"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(&unknown[7..]), "no secret in errors");
    assert!(!terminal.config_file().exists(), "nothing saved");

    terminal
        .save_context("bad", &url, &unknown, &["--skip-validate"])
        .await
        .ok();
    assert!(terminal.config_file().exists());
    let run = terminal.sts(&["context", "validate"]).await;
    assert_eq!(run.code, 4);
}

#[tokio::test]
async fn flags_and_environment_need_no_config_file_and_take_precedence() {
    let app = spawn_app().await;
    let terminal = Terminal::new();
    let url = app.rest().url("");
    let listed = terminal
        .sts_with_env(
            &["service-token", "list", "-o", "json"],
            &[
                ("STS_CLI_URL", &url),
                ("STS_CLI_SERVICE_TOKEN", &app.admin_token),
            ],
        )
        .await
        .ok()
        .json();
    assert_eq!(listed["service-tokens"].as_array().unwrap().len(), 1);
    assert!(!terminal.config_file().exists());

    // A context pointing nowhere is overridden by the environment, which a flag overrides in turn.
    terminal
        .save_context(
            "dead",
            "http://127.0.0.1:9",
            "svctok-x",
            &["--skip-validate"],
        )
        .await
        .ok();
    terminal
        .sts_with_env(
            &["service-token", "list"],
            &[
                ("STS_CLI_URL", &url),
                ("STS_CLI_SERVICE_TOKEN", &app.admin_token),
            ],
        )
        .await
        .ok();
    terminal
        .sts_with_env(
            &[
                "service-token",
                "list",
                "--url",
                &url,
                "--service-token",
                &app.admin_token,
            ],
            &[
                ("STS_CLI_URL", "http://127.0.0.1:9"),
                ("STS_CLI_SERVICE_TOKEN", "svctok-x"),
            ],
        )
        .await
        .ok();
    // A context's token is never sent to another URL.
    let run = terminal
        .sts(&["service-token", "list", "--url", &url])
        .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("no service token"), "{}", run.stderr);
}

#[tokio::test]
async fn exit_codes_follow_stackstate() {
    let app = spawn_app().await;
    let terminal = Terminal::new();
    let url = app.rest().url("");

    // 1: no context at all; an unreadable config file.
    let run = terminal.sts(&["service-token", "list"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("sts context save"), "{}", run.stderr);
    std::fs::create_dir_all(terminal.config_file().parent().unwrap()).unwrap();
    std::fs::write(terminal.config_file(), "contexts: [ {{{ not yaml").unwrap();
    assert_eq!(terminal.sts(&["service-token", "list"]).await.code, 1);
    std::fs::remove_file(terminal.config_file()).unwrap();

    // 3: bad arguments, and error answers from the server.
    assert_eq!(
        terminal
            .sts(&["service-token", "create", "--name", "x"])
            .await
            .code,
        3
    );
    assert_eq!(
        terminal.sts(&["service-token", "delete", "abc"]).await.code,
        3
    );
    assert_eq!(terminal.sts(&["no-such-command"]).await.code, 3);
    // A group without its subcommand did nothing: not a success.
    let run = terminal.sts(&["service-token"]).await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("Usage"), "{}", run.stderr);
    // In JSON mode an argument error is JSON too, wherever -o comes.
    for args in [
        &["-o", "json", "service-token", "create", "--name", "x"][..],
        &["service-token", "create", "--name", "x", "--output=json"][..],
        &["service-token", "delete", "abc", "-ojson"][..],
    ] {
        let run = terminal.sts(args).await;
        assert_eq!(run.code, 3, "{args:?}");
        let error: serde_json::Value = serde_json::from_str(&run.stderr)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", run.stderr));
        assert_eq!(error["error"], true);
        assert!(
            error["error-message"].as_str().unwrap().contains("error:"),
            "{error}"
        );
    }
    for command in [
        &["context", "set", "--help"][..],
        &["context", "delete", "--help"][..],
    ] {
        let help = terminal.sts(command).await.ok().stdout;
        let name = help
            .lines()
            .find(|l| l.contains("-n, --name <NAME>"))
            .unwrap();
        assert!(name.contains("Name of the context"), "{help}");
    }
    // A command's help lists its own flags, then the global ones apart.
    let help = terminal
        .sts(&["service-token", "create", "--help"])
        .await
        .ok()
        .stdout;
    let (own, global) = help.split_once("Global options:").expect(&help);
    assert!(own.contains("--roles") && !own.contains("--url"), "{help}");
    assert!(
        global.contains("--url") && global.contains("--output"),
        "{help}"
    );
    terminal.log_in(&app).await;
    let run = terminal
        .sts(&["service-token", "create", "--name", "x", "--roles", "a b"])
        .await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("--roles: "), "{}", run.stderr);

    // 4: cannot connect (saying where), authentication and permission
    // failures, each saying which (and a refusal not called the other).
    let unknown = sts::token::Secret::generate().expose_secret().to_owned();
    let (viewer, _) = app.create("viewer", &["viewer"]).await;
    let nowhere = "http://127.0.0.1:9";
    let lacks_role = "the caller's service token lacks the `stackstate-admin` role";
    for (at, token, says, never) in [
        (nowhere, app.admin_token.as_str(), nowhere, None),
        (
            url.as_str(),
            unknown.as_str(),
            "authentication failed",
            None,
        ),
        (
            url.as_str(),
            viewer.as_str(),
            lacks_role,
            Some("authentication failed"),
        ),
    ] {
        let args = [
            "service-token",
            "list",
            "--url",
            at,
            "--service-token",
            token,
        ];
        let run = terminal.sts(&args).await;
        assert_eq!(run.code, 4, "{}", run.stderr);
        assert!(run.stderr.contains(says), "{}", run.stderr);
        assert!(
            never.is_none_or(|never| !run.stderr.contains(never)),
            "{}",
            run.stderr
        );
    }

    // 8: not found.
    let run = terminal.sts(&["service-token", "delete", "42"]).await;
    assert_eq!(run.code, 8, "{}", run.stderr);
    assert_eq!(run.stderr, "error: service token 42 not found\n");
}

/// Runs `sts` under a pseudo-terminal (util-linux `script`), as a person would.
async fn on_terminal(terminal: &Terminal, args: &[&str], env: &[(&str, &str)]) -> String {
    let command_line = std::iter::once(env!("CARGO_BIN_EXE_sts"))
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = Command::new("script");
    command
        .args(["-qec", &command_line, "/dev/null"])
        .env("HOME", terminal.home.path())
        .env("XDG_CONFIG_HOME", terminal.home.path().join("xdg"))
        .env_remove("NO_COLOR");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn symbols_and_colour_only_on_a_terminal_without_no_color() {
    let app = spawn_app().await;
    let terminal = Terminal::logged_in(&app).await;
    let create = ["service-token", "create", "-n", "ci", "--roles", "r"];

    let shown = on_terminal(&terminal, &create, &[]).await;
    assert!(
        shown.contains("✅ Service token created: svctok-"),
        "{shown:?}"
    );
    assert!(shown.contains("\x1b["), "coloured: {shown:?}");
    let failed = on_terminal(&terminal, &["service-token", "delete", "42"], &[]).await;
    assert!(
        failed.contains("❌ service token 42 not found"),
        "{failed:?}"
    );

    for (args, env) in [
        (&create[..], &[("NO_COLOR", "1")][..]),
        (&[&create[..], &["--no-color"]].concat()[..], &[][..]),
    ] {
        let plain = on_terminal(&terminal, args, env).await;
        assert!(
            plain.starts_with("Service token created: svctok-"),
            "{plain:?}"
        );
        assert!(!plain.contains("\x1b["), "{plain:?}");
    }
    // Piped, as every other test here runs it: plain text.
    let piped = terminal.sts(&create).await.ok();
    assert!(piped.stdout.starts_with("Service token created: "));
}

#[tokio::test]
async fn https_urls_work_with_a_trusted_ca_a_ca_file_or_skip_ssl() {
    let app = crate::support::spawn_tls_app().await;
    let terminal = Terminal::new();
    let ca_file = terminal.home.path().join("ca.pem");
    std::fs::write(&ca_file, &crate::support::TestCertificate::shared().ca_pem).unwrap();
    let ca_file = ca_file.to_str().unwrap();
    let url = format!("https://localhost:{}/", app.addr.port());
    let list = |extra: &[&'static str]| {
        let mut args = vec![
            "service-token",
            "list",
            "-o",
            "json",
            "--url",
            &url,
            "--service-token",
            &app.admin_token,
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, env: Vec<(&'static str, String)>| {
        let terminal = &terminal;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            terminal.sts_with_env(&args, &env).await
        }
    };
    let listed = |run: Run| {
        let json = run.ok().json();
        assert_eq!(json["service-tokens"][0]["name"], "test-admin");
    };

    // Trusted through the system store, through --ca-cert-path, or its env var.
    listed(run(list(&[]), vec![("SSL_CERT_FILE", ca_file.to_owned())]).await);
    let mut with_ca = list(&[]);
    with_ca.extend(["--ca-cert-path".to_owned(), ca_file.to_owned()]);
    listed(run(with_ca, vec![]).await);
    listed(
        run(
            list(&[]),
            vec![("STS_CLI_CA_CERT_PATH", ca_file.to_owned())],
        )
        .await,
    );
    // --skip-ssl: no verification at all.
    listed(run(list(&["--skip-ssl"]), vec![]).await);

    // Untrusted: a connection failure naming the URL, exit code 4.
    let untrusted = run(list(&[]), vec![]).await;
    assert_eq!(untrusted.code, 4, "{}", untrusted.stderr);
    assert!(untrusted.stderr.contains(&url), "{}", untrusted.stderr);
    // A CA file that is missing or holds no certificate is a clear config error.
    let mut missing = list(&[]);
    missing.extend([
        "--ca-cert-path".to_owned(),
        "/nonexistent/ca.pem".to_owned(),
    ]);
    let missing = run(missing, vec![]).await;
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("/nonexistent/ca.pem"),
        "{}",
        missing.stderr
    );
    let garbage = terminal.home.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let mut garbage_ca = list(&[]);
    garbage_ca.extend([
        "--ca-cert-path".to_owned(),
        garbage.to_str().unwrap().to_owned(),
    ]);
    let garbage_ca = run(garbage_ca, vec![]).await;
    assert_eq!(garbage_ca.code, 1, "{}", garbage_ca.stderr);
    assert!(
        garbage_ca.stderr.contains("no PEM certificate"),
        "{}",
        garbage_ca.stderr
    );
    // Plain http to a TLS port is no connection either.
    let plain = terminal
        .sts(&[
            "service-token",
            "list",
            "--url",
            &format!("http://localhost:{}", app.addr.port()),
            "--service-token",
            &app.admin_token,
        ])
        .await;
    assert_eq!(plain.code, 4, "{}", plain.stderr);

    // A context remembers its CA file (as an absolute path) and --skip-ssl.
    for (name, flags) in [
        ("with-ca", vec!["--ca-cert-path", ca_file]),
        ("insecure", vec!["--skip-ssl"]),
    ] {
        let mut args = vec!["context", "save", "--name", name, "--url", &url];
        args.extend(["--service-token", &app.admin_token]);
        args.extend(flags);
        terminal.sts(&args).await.ok();
        let used = terminal.sts(&["service-token", "list", "-o", "json"]).await;
        listed(used);
    }
    let saved = std::fs::read_to_string(terminal.config_file()).unwrap();
    assert!(
        saved.contains(&format!("ca-cert-path: {ca_file}")),
        "{saved}"
    );
    assert!(saved.contains("skip-ssl: true"), "{saved}");
}

#[tokio::test]
async fn list_pages_through_everything_with_a_config_path_context_env_and_url_path() {
    let service = sts::config::ServiceConfig {
        max_page_size: 2,
        ..sts::config::ServiceConfig::default()
    };
    let app = crate::support::spawn_app_with(service, crate::support::server_config()).await;
    for i in 0..5 {
        app.create(&format!("t{i}"), &["r"]).await;
    }
    let terminal = Terminal::new();
    let config = terminal.home.path().join("elsewhere.yaml");
    let config = config.to_str().unwrap();
    let url = app.rest().url("/api/");
    terminal
        .save_context("paged", &url, &app.admin_token, &["--config", config])
        .await
        .ok();
    terminal
        .save_context(
            "dead",
            "http://127.0.0.1:9",
            "svctok-x",
            &["--skip-validate", "--config", config],
        )
        .await
        .ok();
    assert!(
        !terminal.config_file().exists(),
        "--config replaces the default path"
    );

    let run = terminal
        .sts_with_env(
            &["--config", config, "service-token", "list", "-v"],
            &[("STS_CLI_CONTEXT", "paged")],
        )
        .await
        .ok();
    let names: Vec<&str> = run
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split('|').nth(1).unwrap().trim())
        .collect();
    assert_eq!(
        names,
        ["t0", "t1", "t2", "t3", "t4", "test-admin"],
        "all pages, sorted by name"
    );
    assert_eq!(run.stderr.matches("list page").count(), 3, "{}", run.stderr);
    assert!(run.stderr.contains("connecting"), "-v logs: {}", run.stderr);
    assert!(
        !run.stderr.contains(&app.admin_token[7..]),
        "no secret in logs"
    );
}

#[tokio::test]
async fn a_url_that_is_not_an_sts_server_is_explained_in_one_line() {
    // A plain HTTP/1.1 server, as any web server on the wrong port.
    let web = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web_addr = web.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = web.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                let _ = socket.read(&mut buffer).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let plain = spawn_app().await;
    let tls = crate::support::spawn_tls_app().await;
    let terminal = Terminal::new();
    let cases = [
        (
            Rest::at(web_addr).url(""),
            "does not speak gRPC over HTTP/2: is this the right port?",
        ),
        (
            format!("https://{}", plain.addr),
            "does not speak TLS: use http://",
        ),
        (
            format!("http://localhost:{}", tls.addr.port()),
            "expects TLS: use https://",
        ),
    ];
    for (url, says) in cases {
        for output in [&[][..], &["-o", "json"][..]] {
            let mut args = vec![
                "service-token",
                "list",
                "--url",
                &url,
                "--service-token",
                &plain.admin_token,
            ];
            args.extend_from_slice(output);
            let run = terminal.sts(&args).await;
            assert_eq!(run.code, 4, "{url}: {}", run.stderr);
            assert!(run.stderr.contains(says), "{url}: {}", run.stderr);
            assert!(run.stderr.contains(&url), "{url}: {}", run.stderr);
            assert_eq!(
                run.stderr.trim_end().lines().count(),
                1,
                "{url}: {}",
                run.stderr
            );
            assert!(!run.stderr.contains("tonic"), "{url}: {}", run.stderr);
        }
    }
}
