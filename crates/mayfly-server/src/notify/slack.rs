//! Slack-compatible messages (Block Kit) for an incoming webhook: who asks, for which role on
//! which target, for how long, why, the ticket, and, for a request waiting for approval, Approve
//! and Deny buttons. The buttons' `action_id`s and `value` (the request id) are what the Slack
//! actions endpoint (`POST /v1/chat/slack/actions`) reads back: the constants here are shared.

use serde_json::{Value, json};

use super::{EventKind, Notice};

/// `action_id` of the Approve button.
pub const ACTION_APPROVE: &str = "mayfly_approve";
/// `action_id` of the Deny button.
pub const ACTION_DENY: &str = "mayfly_deny";
/// `block_id` of the block holding the two buttons.
pub const ACTIONS_BLOCK_ID: &str = "mayfly_request_actions";

/// The message for `notice`. Text from requests (reason, ticket) is escaped for Slack's
/// `mrkdwn` (`&`, `<`, `>`), so it cannot mention `@channel` or forge a link.
pub fn message(notice: &Notice) -> Value {
    let kind = EventKind::ALL
        .into_iter()
        .find(|k| k.as_str() == notice.event);
    let title = match kind {
        Some(EventKind::RequestPending) => "Access request waiting for approval",
        Some(EventKind::RequestApproved) => "Access request approved",
        Some(EventKind::RequestDenied) => "Access request denied",
        Some(EventKind::GrantActivated) => "Access granted",
        Some(EventKind::BreakGlassUsed) => "BREAK-GLASS access used",
        Some(EventKind::RevocationFailing) => "Revocation failing",
        Some(EventKind::GrantExpiring) => "Access expiring soon",
        None => "Mayfly notification",
    };
    let role = match (&notice.target, &notice.role) {
        (Some(target), Some(role)) => format!("{target}/{role}"),
        _ => String::new(),
    };
    let requester = notice.requester.as_deref().unwrap_or_default();
    let mut fields = Vec::new();
    let mut field = |name: &str, value: &str| {
        if !value.is_empty() {
            fields.push(json!({"type": "mrkdwn", "text": format!("*{name}*\n{}", escape(value))}));
        }
    };
    field("Requester", requester);
    field("Role", &role);
    if let Some(ttl) = notice.ttl_seconds {
        field("TTL", &ttl_text(ttl));
    }
    field("Reason", notice.reason.as_deref().unwrap_or_default());
    field("Ticket", notice.ticket.as_deref().unwrap_or_default());
    field(
        "Decided by",
        notice.decided_by.as_deref().unwrap_or_default(),
    );
    field("Error", notice.error.as_deref().unwrap_or_default());
    if let Some(at) = notice.expires_at {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Expires*\n<!date^{at}^{{date_short_pretty}} {{time}}|{at}>")}));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": title}}),
        json!({"type": "section", "fields": fields}),
    ];
    if let (Some(EventKind::RequestPending), Some(request_id)) = (kind, &notice.request_id) {
        blocks.push(json!({
            "type": "actions",
            "block_id": ACTIONS_BLOCK_ID,
            "elements": [
                {"type": "button", "action_id": ACTION_APPROVE, "style": "primary",
                 "text": {"type": "plain_text", "text": "Approve"}, "value": request_id},
                {"type": "button", "action_id": ACTION_DENY, "style": "danger",
                 "text": {"type": "plain_text", "text": "Deny"}, "value": request_id},
            ],
        }));
    }
    let mut context = Vec::new();
    if !notice.approvers.is_empty() {
        let more = if notice.approvers_truncated {
            ", …"
        } else {
            ""
        };
        context.push(format!(
            "Approvers: {}{more}",
            escape(&notice.approvers.join(", "))
        ));
    }
    if let Some(url) = &notice.url {
        context.push(format!("<{}|Open in Mayfly>", escape(url)));
    }
    if let Some(id) = notice.grant_id.as_ref().or(notice.request_id.as_ref()) {
        context.push(format!("id `{}`", escape(id)));
    }
    blocks.push(
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": context.join(" · ")}]}),
    );
    let glass = if notice.break_glass {
        "BREAK-GLASS "
    } else {
        ""
    };
    let text = format!(
        "{glass}{title}: {} {} ({})",
        escape(requester),
        escape(&role),
        notice.reason.as_deref().map(escape).unwrap_or_default()
    );
    json!({"text": text, "blocks": blocks})
}

/// Slack's `mrkdwn` escaping: the three characters it gives meaning to.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn ttl_text(seconds: u64) -> String {
    match seconds {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_request_has_the_facts_and_two_buttons_and_escapes_its_text() {
        let notice = Notice {
            event: "request.pending".into(),
            request_id: Some("r-1".into()),
            requester: Some("user:alice".into()),
            target: Some("pg".into()),
            role: Some("readonly".into()),
            ttl_seconds: Some(900),
            reason: Some("<!channel> fix & go".into()),
            ticket: Some("INC-7".into()),
            approvers: vec!["bob".into()],
            ..Notice::default()
        };
        let message = message(&notice);
        let text = message.to_string();
        for fact in ["user:alice", "pg/readonly", "15m", "INC-7", "bob"] {
            assert!(text.contains(fact), "{fact} missing: {text}");
        }
        assert!(!text.contains("<!channel>"), "{text}");
        assert!(text.contains("&lt;!channel&gt; fix &amp; go"), "{text}");
        let actions = message["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "actions")
            .unwrap();
        assert_eq!(actions["elements"][0]["action_id"], ACTION_APPROVE);
        assert_eq!(actions["elements"][1]["action_id"], ACTION_DENY);
        assert_eq!(actions["elements"][0]["value"], "r-1");
        assert_eq!(actions["elements"][1]["value"], "r-1");
        // Nothing to click once decided.
        let decided = super::message(&Notice {
            event: "request.approved".into(),
            ..notice
        });
        assert!(!decided.to_string().contains(ACTION_APPROVE));
    }
}
