//! Raw HTTP/1.1 on a socket: reading an answer's head, seeing the server
//! close.

use std::time::Duration;

/// The head of an HTTP/1.1 answer read from `stream`, up to and with the
/// blank line, as text; panics if the server closes mid-head.
pub async fn read_http1_head(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    while !received.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "closed mid-answer: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.push(byte[0]);
    }
    String::from_utf8(received).unwrap()
}

/// Waits (up to 20 s) until the server closes `stream`: a read sees the end
/// or a reset. `false` if it is still open by then.
pub async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 256];
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}
