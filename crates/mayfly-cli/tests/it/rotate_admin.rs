//! Admin rotation survives kill -9 at each step (issue 19, point 6): a real `mayfly dev` process
//! with a failpoint aborts right after the intent is committed, or right after the target has the
//! new password; started again on the same data, it still creates grants on the real PostgreSQL
//! (a throwaway cluster that checks passwords), and the old admin password no longer logs in.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};

use super::{free_port, mayfly, run, wait_until};

/// `mayfly dev` on `data` and `port`, with `failpoint` armed (or none); its admin token.
fn start(data: &Path, port: u16, failpoint: Option<&str>) -> (Child, String) {
    let mut command = mayfly();
    command
        .args(["dev", "--addr", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(failpoint) = failpoint {
        command.env("MAYFLY_FAILPOINT", failpoint);
    }
    let mut child = command.spawn().unwrap();
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

/// Whether `user` logs in to the cluster on `port` with `password`.
fn logs_in(port: u16, user: &str, password: &str) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let options = sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .database("postgres")
            .username(user)
            .password(password);
        sqlx::PgConnection::connect_with(&options).await.is_ok()
    })
}

#[test]
fn admin_rotation_survives_kill_9_at_each_step() {
    for failpoint in ["rotate-admin:after-intent", "rotate-admin:after-target"] {
        let cluster = mayfly_testkit::pgcluster::PgCluster::start();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // An admin that is not the superuser: the test keeps the superuser to look.
        let old = runtime.block_on(cluster.create_login("broker_admin", "CREATEROLE"));
        drop(runtime);
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("http://127.0.0.1:{port}");
        let (mut child, token) = start(data.path(), port, Some(failpoint));
        let with = |command: &mut std::process::Command, token: &str| {
            run(command.env("MAYFLY_ADDR", &addr).env("MAYFLY_TOKEN", token))
        };
        let password = data.path().join("admin-password");
        std::fs::write(&password, &old).unwrap();
        let url = format!("postgres://127.0.0.1:{}/postgres", cluster.port);
        let added = with(
            mayfly()
                .args(["target", "add", "postgres", "pg", "--url", &url])
                .args(["--admin-user", "broker_admin", "--admin-password-file"])
                .arg(&password),
            &token,
        );
        assert!(added.status.success(), "{added:?}");
        let sql = data.path().join("create.sql");
        std::fs::write(&sql, mayfly_testkit::access::POSTGRES_LOGIN).unwrap();
        let role = with(
            mayfly()
                .args(["role", "add", "pg/ro", "--max-ttl", "1h", "--creation-sql"])
                .arg(&sql),
            &token,
        );
        assert!(role.status.success(), "{role:?}");
        let policy = data.path().join("policy.cedar");
        std::fs::write(&policy, "@id(\"admins\") permit (principal in Group::\"admins\", action == Action::\"request\", resource in Target::\"pg\");").unwrap();
        let put = with(mayfly().args(["policy", "put"]).arg(&policy), &token);
        assert!(put.status.success(), "{put:?}");

        // The rotation: the process dies at the failpoint, as under kill -9.
        let rotate = with(mayfly().args(["target", "rotate-admin", "pg"]), &token);
        assert!(!rotate.status.success(), "{failpoint}: {rotate:?}");
        let status = child.wait().unwrap();
        assert!(!status.success(), "{failpoint}: the server did not die");
        let rotated_on_target = !logs_in(cluster.port, "broker_admin", &old);
        assert_eq!(
            rotated_on_target,
            failpoint == "rotate-admin:after-target",
            "{failpoint}"
        );

        // Started again on the same data: grants work on the real target, and the rotation is
        // finished: the old password is refused by the server.
        let (mut child, token) = start(data.path(), port, None);
        let exec = with(
            mayfly().args([
                "exec",
                "pg/ro",
                "--ttl",
                "10m",
                "--reason",
                "after a crash",
                "--",
                "true",
            ]),
            &token,
        );
        assert!(exec.status.success(), "{failpoint}: {exec:?}");
        wait_until("the old admin password to be refused", || {
            !logs_in(cluster.port, "broker_admin", &old)
        });
        let listed = with(mayfly().args(["target", "ls", "--json"]), &token);
        let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        let pg = &listed[0];
        assert!(pg["admin_rotated_at_ms"].as_i64().is_some(), "{listed}");
        assert!(pg.get("admin_rotation_error").is_none(), "{listed}");
        // And grants still work with the rotated secret.
        let exec = with(
            mayfly().args([
                "exec", "pg/ro", "--ttl", "10m", "--reason", "again", "--", "true",
            ]),
            &token,
        );
        assert!(exec.status.success(), "{failpoint}: {exec:?}");
        let audit = std::fs::read_dir(data.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("audit"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect::<String>();
        assert!(
            audit.is_empty() || audit.contains("target.admin_rotat"),
            "{failpoint}: the rotation is not in the audit file"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
