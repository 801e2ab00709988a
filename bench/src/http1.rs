//! A minimal HTTP/1.1 keep-alive client for the paced (open-loop) load:
//! one pre-encoded request written again and again on each connection,
//! answers read with `httparse`. hyper's client (request and header map
//! built per call, a task driving each connection) took more than the load
//! generator's core at half of nginx's rate, so the latencies it reported
//! were its own queueing.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Room for an answer's head and a small body, read in one go.
const BUFFER_BYTES: usize = 16 * 1024;

/// One keep-alive connection sending the same request.
pub struct Connection {
    stream: TcpStream,
    request: std::sync::Arc<[u8]>,
    buffer: Vec<u8>,
}

/// `GET path` to `target` with the given headers, as bytes on the wire.
pub fn get_request(target: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: {target}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

impl Connection {
    pub async fn open(target: SocketAddr, request: std::sync::Arc<[u8]>) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(target)
            .await
            .with_context(|| format!("cannot connect to {target}"))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            request,
            buffer: Vec::with_capacity(BUFFER_BYTES),
        })
    }

    /// Sends the request and reads its whole answer: its status, or an
    /// error when the connection fails or the answer cannot be read.
    pub async fn send(&mut self) -> anyhow::Result<u16> {
        self.stream.write_all(&self.request).await?;
        self.buffer.clear();
        loop {
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                anyhow::bail!("the server closed the connection");
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(head) = response.parse(&self.buffer)? else {
                continue;
            };
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| {
                    std::str::from_utf8(h.value)?
                        .trim()
                        .parse::<usize>()
                        .map_err(anyhow::Error::from)
                })
                .transpose()?
                .context("an answer without content-length")?;
            let status = response.code.context("an answer without a status")?;
            while self.buffer.len() < head + length {
                if self.stream.read_buf(&mut self.buffer).await? == 0 {
                    anyhow::bail!("the server closed the connection mid-answer");
                }
            }
            return Ok(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers each request with `answer`, written in pieces
    /// of `piece` bytes, so reads see heads and bodies cut anywhere.
    async fn server(answer: &'static [u8], piece: usize) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            let mut request = [0u8; 1024];
            while stream.read(&mut request).await.unwrap_or(0) > 0 {
                for chunk in answer.chunks(piece) {
                    stream.write_all(chunk).await.unwrap();
                    stream.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        address
    }

    #[tokio::test]
    async fn answers_are_read_whole_however_they_arrive() {
        const ANSWER: &[u8] = b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\nContent-Length: 11\r\n\r\n{\"e\":\"no\"}!";
        for piece in [1, 7, ANSWER.len()] {
            let target = server(ANSWER, piece).await;
            let request = get_request(target, "/api/auth", &[("x-api-key", "k")]);
            let mut connection = Connection::open(target, request.into()).await.unwrap();
            for _ in 0..3 {
                assert_eq!(connection.send().await.unwrap(), 403, "pieces of {piece}");
            }
        }
    }

    #[tokio::test]
    async fn an_answer_without_a_length_or_a_closed_connection_is_an_error() {
        let target = server(b"HTTP/1.1 200 OK\r\n\r\n", 64).await;
        let request = get_request(target, "/", &[]);
        let mut connection = Connection::open(target, request.into()).await.unwrap();
        assert!(connection.send().await.is_err());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        tokio::spawn(async move { drop(listener.accept().await.unwrap()) });
        let request = get_request(target, "/", &[]);
        let mut connection = Connection::open(target, request.into()).await.unwrap();
        assert!(connection.send().await.is_err());
    }

    #[test]
    fn the_request_is_http_1_1_with_host_and_headers() {
        let target: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let request = get_request(target, "/api/server/status", &[("x-api-key", "t")]);
        assert_eq!(
            request,
            b"GET /api/server/status HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nx-api-key: t\r\n\r\n"
        );
    }
}
