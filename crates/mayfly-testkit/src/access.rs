//! Access in a few lines: the admin's set-up (a target, its roles, the policy) and a principal's
//! request taken through its steps (pending, approved, allowed, active, revoked). Each step is one
//! call over HTTP, as a client makes it, and must get the answer of the step (200, and the state
//! it names); a test calls [`TestBroker::call`] itself where its point is another answer.
//!
//! ```ignore
//! let broker = TestBroker::ready().await;
//! broker.postgres_access(&cluster, &[("readonly", 3600)], POLICY).await;
//! let alice = broker.login("alice").await;
//! let credential = broker.grant(&alice, ask("pg", "readonly", 900, "INC-1")).await;
//! ```

use std::time::Duration;

use serde_json::{Value, json};

use crate::TestBroker;
use crate::pgcluster::PgCluster;

/// A PostgreSQL role's creation SQL: a login that ends with its grant (`VALID UNTIL`).
pub const POSTGRES_LOGIN: &str =
    "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};";

/// The body of a request for `role` of `target`, for `ttl_seconds`, for `reason`.
pub fn ask(target: &str, role: &str, ttl_seconds: u64, reason: &str) -> Value {
    json!({"target": target, "role": role, "ttl_seconds": ttl_seconds, "reason": reason})
}

/// `body` with the fields of `extra` added or replaced (a ticket, `break_glass`, a public key).
pub fn with(mut body: Value, extra: Value) -> Value {
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

/// The `id` of a request or a grant.
pub fn id(answer: &Value) -> String {
    answer["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {answer}"))
        .to_owned()
}

/// The id of a credential's grant.
pub fn grant_id(credential: &Value) -> String {
    id(&credential["grant"])
}

impl TestBroker {
    /// The admin session from the dev bootstrap.
    pub fn admin(&self) -> String {
        self.admin_token.clone().expect("a bootstrapped broker")
    }

    /// `POST /v1/targets` as the admin (a target added, or put again), which must answer 200.
    pub async fn add_target(&self, body: Value) -> Value {
        self.expect(200, "POST", "/v1/targets", Some(&self.admin()), Some(body))
            .await
    }

    /// The PostgreSQL target `name` on `cluster`, reached as its `postgres` admin.
    pub async fn add_postgres_target(&self, name: &str, cluster: &PgCluster) -> Value {
        let url = format!("postgres://127.0.0.1:{}/postgres", cluster.port);
        self.add_target(json!({"kind": "postgres", "name": name, "url": url,
            "admin_user": "postgres", "admin_password": cluster.admin_password}))
            .await
    }

    /// `POST /v1/roles` as the admin: role `name` of `target`, its `creation` text (SQL, ACL
    /// rules or a certificate's JSON spec), which must answer 200.
    pub async fn add_role(
        &self,
        target: &str,
        name: &str,
        max_ttl_seconds: u64,
        creation: &str,
    ) -> Value {
        self.expect(
            200,
            "POST",
            "/v1/roles",
            Some(&self.admin()),
            Some(
                json!({"target": target, "name": name, "max_ttl_seconds": max_ttl_seconds,
                "creation_sql": creation}),
            ),
        )
        .await
    }

