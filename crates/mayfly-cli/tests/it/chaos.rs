//! Chaos against a cluster of real `mayfly server` processes on one PostgreSQL store (testkit's
//! `cluster`: store and target are throwaway clusters on loopback). Each scenario asserts
//! outcomes read from the store, the target and `mayfly audit verify`, never speed: the bounds
//! only stop a hang, and the times are printed (the benchmark `cluster_bench` measures them).
//!
//! 1. kill -9 a random broker every 10 s and start it again, for 60 s of ~100 grants/s with TTLs
//!    of 5–20 s: every acknowledged grant has its row and its audit event; no broker-made login
//!    outlives its grant by more than 5 s (watched all along); each grant is revoked once; the
//!    chain verifies.
//! 2. SIGSTOP a broker in the middle of a revocation it claimed, past its lease; another takes the
//!    grants over; SIGCONT: its late writes change nothing.
//! 3. kill -9 the holder of the checkpoint lease: another broker signs the next checkpoint.
//! 4. The store is a primary and its synchronous streaming replica (`store = [primary, replica]`);
//!    under load, the primary is killed (`kill -9`) and the replica promoted: no acknowledged
//!    grant is lost, the brokers serve again, every grant is revoked once, the chain verifies.
//! 5. A broker frozen (SIGSTOP) inside a store transaction that holds the audit chain's head: the
//!    store ends its session (`idle_in_transaction_session_timeout`), so the other broker's
//!    commits go on; resumed, the frozen one serves again and nothing is half done.
//!
//! `MAYFLY_CHAOS_SEED=N` repeats a run's choices (which broker dies, the TTLs).

use std::time::{Duration, Instant};

use mayfly_server::cluster::CHECKPOINT_LEASE;
use mayfly_testkit::cluster::{Cluster, ClusterSpec, LoadSpec, Rng};
use mayfly_testkit::pgcluster::PgCluster;
use sqlx::Connection as _;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn spec(n_nodes: usize) -> ClusterSpec {
    ClusterSpec::new(env!("CARGO_BIN_EXE_mayfly"), n_nodes)
}

