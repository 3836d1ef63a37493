//! A throwaway `rsyslogd` (Debian's `rsyslog` and `rsyslog-gnutls`, installed by
//! scripts/services.sh): imtcp with TLS (gtls) and imudp on free loopback ports, each writing the
//! raw messages it receives to its own file. It can be stopped (SIGTERM, so it drains its queue)
//! and started again on the same ports. Stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::target_tls::ServerCerts;

pub struct Rsyslog {
    pub tcp_port: u16,
    pub udp_port: u16,
    /// The CA that signs rsyslog's certificate (PEM file).
    pub ca_file: PathBuf,
    pub tcp_log: PathBuf,
    pub udp_log: PathBuf,
    conf: PathBuf,
    pid_file: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Rsyslog {
    /// Starts rsyslogd with a certificate signed by `certs`' CA.
    pub async fn start(certs: &ServerCerts) -> Rsyslog {
        let rsyslogd = "/usr/sbin/rsyslogd";
        assert!(
            std::path::Path::new(rsyslogd).exists(),
            "rsyslogd is missing: apt-get install rsyslog rsyslog-gnutls (scripts/services.sh does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("mayfly-rsyslog-")
            .tempdir()
            .unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::create_dir(path("work")).unwrap();
        std::fs::write(path("ca.pem"), &certs.ca_pem).unwrap();
        std::fs::write(path("cert.pem"), &certs.cert_pem).unwrap();
        std::fs::write(path("key.pem"), &certs.key_pem).unwrap();
        let (tcp_port, udp_port) = (free_tcp_port(), free_udp_port());
        let p = |name: &str| path(name).display().to_string();
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="256k"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile="{ca}"
  defaultNetstreamDriverCertFile="{cert}"
  defaultNetstreamDriverKeyFile="{key}")
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="tcp") {{ action(type="omfile" file="{tcp_log}" template="raw") }}
ruleset(name="udp") {{ action(type="omfile" file="{udp_log}" template="raw") }}
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" ruleset="tcp")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{udp_port}" ruleset="udp")
"#,
            work = p("work"),
            ca = p("ca.pem"),
            cert = p("cert.pem"),
            key = p("key.pem"),
            tcp_log = p("tcp.log"),
            udp_log = p("udp.log"),
        );
        std::fs::write(path("rsyslog.conf"), conf).unwrap();
        let mut rsyslog = Rsyslog {
            tcp_port,
            udp_port,
            ca_file: path("ca.pem"),
            tcp_log: path("tcp.log"),
            udp_log: path("udp.log"),
            conf: path("rsyslog.conf"),
            pid_file: path("rsyslogd.pid"),
            child: None,
            dir,
        };
        rsyslog.resume().await;
        rsyslog
    }

    /// Starts rsyslogd again (after [`Rsyslog::stop`]) on the same ports; returns once both
    /// listen.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "rsyslogd is running");
        let _ = std::fs::remove_file(&self.pid_file);
        let child = Command::new("/usr/sbin/rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(&self.pid_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("rsyslogd.err")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..300 {
            let tcp = std::net::TcpStream::connect(("127.0.0.1", self.tcp_port)).is_ok();
            // Bound by rsyslogd once we cannot bind it ourselves.
            let udp = std::net::UdpSocket::bind(("127.0.0.1", self.udp_port)).is_err();
            if tcp && udp {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "rsyslogd exited ({status}): {}",
                    std::fs::read_to_string(self.dir.path().join("rsyslogd.err"))
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("rsyslogd does not listen on 127.0.0.1:{}", self.tcp_port);
    }

    /// Stops rsyslogd with SIGTERM (it writes what it has received, then closes its
    /// connections) and waits for it to exit.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        for _ in 0..400 {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The lines rsyslog wrote for `log` (its TCP or UDP file) so far.
    pub fn lines(&self, log: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
