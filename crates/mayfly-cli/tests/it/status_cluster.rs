//! `mayfly status --cluster`: the nodes with their heartbeats and claims, the lease holders and the
//! audit head, as text and as JSON; for admins only.

use super::{mayfly, run, start_dev, stdout};

#[test]
fn status_cluster_shows_the_node_its_leases_and_the_audit_head() {
    let data = tempfile::tempdir().unwrap();
    let (_running, addr, token) = start_dev(data.path());
    let client = |args: &[&str]| {
        run(mayfly()
            .args(args)
            .env("MAYFLY_ADDR", &addr)
            .env("MAYFLY_TOKEN", &token))
    };
    let text = client(&["status", "--cluster"]);
    assert!(text.status.success(), "{text:?}");
    let text = stdout(&text);
    for expected in [
        "nodes:",
        "alive",
        "leases:",
        "checkpoint",
        "audit head: ",
        "grants past due: 0",
    ] {
        assert!(text.contains(expected), "`{expected}` in:\n{text}");
    }
    let json = client(&["status", "--cluster", "--json"]);
    assert!(json.status.success(), "{json:?}");
    let status: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{status}");
    assert_eq!(nodes[0]["alive"], true, "{status}");
    assert_eq!(nodes[0]["name"], status["node"], "{status}");
    let checkpoint = status["leases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "checkpoint")
        .unwrap();
    assert_eq!(checkpoint["holder"], status["node"], "{status}");
    assert!(status["audit_head"]["seq"].as_i64().unwrap() > 0);
    // Without a session: refused.
    let anonymous = run(mayfly()
        .args(["status", "--cluster"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN_FILE", data.path().join("none")));
    assert!(!anonymous.status.success());
}
