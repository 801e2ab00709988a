//! TLS for tests: a CA and a certificate it signed (`TestCertificate`),
//! a server serving it and a channel trusting it.

use std::net::SocketAddr;

use sts::config::{ServerConfig, ServiceConfig, TlsIdentity};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use super::app::{TestApp, server_config, spawn_app_with};

/// A gRPC channel over TLS to `https://localhost:PORT`, trusting `ca_pem`.
pub async fn tls_channel(addr: SocketAddr, ca_pem: &str) -> Channel {
    Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A test CA and a certificate it signed for `localhost` and `127.0.0.1`.
pub struct TestCertificate {
    pub ca_pem: String,
    pub identity: TlsIdentity,
}

impl TestCertificate {
    pub fn generate() -> TestCertificate {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &Issuer::new(ca_params, ca_key))
            .unwrap();
        TestCertificate {
            ca_pem: ca_cert.pem(),
            identity: TlsIdentity {
                cert_pem: leaf.pem().into_bytes(),
                key_pem: leaf_key.serialize_pem().into_bytes(),
            },
        }
    }

    /// One certificate for the whole suite: key generation is not free.
    pub fn shared() -> &'static TestCertificate {
        static SHARED: std::sync::OnceLock<TestCertificate> = std::sync::OnceLock::new();
        SHARED.get_or_init(TestCertificate::generate)
    }
}

/// A server serving TLS with [`TestCertificate::shared`]; its client trusts it.
pub async fn spawn_tls_app() -> TestApp {
    let server = ServerConfig {
        tls: Some(TestCertificate::shared().identity.clone()),
        ..server_config()
    };
    spawn_app_with(ServiceConfig::default(), server).await
}
