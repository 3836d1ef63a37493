//! A throwaway PostgreSQL cluster with password (SCRAM) authentication on a free loopback port,
//! made from the installed server binaries (`initdb`, `pg_ctl`) and stopped when dropped. The
//! machine's own PostgreSQL trusts every local login, which would let a wrong password in; target
//! tests need a server that checks passwords. As root, the binaries run as the `postgres` user.
//!
//! For store failover: every cluster accepts streaming replication from loopback (`wal_level =
//! replica`, initdb's `host replication` line); [`PgCluster::replica_of`] makes a hot standby of
//! one by `pg_basebackup -R`, synchronous or not; [`PgCluster::promote`] makes a standby the
//! primary; [`PgCluster::kill9`] ends a server as a crash would (SIGKILL to the postmaster and
//! every process it started).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgCluster {
    pub port: u16,
    pub admin_password: String,
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<String>,
    /// The `application_name` this server streams from its primary under, if it was made a
    /// standby by [`PgCluster::replica_of`].
    standby_name: Option<String>,
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    let dir = versions
        .last()
        .map(|v| v.join("bin"))
        .unwrap_or_else(|| panic!("PostgreSQL server binaries not found under /usr/lib/postgresql: apt-get install postgresql"));
    assert!(
        dir.join("initdb").exists(),
        "initdb missing in {}: apt-get install postgresql",
        dir.display()
    );
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgCluster {
    pub fn start() -> PgCluster {
        PgCluster::start_with(None)
    }

    /// A cluster with `ssl = on` serving `cert_pem` (with `key_pem`), that accepts TCP logins
    /// over TLS only (`hostssl` in pg_hba.conf): a plain connection is refused.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> PgCluster {
        PgCluster::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> PgCluster {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("mayfly-pg-")
            .tempdir()
            .unwrap();
        let run_as = is_root().then(|| "postgres".to_owned());
        if run_as.is_some() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown to postgres failed");
        }
        let admin_password = format!("admin-{}", uuid::Uuid::now_v7().simple());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &admin_password).unwrap();
        if run_as.is_some() {
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(&pwfile)
                .status()
                .unwrap();
        }
        let data = dir.path().join("data");
        let mut cluster = PgCluster {
            port: free_port(),
            admin_password,
            dir,
            bin,
            run_as,
            standby_name: None,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        if let Some((cert_pem, key_pem)) = tls {
            cluster.turn_on_tls(&data, cert_pem, key_pem);
        }
        cluster.start_on_a_free_port();
        cluster
    }

    /// The port was free when asked for, but another test's cluster may take it before this
    /// server binds it (the kernel hands a released port out again): try a fresh one. Any other
    /// failure repeats itself and is reported with the server's log after 5 tries.
    fn start_on_a_free_port(&mut self) {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.try_start() {
                Ok(()) => return,
                Err(_) if attempts < 5 => {
                    self.port = free_port();
                }
                Err(why) => panic!("pg_ctl start failed: {why}"),
            }
        }
    }

    /// A hot standby of `primary`, streaming from it: a base backup taken by `pg_basebackup -R`
    /// (which writes `primary_conninfo` and `standby.signal`), started on a free port, with the
    /// primary's admin password. With `synchronous`, the primary's `synchronous_standby_names`
    /// names this standby (only this one: a later synchronous replica replaces it), so a commit
    /// on the primary returns only once this standby has the commit on disk; returns once the
    /// primary reports it streaming (and `sync`, with `synchronous`).
    ///
    /// The standby never inherits a `synchronous_standby_names` (a promoted standby would
    /// otherwise wait for a standby of its own that does not exist, and every commit would hang).
    pub fn replica_of(primary: &PgCluster, synchronous: bool) -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("mayfly-pg-replica-")
            .tempdir()
            .unwrap();
        if primary.run_as.is_some() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown to postgres failed");
        }
        let name = format!(
            "replica_{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let mut replica = PgCluster {
            port: free_port(),
            admin_password: primary.admin_password.clone(),
            dir,
            bin: primary.bin.clone(),
            run_as: primary.run_as.clone(),
            standby_name: Some(name.clone()),
        };
        let data = replica.dir.path().join("data");
        let source = format!(
            "host=127.0.0.1 port={} user=postgres password={} application_name={name}",
            primary.port, primary.admin_password
        );
        replica.run(
            "pg_basebackup",
            &[
                "-D",
                data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-d",
                &source,
            ],
        );
        // What ALTER SYSTEM set on the primary came along in postgresql.auto.conf.
        let auto_conf = data.join("postgresql.auto.conf");
        let kept: String = std::fs::read_to_string(&auto_conf)
            .unwrap()
            .lines()
            .filter(|line| !line.trim_start().starts_with("synchronous_standby_names"))
            .map(|line| format!("{line}\n"))
            .collect();
        std::fs::write(&auto_conf, kept).unwrap();
        replica.start_on_a_free_port();
        if synchronous {
            primary.psql(&format!(
                "ALTER SYSTEM SET synchronous_standby_names = '\"{name}\"'"
            ));
            primary.psql("SELECT pg_reload_conf()");
        }
        let wanted = if synchronous { "sync" } else { "async" };
        let state_sql = format!(
            "SELECT state || '/' || sync_state FROM pg_stat_replication WHERE application_name = '{name}'"
        );
        let mut state = String::new();
        for _ in 0..600 {
            state = primary.psql(&state_sql);
            if state == format!("streaming/{wanted}") {
                return replica;
            }
            pause(50);
        }
        panic!("the replica {name} did not start streaming ({wanted}) within 30 s: `{state}`");
    }

    /// Promotes this standby to a primary that accepts writes; returns once it does
    /// (`pg_ctl promote -w`).
    pub fn promote(&self) {
        let data = self.dir.path().join("data");
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-w", "promote"]);
        assert_eq!(
            self.psql("SELECT pg_is_in_recovery()"),
            "f",
            "still in recovery after promote"
        );
    }

    /// The name this standby streams under (its `application_name` on the primary).
    pub fn standby_name(&self) -> Option<&str> {
        self.standby_name.as_deref()
    }

    /// Ends the server as a crash would: SIGKILL to the postmaster and then to every process it
    /// had started (found by their parent in /proc before the postmaster dies), by process id.
    /// Returns once none of them runs (the port is closed). Nothing is flushed or shut down:
    /// what a commit had not written is lost, what it had acknowledged is on disk (and on a
    /// synchronous standby). The pid file is removed, so dropping the cluster signals nothing.
    pub fn kill9(&self) {
        let data = self.dir.path().join("data");
        let pid_file = data.join("postmaster.pid");
        let Some(postmaster) = std::fs::read_to_string(&pid_file).ok().and_then(|text| {
            text.lines()
                .next()
                .and_then(|l| l.trim().parse::<u32>().ok())
        }) else {
            panic!("no running server to kill in {}", data.display());
        };
        let children = children_of(postmaster);
        let mut all = vec![postmaster];
        all.extend(children);
        for pid in &all {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).output();
        }
        for _ in 0..400 {
            if all.iter().all(|pid| !is_running(*pid)) {
                let _ = std::fs::remove_file(&pid_file);
                return;
            }
            pause(25);
        }
        panic!("the server (postmaster {postmaster}) still runs 10 s after SIGKILL");
    }

    /// Runs `sql` with `psql` as the superuser over TCP (in the database `postgres`) and
    /// returns its unaligned output, trimmed. Panics if psql fails.
    pub fn psql(&self, sql: &str) -> String {
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=postgres connect_timeout=5",
            self.port, self.admin_password
        );
        let output = Command::new(self.bin.join("psql"))
            .arg(&conninfo)
            .arg("-X")
            .arg("-A")
            .arg("-t")
            .arg("-v")
            .arg("ON_ERROR_STOP=1")
            .arg("-c")
            .arg(sql)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Starts the server on `self.port`; on failure, answers what pg_ctl and the server's log said.
    fn try_start(&self) -> Result<(), String> {
        let data = self.dir.path().join("data");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200 -c wal_level=replica -c max_wal_senders=10",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let output = self.command(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        if output.status.success() {
            return Ok(());
        }
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        // The next attempt would append to the same log: start it afresh.
        let _ = std::fs::remove_file(&log);
        Err(format!(
            "{}{}\nserver log:\n{log_text}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }

    fn turn_on_tls(&self, data: &Path, cert_pem: &str, key_pem: &str) {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt as _;
        let cert = data.join("server.crt");
        let key = data.join("server.key");
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
        )
        .unwrap();
        if self.run_as.is_some() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&cert)
                .arg(&key)
                .arg(data.join("pg_hba.conf"))
                .status()
                .unwrap();
            assert!(status.success(), "chown to postgres failed");
        }
    }

    fn command(&self, program: &str, args: &[&str]) -> std::process::Output {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => Command::new("runuser")
                .arg("-u")
                .arg(user)
                .arg("--")
                .arg(&path)
                .args(args)
                .output(),
            None => Command::new(&path).args(args).output(),
        }
        .unwrap()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self.command(program, args);
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Stops the server (fast shutdown), keeping its data, as an outage would.
    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    /// Starts it again on the same port after [`PgCluster::stop`].
    pub fn restart(&self) {
        if let Err(why) = self.try_start() {
            panic!("pg_ctl start failed: {why}");
        }
    }

    /// The superuser's URL with its password, for a broker's store (`store = [...]`).
    pub fn store_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            self.admin_password, self.port
        )
    }

    /// The admin URL without the password (the broker keeps that in its barrier).
    pub fn url(&self, database: &str) -> String {
        self.url_as("postgres", database)
    }

    /// The URL of another role, without its password.
    pub fn url_as(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// A connection to `database` as the superuser `postgres`.
    pub async fn connect(&self, database: &str) -> sqlx::PgConnection {
        use sqlx::ConnectOptions;
        let options = sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .database(database)
            .username("postgres")
            .password(&self.admin_password)
            .disable_statement_logging();
        options.connect().await.unwrap()
    }

    /// Creates the login role `name` with `attributes` (`CREATEROLE`, `NOINHERIT`…) and a fresh
    /// password, which it returns: an admin that is not a superuser. `name` is a plain
    /// identifier (the tests make it).
    pub async fn create_login(&self, name: &str, attributes: &str) -> String {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name:?}"
        );
        let password = format!("pw-{}", uuid::Uuid::now_v7().simple());
        self.run_as_superuser(format!(
            "CREATE ROLE {name} WITH LOGIN PASSWORD '{password}' {attributes}"
        ))
        .await;
        password
    }

    /// An orphan of the broker whose namespace is `namespace`: a login named as its grants are
    /// that no grant knows (as after restoring an older backup of its store), made as the
    /// superuser. Returns its name.
    pub async fn create_orphan(
        &self,
        namespace: &mayfly_core::Namespace,
    ) -> mayfly_core::LoginName {
        let orphan = mayfly_core::LoginName::for_grant(namespace, &uuid::Uuid::now_v7());
        self.run_as_superuser(format!("CREATE ROLE \"{orphan}\" LOGIN PASSWORD 'x'"))
            .await;
        orphan
    }

    /// Runs `sql`, which the tests write, in the database `postgres` as the superuser.
    async fn run_as_superuser(&self, sql: String) {
        let mut superuser = self.connect("postgres").await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut superuser)
            .await
            .unwrap();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A short wait between two looks at a server that another process starts or stops (these
/// helpers are synchronous, like `pg_ctl`).
#[expect(
    clippy::disallowed_methods,
    reason = "polls another process from synchronous test set-up, as pg_ctl -w does"
)]
fn pause(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

/// The processes whose parent is `pid`, read from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for entry in entries.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if parent_and_state(child).is_some_and(|(parent, _)| parent == pid) {
            children.push(child);
        }
    }
    children
}

/// A process's parent and state letter, from `/proc/PID/stat` (the name in parentheses may hold
/// spaces: the fields after the last `)` are read).
fn parent_and_state(pid: u32) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((parent, state))
}

/// Whether `pid` still runs (a zombie, dead but not yet reaped, does not).
fn is_running(pid: u32) -> bool {
    parent_and_state(pid).is_some_and(|(_, state)| state != 'Z' && state != 'X')
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let path = self.bin.join("pg_ctl");
        let args = [
            "-D",
            data.to_str().unwrap_or_default(),
            "-m",
            "immediate",
            "stop",
        ];
        let _ = match &self.run_as {
            Some(user) => Command::new("runuser")
                .arg("-u")
                .arg(user)
                .arg("--")
                .arg(&path)
                .args(args)
                .output(),
            None => Command::new(&path).args(args).output(),
        };
    }
}