    /// `PUT /v1/policy` as the admin, which must answer 200.
    pub async fn set_policy(&self, text: &str) {
        self.expect(
            200,
            "PUT",
            "/v1/policy",
            Some(&self.admin()),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// An access test's set-up: the PostgreSQL target `pg` on `cluster`, its login roles
    /// `(name, max TTL in seconds)` ([`POSTGRES_LOGIN`]), and `policy`.
    pub async fn postgres_access(&self, cluster: &PgCluster, roles: &[(&str, u64)], policy: &str) {
        self.add_postgres_target("pg", cluster).await;
        for (name, max_ttl_seconds) in roles {
            self.add_role("pg", name, *max_ttl_seconds, POSTGRES_LOGIN)
                .await;
        }
        self.set_policy(policy).await;
    }

    /// `POST /v1/requests` as `token`, which must answer 200; returns the request.
    pub async fn request(&self, token: &str, body: Value) -> Value {
        self.expect(200, "POST", "/v1/requests", Some(token), Some(body))
            .await
    }

    /// A request that waits for approval: its state is `pending`.
    pub async fn pending(&self, token: &str, body: Value) -> Value {
        let request = self.request(token, body).await;
        assert_eq!(request["state"], "pending", "{request}");
        request
    }

    /// `POST /v1/requests/{id}/approve` as `approver` with `comment`, which must answer 200;
    /// returns the request.
    pub async fn approve(&self, approver: &str, id: &str, comment: &str) -> Value {
        self.expect(
            200,
            "POST",
            &format!("/v1/requests/{id}/approve"),
            Some(approver),
            Some(json!({"comment": comment})),
        )
        .await
    }

    /// An approved request: pending, then approved by each of `approvers` in turn, and `allowed`
    /// after the last.
    pub async fn approved(&self, token: &str, body: Value, approvers: &[&str]) -> Value {
        let mut request = self.pending(token, body).await;
        let id = id(&request);
        for approver in approvers {
            request = self.approve(approver, &id, "ok").await;
        }
        assert_eq!(request["state"], "allowed", "{request}");
        request
    }

    /// `POST /v1/requests/{id}/activate` as the requester `token`, which must answer 200;
    /// returns the credential (with its `grant`).
    pub async fn activate(&self, token: &str, id: &str) -> Value {
        self.expect(
            200,
            "POST",
            &format!("/v1/requests/{id}/activate"),
            Some(token),
            None,
        )
        .await
    }

    /// [`TestBroker::activate`] with a body: the `public_key` of an SSH certificate, the `csr`
    /// of an X.509 one.
    pub async fn activate_with(&self, token: &str, id: &str, body: Value) -> Value {
        self.expect(
            200,
            "POST",
            &format!("/v1/requests/{id}/activate"),
            Some(token),
            Some(body),
        )
        .await
    }

    /// A user with a grant on a role: a request `allowed` at once (by a policy, or break-glass)
    /// and activated by its requester; returns the credential.
    pub async fn grant(&self, token: &str, body: Value) -> Value {
        let request = self.request(token, body).await;
        assert_eq!(request["state"], "allowed", "{request}");
        self.activate(token, &id(&request)).await
    }

    /// [`TestBroker::grant`] with an activation body ([`TestBroker::activate_with`]).
    pub async fn grant_with(&self, token: &str, body: Value, activation: Value) -> Value {
        let request = self.request(token, body).await;
        assert_eq!(request["state"], "allowed", "{request}");
        self.activate_with(token, &id(&request), activation).await
    }

    /// `POST /v1/grants/{grant_id}/revoke` as `token`, which must answer 200.
    pub async fn revoke(&self, token: &str, grant_id: &str) -> Value {
        self.expect(
            200,
            "POST",
            &format!("/v1/grants/{grant_id}/revoke"),
            Some(token),
            None,
        )
        .await
    }

    /// The grant `grant_id` once it is in `state`, as `token` lists it (`GET /v1/grants?all=true`),
    /// looked at every 50 ms for 15 s; then a failure that shows the grant, an expiry round, the
    /// stored grant and what is due.
    pub async fn wait_for_grant(&self, token: &str, grant_id: &str, state: &str) -> Value {
        let mut last = Value::Null;
        for _ in 0..300 {
            let (_, grants) = self
                .call("GET", "/v1/grants?all=true", Some(token), None)
                .await;
            if let Some(grant) = grants
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["id"] == grant_id)
            {
                if grant["state"] == state {
                    return grant.clone();
                }
                last = grant.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let round = mayfly_server::access::expiry::run_once(&self.broker).await;
        let stored = self.broker.store().grant(grant_id).await;
        let due = self.broker.store().next_due().await;
        panic!(
            "grant {grant_id} never reached `{state}`: {last}\nround: {round:?}\nstored: {stored:?}\ndue: {due:?} now {:?}",
            self.broker.now()
        );
    }
}
