//! The `mayfly` binary end to end: `mayfly dev` starts in one command and prints how to log in;
//! a real `mayfly server` is initialized, unsealed and set up through the CLI; `audit verify`
//! checks a sink file offline and names the event that was tampered with.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests: a failed step should stop the test loudly"
)]

mod audit_head;
mod behaves;
mod chaos;
mod proxy_logs;
mod rotate_admin;
mod rotate_signing_key;
mod secrets;
mod sso;
mod status_cluster;
mod step_up;
mod token_exchange;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mayfly_server::clock::{Clock, SystemClock};

fn mayfly() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mayfly"));
    command
        .env_remove("MAYFLY_TOKEN")
        .env_remove("MAYFLY_ADDR")
        .env("MAYFLY_LOG", "warn");
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[expect(
    clippy::disallowed_methods,
    reason = "a synchronous test polling a child process"
)]
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(90) {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn dev_starts_in_one_command_and_its_audit_file_verifies_offline() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = mayfly()
        .args(["dev", "--addr", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _running = Running(child);
    let mut printed = String::new();
    let mut export = None;
    for line in BufReader::new(out).lines() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("export MAYFLY_ADDR=") {
            export = Some(line);
            break;
        }
    }
    let export = export.unwrap_or_else(|| panic!("no export line in:\n{printed}"));
    assert!(printed.contains("DEVELOPMENT MODE"), "{printed}");
    assert!(
        printed.contains("User alice") && printed.contains("User bob"),
        "{printed}"
    );
    let addr = export
        .split_whitespace()
        .find_map(|w| w.strip_prefix("MAYFLY_ADDR="))
        .unwrap()
        .to_owned();
    let token = export
        .split_whitespace()
        .find_map(|w| w.strip_prefix("MAYFLY_TOKEN="))
        .unwrap()
        .to_owned();
    assert_eq!(addr, format!("http://127.0.0.1:{port}"));

    let lookup = run(mayfly()
        .args(["token", "lookup", "--json"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN", &token));
    assert!(lookup.status.success(), "{lookup:?}");
    let info: serde_json::Value = serde_json::from_slice(&lookup.stdout).unwrap();
    assert_eq!(info["principal"]["name"], "admin");
    assert_eq!(info["principal"]["groups"], serde_json::json!(["admins"]));

    // Without a token: a clear error with a hint.
    let refused = run(mayfly()
        .args(["user", "list"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN_FILE", data.path().join("none")));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("mayfly login"),
        "{stderr}"
    );

    let verify = run(mayfly()
        .args(["audit", "verify"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN", &token));
    assert!(verify.status.success(), "{verify:?}");
    assert!(
        stdout(&verify).contains("audit log intact"),
        "{}",
        stdout(&verify)
    );

    let key = run(mayfly()
        .args(["audit", "public-key"])
        .env("MAYFLY_ADDR", &addr));
    let key = stdout(&key).trim().to_owned();
    assert_eq!(key.len(), 44, "{key}");

    // The sink file catches up with the store (the verify above signed a checkpoint).
    let file = data.path().join("audit.jsonl");
    let export_file = data.path().join("export.jsonl");
    let exported = run(mayfly()
        .args(["audit", "export", "--output"])
        .arg(&export_file)
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN", &token));
    assert!(exported.status.success(), "{exported:?}");
    let n_exported = std::fs::read_to_string(&export_file)
        .unwrap()
        .lines()
        .count();
    wait_until("the sink file", || {
        std::fs::read_to_string(&file)
            .map(|t| t.lines().count() >= n_exported)
            .unwrap_or(false)
    });
    let ok = run(mayfly()
        .args(["audit", "verify", "--public-key", &key, "--file"])
        .arg(&file));
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("audit file intact"), "{}", stdout(&ok));

    // Tamper with a copy: edit, delete, swap.
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let tampered = data.path().join("tampered.jsonl");
    let check = |lines: &[String], expect: &str| {
        std::fs::write(&tampered, format!("{}\n", lines.join("\n"))).unwrap();
        let output = run(mayfly().args(["audit", "verify", "--file"]).arg(&tampered));
        assert_eq!(output.status.code(), Some(4), "{}", stdout(&output));
        assert!(
            stdout(&output).contains(expect),
            "expected `{expect}` in {}",
            stdout(&output)
        );
    };
    let mut edited = lines.clone();
    edited[2] = edited[2].replacen("\"kind\":\"user.create\"", "\"kind\":\"user.created\"", 1);
    assert_ne!(edited[2], lines[2]);
    check(&edited, "event 3 was edited");
    let mut deleted = lines.clone();
    deleted.remove(1);
    check(&deleted, "expected event 2");
    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    check(&swapped, "expected event 4");
}

fn password_file(dir: &Path, password: &str) -> std::path::PathBuf {
    let path = dir.join("password");
    std::fs::write(&path, password).unwrap();
    path
}

#[test]
fn a_server_is_initialized_unsealed_and_set_up_through_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let store = format!(
        "sqlite://{}?mode=rwc",
        data.path().join("mayfly.db").display()
    );
    let child = mayfly()
        .args([
            "server",
            "--store",
            &store,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _running = Running(child);
    wait_until("the server", || {
        run(mayfly().args(["status"]).env("MAYFLY_ADDR", &addr))
            .status
            .success()
    });

    let init = run(mayfly()
        .args([
            "operator",
            "init",
            "--shares",
            "5",
            "--threshold",
            "3",
            "--json",
        ])
        .env("MAYFLY_ADDR", &addr));
    assert!(init.status.success(), "{init:?}");
    let init: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
    let shares: Vec<String> = init["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();

    // Sealed: work is refused with a hint.
    let sealed = run(mayfly()
        .args(["user", "list"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN", "mft_x"));
    assert!(
        String::from_utf8_lossy(&sealed.stderr).contains("mayfly operator unseal"),
        "{sealed:?}"
    );

    for (i, share) in shares.iter().take(3).enumerate() {
        let output = run(mayfly()
            .args(["operator", "unseal", share])
            .env("MAYFLY_ADDR", &addr));
        assert!(output.status.success(), "{output:?}");
        let expect = if i < 2 {
            format!("{} of 3", i + 1)
        } else {
            "unsealed".to_owned()
        };
        assert!(stdout(&output).contains(&expect), "{}", stdout(&output));
    }

    let password = password_file(data.path(), "correct horse battery staple");
    let setup = run(mayfly()
        .args([
            "operator",
            "setup",
            "--code",
            init["setup_code"].as_str().unwrap(),
            "--username",
            "root",
            "--json",
            "--password-file",
        ])
        .arg(&password)
        .env("MAYFLY_ADDR", &addr));
    assert!(setup.status.success(), "{setup:?}");
    let user: serde_json::Value = serde_json::from_slice(&setup.stdout).unwrap();
    let secret = user["totp"]["secret_base32"].as_str().unwrap();

    let token_file = data.path().join("token");
    let code = mayfly_testkit::totp_code(secret, SystemClock.now().unix_secs());
    let login = run(mayfly()
        .args(["login", "root", "--totp", &code, "--password-file"])
        .arg(&password)
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN_FILE", &token_file));
    assert!(login.status.success(), "{login:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let lookup = run(mayfly()
        .args(["token", "lookup"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN_FILE", &token_file));
    assert!(stdout(&lookup).contains("user:root"), "{lookup:?}");
    let revoke = run(mayfly()
        .args(["token", "revoke"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN_FILE", &token_file));
    assert!(revoke.status.success(), "{revoke:?}");
    assert!(!token_file.exists());

    // `logout --everywhere` ends the user's sessions and forgets the token file; a copy of the
    // token is refused afterwards. (The next TOTP step: the last one was used.)
    let code = mayfly_testkit::totp_code(secret, SystemClock.now().unix_secs() + 30);
    let login = run(mayfly()
        .args(["login", "root", "--totp", &code, "--password-file"])
        .arg(&password)
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN_FILE", &token_file));
    assert!(login.status.success(), "{login:?}");
    let copy = std::fs::read_to_string(&token_file).unwrap();
    let logout = run(mayfly()
        .args(["logout", "--everywhere"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN_FILE", &token_file));
    assert!(logout.status.success(), "{logout:?}");
    assert!(stdout(&logout).contains("everywhere"), "{logout:?}");
    assert!(!token_file.exists());
    let lookup = run(mayfly()
        .args(["token", "lookup"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN", copy.trim()));
    assert!(!lookup.status.success(), "{lookup:?}");
}

/// Starts `mayfly dev`, returns it with its address and admin token.
fn start_dev(data: &Path) -> (Running, String, String) {
    let port = free_port();
    let mut child = mayfly()
        .args(["dev", "--addr", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let running = Running(child);
    for line in BufReader::new(out).lines() {
        let line = line.unwrap();
        if line.starts_with("export MAYFLY_ADDR=") {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("MAYFLY_ADDR="))
                .unwrap()
                .to_owned();
            let token = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("MAYFLY_TOKEN="))
                .unwrap()
                .to_owned();
            return (running, addr, token);
        }
    }
    panic!("mayfly dev printed no export line");
}

#[test]
fn exec_runs_a_command_with_a_credential_and_revokes_it_after() {
    let cluster = mayfly_testkit::pgcluster::PgCluster::start();
    let data = tempfile::tempdir().unwrap();
    let (_running, addr, token) = start_dev(data.path());
    let with = |command: &mut Command| -> Output {
        run(command
            .env("MAYFLY_ADDR", &addr)
            .env("MAYFLY_TOKEN", &token))
    };

    let password = data.path().join("admin-password");
    std::fs::write(&password, &cluster.admin_password).unwrap();
    let url = format!("postgres://127.0.0.1:{}/postgres", cluster.port);
    let added = with(
        mayfly()
            .args([
                "target",
                "add",
                "postgres",
                "pg",
                "--url",
                &url,
                "--admin-user",
                "postgres",
                "--admin-password-file",
            ])
            .arg(&password),
    );
    assert!(added.status.success(), "{added:?}");
    let sql = data.path().join("create.sql");
    std::fs::write(
        &sql,
        "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};",
    )
    .unwrap();
    let role = with(
        mayfly()
            .args([
                "role",
                "add",
                "pg/readonly",
                "--max-ttl",
                "1h",
                "--creation-sql",
            ])
            .arg(&sql),
    );
    assert!(role.status.success(), "{role:?}");

    // A policy that does not validate is refused with Cedar's diagnostics.
    let bad = data.path().join("bad.cedar");
    std::fs::write(
        &bad,
        "permit (principal, action == Action::\"request\", resource) when { context.colour == 1 };",
    )
    .unwrap();
    let refused = with(mayfly().args(["policy", "put"]).arg(&bad));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("colour"),
        "{refused:?}"
    );
    let policy = data.path().join("policy.cedar");
    std::fs::write(&policy, "@id(\"admins\") permit (principal in Group::\"admins\", action == Action::\"request\", resource in Target::\"pg\");").unwrap();
    let put = with(mayfly().args(["policy", "put"]).arg(&policy));
    assert!(put.status.success(), "{put:?}");

    // The command sees the credential; it writes what it got so the test can try it afterwards.
    let seen = data.path().join("seen");
    let script = format!(
        "echo \"$PGUSER $PGPASSWORD $PGHOST $PGPORT $PGDATABASE\" > {}",
        seen.display()
    );
    let exec = with(mayfly().args([
        "exec",
        "pg/readonly",
        "--ttl",
        "10m",
        "--reason",
        "cli test",
        "--",
        "sh",
        "-c",
        &script,
    ]));
    assert!(exec.status.success(), "{exec:?}");
    let seen = std::fs::read_to_string(&seen).unwrap();
    let parts: Vec<&str> = seen.split_whitespace().collect();
    assert!(parts[0].starts_with("mf_"), "{seen}");
    assert_eq!(
        parts[2..],
        ["127.0.0.1", &cluster.port.to_string(), "postgres"]
    );

    // Revoked after the command, and proven.
    wait_until("the grant to be verified", || {
        let grants = with(mayfly().args(["grants", "--all", "--json"]));
        let grants: serde_json::Value = serde_json::from_slice(&grants.stdout).unwrap_or_default();
        grants
            .as_array()
            .map(|g| g.iter().any(|g| g["state"] == "verified"))
            .unwrap_or(false)
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let login = runtime.block_on(async {
        use sqlx::Connection;
        let options = sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(cluster.port)
            .database("postgres")
            .username(parts[0])
            .password(parts[1]);
        sqlx::PgConnection::connect_with(&options).await.map(|_| ())
    });
    assert!(login.is_err(), "the credential still works after exec");

    // Ctrl-C: the command is stopped and the grant revoked on the target, not left to its TTL.
    let seen = data.path().join("seen-interrupted");
    let script = format!(
        "echo \"$PGUSER $PGPASSWORD\" > {}.tmp && mv {0}.tmp {0}; exec sleep 60",
        seen.display()
    );
    let exec = mayfly()
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN", &token)
        .args([
            "exec",
            "pg/readonly",
            "--ttl",
            "10m",
            "--reason",
            "interrupted",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the command to start", || seen.exists());
    let seen = std::fs::read_to_string(&seen).unwrap();
    let parts: Vec<&str> = seen.split_whitespace().collect();
    let try_login = || {
        runtime.block_on(async {
            use sqlx::Connection;
            let options = sqlx::postgres::PgConnectOptions::new()
                .host("127.0.0.1")
                .port(cluster.port)
                .database("postgres")
                .username(parts[0])
                .password(parts[1]);
            sqlx::PgConnection::connect_with(&options).await.map(|_| ())
        })
    };
    assert!(
        try_login().is_ok(),
        "the credential works while the command runs"
    );
    let interrupt = run(Command::new("kill").args(["-INT", &exec.id().to_string()]));
    assert!(interrupt.status.success(), "{interrupt:?}");
    let finished = exec.wait_with_output().unwrap();
    assert_eq!(finished.status.code(), Some(130), "{finished:?}");
    assert!(
        String::from_utf8_lossy(&finished.stderr).contains("revoked"),
        "{finished:?}"
    );
    // Revoked at once (not at the TTL ten minutes away): the login is refused now.
    assert!(
        try_login().is_err(),
        "the credential still works after Ctrl-C"
    );
    let grants = with(mayfly().args(["grants", "--all", "--json"]));
    let grants: serde_json::Value = serde_json::from_slice(&grants.stdout).unwrap();
    let grant = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["login"] == parts[0])
        .cloned();
    assert!(
        grant.is_some_and(|g| g["state"] == "revoked" || g["state"] == "verified"),
        "{grants}"
    );
}

/// `mayfly dev` on a given port and data directory, as a child to be SIGKILLed.
fn start_dev_on(data: &Path, port: u16) -> (Child, String) {
    let mut child = mayfly()
        .args(["dev", "--addr", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    for line in BufReader::new(out).lines() {
        let line = line.unwrap();
        if line.starts_with("export MAYFLY_ADDR=") {
            let token = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("MAYFLY_TOKEN="))
                .unwrap()
                .to_owned();
            return (child, token);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("mayfly dev printed no export line");
}

/// Crash safety: 200 concurrent activations, SIGKILL in the middle, restart. Every role the broker
/// created on PostgreSQL is tracked or dropped — zero orphans — and all reach `verified`.
#[test]
fn kill_9_during_200_activations_leaves_no_orphan() {
    let cluster = mayfly_testkit::pgcluster::PgCluster::start();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let (mut child, token) = start_dev_on(data.path(), port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let call = move |method: reqwest::Method,
                     path: String,
                     token: String,
                     body: Option<serde_json::Value>| {
        let http = http.clone();
        let addr = addr.clone();
        async move {
            let mut request = http
                .request(method, format!("{addr}{path}"))
                .bearer_auth(token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            Ok::<_, String>((status, body))
        }
    };
    runtime.block_on(async {
        let post = reqwest::Method::POST;
        let url = format!("postgres://127.0.0.1:{}/postgres", cluster.port);
        let (status, body) = call(post.clone(), "/v1/targets".into(), token.clone(), Some(serde_json::json!({"kind": "postgres", "name": "pg", "url": url, "admin_user": "postgres", "admin_password": cluster.admin_password}))).await.unwrap();
        assert_eq!(status, 200, "{body}");
        let (status, body) = call(post.clone(), "/v1/roles".into(), token.clone(), Some(serde_json::json!({"target": "pg", "name": "ro", "max_ttl_seconds": 3600, "creation_sql": "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};"}))).await.unwrap();
        assert_eq!(status, 200, "{body}");
        let policy = "@id(\"admins\") permit (principal in Group::\"admins\", action == Action::\"request\", resource in Target::\"pg\");";
        let (status, body) = call(reqwest::Method::PUT, "/v1/policy".into(), token.clone(), Some(serde_json::json!({"text": policy}))).await.unwrap();
        assert_eq!(status, 200, "{body}");
    });

    // 200 activations at once; the server dies in the middle of them.
    let activated = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let call = call.clone();
            let token = token.clone();
            let activated = activated.clone();
            tasks.push(tokio::spawn(async move {
                let body = serde_json::json!({"target": "pg", "role": "ro", "ttl_seconds": 15, "reason": "crash test"});
                let Ok((200, request)) = call(reqwest::Method::POST, "/v1/requests".into(), token.clone(), Some(body)).await else {
                    return;
                };
                let id = request["id"].as_str().unwrap_or_default().to_owned();
                if let Ok((200, _)) = call(reqwest::Method::POST, format!("/v1/requests/{id}/activate"), token, None).await {
                    activated.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }));
        }
        // Kill -9 once some credentials exist and others are in flight.
        let started = Instant::now();
        while activated.load(std::sync::atomic::Ordering::SeqCst) < 20 && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        for task in tasks {
            let _ = task.await;
        }
    });
    let n_activated = activated.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (20..200).contains(&n_activated),
        "{n_activated} activations before the kill"
    );

    let admin_connection = || {
        let cluster = &cluster;
        async move {
            use sqlx::Connection;
            let options = sqlx::postgres::PgConnectOptions::new()
                .host("127.0.0.1")
                .port(cluster.port)
                .database("postgres")
                .username("postgres")
                .password(&cluster.admin_password);
            sqlx::PgConnection::connect_with(&options).await.unwrap()
        }
    };
    let roles_on_target = |runtime: &tokio::runtime::Runtime| -> Vec<String> {
        runtime.block_on(async {
            let mut admin = admin_connection().await;
            sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'mf\\_%'")
                .fetch_all(&mut admin)
                .await
                .unwrap()
        })
    };
    let before = roles_on_target(&runtime);
    assert!(
        before.len() >= n_activated,
        "{} roles for {n_activated} activations",
        before.len()
    );

    // Restart on the same data. Every role on the target must be tracked by a grant in the store.
    let (mut child, token) = start_dev_on(data.path(), port);
    let grants = runtime.block_on(async {
        let (_, grants) = call(
            reqwest::Method::GET,
            "/v1/grants?all=true".into(),
            token.clone(),
            None,
        )
        .await
        .unwrap();
        grants
    });
    let known: std::collections::HashSet<String> = grants
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["login"].as_str().unwrap().to_owned())
        .collect();
    for role in &before {
        assert!(
            known.contains(role),
            "role {role} on the target has no grant: an orphan"
        );
    }
    eprintln!(
        "crash test: {n_activated} activations answered before the kill, {} roles on the target, {} grants in the store",
        before.len(),
        known.len()
    );

    // After the TTL everything is revoked and proven; nothing is left on the target.
    wait_until("every grant to be verified", || {
        let grants = runtime.block_on(call(
            reqwest::Method::GET,
            "/v1/grants?all=true".into(),
            token.clone(),
            None,
        ));
        let Ok((_, grants)) = grants else {
            return false;
        };
        let grants = grants.as_array().cloned().unwrap_or_default();
        !grants.is_empty() && grants.iter().all(|g| g["state"] == "verified")
    });
    assert_eq!(roles_on_target(&runtime), Vec::<String>::new());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `mayfly ssh`: requests access, has a fresh key certified, runs the real ssh against a real sshd
/// that trusts `mayfly ssh ca web`, then revokes. Each session's remote command keeps a copy of its
/// fresh key and certificate (the host is this machine); after the revocations the same key and
/// certificate still log in while sshd has the old KRL, and are refused once it loads the KRL
/// `mayfly ssh krl web FILE` fetches from the broker (`/v1/ssh/krl?target=web`).
#[test]
fn ssh_logs_in_with_a_fresh_key_and_the_certificate_is_revoked_after() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let (_running, addr, token) = start_dev(data.path());
    let with = |command: &mut Command| -> Output {
        run(command
            .env("MAYFLY_ADDR", &addr)
            .env("MAYFLY_TOKEN", &token))
    };
    // Each target has its own CA, made when the target is added: the target first (put again
    // below with the host's port, which keeps its CA), then the host trusts that target's CA.
    let added = with(mayfly().args(["target", "add", "ssh", "web", "--url", "ssh://127.0.0.1:22"]));
    assert!(added.status.success(), "{added:?}");
    let ca = with(mayfly().args(["ssh", "ca", "web"]));
    assert!(ca.status.success(), "{ca:?}");
    let ca_line = stdout(&ca);
    assert!(ca_line.starts_with("ssh-ed25519 "), "{ca_line}");
    let krl = data.path().join("mayfly.krl");
    let fetched = with(mayfly().args(["ssh", "krl", "web"]).arg(&krl));
    assert!(fetched.status.success(), "{fetched:?}");
    let host = runtime.block_on(mayfly_testkit::sshd::start(
        &ca_line,
        &std::fs::read(&krl).unwrap(),
    ));
    let user = mayfly_testkit::sshd::whoami();

    let added = with(mayfly().args([
        "target",
        "add",
        "ssh",
        "web",
        "--url",
        &format!("ssh://127.0.0.1:{}", host.port),
    ]));
    assert!(added.status.success(), "{added:?}");
    // Certificate targets need no admin account (docs/targets/x509.md's command).
    let tls = with(mayfly().args([
        "target",
        "add",
        "x509",
        "api",
        "--url",
        "tls://127.0.0.1:8443",
    ]));
    assert!(tls.status.success(), "{tls:?}");
    // Its client CA and CRL, each the target's own.
    let tls_ca = with(mayfly().args(["x509", "ca", "api"]));
    assert!(tls_ca.status.success(), "{tls_ca:?}");
    assert!(
        stdout(&tls_ca).starts_with("-----BEGIN CERTIFICATE-----"),
        "{tls_ca:?}"
    );
    let crl = data.path().join("mayfly.crl.pem");
    let fetched = with(mayfly().args(["x509", "crl", "api"]).arg(&crl));
    assert!(fetched.status.success(), "{fetched:?}");
    let crl = std::fs::read_to_string(&crl).unwrap();
    assert!(crl.starts_with("-----BEGIN X509 CRL-----"), "{crl}");
    // Not another kind's: `web` has no client CA.
    let other = with(mayfly().args(["x509", "ca", "web"]));
    assert!(!other.status.success(), "{other:?}");
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("no X.509 target `web`"),
        "{other:?}"
    );
    let role = data.path().join("login.json");
    std::fs::write(&role, format!("{{\"principals\": [\"{user}\"]}}")).unwrap();
    let added = with(
        mayfly()
            .args([
                "role",
                "add",
                "web/login",
                "--max-ttl",
                "1h",
                "--creation-sql",
            ])
            .arg(&role),
    );
    assert!(added.status.success(), "{added:?}");
    let policy = data.path().join("policy.cedar");
    std::fs::write(&policy, "@id(\"ssh\") permit (principal in Group::\"admins\", action == Action::\"request\", resource == Role::\"web/login\");\n\
        @id(\"glass\") permit (principal in Group::\"admins\", action == Action::\"break_glass\", resource in Target::\"web\");\n\
        @id(\"root-needs-one\") @approvals(\"1\") permit (principal in Group::\"admins\", action == Action::\"request\", resource == Role::\"web/root\");\n\
        @id(\"approvers\") permit (principal in Group::\"approvers\", action == Action::\"approve\", resource in Target::\"web\");").unwrap();
    let put = with(mayfly().args(["policy", "put"]).arg(&policy));
    assert!(put.status.success(), "{put:?}");

    let login_kept = Kept::new(data.path(), "login");
    let session = with(mayfly().env("TMPDIR", login_kept.tmp()).args([
        "ssh",
        "web/login",
        &format!("{user}@127.0.0.1"),
        "--ttl",
        "10m",
        "--reason",
        "cli ssh test",
        "--ssh-option",
        "StrictHostKeyChecking=no",
        "--ssh-option",
        "UserKnownHostsFile=/dev/null",
        "--ssh-option",
        "BatchMode=yes",
        "--",
        "echo",
        "hello-from-host",
        "&&",
        &login_kept.copy_command(),
    ]));
    assert!(session.status.success(), "{session:?}");
    assert!(stdout(&session).contains("hello-from-host"), "{session:?}");
    let stderr = String::from_utf8_lossy(&session.stderr);
    assert!(stderr.contains("revoked"), "{stderr}");
    // The certificate was accepted (no fallback that was refused).
    assert!(!stderr.contains("Permission denied"), "{stderr}");
    login_kept.check_fresh_key_deleted();

    // Break-glass takes the long way (request, then activation with the key): it works too.
    let glass_kept = Kept::new(data.path(), "glass");
    let glass = with(mayfly().env("TMPDIR", glass_kept.tmp()).args([
        "ssh",
        "web/login",
        &format!("{user}@127.0.0.1"),
        "--ttl",
        "10m",
        "--reason",
        "cli break-glass test",
        "--break-glass",
        "--ssh-option",
        "StrictHostKeyChecking=no",
        "--ssh-option",
        "UserKnownHostsFile=/dev/null",
        "--ssh-option",
        "BatchMode=yes",
        "--",
        "echo",
        "hello-again",
        "&&",
        &glass_kept.copy_command(),
    ]));
    assert!(glass.status.success(), "{glass:?}");
    assert!(stdout(&glass).contains("hello-again"), "{glass:?}");
    glass_kept.check_fresh_key_deleted();

    // A role that needs an approval: the one call is answered 409, so `mayfly ssh` requests,
    // waits, and goes on once another person approves.
    let added = with(
        mayfly()
            .args([
                "role",
                "add",
                "web/root",
                "--max-ttl",
                "1h",
                "--creation-sql",
            ])
            .arg(&role),
    );
    assert!(added.status.success(), "{added:?}");
    let password = password_file(data.path(), "carol's long passphrase 42");
    let carol = with(
        mayfly()
            .args([
                "user",
                "add",
                "carol",
                "--group",
                "approvers",
                "--json",
                "--password-file",
            ])
            .arg(&password),
    );
    assert!(carol.status.success(), "{carol:?}");
    let carol: serde_json::Value = serde_json::from_slice(&carol.stdout).unwrap();
    let code = mayfly_testkit::totp_code(
        carol["totp"]["secret_base32"].as_str().unwrap(),
        SystemClock.now().unix_secs(),
    );
    let carol_token = data.path().join("carol-token");
    let login = run(mayfly()
        .args(["login", "carol", "--totp", &code, "--password-file"])
        .arg(&password)
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN_FILE", &carol_token));
    assert!(login.status.success(), "{login:?}");
    let as_carol = |command: &mut Command| -> Output {
        run(command
            .env("MAYFLY_ADDR", &addr)
            .env("MAYFLY_TOKEN_FILE", &carol_token))
    };
    let approved_kept = Kept::new(data.path(), "approved");
    let mut waiting = mayfly()
        .env("TMPDIR", approved_kept.tmp())
        .args([
            "ssh",
            "web/root",
            &format!("{user}@127.0.0.1"),
            "--ttl",
            "10m",
            "--reason",
            "cli approval test",
            "--ssh-option",
            "StrictHostKeyChecking=no",
            "--ssh-option",
            "UserKnownHostsFile=/dev/null",
            "--ssh-option",
            "BatchMode=yes",
            "--",
            "echo",
            "hello-approved",
            "&&",
            &approved_kept.copy_command(),
        ])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN", &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pending = String::new();
    wait_until("the request to show up as pending", || {
        if waiting.try_wait().unwrap().is_some() {
            // Ended early: its output below says why.
            return true;
        }
        let listed = as_carol(mayfly().args(["requests", "--pending", "--json"]));
        let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap_or_default();
        match listed.as_array().and_then(|all| all.first()) {
            Some(request) => {
                pending = request["id"].as_str().unwrap_or_default().to_owned();
                true
            }
            None => false,
        }
    });
    if pending.is_empty() {
        panic!("`mayfly ssh` ended early: {:?}", waiting.wait_with_output());
    }
    let approved = as_carol(mayfly().args(["approve", &pending]));
    assert!(approved.status.success(), "{approved:?}");
    let session = waiting.wait_with_output().unwrap();
    assert!(session.status.success(), "{session:?}");
    assert!(stdout(&session).contains("hello-approved"), "{session:?}");
    approved_kept.check_fresh_key_deleted();

    // The grants are revoked, and sshd refuses their certificates once it loads the broker's KRL.
    let grants = with(mayfly().args(["grants", "--all", "--json"]));
    let grants: serde_json::Value = serde_json::from_slice(&grants.stdout).unwrap();
    assert_eq!(grants.as_array().unwrap().len(), 3, "{grants}");
    assert!(
        grants
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["state"] != "active"),
        "{grants}"
    );
    let logins: Vec<&str> = grants
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["login"].as_str().unwrap())
        .collect();
    let kept = [&login_kept, &glass_kept, &approved_kept];
    for session in kept {
        // The kept certificate is one of the three grants' (its key id is the grant's login).
        let key_id = session.certificate_key_id();
        assert!(
            logins.contains(&key_id.as_str()),
            "{key_id} not in {logins:?}"
        );
        // Revoked at the broker but not yet on the host: with the old KRL it still logs in, so
        // what refuses it below is the KRL.
        let accepted =
            mayfly_testkit::sshd::login(&host, &session.key(), &session.certificate(), &user);
        assert!(
            accepted
                .as_deref()
                .is_ok_and(|out| out.contains("mayfly-ok")),
            "{}: the kept key and certificate did not log in before the new KRL: {accepted:?}",
            session.name
        );
    }
    let fetched = with(mayfly().args(["ssh", "krl", "web"]).arg(&krl));
    assert!(fetched.status.success(), "{fetched:?}");
    host.write_krl(&std::fs::read(&krl).unwrap());
    for session in kept {
        let refused =
            mayfly_testkit::sshd::login(&host, &session.key(), &session.certificate(), &user);
        match refused {
            Err(stderr) => assert!(
                stderr.contains("Permission denied"),
                "{}: {stderr}",
                session.name
            ),
            Ok(out) => panic!(
                "{}: sshd accepted the revoked certificate after loading the broker's KRL: {out}",
                session.name
            ),
        }
    }
    // With that KRL loaded, a new grant's certificate still logs in: sshd refuses the revoked
    // certificates, not every one (as it would a KRL it cannot read).
    let again = with(mayfly().args([
        "ssh",
        "web/login",
        &format!("{user}@127.0.0.1"),
        "--ttl",
        "10m",
        "--reason",
        "cli ssh test after the KRL",
        "--ssh-option",
        "StrictHostKeyChecking=no",
        "--ssh-option",
        "UserKnownHostsFile=/dev/null",
        "--ssh-option",
        "BatchMode=yes",
        "--",
        "echo",
        "hello-after-the-krl",
    ]));
    assert!(again.status.success(), "{again:?}");
    assert!(stdout(&again).contains("hello-after-the-krl"), "{again:?}");
}

/// One `mayfly ssh` session's private `TMPDIR` (where it makes its fresh key and writes the
/// certificate) and the place its remote command copies them to.
struct Kept {
    name: &'static str,
    dir: std::path::PathBuf,
}

impl Kept {
    fn new(data: &Path, name: &'static str) -> Kept {
        let dir = data.join(format!("kept-{name}"));
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        Kept { name, dir }
    }

    fn tmp(&self) -> std::path::PathBuf {
        self.dir.join("tmp")
    }

    fn key(&self) -> std::path::PathBuf {
        self.dir.join("id")
    }

    fn certificate(&self) -> std::path::PathBuf {
        self.dir.join("id-cert.pub")
    }

    /// Run on the host, which is this machine and this user, while ssh is logged in with them.
    fn copy_command(&self) -> String {
        let from = self.tmp().join("mayfly-ssh-*");
        format!(
            "cp {from}/id_ed25519 {key} && cp {from}/id-cert.pub {certificate}",
            from = from.display(),
            key = self.key().display(),
            certificate = self.certificate().display()
        )
    }

    /// `mayfly ssh` deleted its fresh key, and it was this one.
    #[track_caller]
    fn check_fresh_key_deleted(&self) {
        let left: Vec<_> = std::fs::read_dir(self.tmp()).unwrap().collect();
        assert!(left.is_empty(), "{}: left behind {left:?}", self.name);
        assert!(
            self.key().exists() && self.certificate().exists(),
            "{}: nothing kept",
            self.name
        );
    }

    /// The certificate's key id (`ssh-keygen -L`).
    fn certificate_key_id(&self) -> String {
        let listed = run(Command::new("ssh-keygen")
            .arg("-L")
            .arg("-f")
            .arg(self.certificate()));
        assert!(listed.status.success(), "{listed:?}");
        stdout(&listed)
            .lines()
            .find_map(|line| line.trim().strip_prefix("Key ID: "))
            .unwrap()
            .trim_matches('"')
            .to_owned()
    }
}
