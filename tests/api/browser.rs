//! The console in a real browser (Debian's Chromium, headless, through
//! WebDriver): what a person does with it, keyboard and scripts included,
//! each page checked by axe-core; the refusals a browser meets (a session
//! that expired, a forged form, a token that may not manage) and markup in
//! names staying text. With `STS_SCREENSHOTS` set these also write the
//! screenshots in docs/ (`docs/screenshots/make`).

use std::time::Duration;

use sts::proto::CreateRequest;

use crate::support::{browser::Browser, spawn_app};

/// Checks the page shown against axe-core, naming it in a failure.
async fn accessible(browser: &Browser, page: &str) {
    if let Some(violations) = browser.accessibility_violations().await {
        assert!(violations.is_empty(), "{page}: {violations:#?}");
    }
}

#[tokio::test]
async fn a_person_manages_tokens_in_a_real_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    for (name, labels) in [
        ("ci-runner", "team=ci"),
        ("nightly-backup", "team=ops"),
        ("grafana", "team=ops"),
    ] {
        let (key, value) = labels.split_once('=').unwrap();
        app.create_with(CreateRequest {
            name: name.into(),
            roles: vec!["reader".into()],
            labels: [(key.to_owned(), value.to_owned())].into(),
            description: format!("{name}'s token"),
            ..Default::default()
        })
        .await;
    }
    let base = format!("http://{}/console", app.addr);

    // Sign in.
    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.path().await, "/console/sign-in");
    accessible(&browser, "sign-in").await;
    browser.screenshot("sign-in").await;
    browser.fill("#token", &app.admin_token).await;
    browser.follow("form.stacked button[type=submit]").await;
    assert_eq!(browser.path().await, "/console/");
    assert!(browser.body().await.contains("Signed in as test-admin"));
    accessible(&browser, "overview").await;
    browser.screenshot("overview").await;

    // Create a token and copy its secret.
    browser.follow("nav a[href='/console/tokens/new']").await;
    accessible(&browser, "new token").await;
    browser.fill("#name", "deploy-bot").await;
    browser.fill("#roles", "deploy, read").await;
    browser.fill("#labels", "team=ci").await;
    browser.fill("#description", "Deploys from CI").await;
    browser.screenshot("new-token").await;
    browser.follow("form.stacked button[type=submit]").await;
    assert!(browser.body().await.contains("It will not be shown again"));
    let secret = browser
        .client
        .find(fantoccini::Locator::Css("#secret"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    // Checks with it, counted by day: the token's page draws them.
    for _ in 0..5 {
        assert!(app.validate(&secret).await.valid);
    }
    assert!(!app.validate("svctok-unknown").await.valid);
    app.service.write_last_used().await;
    browser.click("button[data-copy]").await;
    let copied = browser.text("#copy-status").await;
    assert!(!copied.is_empty(), "the copy button says what it did");
    accessible(&browser, "secret").await;
    browser.screenshot("secret").await;

    // Find it by search and by filter.
    browser.goto(&format!("{base}/tokens")).await;
    browser.fill("#q", "deploy").await;
    browser.follow("form.filters button[type=submit]").await;
    let found = browser.text("table tbody").await;
    assert!(
        found.contains("deploy-bot") && !found.contains("grafana"),
        "{found}"
    );
    browser
        .goto(&format!("{base}/tokens?label=team%3Dops&order=name+desc"))
        .await;
    let found = browser.text("table tbody").await;
    assert!(!found.contains("deploy-bot"));
    let (grafana, backup) = (
        found.find("grafana").unwrap(),
        found.find("nightly-backup").unwrap(),
    );
    assert!(backup < grafana, "name, Z to A: {found}");
    browser.goto(&format!("{base}/tokens")).await;
    accessible(&browser, "tokens").await;
    browser.screenshot("tokens").await;

    // Its page: rotate with a grace (confirmed), then disable, then delete.
    browser.goto(&format!("{base}/tokens?q=deploy-bot")).await;
    browser.follow("td.name a").await;
    let bars = browser
        .script("return document.querySelectorAll('svg.usage rect.bar-valid').length")
        .await;
    assert_eq!(bars, 30, "a bar a day");
    assert!(
        browser
            .body()
            .await
            .contains("5 checks over 30 days: 5 valid")
    );
    accessible(&browser, "token").await;
    browser.screenshot("token").await;
    let token_page = browser.path().await;
    browser.fill("#grace", "1h").await;
    browser
        .follow_confirmed("form[action$='/rotate'] button")
        .await;
    assert!(browser.body().await.contains("keeps working until"));
    assert!(app.validate(&secret).await.previous_secret);
    browser
        .goto(&format!("http://{}{token_page}", app.addr))
        .await;
    assert!(browser.body().await.contains("previous secret in grace"));
    browser
        .follow_confirmed("form[action$='/disable'] button")
        .await;
    assert!(browser.path().await.ends_with("?done=disabled"));
    assert!(browser.text("h1").await.contains("disabled"));
    browser.fill("#confirm", "deploy-bot").await;
    let asked = browser
        .follow_confirmed("form[action$='/delete'] button")
        .await;
    assert!(asked.starts_with("Delete deploy-bot for good?"), "{asked}");
    assert_eq!(browser.path().await, "/console/tokens?notice=deleted");
    assert!(!browser.text("table tbody").await.contains("deploy-bot"));

    // Keyboard only: the skip link is the first stop, and Tab reaches the
    // sign-out button, which Enter presses.
    browser.goto(&format!("{base}/")).await;
    const TAB: &str = "\u{e004}";
    const ENTER: &str = "\u{e007}";
    let body = browser
        .client
        .find(fantoccini::Locator::Css("body"))
        .await
        .unwrap();
    body.send_keys(TAB).await.unwrap();
    assert_eq!(
        browser
            .script("return document.activeElement.className")
            .await,
        "skip"
    );
    let mut reached = false;
    for _ in 0..20 {
        let focused = browser.client.active_element().await.unwrap();
        if focused.text().await.unwrap() == "Sign out" {
            browser.mark_page().await;
            focused.send_keys(ENTER).await.unwrap();
            browser.new_page("Enter on Sign out").await;
            reached = true;
            break;
        }
        focused.send_keys(TAB).await.unwrap();
    }
    assert!(reached, "Tab never reached the sign-out button");
    assert_eq!(browser.path().await, "/console/sign-in?ended=signed-out");
    browser.goto(&format!("{base}/tokens")).await;
    assert_eq!(browser.path().await, "/console/sign-in");
    browser.close().await;
}

#[tokio::test]
async fn the_browser_meets_every_refusal_and_runs_no_injected_markup() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    let base = format!("http://{}/console", app.addr);
    let sign_in = |secret: String| {
        let browser = &browser;
        let base = base.clone();
        async move {
            browser.goto(&format!("{base}/sign-in")).await;
            browser.fill("#token", &secret).await;
            browser.follow("form.stacked button[type=submit]").await;
        }
    };

    // A token that may not manage.
    let (reader, _) = app.create("reader", &["reader"]).await;
    sign_in(reader).await;
    assert!(
        browser
            .text("#sign-in-error")
            .await
            .contains("neither the admin nor the manager role")
    );

    // Names, descriptions and labels holding markup stay text.
    let (_, marked) = app
        .create_with(CreateRequest {
            name: "<img src=x onerror=\"window.__xss=1\">".into(),
            roles: vec!["reader".into()],
            description: "<script>window.__xss=2</script>".into(),
            labels: [(
                "team".to_owned(),
                "\"><svg onload=window.__xss=3>".to_owned(),
            )]
            .into(),
            ..Default::default()
        })
        .await;
    sign_in(app.admin_token.clone()).await;
    for path in [
        "/tokens".to_owned(),
        format!("/tokens/{}", marked.id),
        format!("/tokens/{}/edit", marked.id),
    ] {
        browser.goto(&format!("{base}{path}")).await;
        assert_eq!(
            browser.script("return window.__xss === undefined").await,
            true,
            "{path}"
        );
        assert_eq!(
            browser
                .script("return document.querySelectorAll('img, script:not([src])').length")
                .await,
            0,
            "{path}"
        );
    }
    browser.goto(&format!("{base}/tokens/{}", marked.id)).await;
    let shown = browser.body().await;
    assert!(
        shown.contains("<img src=x") && shown.contains("<script>window.__xss=2</script>"),
        "shown as text: {shown}"
    );

    // A forged form: the page's CSRF token changed before it is sent.
    browser.goto(&format!("{base}/tokens/{}", marked.id)).await;
    browser
        .script("document.querySelector(\"form[action$='/disable'] input[name=csrf]\").value = 'forged'; return 0")
        .await;
    browser
        .follow_confirmed("form[action$='/disable'] button")
        .await;
    assert!(browser.body().await.contains("CSRF token does not match"));
    assert!(!app.get(marked.id).await.unwrap().disabled);

    // A session left idle past its timeout.
    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.path().await, "/console/");
    app.clock.advance(Duration::from_secs(16 * 60));
    browser.goto(&format!("{base}/tokens")).await;
    assert_eq!(browser.path().await, "/console/sign-in");
    browser.close().await;
}
