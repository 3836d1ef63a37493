//! The `[auto_unseal]` table (docs/seal.md) validated into [`AutoUnseal`]: what the config
//! reads, kept apart from the auto-unseal itself (`auto.rs`), so that the config does not import
//! the seal and, through it, the broker's state.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The `[auto_unseal]` table as written in the config file.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AutoUnsealFile {
    /// `kind = "file"`: a 32-byte key (raw, or 64 hex digits) in a file.
    File(FileKeyFile),
    /// `kind = "pkcs11"`: an AES-256 key inside a PKCS#11 token.
    Pkcs11(Pkcs11File),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKeyFile {
    /// Absolute, or a name in `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`,
    /// `LoadCredentialEncrypted=` for a TPM-sealed one).
    pub path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11File {
    /// The PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token, by label...
    pub token_label: Option<String>,
    /// ... or by slot id.
    pub slot: Option<u64>,
    /// The user PIN, in a file (absolute, or a name in `$CREDENTIALS_DIRECTORY`).
    pub pin_file: PathBuf,
    /// The label of the AES-256 secret key inside the token.
    pub key_label: String,
}

/// Validated `[auto_unseal]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoUnseal {
    File { path: PathBuf },
    Pkcs11(Pkcs11Settings),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Settings {
    pub module: PathBuf,
    pub token: TokenChoice,
    pub pin_file: PathBuf,
    pub key_label: String,
}

/// Which token of the module holds the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenChoice {
    Label(String),
    Slot(u64),
}

impl AutoUnseal {
    /// Checks the table; `credentials_dir` is `$CREDENTIALS_DIRECTORY`, which relative paths are
    /// read in. The message names the key.
    pub fn parse(
        file: AutoUnsealFile,
        credentials_dir: Option<&str>,
    ) -> Result<AutoUnseal, String> {
        match file {
            AutoUnsealFile::File(file) => Ok(AutoUnseal::File {
                path: resolve("auto_unseal.path", file.path, credentials_dir)?,
            }),
            AutoUnsealFile::Pkcs11(file) => {
                let token = match (file.token_label, file.slot) {
                    (Some(label), None) if !label.is_empty() && label.len() <= 32 => {
                        TokenChoice::Label(label)
                    }
                    (None, Some(slot)) => TokenChoice::Slot(slot),
                    (Some(_), None) => {
                        return Err("`auto_unseal.token_label` must have 1 to 32 characters".into());
                    }
                    _ => {
                        return Err(
                            "`auto_unseal` with `kind = \"pkcs11\"` needs `token_label` or `slot`, not both"
                                .into(),
                        );
                    }
                };
                if file.key_label.is_empty() || file.key_label.len() > 128 {
                    return Err("`auto_unseal.key_label` must have 1 to 128 characters".into());
                }
                if !file.module.is_absolute() {
                    return Err("`auto_unseal.module` must be an absolute path".into());
                }
                Ok(AutoUnseal::Pkcs11(Pkcs11Settings {
                    module: file.module,
                    token,
                    pin_file: resolve("auto_unseal.pin_file", file.pin_file, credentials_dir)?,
                    key_label: file.key_label,
                }))
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            AutoUnseal::File { .. } => "file",
            AutoUnseal::Pkcs11(_) => "pkcs11",
        }
    }
}

fn resolve(key: &str, path: PathBuf, credentials_dir: Option<&str>) -> Result<PathBuf, String> {
    if path.is_absolute() {
        return Ok(path);
    }
    match credentials_dir {
        Some(dir) if !dir.is_empty() => Ok(Path::new(dir).join(path)),
        _ => Err(format!(
            "`{key}` is relative, which means a name in `$CREDENTIALS_DIRECTORY` (systemd credentials), but that is not set: give an absolute path"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, credentials_dir: Option<&str>, expect: Result<AutoUnseal, &str>) {
        let parsed = toml::from_str::<AutoUnsealFile>(text)
            .map_err(|e| e.to_string())
            .and_then(|file| AutoUnseal::parse(file, credentials_dir));
        match (parsed, expect) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn the_auto_unseal_table_is_checked() {
        let file = |path: &str| {
            Ok(AutoUnseal::File {
                path: PathBuf::from(path),
            })
        };
        check(
            r#"kind = "file"
path = "/etc/mayfly/unseal.key""#,
            None,
            file("/etc/mayfly/unseal.key"),
        );
        check(
            r#"kind = "file"
path = "unseal-key""#,
            Some("/run/credentials/mayfly.service"),
            file("/run/credentials/mayfly.service/unseal-key"),
        );
        check(
            r#"kind = "file"
path = "unseal-key""#,
            None,
            Err("`auto_unseal.path` is relative"),
        );
        check(
            r#"kind = "file"
path = "/k"
pin_file = "/p""#,
            None,
            Err("unknown field `pin_file`"),
        );
        check(r#"kind = "vault""#, None, Err("unknown variant `vault`"));
        let hsm = r#"kind = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
pin_file = "/etc/mayfly/pin"
key_label = "mayfly-unseal"
"#;
        check(
            &format!("{hsm}token_label = \"mayfly\""),
            None,
            Ok(AutoUnseal::Pkcs11(Pkcs11Settings {
                module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
                token: TokenChoice::Label("mayfly".into()),
                pin_file: PathBuf::from("/etc/mayfly/pin"),
                key_label: "mayfly-unseal".into(),
            })),
        );
        check(
            &format!("{hsm}slot = 3"),
            None,
            Ok(AutoUnseal::Pkcs11(Pkcs11Settings {
                module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
                token: TokenChoice::Slot(3),
                pin_file: PathBuf::from("/etc/mayfly/pin"),
                key_label: "mayfly-unseal".into(),
            })),
        );
        check(hsm, None, Err("needs `token_label` or `slot`"));
        check(
            &format!("{hsm}slot = 3\ntoken_label = \"x\""),
            None,
            Err("not both"),
        );
        check(
            &format!("{hsm}token_label = \"{}\"", "x".repeat(33)),
            None,
            Err("1 to 32 characters"),
        );
        check(
            &format!(
                "{}token_label = \"m\"",
                hsm.replace("/usr/lib/softhsm/", "")
            ),
            None,
            Err("`auto_unseal.module` must be an absolute path"),
        );
    }
}
