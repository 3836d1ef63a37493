//! The secure proxy's promise checked on the real binary, byte by byte: `mayfly dev` runs with
//! every log line on (`MAYFLY_LOG=trace`, its own crates and every library's), a route injects a
//! secret into calls to an upstream that echoes it back, fails, and cuts its answer off; then the
//! caller's answers, the broker's whole log, and every file of its data directory (the store, its
//! journal, the audit file) are searched for the secret and its encoded forms. Only the upstream
//! may see it. The same route is also called by an AI agent through `/mcp` (`call_api`, with the
//! token `mayfly agent token` made, from the Python MCP SDK), and `mayfly agent disable` stops
//! that agent at its next call: the agent's results join the search.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{Running, free_port, mayfly, run, stdout};

const SECRET: &str = "sk_live_proxylogs_7f3a9c2e5b";

/// An upstream that answers every call with the `Authorization` header it received, echoed in a
/// header and in the body; `/fail` answers 500 with it, `/cut` promises more than it sends.
fn echo_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            thread::spawn(move || answer(stream));
        }
    });
    addr
}

fn answer(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let auth = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    let body = format!("{{\"echo\":\"{auth}\",\"path\":\"{path}\"}}");
    let (status, length) = if path.ends_with("/fail") {
        ("500 Internal Server Error", body.len())
    } else if path.ends_with("/cut") {
        ("200 OK", body.len() + 100)
    } else {
        ("200 OK", body.len())
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nx-echo: {auth}\r\n\
         content-length: {length}\r\nconnection: close\r\n\r\n{body}"
    );
    let _ = stream.write_all(answer.as_bytes());
}

/// One call through the broker, raw (the whole answer: status line, headers, body).
fn call(addr: &str, method: &str, path: &str, token: &str) -> Vec<u8> {
    let host = addr.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {token}\r\n\
         x-mayfly-intent: log check\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// The secret as it could leak: as is, in base64 (bare and in a basic-auth pair's usual forms),
/// and hex-encoded.
fn forms() -> Vec<Vec<u8>> {
    let hex: String = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        SECRET.as_bytes().to_vec(),
        STANDARD.encode(SECRET).into_bytes(),
        STANDARD.encode(format!("Bearer {SECRET}")).into_bytes(),
        hex.into_bytes(),
    ]
}

/// The Python MCP SDK's client (mcp 1.30.0, from the venv scripts/services.sh makes; the script
/// is the server tests' tests/mcp/client.py): connects to `addr`'s `/mcp` with `token` and makes
/// `calls`. Returns what it printed and its errors.
fn python_client(addr: &str, token: &str, calls: &serde_json::Value) -> Vec<u8> {
    let venvs = std::env::var("MAYFLY_MCP_VENVS")
        .unwrap_or_else(|_| "/var/tmp/mayfly-mcp-venvs".to_owned());
    let python = Path::new(&venvs).join("mcp-1.30.0/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/services.sh (it makes the venv from PyPI)",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mayfly-server/tests/mcp/client.py");
    let output = Command::new(python)
        .arg(script)
        .arg(format!("{addr}/mcp"))
        .arg(token)
        .arg(calls.to_string())
        .output()
        .unwrap();
    let mut printed = output.stdout;
    printed.extend_from_slice(&output.stderr);
    printed
}

fn holds_secret(haystack: &[u8]) -> bool {
    forms().iter().any(|form| {
        haystack
            .windows(form.len())
            .any(|window| window == form.as_slice())
    })
}

fn files_under(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, found);
        } else {
            found.push(path);
        }
    }
}

