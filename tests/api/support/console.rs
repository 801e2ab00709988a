//! A console client as a browser without JavaScript is: it follows no
//! redirect by itself, keeps the cookies the console sets, and reads the
//! CSRF token from the page it was given.

use std::net::SocketAddr;

use reqwest::{StatusCode, header::HeaderMap, redirect::Policy};

/// One browser's view of the console at `base` (`http://addr/console`).
pub struct ConsoleClient {
    pub base: String,
    http: reqwest::Client,
    /// `name=value` of each cookie the console set and did not clear.
    pub cookies: Vec<(String, String)>,
}

/// An answer: status, headers, body.
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .map_or("", |v| v.to_str().unwrap_or(""))
    }

    /// The value of the first hidden field `name` on the page.
    pub fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let at = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no field {name} in\n{}", self.body));
        let rest = &self.body[at + marker.len()..];
        html_unescape(&rest[..rest.find('"').unwrap()])
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
}

/// Undoes askama's escaping of an attribute value.
pub fn html_unescape(text: &str) -> String {
    text.replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&#60;", "<")
        .replace("&#62;", ">")
        .replace("&#38;", "&")
}

impl ConsoleClient {
    pub fn new(addr: SocketAddr) -> ConsoleClient {
        ConsoleClient::at(addr, "/console")
    }

    pub fn at(addr: SocketAddr, prefix: &str) -> ConsoleClient {
        ConsoleClient {
            base: format!("http://{addr}{prefix}"),
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap(),
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, page: &Page) {
        for cookie in page.set_cookies() {
            let pair = cookie.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(k, _)| k != name);
            let cleared = cookie.contains("Max-Age=0");
            if !cleared {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    async fn answer(&mut self, request: reqwest::RequestBuilder) -> Page {
        let response = request
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        let page = Page {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        };
        self.keep_cookies(&page);
        page
    }

    /// GET `path` (under the prefix).
    pub async fn get(&mut self, path: &str) -> Page {
        let url = format!("{}{path}", self.base);
        self.answer(self.http.get(url)).await
    }

    /// POST `form` to `path`.
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let url = format!("{}{path}", self.base);
        self.answer(self.http.post(url).form(form)).await
    }

    /// Signs in with `secret` through the sign-in page's form.
    pub async fn sign_in(&mut self, secret: &str) -> Page {
        let form = self.get("/sign-in").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let token = form.field("form_token");
        self.post("/sign-in", &[("token", secret), ("form_token", &token)])
            .await
    }

    /// Signs in and expects it to work.
    pub async fn signed_in(addr: SocketAddr, secret: &str) -> ConsoleClient {
        let mut console = ConsoleClient::new(addr);
        let answer = console.sign_in(secret).await;
        assert_eq!(answer.status, 303, "{}", answer.body);
        assert_eq!(answer.location(), "/console/");
        console
    }

    /// The CSRF token of this session, read off the overview.
    pub async fn csrf(&mut self) -> String {
        let page = self.get("/").await;
        assert_eq!(page.status, 200, "{} {}", page.location(), page.body);
        page.field("csrf")
    }

    /// The session's cookie value, if any.
    pub fn session(&self) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(k, _)| k == "sts_console")
            .map(|(_, v)| v.as_str())
    }
}
