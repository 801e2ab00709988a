//! Accepting connections so that hostile or broken peers cost little: each
//! takes a place in the connection table first (`connections`: closed at
//! once past the bounds), TLS handshakes run concurrently and under a
//! deadline, a new connection must send its first byte (of application
//! data, with TLS) within a deadline, and running out of file descriptors
//! pauses accepting instead of spinning.
//!
//! Why by hand: tonic's `TcpIncoming` hands accept errors to a loop that
//! retries at once, so `EMFILE` (every descriptor held, perhaps by idle
//! peers) would burn a core until one frees up; neither tonic nor hyper
//! closes a connection that never says anything (hyper's automatic HTTP/1 vs
//! HTTP/2 detection waits for the first bytes with no timer); and tonic's
//! TLS offers only `h2` in ALPN, so an HTTP/1.1 client that offers
//! `http/1.1` (Python's, curl's with `--http1.1`) fails the handshake.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::{Instant, Sleep},
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        crypto::ring,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
    server::TlsStream,
};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::{
    config::TlsIdentity,
    connections::{Admitted, Connections, Slot},
    error::ServeError,
};

/// How long accepting pauses after the process ran out of descriptors.
const OUT_OF_DESCRIPTORS_PAUSE: Duration = Duration::from_millis(100);

/// A rustls acceptor for `identity` offering HTTP/2 and HTTP/1.1.
pub fn tls_acceptor(identity: &TlsIdentity) -> Result<TlsAcceptor, ServeError> {
    let chain = CertificateDer::pem_slice_iter(&identity.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Tls(e.into()))?;
    if chain.is_empty() {
        return Err(ServeError::Tls(
            "no PEM certificate in the certificate file".into(),
        ));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&identity.key_pem).map_err(|e| ServeError::Tls(e.into()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.into()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| ServeError::Tls(e.into()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How new connections are vetted; see the module docs.
#[derive(Clone)]
pub struct Limits {
    pub first_byte_timeout: Duration,
    pub tls_handshake_timeout: Duration,
}

/// The listeners (one per bound address) as one stream of connections for
/// tonic.
pub struct Incoming {
    listeners: Vec<TcpListener>,
    /// Where the next accept starts, so no listener starves the others.
    next: usize,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    connections: Arc<Connections>,
    handshakes: JoinSet<io::Result<Connection>>,
    paused: Option<Pin<Box<Sleep>>>,
    /// Out of descriptors since the last accept that worked: warn once per
    /// episode, not once per attempt.
    starved: bool,
}

impl Incoming {
    pub fn new(
        listeners: Vec<TcpListener>,
        limits: Limits,
        tls: Option<TlsAcceptor>,
        connections: Arc<Connections>,
    ) -> Incoming {
        Incoming {
            listeners,
            next: 0,
            limits,
            tls,
            connections,
            handshakes: JoinSet::new(),
            paused: None,
            starved: false,
        }
    }

    /// The first connection any listener has ready, trying them in turn.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        let count = self.listeners.len();
        for offset in 0..count {
            let at = (self.next + offset) % count;
            if let Poll::Ready(accepted) = self.listeners[at].poll_accept(cx) {
                self.next = (at + 1) % count;
                return Poll::Ready(accepted.map(|(stream, _)| stream));
            }
        }
        Poll::Pending
    }

    /// Starts a handshake on its own task, so a slow one holds up no one.
    fn handshake(&mut self, acceptor: TlsAcceptor, stream: TcpStream, admitted: Admitted) {
        let limits = self.limits.clone();
        self.handshakes.spawn(async move {
            let tls = tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok(Connection::new(
                Io::Tls(Box::new(tls)),
                limits.first_byte_timeout,
                admitted,
            ))
        });
    }
}

impl Stream for Incoming {
    type Item = io::Result<Connection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Ok(connection)))) => return Poll::Ready(Some(Ok(connection))),
                Poll::Ready(Some(Ok(Err(e)))) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    continue;
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "TLS handshake task failed");
                    continue;
                }
                Poll::Ready(None) | Poll::Pending => {}
            }
            if let Some(pause) = &mut self.paused {
                ready!(pause.as_mut().poll(cx));
                self.paused = None;
            }
            match ready!(self.poll_accept(cx)) {
                Ok(stream) => {
                    if self.starved {
                        self.starved = false;
                        tracing::info!("accepting connections again");
                    }
                    // Past the bounds: closed before a byte is read (the
                    // table counts and summarizes the refusals).
                    let peer = stream.peer_addr().ok().map(|a| a.ip());
                    let Ok(admitted) = self.connections.admit(peer) else {
                        continue;
                    };
                    // Small request/response messages: do not wait to fill segments.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    match self.tls.clone() {
                        Some(acceptor) => self.handshake(acceptor, stream, admitted),
                        None => {
                            let connection = Connection::new(
                                Io::Plain(stream),
                                self.limits.first_byte_timeout,
                                admitted,
                            );
                            return Poll::Ready(Some(Ok(connection)));
                        }
                    }
                }
                Err(e) if out_of_descriptors(&e) => {
                    if !self.starved {
                        self.starved = true;
                        tracing::warn!(error = %e, "cannot accept connections: out of file descriptors; retrying every {OUT_OF_DESCRIPTORS_PAUSE:?}");
                    }
                    tracing::debug!("accept paused: out of file descriptors");
                    self.paused = Some(Box::pin(tokio::time::sleep(OUT_OF_DESCRIPTORS_PAUSE)));
                }
                // A peer that gave up between SYN and accept, and the like:
                // that connection's problem, not the listener's.
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    use rustix::io::Errno;
    // The process's limit and the system's.
    matches!(Errno::from_io_error(e), Some(Errno::MFILE | Errno::NFILE))
}