/// Polls `check` every 100 ms until it answers `Some`, for at most `bound` (a hang stopper,
/// not a measure).
async fn poll<T>(what: &str, bound: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < bound, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn kill_9_a_random_broker_every_10_s_under_load_loses_nothing() {
    runtime().block_on(async {
        let seed = Rng::seed();
        eprintln!("chaos seed {seed} (MAYFLY_CHAOS_SEED={seed} repeats it)");
        let mut cluster = Cluster::start(spec(3)).await;
        let load = cluster.spawn_load(LoadSpec {
            rate: 100,
            duration: Duration::from_secs(60),
            ttl: 5..=20,
            max_in_flight: 64,
            seed,
        });
        let overdue = cluster.watch_overdue();
        let mut rng = Rng::new(seed ^ 0x00c4_a05e);
        let started = tokio::time::Instant::now();
        let mut killed = Vec::new();
        for round in 1..=5u32 {
            tokio::time::sleep_until(started + Duration::from_secs(10) * round).await;
            let victim = usize::try_from(rng.below(3)).unwrap();
            cluster.kill9(victim);
            let down = Instant::now();
            cluster.start_node(victim).await;
            killed.push((victim, down.elapsed()));
        }
        let report = load.await.unwrap();
        eprintln!(
            "chaos load: {} attempted, {} acknowledged ({:.1}/s), {} requests refused by every \
             broker, {} activations without an answer; killed and restarted {:?} (node, time to \
             serve unsealed)",
            report.attempted,
            report.acknowledged.len(),
            report.rate(),
            report.refused_requests,
            report.failed_activations,
            killed
        );
        assert!(
            !report.acknowledged.is_empty(),
            "no grant acknowledged:\n{}",
            cluster.logs(30)
        );

        let settled = settled_and_checked(&cluster, &report.acknowledged).await;
        assert!(settled.n_grants >= report.acknowledged.len());
        // After TTL + 5 s no broker-made login remains: a dead broker's claims and intents are
        // taken over at the end of its node lease (1.5 s), not at a claim's timeout (60 s).
        let overdue = overdue.stop().await;
        eprintln!(
            "a login outlived its grant by {:.1} s at most, all along ({} samples)",
            overdue
                .max
                .as_secs_f64()
                .max(settled.max_overdue.as_secs_f64()),
            overdue.n_samples
        );
        assert!(
            overdue.n_samples > 0,
            "the watch of the target never sampled"
        );
        assert!(
            overdue.max.max(settled.max_overdue) <= Duration::from_secs(5),
            "a login outlived its grant by more than 5 s: {overdue:?}\n{}",
            cluster.logs(30)
        );
        assert_revoked_once_and_verified(&cluster).await;
    });
}

/// Every acknowledged grant has its row and its event; then, once everything is revoked and no
/// broker-made login is left on the target (a hang stopper: a claim's own timeout is 60 s), what
/// was seen.
async fn settled_and_checked(
    cluster: &Cluster,
    acknowledged: &[mayfly_testkit::cluster::Granted],
) -> mayfly_testkit::cluster::Settled {
    let problems = cluster.check_acknowledged(acknowledged).await;
    assert!(
        problems.is_empty(),
        "acknowledged grants lost: {problems:#?}"
    );
    let settled = match cluster.wait_settled(Duration::from_secs(150)).await {
        Ok(settled) => settled,
        Err(why) => panic!("{why}\n{}", cluster.logs(30)),
    };
    eprintln!(
        "settled: {} grants, all revoked and no `mf_` login on the target {:.1} s after the \
         last expiry; a login outlived its grant by {:.1} s at most (sampled)",
        settled.n_grants,
        settled.after_last_expiry.as_secs_f64(),
        settled.max_overdue.as_secs_f64()
    );
    settled
}

/// Each grant revoked once; `mayfly audit verify` passes.
async fn assert_revoked_once_and_verified(cluster: &Cluster) {
    let problems = cluster.check_revoked_once().await;
    assert!(problems.is_empty(), "revocations: {problems:#?}");
    if let Err(why) = cluster.audit_verify() {
        panic!("audit verify: {why}\n{}", cluster.logs(30));
    }
}

/// What the store says of some grants: id, state, epoch, `revoked_at`, and their applied
/// (`ok`) `grant.revoked` events.
async fn snapshot(cluster: &Cluster, ids: &[String]) -> Vec<(String, String, i64, i64, i64)> {
    let mut store = cluster.store_connection().await;
    sqlx::query_as(
        "SELECT g.id, g.state, g.epoch, coalesce(g.revoked_at, 0), \
         (SELECT count(*) FROM audit_events e WHERE e.kind = 'grant.revoked' \
            AND e.body::jsonb ->> 'outcome' = 'ok' \
            AND e.body::jsonb -> 'details' ->> 'grant_id' = g.id) \
         FROM grants g WHERE g.id = ANY($1) ORDER BY g.id",
    )
    .bind(ids)
    .fetch_all(&mut store)
    .await
    .unwrap()
}

/// The refused `grant.revoked` events of some grants: writes the store turned down (a stale
/// claim), audited as refusals.
async fn refused_revocations(cluster: &Cluster, ids: &[String]) -> i64 {
    let mut store = cluster.store_connection().await;
    sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE kind = 'grant.revoked' \
         AND body::jsonb ->> 'outcome' = 'refused' \
         AND body::jsonb -> 'details' ->> 'grant_id' = ANY($1)",
    )
    .bind(ids)
    .fetch_one(&mut store)
    .await
    .unwrap()
}

