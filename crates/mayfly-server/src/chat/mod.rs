//! Approving from chat: a click on a button in a chat message becomes the same broker operation
//! as `mayfly approve` (`slack.rs`). The messages themselves are sent by the notifications.

pub mod slack;
