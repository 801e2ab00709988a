//! A real browser for the console's tests: Debian's Chromium, headless,
//! driven through its chromedriver (WebDriver, on a port it picks on
//! loopback) by fantoccini; axe-core (from the npm registry) injected to
//! check a page's accessibility. Missing outside CI, the tests say
//! "skipping" and pass; with `STS_TEST_REQUIRE_BROWSER` set (`.ci/run`),
//! missing is a failure.

use std::{path::PathBuf, process::Stdio, time::Duration};

use std::io::{BufRead, BufReader};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const REQUIRE_VAR: &str = "STS_TEST_REQUIRE_BROWSER";
/// Where `.ci/run` installs axe-core (`npm install --prefix`), unless
/// `STS_TEST_AXE` names the script itself.
const AXE_DEFAULT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/browser-tools/node_modules/axe-core/axe.min.js"
);

/// A headless Chromium session; its chromedriver ends with it.
pub struct Browser {
    pub client: Client,
    driver: std::process::Child,
    axe: Option<String>,
}

fn found(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.is_file())
}

impl Browser {
    /// A browser, or `None` (saying why) where Chromium is not installed
    /// and not required.
    pub async fn start() -> Option<Browser> {
        let required = std::env::var_os(REQUIRE_VAR).is_some();
        let chromium = found(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
        let driver = found(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            assert!(
                !required,
                "chromium and chromium-driver are required ({REQUIRE_VAR})"
            );
            eprintln!("skipping: Debian's chromium and chromium-driver are not installed");
            return None;
        };
        let axe_path = std::env::var("STS_TEST_AXE").unwrap_or_else(|_| AXE_DEFAULT.to_owned());
        let axe = std::fs::read_to_string(&axe_path).ok();
        assert!(
            axe.is_some() || !required,
            "axe-core is required at {axe_path} ({REQUIRE_VAR})"
        );
        let mut child = std::process::Command::new(driver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let stdout = child.stdout.take().unwrap();
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        // Reads the port it says, then drains its output, so it never
        // blocks writing; ends with it.
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok())
                    && let Some(tx) = port_tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = tokio::time::timeout(Duration::from_secs(30), port_rx)
            .await
            .expect("chromedriver says its port in time")
            .expect("chromedriver says its port before it ends");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,1000",
                    "--no-first-run",
                    "--password-store=basic",
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Some(Browser {
            client,
            driver: child,
            axe,
        })
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Types `text` into the field `css` finds (cleared first).
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// The text of what `css` finds, once the page a click led to is
    /// there: an element of the page before may go stale under the read,
    /// so a read that meets one is made again, for up to 10 s.
    pub async fn text(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let read = async { self.client.find(Locator::Css(css)).await?.text().await };
            match read.await {
                Ok(text) => return text,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{css}: {e}"),
            }
        }
    }

    pub async fn body(&self) -> String {
        self.text("body").await
    }

    /// Clicks what `css` finds (a link, a form's button) and waits for
    /// the page it leads to: the page shown is marked first, and the new
    /// one is there once the mark is gone and it has loaded.
    pub async fn follow(&self, css: &str) {
        self.leave(css, false).await;
    }

    /// As [`Browser::follow`], accepting the confirm dialog the form's
    /// script opens; what the dialog asked.
    pub async fn follow_confirmed(&self, css: &str) -> String {
        self.leave(css, true).await
    }

    async fn leave(&self, css: &str, confirm: bool) -> String {
        self.mark_page().await;
        self.click(css).await;
        let mut asked = String::new();
        if confirm {
            asked = self.client.get_alert_text().await.unwrap();
            self.client.accept_alert().await.unwrap();
        }
        self.new_page(css).await;
        asked
    }

    /// Marks the page shown, for [`Browser::new_page`].
    pub async fn mark_page(&self) {
        self.script("window.__stsLeaving = true; return 0").await;
    }

    /// Waits until the page marked is gone and the next one has loaded.
    pub async fn new_page(&self, after: &str) {
        let css = after;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let arrived = self
                .client
                .execute(
                    "return window.__stsLeaving === undefined && document.readyState === 'complete'",
                    Vec::new(),
                )
                .await;
            if matches!(arrived, Ok(Value::Bool(true))) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} led to no new page"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn script(&self, script: &str) -> Value {
        self.client.execute(script, Vec::new()).await.unwrap()
    }

    /// axe-core's serious and critical violations on the page shown
    /// (`None`: axe-core not installed here).
    pub async fn accessibility_violations(&self) -> Option<Vec<String>> {
        let axe = self.axe.as_ref()?;
        // Through WebDriver, not a <script>: the page's CSP allows none.
        self.client.execute(axe, Vec::new()).await.unwrap();
        let result = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] })
                    .then(r => done(r.violations.map(v => [v.id, v.impact, v.nodes.map(n => n.target.join(' ')).join(', ')])))
                    .catch(e => done([['axe failed', 'critical', String(e)]]));",
                Vec::new(),
            )
            .await
            .unwrap();
        Some(
            result
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| matches!(v[1].as_str(), Some("serious" | "critical")))
                .map(|v| format!("{}: {}", v[0], v[2]))
                .collect(),
        )
    }

    /// Saves the page as `name`.png in `STS_SCREENSHOTS` when it is set
    /// (`docs/screenshots/make` sets it); nothing otherwise.
    pub async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("STS_SCREENSHOTS") else {
            return;
        };
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(PathBuf::from(dir).join(format!("{name}.png")), png).unwrap();
    }

    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium goes with its driver's session; the driver goes here,
        // whether the test passed or panicked.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
