//! TLS for target tests: a throwaway CA with a server certificate for `127.0.0.1` and
//! `localhost` (rcgen), and a throwaway `redis-server` that speaks TLS only (`--port 0
//! --tls-port`) with a password on its default user. Stopped when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A CA and a server certificate it signed, all PEM.
pub struct ServerCerts {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A fresh CA (its own key) and a server certificate for `127.0.0.1`, `::1` and `localhost`.
pub fn server_certs() -> ServerCerts {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mayfly test target CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    ServerCerts {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A `redis-server` on a free loopback port that accepts TLS only, with `password` on the
/// default user (so the admin `AUTH` carries a secret).
pub struct RedisTls {
    pub port: u16,
    pub password: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisTls {
    pub async fn start(certs: &ServerCerts) -> RedisTls {
        let dir = tempfile::Builder::new()
            .prefix("mayfly-redis-tls-")
            .tempdir()
            .unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = write("server.crt", &certs.cert_pem);
        let key = write("server.key", &certs.key_pem);
        let ca = write("ca.crt", &certs.ca_pem);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let password = format!("admin-{}", uuid::Uuid::now_v7().simple());
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &path(&cert)])
            .args(["--tls-key-file", &path(&key)])
            .args(["--tls-ca-cert-file", &path(&ca)])
            .args(["--tls-auth-clients", "no"])
            .args(["--requirepass", &password])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &path(dir.path())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server (with TLS) did not start: {e}"));
        let server = RedisTls {
            port,
            password,
            child,
            _dir: dir,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not listen on {port}");
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
