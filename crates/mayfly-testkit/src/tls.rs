//! A real TLS service for tests (rustls) that requires a client certificate signed by a given CA
//! and, optionally, not listed in a given CRL; and a client that presents a certificate to it.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Answers `pong` to `ping` from a client whose certificate the CA signed, that has not expired
/// (by this machine's clock) and that the CRL does not list. Stops when dropped.
pub struct ClientAuthService {
    pub port: u16,
    certificate: CertificateDer<'static>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ClientAuthService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the service on a free loopback port.
pub async fn service(ca_pem: &str, crl_pem: Option<&str>) -> ClientAuthService {
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if let Some(crl) = crl_pem {
        verifier = verifier.with_crls(vec![
            CertificateRevocationListDer::from_pem_slice(crl.as_bytes()).unwrap(),
        ]);
    }
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier.build().unwrap())
        .with_single_cert(
            vec![certificate.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let mut buf = [0u8; 4];
                    if tls.read_exact(&mut buf).await.is_ok() && &buf == b"ping" {
                        let _ = tls.write_all(b"pong").await;
                        let _ = tls.shutdown().await;
                    }
                }
            });
        }
    });
    ClientAuthService {
        port,
        certificate: certificate.der().clone(),
        task,
    }
}

/// Connects with a client certificate (PEM chain) and its key; `Ok` if the service answered,
/// else the refusal.
pub async fn call(
    service: &ClientAuthService,
    certificate_pem: &str,
    key_pem: &str,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(service.certificate.clone()).unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", service.port))
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    if answer == b"pong" {
        Ok(())
    } else {
        Err(format!("the service did not answer (got {answer:?})"))
    }
}
