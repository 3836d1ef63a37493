//! Audit sinks copy the log out of the store in order. The JSON-lines file sink appends each
//! event as one line (the canonical body plus `hash`), fsyncs, then moves its durable cursor in the
//! store. On start it resumes after the last event in the file, so a sink that was down catches
//! up and nothing is lost or written twice.

use std::io::{Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mayfly_core::audit::{split_line, stored_line, to_line};

use crate::state::Broker;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("audit file `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("audit file `{path}` ends with a line that is not an audit event: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("store: {0}")]
    Store(#[from] mayfly_store::StoreError),
}

pub struct FileSink {
    path: PathBuf,
    name: String,
    position: i64,
    /// The position last recorded in the store, and when.
    recorded: (i64, Option<std::time::Instant>),
}

/// How often, at most, a sink that is busy records its cursor in the store (an idle one records it
/// as soon as it has caught up). The file itself says where to resume after a restart; the stored
/// cursor is for operators, so it need not cost a store write per batch.
const CURSOR_EVERY: Duration = Duration::from_secs(1);

/// How long a sink that has just copied events waits before it looks again.
const GATHER: Duration = Duration::from_millis(50);

impl FileSink {
    pub fn open(path: &Path) -> Result<FileSink, SinkError> {
        let position = last_seq_in_file(path)?;
        Ok(FileSink {
            path: path.to_owned(),
            name: format!("file:{}", path.display()),
            position,
            recorded: (-1, None),
        })
    }

    pub fn position(&self) -> i64 {
        self.position
    }

    /// Copies up to 1000 new events; returns how many.
    pub async fn run_once(&mut self, broker: &Broker) -> Result<usize, SinkError> {
        let events = broker.store().audit_events(self.position, 1000).await?;
        if events.is_empty() {
            if self.recorded.0 != self.position {
                self.record(broker).await?;
            }
            return Ok(0);
        }
        let mut text = String::new();
        let mut last = self.position;
        for event in &events {
            // Copied as stored; only a body that is not in canonical form is parsed first.
            let line = match stored_line(&event.body, &event.hash) {
                Some(line) => line,
                None => {
                    let body: serde_json::Value =
                        serde_json::from_str(&event.body).map_err(|e| SinkError::Unreadable {
                            path: format!("store event {}", event.seq),
                            reason: e.to_string(),
                        })?;
                    to_line(&body, &event.hash)
                }
            };
            text.push_str(&line);
            text.push('\n');
            last = event.seq;
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || append_durably(&path, text.as_bytes()))
            .await
            .map_err(|e| SinkError::Io {
                path: self.path.display().to_string(),
                source: std::io::Error::other(e),
            })??;
        self.position = last;
        if self
            .recorded
            .1
            .is_none_or(|at| at.elapsed() >= CURSOR_EVERY)
        {
            self.record(broker).await?;
        }
        Ok(events.len())
    }

    async fn record(&mut self, broker: &Broker) -> Result<(), SinkError> {
        broker
            .store()
            .set_sink_cursor(&self.name, self.position)
            .await?;
        self.recorded = (self.position, Some(std::time::Instant::now()));
        Ok(())
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn append_durably(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_data().map_err(io_error(path))?;
    Ok(())
}

/// The `seq` of the last complete line of the file, 0 if it has none. A partial last line (a crash
/// in the middle of a write) is cut off, so the next append starts on a fresh line.
fn last_seq_in_file(path: &Path) -> Result<i64, SinkError> {
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(io_error(path)(error)),
    };
    let len = file.metadata().map_err(io_error(path))?.len();
    if len == 0 {
        return Ok(0);
    }
    // A checkpoint line can be long (8 bytes of hash per event it covers); read enough.
    let window = len.min(4 * 1024 * 1024);
    let start = len - window;
    file.seek(SeekFrom::Start(start)).map_err(io_error(path))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(io_error(path))?;
    let Some(last_newline) = tail.iter().rposition(|b| *b == b'\n') else {
        if start == 0 {
            file.set_len(0).map_err(io_error(path))?;
            file.sync_data().map_err(io_error(path))?;
        }
        return Ok(0);
    };
    let complete_len = start + last_newline as u64 + 1;
    if complete_len < len {
        tracing::warn!(path = %path.display(), "cutting a partial last line off the audit file");
        file.set_len(complete_len).map_err(io_error(path))?;
        file.sync_data().map_err(io_error(path))?;
    }
    let complete = tail.get(..last_newline).unwrap_or_default();
    let line_start = complete
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let last_line =
        String::from_utf8_lossy(complete.get(line_start..).unwrap_or_default()).into_owned();
    if last_line.trim().is_empty() {
        return Ok(0);
    }
    let (body, _) = split_line(&last_line).map_err(|reason| SinkError::Unreadable {
        path: path.display().to_string(),
        reason,
    })?;
    Ok(body
        .get("seq")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0))
}

/// Loops: copies new events as they are committed, retrying with backoff while the file or the
/// store fails. Never skips an event.
pub async fn run(
    broker: Broker,
    mut sink: FileSink,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let notify = broker.inner.committer.committed.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        match sink.run_once(&broker).await {
            Ok(0) => {
                backoff = Duration::from_millis(100);
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Ok(n) => {
                backoff = Duration::from_millis(100);
                // Busy: let events gather for a moment, so that one read and one fsync carry many
                // of them (a copy per commit would cost as much as the commit).
                if n < 1000 {
                    tokio::select! {
                        _ = tokio::time::sleep(GATHER) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
            Err(error) => {
                tracing::error!(error = %error, "audit file sink failed; retrying");
                metrics::counter!("mayfly_audit_sink_failures_total").increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
        if let Ok((head, _)) = broker.store().audit_head().await {
            metrics::gauge!("mayfly_audit_sink_lag_events").set((head - sink.position()) as f64);
        }
    }
}