#[test]
fn a_claimant_paused_past_its_lease_changes_nothing_when_it_resumes() {
    runtime().block_on(async {
        let mut cluster = Cluster::start(spec(2)).await;
        // Only the first broker runs when the grants come due: it is their claimant.
        cluster.kill9(1);
        let mut grants = Vec::new();
        for i in 0..5 {
            let granted = cluster
                .grant(0, 8, &format!("paused claimant {i}"))
                .await
                .unwrap();
            grants.push(granted);
        }
        let ids: Vec<String> = grants.iter().map(|g| g.grant_id.clone()).collect();

        // Their logins are locked on the target (an open transaction that altered them), so the
        // revocation stops at its first statement, after the claim.
        let mut lock = cluster.target.connect("postgres").await;
        let mut script = String::from("BEGIN;");
        for grant in &grants {
            script.push_str(&format!(
                " ALTER ROLE \"{}\" CONNECTION LIMIT 5;",
                grant.login
            ));
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(script))
            .execute(&mut lock)
            .await
            .unwrap();
        let now = cluster.store_now_ms().await;
        let first_expiry = grants.iter().map(|g| g.expires_at_ms).min().unwrap();
        assert!(
            now < first_expiry,
            "the grants expired before their logins were locked: make the TTL longer"
        );
        let mut watch = cluster.target.connect("postgres").await;
        poll(
            "the claimant's revocation to wait on the target",
            Duration::from_secs(120),
            async || {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND query LIKE '%NOLOGIN%'",
                )
                .fetch_one(&mut watch)
                .await
                .unwrap();
                (n > 0).then_some(())
            },
        )
        .await;
        let claimed = snapshot(&cluster, &ids).await;

        // Frozen mid-revocation, its claims held; the lock goes, the other broker starts.
        cluster.pause(0);
        lock.close().await.unwrap();
        let paused = Instant::now();
        cluster.start_node(1).await;
        let done = poll(
            "the other broker to revoke and verify the paused one's grants",
            Duration::from_secs(180),
            async || {
                let rows = snapshot(&cluster, &ids).await;
                rows.iter().all(|row| row.1 == "verified").then_some(rows)
            },
        )
        .await;
        eprintln!(
            "taken over and verified {:.1} s after the pause",
            paused.elapsed().as_secs_f64()
        );
        for (before, after) in claimed.iter().zip(&done) {
            assert!(
                after.2 > before.2,
                "grant {}: epoch {} then {}: not claimed again",
                after.0,
                before.2,
                after.2
            );
            assert_eq!(
                after.4, 1,
                "grant {}: {} grant.revoked events",
                after.0, after.4
            );
        }
        assert!(cluster.logins_on_target().await.is_empty());

        // Resumed: it finishes the revocation it was in (its target work is idempotent) and
        // writes its outcome under its old claim: the store refuses it (and audits the refusal).
        assert_eq!(refused_revocations(&cluster, &ids).await, 0);
        cluster.resume(0);
        let refused = poll(
            "the resumed broker's late write, refused",
            Duration::from_secs(60),
            async || {
                let n = refused_revocations(&cluster, &ids).await;
                (n > 0).then_some(n)
            },
        )
        .await;
        cluster.wait_answering(0).await;
        // For two seconds more (its other late writes, if any), nothing about the grants moves.
        let watched = Instant::now();
        while watched.elapsed() < Duration::from_secs(2) {
            assert_eq!(
                snapshot(&cluster, &ids).await,
                done,
                "a late write changed the store"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "the resumed broker's late revocations: {} refused by the store, nothing applied",
            refused_revocations(&cluster, &ids).await.max(refused)
        );
        assert!(cluster.logins_on_target().await.is_empty());
        assert_revoked_once_and_verified(&cluster).await;
    });
}

/// The holder of a live lease, by name.
async fn lease_holder(cluster: &Cluster, name: &str) -> Option<String> {
    let mut store = cluster.store_connection().await;
    sqlx::query_scalar(
        "SELECT holder FROM leases WHERE name = $1 \
         AND until > (extract(epoch FROM clock_timestamp()) * 1000)::int8",
    )
    .bind(name)
    .fetch_optional(&mut store)
    .await
    .unwrap()
}

/// The sequence number of the last checkpoint in the chain (0 when none).
async fn last_checkpoint(cluster: &Cluster) -> i64 {
    let mut store = cluster.store_connection().await;
    sqlx::query_scalar(
        "SELECT coalesce(max(seq), 0)::int8 FROM audit_events WHERE kind = 'audit.checkpoint'",
    )
    .fetch_one(&mut store)
    .await
    .unwrap()
}

#[test]
fn killing_the_checkpoint_lease_holder_lets_another_sign() {
    runtime().block_on(async {
        let mut cluster = Cluster::start(spec(3)).await;
        cluster.grant(0, 600, "before the kill").await.unwrap();
        let holder = poll(
            "a holder of the checkpoint lease",
            Duration::from_secs(60),
            async || lease_holder(&cluster, CHECKPOINT_LEASE).await,
        )
        .await;
        let index = cluster
            .nodes
            .iter()
            .position(|n| n.name == holder)
            .unwrap_or_else(|| panic!("the lease holder `{holder}` is none of the brokers"));
        let before = last_checkpoint(&cluster).await;
        cluster.kill9(index);
        let killed = Instant::now();
        // Something new to sign, through another broker.
        let other = (index + 1) % cluster.nodes.len();
        cluster.grant(other, 600, "after the kill").await.unwrap();
        let (signer, seq) = poll(
            "another broker to hold the lease and sign a checkpoint",
            Duration::from_secs(120),
            async || {
                let seq = last_checkpoint(&cluster).await;
                let signer = lease_holder(&cluster, CHECKPOINT_LEASE).await?;
                (seq > before && signer != holder).then_some((signer, seq))
            },
        )
        .await;
        eprintln!(
            "checkpoint lease: {holder} killed; {signer} holds it and signed checkpoint {seq} \
             {:.1} s later",
            killed.elapsed().as_secs_f64()
        );
        if let Err(why) = cluster.audit_verify() {
            panic!("audit verify: {why}\n{}", cluster.logs(30));
        }
    });
}

