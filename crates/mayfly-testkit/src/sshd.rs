//! A real OpenSSH server for tests: sshd (Debian's openssh-server, installed by
//! `scripts/services.sh`) on a free loopback port, trusting a given user CA (`TrustedUserCAKeys`)
//! and reading a KRL file (`RevokedKeys`) the test can replace.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Starts sshd trusting `ca_line`, with an (initially empty) KRL.
pub async fn start(ca_line: &str, krl: &[u8]) -> Sshd {
    let dir = tempfile::tempdir().unwrap();
    let host_key = dir.path().join("host_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(dir.path().join("ca.pub"), ca_line).unwrap();
    std::fs::write(dir.path().join("revoked.krl"), krl).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let port = free_port();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nTrustedUserCAKeys {}\nRevokedKeys {}\n\
         AuthorizedKeysFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
        host_key.display(),
        dir.path().join("sshd.pid").display(),
        dir.path().join("ca.pub").display(),
        dir.path().join("revoked.krl").display(),
    );
    let config_path = dir.path().join("sshd_config");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sshd: run `bash scripts/services.sh` (installs openssh-server)");
    let sshd = Sshd { child, port, dir };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return sshd;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sshd did not start");
}

/// `ssh … echo mayfly-ok`; Ok(stdout) or Err(stderr).
pub fn login(sshd: &Sshd, key: &Path, certificate: &Path, user: &str) -> Result<String, String> {
    let out = Command::new("ssh")
        .arg("-i")
        .arg(key)
        .arg("-o")
        .arg(format!("CertificateFile={}", certificate.display()))
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
            "-p",
        ])
        .arg(sshd.port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg("echo mayfly-ok")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Sshd {
    /// Replaces the KRL sshd reads at each login.
    pub fn write_krl(&self, krl: &[u8]) {
        std::fs::write(self.krl_path(), krl).unwrap();
    }

    pub fn krl_path(&self) -> std::path::PathBuf {
        self.dir.path().join("revoked.krl")
    }
}
