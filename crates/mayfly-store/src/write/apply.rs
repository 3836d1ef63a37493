//! One change applied inside the batch's transaction: a short dispatch to the function of the
//! module that owns the change's tables.

use sqlx::AnyConnection;

use crate::dialect::Dialect;
use crate::identity::{JwtTable, LoginThrottle};
use crate::records::{Applied, Change};
use crate::{
    agents, catalog, cluster, exchanged, grants, identity, kv, outbox, proxy_routes, requests,
    rotations, seal_wraps, secrets, sso,
};

pub(super) async fn apply(
    c: &mut AnyConnection,
    dialect: Dialect,
    change: &Change,
) -> Result<Applied, sqlx::Error> {
    match change {
        Change::Initialize { seal, secrets } => secrets::initialize(c, seal, secrets).await,
        Change::PutSealWrap { wrap } => seal_wraps::put_seal_wrap(c, wrap).await,
        Change::PutSecret { path, blob, at } => secrets::put_secret(c, path, blob, *at).await,
        Change::CreateSecret { path, blob, at } => secrets::create_secret(c, path, blob, *at).await,
        Change::SetupFirstAdmin {
            code_hash,
            user,
            secrets,
        } => identity::setup_first_admin(c, code_hash, user, secrets).await,
        Change::CreateUser { user, secrets } => identity::create_user(c, user, secrets).await,
        Change::UpdateUser {
            username,
            groups,
            disabled,
        } => identity::update_user(c, username, groups.as_deref(), *disabled).await,
        Change::LoginSucceeded {
            user_id,
            username,
            totp_step,
            session,
        } => identity::login_succeeded(c, user_id, username, *totp_step, session).await,
        Change::LoginFailed {
            username,
            throttled_until,
        } => identity::login_failed(c, username, *throttled_until).await,
        Change::ReserveLoginAttempt {
            username,
            at,
            n_free,
            first_delay,
            max_delay,
            forget_after,
        } => {
            let throttle = LoginThrottle {
                n_free: *n_free,
                first_delay: *first_delay,
                max_delay: *max_delay,
                forget_after: *forget_after,
            };
            identity::reserve_login_attempt(c, dialect, username, *at, throttle).await
        }
        Change::RecordSecondFactor {
            session_id,
            at,
            totp,
        } => identity::record_second_factor(c, session_id, *at, totp.as_ref()).await,
        Change::LinkSlackUser {
            username,
            slack_user_id,
        } => identity::link_slack_user(c, username, slack_user_id.as_deref()).await,
        Change::CreateSession { session } => identity::create_session(c, session).await,
        Change::RevokeSession { id, at } => identity::revoke_session(c, id, *at).await,
        Change::RevokeUserSessions { user_id, at } => {
            identity::revoke_user_sessions(c, user_id, *at).await
        }
        Change::PutJwtIssuer { name, config } => {
            identity::put_jwt_config(c, JwtTable::Issuers, name, config).await
        }
        Change::PutJwtRole { name, config } => {
            identity::put_jwt_config(c, JwtTable::Roles, name, config).await
        }
        Change::DeleteJwtRole { name } => identity::delete_jwt_role(c, name).await,
        Change::PutTarget {
            target,
            secret,
            rotate_admin_every_ms,
        } => catalog::put_target(c, target, secret, *rotate_admin_every_ms).await,
        Change::BeginAdminRotation {
            target,
            rotation_id,
            pending,
            claimed_until,
            due_by,
        } => rotations::begin(c, target, rotation_id, pending, *claimed_until, *due_by).await,
        Change::ClaimAdminRotation {
            target,
            rotation_id,
            claimed_until,
            held_before,
        } => rotations::claim(c, target, rotation_id, *claimed_until, *held_before).await,
        Change::CompleteAdminRotation {
            target,
            rotation_id,
            secret,
            previous,
            at,
        } => rotations::complete(c, target, rotation_id, secret, previous, *at).await,
        Change::AdminRotationFailed {
            target,
            rotation_id,
            error,
            retry_at,
        } => rotations::failed(c, target, rotation_id, error, *retry_at).await,
        Change::PutRole { role } => catalog::put_role(c, role).await,
        Change::PutPolicies { text, at } => catalog::put_policies(c, text, *at).await,
        Change::CreateRequest { request } => requests::create_request(c, request).await,
        Change::Approve { approval } => requests::approve(c, approval).await,
        Change::DenyRequest { request_id } => requests::deny(c, request_id).await,
        Change::WithdrawRequest { request_id } => requests::withdraw(c, request_id).await,
        Change::ExpireRequests { before } => requests::expire_requests(c, *before).await,
        Change::RecordIntent {
            grant,
            secret,
            issuer,
        } => grants::record_intent(c, grant, secret, issuer.as_ref()).await,
        Change::IssueCertificate { request, grant } => {
            grants::issue_certificate(c, request, grant).await
        }
        Change::UpdateGrant { update } => grants::update_grant(c, dialect, update).await,
        Change::ReviewGrant { id, reviewer } => grants::review_grant(c, id, reviewer).await,
        Change::RecordExchangedToken { token, agents } => exchanged::record(c, token, agents).await,
        Change::CreateCallApproval { approval } => agents::create_call_approval(c, approval).await,
        Change::AnswerCallApproval {
            id,
            approve,
            by,
            at,
            usable_until,
        } => agents::answer_call_approval(c, id, *approve, by, *at, *usable_until).await,
        Change::UseCallApproval { id, at } => agents::use_call_approval(c, id, *at).await,
        Change::ExpireCallApproval { id, at } => agents::expire_call_approval(c, id, *at).await,
        Change::DisableAgent { name, by, at } => agents::disable(c, name, by, *at).await,
        Change::EnableAgent { name } => agents::enable(c, name).await,
        Change::PutProxyRoute { route } => proxy_routes::put(c, route).await,
        Change::DeleteProxyRoute { name } => proxy_routes::delete(c, name).await,
        Change::PutKvSecret {
            path,
            version,
            blob,
            created_by,
            at,
        } => kv::put(c, path, *version, blob, created_by, *at).await,
        Change::DeleteKvSecret { path, version, at } => kv::delete(c, path, *version, *at).await,
        Change::UndeleteKvSecret { path, version } => kv::undelete(c, path, *version).await,
        Change::DestroyKvSecret { path, versions, at } => kv::destroy(c, path, versions, *at).await,
        Change::Notify {
            change,
            notifications,
            only_if,
        } => {
            if let Some(change) = change {
                match Box::pin(apply(c, dialect, change)).await? {
                    Applied::Done => {}
                    refused => return Ok(refused),
                }
            }
            outbox::enqueue(c, notifications, only_if.as_ref()).await
        }
        Change::Fenced { lease, inner } => {
            // The lease first: its row stays locked until the end of the transaction.
            match cluster::check_fence(c, lease).await? {
                Applied::Done => {}
                lost => return Ok(lost),
            }
            match inner {
                Some(inner) => Box::pin(apply(c, dialect, inner)).await,
                None => Ok(Applied::Done),
            }
        }
        Change::PutSsoProvider {
            name,
            config,
            secret,
            at,
        } => sso::put_provider(c, name, config, secret, *at).await,
        Change::DeleteSsoProvider { name, secret_path } => {
            sso::delete_provider(c, name, secret_path).await
        }
        Change::PutSsoPending {
            pending,
            purge_before,
        } => sso::put_pending(c, pending, *purge_before).await,
        Change::ConsumeSsoPending {
            key_hash,
            kind,
            session,
        } => sso::consume_pending(c, key_hash, kind, session.as_ref()).await,
        Change::SsoSignIn {
            key_hash,
            issuer,
            subject,
            user,
            new_user,
            session,
            code,
        } => {
            let sign_in = sso::SignIn {
                key_hash,
                issuer,
                subject,
                user,
                new_user: *new_user,
                session: session.as_ref(),
                code: code.as_ref(),
            };
            sso::sign_in(c, sign_in).await
        }
    }
}