#[test]
fn a_synchronous_replica_promoted_after_kill_9_of_the_primary_loses_no_acknowledged_grant() {
    runtime().block_on(async {
        let seed = Rng::seed();
        eprintln!("chaos seed {seed} (MAYFLY_CHAOS_SEED={seed} repeats it)");
        // The store's database exists before the base backup, so the replica has it too.
        let primary = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
        primary.psql("CREATE DATABASE mayfly");
        let replica = tokio::task::block_in_place(|| PgCluster::replica_of(&primary, true));
        let urls = vec![primary.store_url("mayfly"), replica.store_url("mayfly")];
        let cluster = Cluster::start_on(spec(3), Some((primary, urls))).await;
        let load = cluster.spawn_load(LoadSpec {
            rate: 50,
            duration: Duration::from_secs(30),
            ttl: 5..=20,
            max_in_flight: 32,
            seed,
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        tokio::task::block_in_place(|| {
            cluster.store.kill9();
            replica.promote();
        });
        let promoted = Instant::now();
        let mut attempt = 0usize;
        let first = poll(
            "a grant through a broker on the promoted store",
            Duration::from_secs(120),
            async || {
                attempt += 1;
                cluster
                    .grant(attempt % 3, 10, "after the promotion")
                    .await
                    .ok()
            },
        )
        .await;
        eprintln!(
            "store failover: broker {} granted {:.2} s after the replica's promotion",
            first.node,
            promoted.elapsed().as_secs_f64()
        );
        let report = load.await.unwrap();
        eprintln!(
            "failover load: {} attempted, {} acknowledged, {} requests refused by every broker, \
             {} activations without an answer",
            report.attempted,
            report.acknowledged.len(),
            report.refused_requests,
            report.failed_activations
        );
        let mut acknowledged = report.acknowledged;
        acknowledged.push(first);
        settled_and_checked(&cluster, &acknowledged).await;
        assert_revoked_once_and_verified(&cluster).await;
        drop(cluster);
        drop(replica);
    });
}

/// The store session, idle inside a transaction, that holds the audit chain's head (locked
/// `FOR UPDATE` by every commit), if any.
async fn head_holder_idle(cluster: &Cluster) -> Option<i32> {
    let mut store = cluster.store_connection().await;
    sqlx::query_scalar(
        "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid \
         WHERE a.state = 'idle in transaction' AND l.granted \
         AND l.relation = 'audit_head'::regclass AND l.mode = 'RowShareLock' LIMIT 1",
    )
    .fetch_optional(&mut store)
    .await
    .unwrap()
}

#[test]
fn a_broker_frozen_holding_the_audit_head_does_not_stall_the_others() {
    runtime().block_on(async {
        let seed = Rng::seed();
        let mut cluster = Cluster::start(spec(2)).await;
        // Only the first broker commits (grants all along), so a freeze lands in its
        // transactions.
        let load = cluster.spawn_load_on(
            &[0],
            LoadSpec {
                rate: 50,
                duration: Duration::from_secs(20),
                ttl: 5..=10,
                max_in_flight: 16,
                seed,
            },
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Freeze it until it is caught holding the head inside a transaction.
        let mut rng = Rng::new(seed);
        let mut holder = None;
        for _ in 0..200 {
            cluster.pause(0);
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Twice, a moment apart: the same session, so not another broker's passing commit.
            if let Some(pid) = head_holder_idle(&cluster).await {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if head_holder_idle(&cluster).await == Some(pid) {
                    holder = Some(pid);
                    break;
                }
            }
            // Running long enough between tries to heartbeat (its lease must not lapse before
            // the freeze that counts).
            cluster.resume(0);
            tokio::time::sleep(Duration::from_millis(600 + rng.below(200))).await;
        }
        let Some(pid) = holder else {
            panic!("the broker was never caught inside a transaction holding the head");
        };
        let frozen = Instant::now();
        // The other broker grants (two audited commits) all the same, once the store has ended
        // the frozen session.
        let granted = poll(
            "a grant through the other broker while the first is frozen",
            Duration::from_secs(90),
            async || cluster.grant(1, 10, "while the other is frozen").await.ok(),
        )
        .await;
        eprintln!(
            "frozen holding the audit head (store pid {pid}); the other broker granted {:.1} s \
             later",
            frozen.elapsed().as_secs_f64()
        );
        // The store ended the frozen session (another of the frozen broker's, queued behind it,
        // may hold the head now, for as long).
        let mut store = cluster.store_connection().await;
        let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&mut store)
            .await
            .unwrap();
        assert_eq!(alive, 0, "the frozen session is still there");
        cluster.resume(0);
        let again = poll(
            "the resumed broker to grant again",
            Duration::from_secs(90),
            async || cluster.grant(0, 10, "after the freeze").await.ok(),
        )
        .await;
        let report = load.await.unwrap();
        let mut acknowledged = report.acknowledged;
        acknowledged.extend([granted, again]);
        settled_and_checked(&cluster, &acknowledged).await;
        assert_revoked_once_and_verified(&cluster).await;
    });
}