#[test]
fn the_secret_is_in_no_answer_log_or_file_of_the_broker() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("broker.log");
    let port = free_port();
    let child = mayfly()
        .env("MAYFLY_LOG", "trace")
        .args(["dev", "--addr", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let out = BufReader::new(running.0.stdout.take().unwrap());
    let line = out
        .lines()
        .map(Result::unwrap)
        .find(|line| line.starts_with("export MAYFLY_ADDR="))
        .expect("mayfly dev printed no export line");
    let word = |prefix: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix))
            .unwrap()
            .to_owned()
    };
    let (addr, token) = (word("MAYFLY_ADDR="), word("MAYFLY_TOKEN="));
    let client = |command: &mut Command| -> Command {
        let mut c = std::mem::replace(command, mayfly());
        c.env("MAYFLY_ADDR", &addr).env("MAYFLY_TOKEN", &token);
        c
    };
    let policy = data.path().join("proxy.cedar");
    std::fs::write(
        &policy,
        r#"@id("admins-write") permit (principal in Group::"admins", action == Action::"write_secret", resource);
@id("admins-read") permit (principal in Group::"admins", action == Action::"read_secret", resource in Environment::"shop/dev");
@id("admins-get") permit (principal in Group::"admins", action == Action::"proxy", resource == ProxyRoute::"echo") when { context.method == "GET" };
@id("admins-mcp") permit (principal in Group::"admins", action == Action::"exchange", resource);
@id("admins-call-api") permit (principal in Group::"admins", action == Action::"call_api", resource);"#,
    )
    .unwrap();
    let put = run(&mut client(mayfly().args(["policy", "put"]).arg(&policy)));
    assert!(put.status.success(), "{put:?}");
    let mut secret = client(mayfly().args(["secrets", "put", "shop/dev/ECHO_KEY"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    secret
        .stdin
        .take()
        .unwrap()
        .write_all(SECRET.as_bytes())
        .unwrap();
    let secret = secret.wait_with_output().unwrap();
    assert!(secret.status.success(), "{secret:?}");
    let upstream = echo_upstream();
    // The route `echo` to the live upstream, the secret injected as a bearer token.
    let add_echo = || {
        run(&mut client(mayfly().args([
            "proxy",
            "add",
            "echo",
            "--upstream",
            &format!("http://{upstream}/api"),
            "--inject",
            "header:Authorization=Bearer {{secret:shop/dev/ECHO_KEY}}",
        ])))
    };
    let add = add_echo();
    assert!(add.status.success(), "{add:?}");
    assert!(!holds_secret(&add.stdout) && !holds_secret(&add.stderr));

    // An answer that echoes the credential, one that fails with it, one cut short, one refused
    // by policy, and one to a route whose upstream is gone.
    let mut answers = Vec::new();
    let ok = call(&addr, "GET", "/v1/proxy/echo/charges", &token);
    assert!(
        ok.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&ok)
    );
    assert!(
        String::from_utf8_lossy(&ok).contains("[REDACTED]"),
        "the upstream's echo is not in the answer: the test would prove nothing"
    );
    answers.push(ok);
    let failed = call(&addr, "GET", "/v1/proxy/echo/fail", &token);
    assert!(failed.starts_with(b"HTTP/1.1 500"), "{failed:?}");
    answers.push(failed);
    answers.push(call(&addr, "GET", "/v1/proxy/echo/cut", &token));
    let refused = call(&addr, "DELETE", "/v1/proxy/echo/charges", &token);
    assert!(refused.starts_with(b"HTTP/1.1 403"), "{refused:?}");
    answers.push(refused);
    let gone = run(&mut client(mayfly().args([
        "proxy",
        "add",
        "echo",
        "--upstream",
        &format!("http://127.0.0.1:{}/api", free_port()),
        "--inject",
        "query:key={{secret:shop/dev/ECHO_KEY}}",
    ])));
    assert!(gone.status.success(), "{gone:?}");
    let unreachable = call(&addr, "GET", "/v1/proxy/echo/charges", &token);
    assert!(unreachable.starts_with(b"HTTP/1.1 502"), "{unreachable:?}");
    answers.push(unreachable);
    let ls = run(&mut client(mayfly().args(["proxy", "ls", "--json"])));
    assert!(stdout(&ls).contains("ECHO_KEY"), "{ls:?}");
    answers.push(ls.stdout);

    // An agent calls the route, pointed back at the live upstream, through `/mcp`; then the
    // kill switch stops it.
    let back = add_echo();
    assert!(back.status.success(), "{back:?}");
    let agent_token = run(&mut client(mayfly().args(["agent", "token", "claude"])));
    assert!(agent_token.status.success(), "{agent_token:?}");
    let agent_token = stdout(&agent_token).trim().to_owned();
    let echo =
        serde_json::json!([["call_api", {"route": "echo", "method": "GET", "path": "/charges"}]]);
    let out = python_client(&addr, &agent_token, &echo);
    assert!(
        String::from_utf8_lossy(&out).contains("[REDACTED]"),
        "the agent's call_api did not reach the upstream: {}",
        String::from_utf8_lossy(&out)
    );
    answers.push(out);
    let disable = run(&mut client(mayfly().args(["agent", "disable", "claude"])));
    assert!(disable.status.success(), "{disable:?}");
    let ls = run(&mut client(mayfly().args(["agent", "ls", "--json"])));
    assert!(stdout(&ls).contains("claude"), "{ls:?}");
    let stopped = python_client(&addr, &agent_token, &echo);
    let text = String::from_utf8_lossy(&stopped);
    assert!(
        !text.contains("[REDACTED]") && (text.contains("disabled") || text.contains("\"error\"")),
        "a disabled agent's call went through: {text}"
    );
    answers.push(stopped);

    for (n, answer) in answers.iter().enumerate() {
        assert!(!holds_secret(answer), "answer {n} holds the secret");
    }
    // Stop the broker so its log and files are complete, then search them all.
    drop(running);
    let log = std::fs::read(&log_path).unwrap();
    assert!(
        String::from_utf8_lossy(&log).contains("proxy"),
        "the trace log holds no proxy line: the search would prove nothing"
    );
    assert!(!holds_secret(&log), "the broker's log holds the secret");
    let mut files = Vec::new();
    files_under(data.path(), &mut files);
    assert!(files.len() >= 2, "{files:?}");
    let mut audit_seen = false;
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        audit_seen |= String::from_utf8_lossy(&bytes).contains("proxy.completed");
        assert!(!holds_secret(&bytes), "{} holds the secret", file.display());
    }
    assert!(
        audit_seen,
        "no file of the data directory holds the proxy's audit events"
    );
}
