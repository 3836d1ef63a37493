//! The PKCS#11 key-encryption key: an AES-256 secret key inside a token (an HSM; SoftHSM2 in the
//! tests), found by its label, used with `CKM_AES_GCM` inside the token: the key never leaves
//! it, and the broker sees only the wrap. Its id is `pkcs11:` the token's serial number and the
//! key's label.
//!
//! A module is loaded and initialized (`C_Initialize`) once per process and kept: PKCS#11 state is
//! per process, and a second `C_Initialize` of the same module is refused. Each wrap or unwrap
//! opens a session, logs in with the PIN from its file and closes the session after. All of it
//! blocks: callers run it on a blocking thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use mayfly_crypto::barrier::RootKey;
use zeroize::Zeroizing;

use super::spec::{Pkcs11Settings, TokenChoice};
use super::unseal_error::AutoUnsealError;

/// The first byte of a wrap made here.
const VERSION: u8 = 1;
const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;
/// A PIN file larger than this is not a PIN file.
const MAX_PIN_FILE_LEN: u64 = 1024;

/// The modules loaded in this process, by path.
static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

pub(super) struct Pkcs11Kek {
    session: Session,
    key: ObjectHandle,
    key_id: String,
}

impl Pkcs11Kek {
    /// Loads the module, finds the token, logs in and finds the key.
    pub(super) fn open(settings: &Pkcs11Settings) -> Result<Pkcs11Kek, AutoUnsealError> {
        let pin = read_pin(&settings.pin_file)?;
        let context = module(&settings.module)?;
        let (slot, serial) = find_token(&context, &settings.token)?;
        let session = context
            .open_ro_session(slot)
            .map_err(hsm("open a session"))?;
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(Error::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
                return Err(AutoUnsealError::PinIncorrect);
            }
            Err(Error::Pkcs11(RvError::PinLocked, _)) => return Err(AutoUnsealError::PinLocked),
            Err(error) => return Err(hsm("log in")(error)),
        }
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(settings.key_label.as_bytes().to_vec()),
        ];
        let keys = session
            .find_objects(&template)
            .map_err(hsm("find the key"))?;
        let key = match keys.as_slice() {
            [key] => *key,
            [] => {
                return Err(AutoUnsealError::KeyNotFound {
                    label: settings.key_label.clone(),
                });
            }
            _ => {
                return Err(AutoUnsealError::Token {
                    reason: format!(
                        "{} AES keys are labelled `{}`: keep one",
                        keys.len(),
                        settings.key_label
                    ),
                });
            }
        };
        Ok(Pkcs11Kek {
            session,
            key,
            key_id: format!("pkcs11:{serial}:{}", settings.key_label),
        })
    }

    pub(super) fn key_id(&self) -> &str {
        &self.key_id
    }

    /// AES-256-GCM inside the token, with a random 96-bit IV made here.
    pub(super) fn wrap(&self, root: &RootKey, aad: &[u8]) -> Result<Vec<u8>, AutoUnsealError> {
        let iv: [u8; IV_LEN] = mayfly_crypto::random_bytes()
            .map_err(|e| AutoUnsealError::Unseal(format!("random IV: {e}")))?;
        let mut iv_param = iv;
        let params =
            GcmParams::new(&mut iv_param, aad, TAG_BITS.into()).map_err(hsm("set up AES-GCM"))?;
        let ciphertext = self
            .session
            .encrypt(&Mechanism::AesGcm(params), self.key, root.expose_bytes())
            .map_err(hsm("encrypt with the key (CKM_AES_GCM)"))?;
        let mut out = Vec::with_capacity(1 + IV_LEN + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    pub(super) fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<RootKey, AutoUnsealError> {
        let wrong = || AutoUnsealError::WrongKey {
            key_id: self.key_id.clone(),
        };
        let (version, rest) = wrapped.split_first().ok_or_else(wrong)?;
        if *version != VERSION || rest.len() < IV_LEN {
            return Err(wrong());
        }
        let (iv, ciphertext) = rest.split_at(IV_LEN);
        let mut iv = iv.to_vec();
        let params =
            GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(hsm("set up AES-GCM"))?;
        let plaintext = match self
            .session
            .decrypt(&Mechanism::AesGcm(params), self.key, ciphertext)
        {
            Ok(plaintext) => Zeroizing::new(plaintext),
            // A tag that does not verify: SoftHSM2 answers CKR_GENERAL_ERROR, others
            // CKR_ENCRYPTED_DATA_INVALID (the key itself was found and logged in to).
            Err(Error::Pkcs11(
                RvError::GeneralError
                | RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange
                | RvError::FunctionFailed,
                _,
            )) => return Err(wrong()),
            Err(error) => return Err(hsm("decrypt with the key (CKM_AES_GCM)")(error)),
        };
        RootKey::from_bytes(&plaintext).map_err(|_| wrong())
    }
}

/// The PIN, without the trailing newline of a file written by `echo`.
fn read_pin(path: &Path) -> Result<AuthPin, AutoUnsealError> {
    let too_large = std::fs::metadata(path)
        .map_err(|e| AutoUnsealError::PinFile {
            reason: e.kind().to_string(),
        })?
        .len()
        > MAX_PIN_FILE_LEN;
    if too_large {
        return Err(AutoUnsealError::PinFile {
            reason: "it is larger than a PIN".into(),
        });
    }
    let mut text = std::fs::read_to_string(path).map_err(|e| AutoUnsealError::PinFile {
        reason: e.kind().to_string(),
    })?;
    let end = text.trim_end_matches(['\r', '\n']).len();
    zeroize::Zeroize::zeroize(&mut text.split_off(end));
    if text.is_empty() {
        return Err(AutoUnsealError::PinFile {
            reason: "it is empty".into(),
        });
    }
    Ok(AuthPin::from(text))
}

/// The module at `path`, loaded and initialized once per process.
fn module(path: &Path) -> Result<Pkcs11, AutoUnsealError> {
    let modules = MODULES.get_or_init(Mutex::default);
    let mut modules = modules.lock().map_err(|_| AutoUnsealError::Module {
        reason: "a previous load failed midway".into(),
    })?;
    if let Some(context) = modules.get(path) {
        return Ok(context.clone());
    }
    if !path.is_file() {
        return Err(AutoUnsealError::Module {
            reason: format!("`{}` does not exist", path.display()),
        });
    }
    let context = Pkcs11::new(path).map_err(|e| AutoUnsealError::Module {
        reason: e.to_string(),
    })?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(error) => {
            return Err(AutoUnsealError::Module {
                reason: format!("C_Initialize: {error}"),
            });
        }
    }
    modules.insert(path.to_owned(), context.clone());
    Ok(context)
}

