//! What the CLI keeps and reads on this machine: the session token file, secrets from files or
//! the terminal, private files.

use std::io::{BufRead, IsTerminal, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};

/// `MAYFLY_TOKEN_FILE`, else `~/.mayfly-token`.
pub fn token_file() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("MAYFLY_TOKEN_FILE") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".mayfly-token"))
}

pub fn read_token_file() -> Option<String> {
    let text = std::fs::read_to_string(token_file()?).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

pub fn write_token_file(token: &str) -> anyhow::Result<PathBuf> {
    let path = token_file().ok_or_else(|| anyhow!("no HOME: set MAYFLY_TOKEN_FILE"))?;
    let _ = std::fs::remove_file(&path);
    write_private(&path, format!("{token}\n").as_bytes())?;
    Ok(path)
}

/// A secret from a file, or asked for on the terminal, or one line of stdin.
pub fn read_secret(file: Option<&Path>, prompt: &str) -> anyhow::Result<String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        return Ok(text.trim_end_matches(['\n', '\r']).to_owned());
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt).context("cannot read from the terminal");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// One line typed on stdin, after `prompt` on stderr.
pub fn read_line(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

pub fn read_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))
}

/// Writes a new file only its owner can read (0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

/// A new temporary directory only its owner can enter (0700), deleted when dropped.
pub fn private_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("cannot make a private temporary directory")?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .context("cannot make the temporary directory private")?;
    }
    Ok(dir)
}
