//! `--skip-ssl`: a TLS connector that encrypts but accepts any server
//! certificate. tonic keeps its custom-verifier hook private, so this does
//! the TCP connect and the rustls handshake itself and hands tonic the stream.
//!
//! The handshake signatures are still checked (a peer must hold the key of
//! the certificate it shows); only the certificate's chain, name and dates
//! are not. That is no authentication at all, which is why it is a flag for
//! tests and never a default.

use std::{future::Future, io, pin::Pin, sync::Arc};

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{
        self, DigitallySignedStruct, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{CryptoProvider, ring},
        pki_types::{CertificateDer, ServerName, UnixTime},
    },
};

type TlsConnection = TokioIo<TlsStream<TcpStream>>;
type Connecting = Pin<Box<dyn Future<Output = io::Result<TlsConnection>> + Send>>;

/// Connects to the URI's host and port and completes a TLS handshake that
/// offers only HTTP/2, as gRPC needs.
pub fn connector()
-> impl tower::Service<Uri, Response = TlsConnection, Error = io::Error, Future = Connecting> + Clone
{
    let provider = Arc::new(ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tls = TlsConnector::from(Arc::new(config));
    tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        Box::pin(async move {
            let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_owned());
            let host = uri.host().ok_or_else(|| invalid("the URL has no host"))?;
            let port = uri.port_u16().unwrap_or(443);
            // An IPv6 literal comes bracketed in a URI, not in a socket address.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| invalid("the URL's host is not a valid TLS server name"))?;
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tls.connect(name, tcp).await?))
        }) as Connecting
    })
}

/// Whether a TLS server answers at `origin` (`http://host:port`): a
/// handshake that completes within a few seconds, certificate unchecked
/// (this only tells the user which scheme to use; nothing is sent).
pub async fn speaks_tls(origin: &str) -> bool {
    use tower::ServiceExt as _;
    let Ok(uri) = origin.parse::<Uri>() else {
        return false;
    };
    let handshake = connector().oneshot(uri);
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(3), handshake).await,
        Ok(Ok(_))
    )
}

/// Accepts every certificate; verifies handshake signatures with `0`.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
