//! HTTPS: the broker serves TLS from a configured certificate, and refuses plain HTTP anywhere
//! but loopback.

use mayfly_server::{Config, TlsFiles};

#[tokio::test]
async fn serves_https_from_a_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();

    let mut config = Config::new(format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("mayfly.db").display()
    ));
    config.tls = Some(TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mayfly_server::run(listener, config, async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let response = client
        .get(format!("https://localhost:{port}/v1/sys/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let health: serde_json::Value = response.json().await.unwrap();
    assert_eq!(health["initialized"], false);

    // A client that does not trust the certificate is refused by its own TLS check.
    let untrusting = reqwest::Client::new();
    assert!(
        untrusting
            .get(format!("https://localhost:{port}/v1/sys/health"))
            .send()
            .await
            .is_err()
    );
    // Plain HTTP to the TLS port gets no answer.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/v1/sys/health"))
            .await
            .is_err()
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn plain_http_is_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("mayfly.db").display()
    ));
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let error = mayfly_server::run(listener, config, std::future::pending())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("refusing plain HTTP"), "{error}");
}
