//! What a console page costs: signs in through the console's own form,
//! then fetches one page again and again on one keep-alive connection,
//! as a person's browser would, and reports the latency of each.

use std::{net::SocketAddr, time::Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// One HTTP/1.1 keep-alive connection, its cookies kept.
struct Browser {
    target: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
    cookies: Vec<String>,
}

/// An answer: status, its `Set-Cookie`s' `name=value`, its `Location`, body.
struct Answer {
    status: u16,
    location: String,
    body: String,
}

impl Browser {
    async fn open(target: SocketAddr) -> anyhow::Result<Browser> {
        let stream = tokio::net::TcpStream::connect(target).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Browser {
            target,
            sender,
            cookies: Vec::new(),
        })
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        form: Option<String>,
    ) -> anyhow::Result<Answer> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.target.to_string())
            .header(header::COOKIE, self.cookies.join("; "));
        if form.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let body = Full::new(Bytes::from(form.unwrap_or_default()));
        self.sender.ready().await?;
        let response = self.sender.send_request(request.body(body)?).await?;
        for cookie in response.headers().get_all(header::SET_COOKIE) {
            let pair = cookie
                .to_str()?
                .split(';')
                .next()
                .unwrap_or_default()
                .to_owned();
            let name = pair.split('=').next().unwrap_or_default().to_owned();
            self.cookies.retain(|c| !c.starts_with(&format!("{name}=")));
            self.cookies.push(pair);
        }
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            location,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Percent-encodes a form value (RFC 3986 unreserved kept).
fn encoded(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Signs in at `target` with `token`, then GETs `path` (under
/// `/console`) `reps` times; the latencies as a result row.
pub async fn console_page(
    target: SocketAddr,
    token: &str,
    path: &str,
    reps: usize,
    scenario: &str,
) -> anyhow::Result<Value> {
    let mut browser = Browser::open(target).await?;
    let form = browser.send("GET", "/console/sign-in", None).await?;
    let marker = "name=\"form_token\" value=\"";
    let form_token = form
        .body
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("no sign-in form")?
        .to_owned();
    let signed = browser
        .send(
            "POST",
            "/console/sign-in",
            Some(format!(
                "token={}&form_token={}",
                encoded(token),
                encoded(&form_token)
            )),
        )
        .await?;
    anyhow::ensure!(
        signed.status == 303 && signed.location == "/console/",
        "sign-in refused"
    );
    let page = format!("/console{path}");
    let mut latencies = Vec::with_capacity(reps);
    let mut rows = 0;
    let cpu_before = sts_bench_cpu();
    let started = Instant::now();
    for _ in 0..reps {
        let sent = Instant::now();
        let answer = browser.send("GET", &page, None).await?;
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(answer.status == 200, "{page} answered {}", answer.status);
        rows = answer.body.matches("<td class=\"name\">").count();
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok(json!({
        "scenario": scenario,
        "requests": reps,
        "errors": 0,
        "seconds": seconds,
        "rps": reps as f64 / seconds,
        "p50_us": at(0.5) * 1000.0,
        "p90_us": at(0.9) * 1000.0,
        "p99_us": at(0.99) * 1000.0,
        "p999_us": at(0.999) * 1000.0,
        "rows": rows,
        "client_cpu_seconds": sts_bench_cpu() - cpu_before,
    }))
}

/// This process's CPU seconds.
fn sts_bench_cpu() -> f64 {
    crate::cpu_seconds("self").unwrap_or(0.0)
}