/// The slot of the chosen token and the token's serial number.
fn find_token(context: &Pkcs11, choice: &TokenChoice) -> Result<(Slot, String), AutoUnsealError> {
    let slots = context
        .get_slots_with_token()
        .map_err(hsm("list the slots"))?;
    for slot in slots {
        let info = context
            .get_token_info(slot)
            .map_err(hsm("read a token's information"))?;
        let chosen = match choice {
            TokenChoice::Label(label) => info.label().trim_end() == label,
            TokenChoice::Slot(id) => slot.id() == *id,
        };
        if chosen {
            return Ok((slot, info.serial_number().trim().to_owned()));
        }
    }
    Err(AutoUnsealError::Token {
        reason: match choice {
            TokenChoice::Label(label) => format!(
                "no token labelled `{label}` in the module: check `auto_unseal.token_label` (softhsm2-util --show-slots)"
            ),
            TokenChoice::Slot(id) => format!(
                "no token in slot {id}: check `auto_unseal.slot` (softhsm2-util --show-slots)"
            ),
        },
    })
}

/// A PKCS#11 failure while doing `what`.
fn hsm(what: &'static str) -> impl Fn(Error) -> AutoUnsealError {
    move |error| AutoUnsealError::Hsm {
        reason: format!("cannot {what}: {error}"),
    }
}