/// An accepted connection, plain or TLS, that fails its first read if the
/// peer has sent nothing by the deadline; after the first byte it is a plain
/// byte stream.
pub struct Connection {
    stream: Io,
    first_byte: Option<Pin<Box<Sleep>>>,
    /// Bytes [`Connection::speaks_http2`] read, handed out again first.
    replay: BytesMut,
    /// Its place in the connection table, given back when it drops.
    admitted: Admitted,
}

/// How an HTTP/2 client with prior knowledge opens (RFC 9113, 3.4); no
/// HTTP/1 request starts with it.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection {
    fn new(stream: Io, first_byte_timeout: Duration, admitted: Admitted) -> Connection {
        let deadline = Instant::now() + first_byte_timeout;
        Connection {
            stream,
            first_byte: Some(Box::pin(tokio::time::sleep_until(deadline))),
            replay: BytesMut::new(),
            admitted,
        }
    }

    /// The table this connection has its place in.
    pub fn table(&self) -> &Arc<Connections> {
        self.admitted.table()
    }

    /// What the connection table knows of this connection: its requests in
    /// flight, and whether it was asked to make room.
    pub fn slot(&self) -> &Arc<Slot> {
        self.admitted.slot()
    }

    /// Whether the peer opens with HTTP/2's preface: reads only as far as
    /// that is decided (the first byte, for any HTTP/1 request), and the
    /// bytes read are read again by whoever reads next. An HTTP/2 client
    /// over TLS opens with the preface too, whatever ALPN said.
    pub async fn speaks_http2(&mut self) -> io::Result<bool> {
        while self.replay.len() < HTTP2_PREFACE.len() {
            if !HTTP2_PREFACE.starts_with(&self.replay) {
                return Ok(false);
            }
            let mut chunk = [0u8; 24];
            let mut buf = ReadBuf::new(&mut chunk);
            std::future::poll_fn(|cx| self.poll_read_stream(cx, &mut buf)).await?;
            if buf.filled().is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.replay.extend_from_slice(buf.filled());
        }
        Ok(self.replay.starts_with(HTTP2_PREFACE))
    }

    /// A read from the stream itself, under the first-byte deadline.
    fn poll_read_stream(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.first_byte = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = self
                    .first_byte
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing after connecting",
                    )));
                }
                Poll::Pending
            }
            failed => failed,
        }
    }
}

/// Forwards one `AsyncRead`/`AsyncWrite` method call to whichever stream `$io` is.
macro_rules! forward {
    ($io:expr, $stream:ident => $call:expr) => {
        match $io {
            Io::Plain($stream) => $call,
            Io::Tls($stream) => $call,
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        forward!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        forward!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        forward!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        forward!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay.split_to(n));
            return Poll::Ready(Ok(()));
        }
        self.poll_read_stream(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match &self.stream {
            Io::Plain(stream) => stream.connect_info(),
            Io::Tls(stream) => stream.get_ref().0.connect_info(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    use super::*;

    async fn accept_one(timeout: Duration) -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let limits = Limits {
            first_byte_timeout: timeout,
            tls_handshake_timeout: timeout,
        };
        let connections = Connections::new(
            crate::connections::ConnectionLimits::UNBOUNDED,
            Default::default(),
            Arc::new(crate::metrics::Metrics::with(|_| {})),
        );
        let mut incoming = Incoming::new(vec![listener], limits, None, connections);
        let client = TcpStream::connect(address).await.unwrap();
        let connection = incoming.next().await.unwrap().unwrap();
        (connection, client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_fails_its_first_read_at_the_deadline() {
        let (mut connection, _client) = accept_one(Duration::from_secs(10)).await;
        let started = Instant::now();
        let error = connection.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_first_byte_the_deadline_is_gone() {
        let (mut connection, mut client) = accept_one(Duration::from_secs(10)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(connection.read(&mut [0; 8]).await.unwrap(), 1);
        // Idle far past the deadline, then talk again: still open.
        let late = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            client.write_all(b"y").await.unwrap();
        };
        let mut buffer = [0; 8];
        let (read, ()) = tokio::join!(connection.read(&mut buffer), late);
        assert_eq!(read.unwrap(), 1);
        assert_eq!(&buffer[..1], b"y");
    }

    #[test]
    fn descriptor_exhaustion_is_recognised() {
        use rustix::io::Errno;
        for errno in [Errno::MFILE, Errno::NFILE] {
            assert!(out_of_descriptors(&errno.into()));
        }
        assert!(!out_of_descriptors(&Errno::CONNRESET.into()));
        assert!(!out_of_descriptors(&io::Error::other("not an OS error")));
    }
}
